"""The handler protocol, handler loading, and running one entry through a handler.

Shared by the consumer and the reclaimer (which must not import each other). A handler is
``async def handle(order: Envelope, ctx: HandlerContext) -> None``; it raises to fail (the order
stays pending and is retried after its back-off). A batch handler (marked with
:func:`batch_handler`) takes ``(orders: list[Envelope], ctx: BatchContext)`` instead and says
which orders failed. Handlers are loaded from a ``module:function`` string (``HANDLER``), so
the consumer and the reclaimer run the same code.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streamcore.connection import is_transient
from streamcore.envelope import Envelope, EnvelopeError, decode
from streamcore.keys import Keys
from streamcore.lifecycle import RedisHealth
from streamcore.metrics import StreamMetrics
from streamcore.pacing import Backoff, RateLimitedLog
from streamcore.streams import REASON_MAX_DELIVERIES, Scripts, dead_letter

logger = logging.getLogger(__name__)


def _appended_s(entry_id: str) -> float:
    """When the entry was appended, in seconds since the epoch: the milliseconds part of its
    ID (Redis's clock at ``XADD``; an entry ID from Redis always has one)."""
    return int(entry_id.partition("-")[0]) / 1000.0


@dataclass(slots=True)
class HandlerContext:
    """What a handler may use besides the order (read-only by contract: one is built per
    delivery, and a plain slotted class builds in a third of a frozen dataclass's time).

    Attributes:
        redis: the process's asyncio client (``decode_responses=True``); do not close it.
        keys: key names of this stream.
        consumer: the consumer name handling the order (pod name, or ``reclaimer``).
        entry_id: the stream entry ID.
        deliveries: this delivery's number (1 for the first), from the PEL.
        logger: a logger to use.
        failure_rate: probability (0..1) the default handler fails on purpose (``FAILURE_RATE``).
        processed_ttl_s: lifetime of processed markers in seconds.
    """

    redis: aioredis.Redis
    keys: Keys
    consumer: str
    entry_id: str
    deliveries: int
    logger: logging.Logger = field(default=logger)
    failure_rate: float = 0.0
    processed_ttl_s: int = 7 * 86400


@dataclass(slots=True)
class BatchContext:
    """What a batch handler may use besides the orders (read-only by contract).

    Attributes:
        redis: the process's asyncio client (``decode_responses=True``); do not close it.
        keys: key names of this stream.
        consumer: the consumer name handling the orders (pod name, or ``reclaimer``).
        deliveries: entry ID -> this delivery's number (1 for the first), from the PEL.
        logger: a logger to use.
        failure_rate: probability (0..1) a demo handler fails on purpose (``FAILURE_RATE``).
        processed_ttl_s: lifetime of processed markers in seconds.
    """

    redis: aioredis.Redis
    keys: Keys
    consumer: str
    deliveries: dict[str, int]
    logger: logging.Logger = field(default=logger)
    failure_rate: float = 0.0
    processed_ttl_s: int = 7 * 86400


def batch_handler(func: Callable[[list[Envelope], BatchContext], Awaitable[Mapping[str, Any] | None]]):
    """Mark ``func`` as a batch handler: the consumer calls it with a list of orders.

    A batch handler is ``async def handle(orders: list[Envelope], ctx: BatchContext)`` and
    returns ``None`` when every order succeeded, or a mapping ``{entry ID: error}`` (an
    exception or a message) of the orders that failed; the others succeeded. Raising fails every
    order of the call, and so does a mapping keyed by anything but the call's entry IDs
    (``order.entry_id``; an orderId there would otherwise ack the order as done). Each order is acknowledged only after the call returned and only if it
    succeeded; a failed order stays pending, is retried after its back-off, and is
    dead-lettered on delivery ``MAX_DELIVERIES`` exactly as with a per-order handler. Poison and
    body-less entries never reach it. It must be idempotent per order, as a per-order handler
    must (an order can be delivered again after a crash): for example ``SET NX`` of each
    order's processed marker in one pipeline, then the effect for the orders whose marker was new.

    The consumer calls it with the entries of one read (at most ``READ_COUNT``), at most
    ``CONCURRENCY`` calls at once; ``HANDLER_TIMEOUT_SECONDS`` bounds each call. Use it when
    the work per order can be done in bulk (one pipeline, one SQL statement, one HTTP request
    for many orders): it removes the per-order call overhead and lets the consumer approach
    Redis's own limit (bench/README.md).
    """
    func.orderstream_batch = True
    return func


def is_batch_handler(func: Any) -> bool:
    """True when ``func`` was marked with :func:`batch_handler`."""
    return getattr(func, "orderstream_batch", False) is True


def _batch_failures(result: Any, where: Mapping[str, int]) -> dict[str, Any]:
    """The failures a batch handler returned, keyed by entry ID (see :func:`batch_handler`).

    Raises:
        TypeError: the result is neither None nor a mapping (every order of the call fails).
        ValueError: the mapping names a key that is not an entry ID of the call (every order fails).
    """
    if result is None:
        return {}
    if not isinstance(result, Mapping):
        raise TypeError(f"a batch handler returns None or a mapping {{entry ID: error}}, not {type(result).__name__}")
    unknown = [k for k in result if k not in where]
    if unknown:
        # An order ID, or an ID of another call: ignoring it would ack as done an order the
        # handler meant to fail, so nothing of the call is trusted.
        raise ValueError(f"the batch handler named {len(unknown)} keys that are not entry IDs of its call "
                         f"(e.g. {', '.join(map(repr, unknown[:3]))}); failures are keyed by order.entry_id")
    return {k: (v if v is not None else "failed") for k, v in result.items()}


class Handler(Protocol):
    """``async def handle(order, ctx) -> None``; raising means the order failed."""

    def __call__(self, order: Envelope, ctx: HandlerContext) -> Awaitable[None]: ...


class HandlerFailure(Exception):
    """A handler failed on purpose (``FAILURE_RATE``)."""


class HandlerTimeout(Exception):
    """A handler call ran longer than ``HANDLER_TIMEOUT_SECONDS``; it was cancelled and the delivery failed."""


def load_handler(spec: str) -> Callable[[Envelope, HandlerContext], Awaitable[None]]:
    """Import ``module:function`` and return the function.

    Raises:
        ValueError: ``spec`` has no ``:``, or names something that is not an ``async def``
            function (a plain function would return None instead of an awaitable, and every
            order would fail with a TypeError until dead-lettered).
        ImportError / AttributeError: the module or the function does not exist.
        Exception: whatever importing the module raised (SyntaxError, ...).
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"HANDLER must look like module:function, got {spec!r}")
    func = getattr(importlib.import_module(module_name), attr)
    if not callable(func):
        raise ValueError(f"HANDLER {spec!r} is not callable")
    if not (inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None))):
        raise ValueError(f"HANDLER {spec!r} must be an async function (async def), got {type(func).__name__} "
                         f"{getattr(func, '__qualname__', '')}".rstrip())
    return func


#: Outcomes of :meth:`EntryRunner.run`.
OK, FAILED, DEAD_LETTERED, GONE = "ok", "failed", "dead_lettered", "gone"


class EntryRunner:
    """Run one delivered entry through the handler and decide what happens to it.

    The runner never acks a successful entry itself: the caller batches those XACKs
    (``ok``). A failure leaves the entry pending (``failed``) unless this was delivery number
    ``max_deliveries`` or more, in which case it is dead-lettered at once with the error
    (``dead_lettered``, atomic XADD + XACK). A body-less entry (``fields`` empty: trimmed or
    deleted) is never handed to the handler (``gone``; the caller XACKs and counts it).

    **Poison** — an entry that can never succeed (a field that is not UTF-8, no ``data`` field,
    ``data`` not JSON or not a JSON object, judged by :func:`streamcore.envelope.decode`) is
    dead-lettered at once, whatever its delivery count, with ``reason`` set to the
    :attr:`~streamcore.envelope.EnvelopeError.reason`, logged once with its ID and counted in
    ``orderstream_poison_entries_total{component,reason}``.

    **Infrastructure faults are not the order's fault** — when the handler (or the dead-letter
    step) raises a transient Redis error (:func:`streamcore.connection.is_transient`: Redis
    down or restarting, a dropped connection, the pool exhausted, BUSY/LOADING), the call is
    retried in place with capped back-off (0.05 s doubling to 2 s) while the caller keeps the
    entry's lease: no failure is counted and no new delivery happens, so a Redis outage never
    pushes good orders towards ``max_deliveries``. Counted in
    ``orderstream_redis_errors_total{component,where="handler"}``. Only cancellation (the drain
    deadline) ends the retries; the entry then stays pending.
    """

    def __init__(self, r: aioredis.Redis, keys: Keys, handler: Callable[[Envelope, HandlerContext], Awaitable[None]], *,
                 scripts: Scripts, metrics: StreamMetrics, component: str, max_deliveries: int,
                 failure_rate: float = 0.0, processed_ttl_s: int = 7 * 86400, handler_timeout_s: float = 0.0,
                 delete_source: bool = False, redis_health: RedisHealth | None = None) -> None:
        self.r = r
        self.keys = keys
        self.handler = handler
        #: A :func:`batch_handler`: :meth:`run` passes it a list of one order.
        self.batch = is_batch_handler(handler)
        self.scripts = scripts
        self.metrics = metrics
        self.component = component
        self.max_deliveries = max_deliveries
        self.failure_rate = failure_rate
        self.processed_ttl_s = processed_ttl_s
        #: ``DEAD_LETTER_XDEL``: dead-lettering also deletes the source entry.
        self.delete_source = delete_source
        #: Where transient Redis errors and recoveries are reported (the process's /healthz).
        self.redis_health = redis_health or RedisHealth(component, metrics)
        #: Longest one handler call may take (s); 0 = no limit. A hung handler would otherwise keep
        #: its lease renewed forever: never retried, never dead-lettered, a concurrency slot lost.
        self.handler_timeout_s = handler_timeout_s
        self._deadlines: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._watchdog: asyncio.Task | None = None
        # Labelled children looked up once: labels() costs more than the increment itself.
        self._processed = metrics.processed.labels(component)
        self._failed = metrics.failed.labels(component)
        self._dead_lettered = metrics.dead_lettered.labels(component)
        self._seconds = metrics.handle_seconds.labels(component)
        self._latency = metrics.order_latency.labels(component)
        #: Handler calls in progress; ``orderstream_orders_in_flight{component}`` reads it when
        #: scraped (a gauge inc/dec per order cost more than the no-op handler call itself).
        self.in_flight = 0
        metrics.in_flight.labels(component).set_function(lambda: self.in_flight)
        self._handler_logger = logging.getLogger(f"{component}.handler")
        self._transient_log = RateLimitedLog(logger, 10.0)

    async def run(self, entry_id: str, fields: dict[str, str] | None, deliveries: int, consumer: str,
                  task: asyncio.Task | None = None) -> str:
        """Handle one entry delivered to ``consumer`` for the ``deliveries``-th time.

        ``task`` is the task running this call, when the caller knows it (saves a lookup per
        entry); the handler deadline cancels it.

        Returns:
            ``ok``, ``failed``, ``dead_lettered`` or ``gone``.

        Raises:
            asyncio.CancelledError: cancelled (shutdown past the drain deadline); the entry stays pending.
            redis.exceptions.RedisError: dead-lettering failed; the entry stays pending.
        """
        if self.batch:
            return (await self.run_batch([(entry_id, fields, deliveries)], consumer, task))[0]
        if not fields:
            return GONE
        try:
            order = decode(entry_id, fields)
        except EnvelopeError as exc:
            return await self._poison(entry_id, fields, deliveries, consumer, exc)
        # Positional (the field order of HandlerContext): keywords cost a third more per order.
        ctx = HandlerContext(self.r, self.keys, consumer, entry_id, deliveries, self._handler_logger, self.failure_rate,
                             self.processed_ttl_s)
        self.in_flight += 1
        started = time.monotonic()
        try:
            await self._call(order, ctx, task, entry_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the handler's failure, whatever it is, leaves the order pending
            return await self._failed_delivery(order, deliveries, consumer, exc)
        finally:
            self.in_flight -= 1
            self._seconds.observe(time.monotonic() - started)
        self._processed.inc()
        self._latency.observe(time.time() - _appended_s(entry_id))
        return OK

    async def run_batch(self, items: list[tuple[str, dict[str, str] | None, int]], consumer: str,
                        task: asyncio.Task | None = None) -> list[str]:
        """Handle entries delivered to ``consumer`` with one call of a batch handler.

        Args:
            items: ``(entry ID, fields, delivery number)`` per entry, in stream order.
            consumer: the consumer they are delivered to.
            task: the task running this call, if the caller knows it.

        Returns:
            One outcome per item, in order (``ok``, ``failed``, ``dead_lettered``, ``gone``).
            Body-less entries are ``gone`` and poison is dead-lettered at once, both without
            reaching the handler. If the call raises (or times out) every order of the call
            failed; otherwise the orders named in the mapping it returned failed (see
            :func:`batch_handler`). A failed order is dead-lettered on its last delivery, as
            in :meth:`run`. ``orderstream_handle_seconds`` observes the call, not each order.

        Raises:
            asyncio.CancelledError: cancelled (shutdown past the drain deadline); the entries stay pending.
            redis.exceptions.RedisError: dead-lettering failed; the entries not yet settled stay pending.
        """
        outcomes = [FAILED] * len(items)
        orders: list[Envelope] = []
        where: dict[str, int] = {}
        deliveries: dict[str, int] = {}
        for i, (entry_id, fields, n) in enumerate(items):
            if not fields:
                outcomes[i] = GONE
                continue
            try:
                order = decode(entry_id, fields)
            except EnvelopeError as exc:
                outcomes[i] = await self._poison(entry_id, fields, n, consumer, exc)
                continue
            orders.append(order)
            where[entry_id] = i
            deliveries[entry_id] = n
        if not orders:
            return outcomes
        ctx = BatchContext(redis=self.r, keys=self.keys, consumer=consumer, deliveries=deliveries,
                           logger=self._handler_logger, failure_rate=self.failure_rate,
                           processed_ttl_s=self.processed_ttl_s)
        self.in_flight += len(orders)
        started = time.monotonic()
        try:
            # A copy: the handler may consume or reorder its list; the outcomes follow ``orders``.
            result = await self._call(list(orders), ctx, task, f"{orders[0].entry_id} (+{len(orders) - 1})")
            failures = _batch_failures(result, where)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the whole call failed: every order of it did
            failures = dict.fromkeys(where, exc)
        finally:
            self.in_flight -= len(orders)
            self._seconds.observe(time.monotonic() - started)
        done = 0
        now = time.time()
        for order in orders:
            error = failures.get(order.entry_id)
            if error is None:
                outcomes[where[order.entry_id]] = OK
                self._latency.observe(now - _appended_s(order.entry_id))
                done += 1
            else:
                outcomes[where[order.entry_id]] = await self._failed_delivery(order, deliveries[order.entry_id], consumer,
                                                                              error)
        self._processed.inc(done)
        return outcomes

    async def _call(self, arg: Any, ctx: Any, task: asyncio.Task | None, what: str) -> Any:
        """Call the handler with ``(arg, ctx)`` and return what it returns.

        A transient Redis error (:func:`streamcore.connection.is_transient`) is waited out and
        the call repeated under the same delivery (the caller keeps the lease), never counted as
        a failure. Past ``handler_timeout_s`` (per attempt) the shared watchdog cancels ``task``
        and this raises :class:`HandlerTimeout`; a cancellation from elsewhere (shutdown) still
        propagates. One watchdog task rather than ``asyncio.timeout`` per call: a timer handle
        per order cost ~20 % of the no-op handler throughput (bench/README.md).

        Raises:
            HandlerTimeout, or whatever the handler raised that is not transient.
        """
        if self.handler_timeout_s <= 0:
            task = None
        elif task is None:
            task = asyncio.current_task()
        backoff: Backoff | None = None
        while True:
            transient: Exception | None = None
            converted = False
            if task is not None:
                self._deadlines[task] = time.monotonic() + self.handler_timeout_s
                if self._watchdog is None or self._watchdog.done():
                    self._watchdog = asyncio.get_running_loop().create_task(
                        self._watch(), name=f"{self.component}-handler-watchdog")
            try:
                result = await self.handler(arg, ctx)
            except asyncio.CancelledError:
                if task is not None and task in self._expired and task.uncancel() == 0:
                    converted = True
                    raise HandlerTimeout(f"handler timed out after {self.handler_timeout_s:g}s") from None
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise
                transient = exc
            finally:
                if task is not None:
                    self._deadlines.pop(task, None)
                    if task in self._expired:
                        self._expired.discard(task)
                        if not converted and task.cancelling():
                            task.uncancel()  # the handler swallowed our cancel: do not leave it pending
            if transient is None:
                if backoff is not None:
                    self.redis_health.ok()
                return result
            # Redis, not the order, failed: wait and call the handler again under the same
            # delivery (the worker keeps renewing the lease meanwhile).
            self.redis_health.failed("handler", transient)
            self._transient_log.log(logging.WARNING, "%s: Redis failed while handling entry %s (%s: %s); retrying in "
                                    "place, not counted as a failed delivery", self.component, what,
                                    type(transient).__name__, transient)
            backoff = backoff or Backoff(0.05, 2.0)
            await backoff.sleep()

    async def _poison(self, entry_id: str, fields: dict[str, str], deliveries: int, consumer: str,
                      exc: EnvelopeError) -> str:
        logger.error("%s: entry %s is poison (%s: %s); dead-lettering it at once", self.component, entry_id,
                     exc.reason, exc)
        outcome = await self._dead_letter(entry_id, consumer, deliveries, str(exc), fields.get("order_id", ""),
                                          reason=exc.reason)
        if outcome == DEAD_LETTERED:
            self.metrics.poison.labels(self.component, exc.reason).inc()
        return outcome

    async def _failed_delivery(self, order: Envelope, deliveries: int, consumer: str, exc: BaseException | str) -> str:
        """Count a failed delivery; dead-letter the order if it was the last one allowed."""
        self._failed.inc()
        try:
            await self.r.incrby(self.keys.failed_counter, 1)
        except RedisError as count_error:  # the count is for the console; the delivery's fate does not wait on it
            logger.debug("failed deliveries not counted in Redis: %s", count_error)
        error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        if deliveries >= self.max_deliveries:
            logger.error("%s: order %s (entry %s) failed on delivery %d of %d: %s; dead-lettering it", self.component,
                         order.order_id, order.entry_id, deliveries, self.max_deliveries, error)
            return await self._dead_letter(order.entry_id, consumer, deliveries, error, order.order_id)
        logger.warning("%s: order %s (entry %s) failed on delivery %d of %d, will be retried: %s", self.component,
                       order.order_id, order.entry_id, deliveries, self.max_deliveries, error)
        return FAILED

    async def _watch(self) -> None:
        """Cancel handler calls past their deadline; ends when none is running."""
        interval = min(max(self.handler_timeout_s / 10.0, 0.01), 1.0)
        while self._deadlines:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for task, deadline in list(self._deadlines.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()

    async def _dead_letter(self, entry_id: str, consumer: str, deliveries: int, error: str, order_id: str, *,
                           reason: str = REASON_MAX_DELIVERIES) -> str:
        # owner=consumer: if our lease was taken while we handled it (we were stalled past the
        # claim idle time), the new owner decides; our delivery count is stale.
        backoff = Backoff(0.05, 2.0)
        while True:
            try:
                res = await dead_letter(self.r, self.keys, entry_id, scripts=self.scripts, consumer=consumer,
                                        deliveries=deliveries, error=error, order_id=order_id, owner=consumer,
                                        reason=reason, delete_source=self.delete_source)
                break
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # The script is atomic and guarded by XPENDING: running it again after an
                # ambiguous failure either does the move or finds it done (not pending).
                self.redis_health.failed("dead_letter", exc)
                self._transient_log.log(logging.WARNING, "%s: Redis failed while dead-lettering entry %s (%s); "
                                        "retrying", self.component, entry_id, exc)
                await backoff.sleep()
        if res.status == "dead_lettered":
            self._dead_lettered.inc()
            return DEAD_LETTERED
        if res.status == "gone":
            return GONE  # the script acked it; the caller counts it as gone
        return FAILED  # not pending any more: someone else acked or dead-lettered it
