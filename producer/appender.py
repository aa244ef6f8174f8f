"""Coalescing of concurrent appends into Redis pipelines (DESIGN §9).

One ``await`` per request costs ~150–250 µs of Python per Redis call; batching the appends of
concurrent requests into one Redis call recovers most of the HTTP rate. Requests enqueue groups
of ``(call, future)`` pairs (one per :meth:`Appender.append`, all the orders of one
:meth:`Appender.append_many`); ``pipelines`` tasks (4) drain the queue, each taking whole groups
up to its share of the queue (below; a larger group goes alone) and sending them as **one** ``EVALSHA``
of the append script (:mod:`streamcore.streams`), which appends the orders one after another on
the server, each with its idempotency check, and answers one item per order. Each request gets
its own reply or its own error back: one order's error (a ``WRONGTYPE`` idempotency key) does not
fail the others, which the script still appends; an error about the server (``READONLY``,
``OOM``: refused at the first write, so nothing was appended) fails the whole batch, as does a
lost connection (after which some of its appends may have happened: clients retry with their
``Idempotency-Key``).

One script call per batch instead of one per order (a pipeline of ``EVALSHA``, until issue 12)
saves Redis the command and script-call overhead of each order, and this process a reply to read
and dispatch per order (bench/README.md has the figures).

Several pipelines in flight (4) let Redis run one batch's scripts while this process parses the
next requests and answers the previous batch (with one, each side waited for the other: measured
~25 % of the producer's CPU idle under load). What is queued is **shared among the idle
pipelines** (``ceil(queued / idle pipelines)`` appends each, at least ``min_batch``): requests
arrive in bursts (every client answered by one batch sends its next request at about the same
time), and a burst sent as one batch left this process idle until Redis had run all of it
(~10 % of its time under wrk's 64 connections), then answered every request at once. Split, the
first part's answers go out while Redis runs the rest (issue 12; bench/README.md). Order: the
appends of one group are sent in one pipeline, in order, so a batch request's entries are in the
stream in request order; appends of different concurrent requests carry no order, as before.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamcore.connection import is_cluster
from streamcore.keys import Keys, partition_of
from streamcore.streams import ORDER_INDEX_TTL_S, AppendResult, Scripts, append_head, append_part, append_result

logger = logging.getLogger(__name__)


#: Batches one appender keeps in flight at most (each on its own pooled connection).
PIPELINES = 4

#: Batches in flight over all partitions' appenders at most, when that caps :data:`PIPELINES`
#: (:class:`RoutedAppender`): half of the default connection pool (64,
#: :func:`streamcore.connection.create_redis`), so that with many partitions the ingest path
#: leaves connections to the read routes and the group checks. Past 32 partitions each still has
#: one pipeline, so up to one connection per partition is in use while appends are in flight;
#: a pipeline takes its connection from the pool for one batch and gives it back, so an idle
#: partition holds none.
PIPELINE_BUDGET = 32

#: Sends of one batch at most: a MOVED (the slot's new owner) can be followed by a NOSCRIPT (a
#: promoted replica whose script cache is empty), each answered by sending the batch again.
_ATTEMPTS = 3


class Unencodable(ValueError):
    """An append holds text that cannot be encoded as UTF-8 (a lone surrogate); nothing was sent."""


class NotReplicated(RedisError):
    """Fewer replicas than required confirmed an append batch within the WAIT timeout
    (REDIS_WAIT_REPLICAS, REDIS_WAIT_TIMEOUT_MS). The append did happen on the primary and may
    survive, or be lost with it in a failover: the client retries with its Idempotency-Key.

    Attributes:
        confirmed: replicas that confirmed (WAIT's reply).
        required: REDIS_WAIT_REPLICAS.
    """

    def __init__(self, confirmed: int, required: int) -> None:
        super().__init__(f"{confirmed} of {required} replicas confirmed the append")
        self.confirmed = confirmed
        self.required = required


@dataclass(slots=True)
class _Pending:
    """One queued append: its part of the append script's keys and arguments
    (:func:`streamcore.streams.append_part`, encoded to UTF-8), the body hash compared on a
    replay, and the caller's future."""

    keys: list[bytes]
    args: list[bytes]
    body_hash: str
    future: asyncio.Future


@dataclass(slots=True)
class AppendCall:
    """The arguments of one :meth:`Appender.append`, for :meth:`Appender.append_many` (not
    frozen: POST /orders/batch builds one per order, and a frozen dataclass builds at a third of
    the speed).

    Attributes:
        fields: from :func:`streamcore.envelope.encode` (or :func:`producer.encoding.order_fields`, the same).
        order_id: the orderId as text.
        idempotency_key: replay key (see :func:`streamcore.streams.append_order`), or None.
        body_hash: canonical body digest compared on replay.
    """

    fields: dict[str, str]
    order_id: str
    idempotency_key: str | None = None
    body_hash: str = ""


class Appender:
    """Batches the appends of concurrent callers into one append-script call per batch.

    Args:
        r: the client (the appender does not own it).
        keys: key names of the stream.
        scripts: the registered scripts of ``r``.
        max_batch: most appends per batch (one script call), unless one group (one
            :meth:`append_many`) is larger: it is sent alone, whole, to keep its order.
        min_batch: the smallest share when the queue is split among idle pipelines (a smaller
            batch costs a round trip for little).
        pipelines: most batches in flight at once (each on its own pooled connection).
        idempotency_ttl_s: TTL of idempotency records, seconds.
        order_index_ttl_s: TTL of the orderId → entry ID index, seconds.
        on_batch: called with the number of appends of every batch sent (a metric).
        wait_replicas: replicas that must confirm each batch (REDIS_WAIT_REPLICAS): ``WAIT
            wait_replicas wait_timeout_ms`` is sent after the batch on the same connection, and
            a batch confirmed by fewer replicas fails each of its appends with
            :class:`NotReplicated`. 0: no WAIT.
        wait_timeout_ms: WAIT's timeout, ms (REDIS_WAIT_TIMEOUT_MS); must be below the
            client's socket timeout, in which the batch's replies are read.
    """

    def __init__(
        self,
        r: aioredis.Redis,
        keys: Keys,
        scripts: Scripts,
        *,
        max_batch: int = 128,
        min_batch: int = 8,
        pipelines: int = PIPELINES,
        idempotency_ttl_s: int = 86400,
        order_index_ttl_s: int = ORDER_INDEX_TTL_S,
        on_batch: Callable[[int], None] | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self._r = r
        self._wait_replicas = wait_replicas
        self._wait = (hiredis.pack_command((b"WAIT", wait_replicas, wait_timeout_ms)) if wait_replicas else b"")
        self._keys = keys
        head_keys, head_args = append_head(keys, idempotency_ttl_s=idempotency_ttl_s, order_index_ttl_s=order_index_ttl_s)
        self._head_keys = [k.encode() for k in head_keys]
        self._head_args = [a.encode() for a in head_args]
        self._scripts = scripts
        self._max_batch = max_batch
        self._min_batch = min_batch
        self._on_batch = on_batch
        self._pipelines = pipelines
        self._queue: deque[list[_Pending]] = deque()
        self._queued = 0  # appends in _queue
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._in_flight: list[list[_Pending]] = []
        self._script_loaded = False
        self._cluster = is_cluster(r)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pipelines(self) -> int:
        """Most batches this appender keeps in flight at once."""
        return self._pipelines

    def start(self) -> None:
        """Start the flushing tasks (call from a running loop)."""
        self._loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._run(), name=f"producer-appender-{i}") for i in range(self._pipelines)]

    def append(
        self,
        fields: dict[str, str],
        order_id: str,
        *,
        idempotency_key: str | None = None,
        body_hash: str = "",
    ) -> asyncio.Future[AppendResult]:
        """Append one order (XADD via the append script) in the next batch.

        Not a coroutine: it queues the append at once and returns the future of its outcome,
        which the caller awaits (on the ingest path each coroutine layer between the request
        handler and this future cost about a microsecond per request). Errors are set on the
        future, never raised here, so ``await appender.append(...)`` and ``gather`` over several
        calls behave as for a coroutine. Cancelling the future (or the task awaiting it) drops
        the outcome; the append may still happen.

        Args:
            fields: from :func:`streamcore.envelope.encode`.
            order_id: the orderId as text.
            idempotency_key: replay key (see :func:`streamcore.streams.append_order`).
            body_hash: canonical body digest compared on replay.

        Returns:
            A future of the script's outcome (new entry, or the replayed one). Awaiting it raises
            Unencodable (a key or value is not encodable as UTF-8: only this call fails),
            redis.exceptions.ConnectionError (the appender is not running) or another
            redis.exceptions.RedisError (this append, or its whole batch, failed).
        """
        try:
            self._check_running()
            pending = self._pending(fields, order_id, idempotency_key, body_hash)
        except (Unencodable, RedisConnectionError) as exc:
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        self._queue.append([pending])
        self._queued += 1
        self._wake.set()
        return pending.future

    async def append_many(self, calls: list[AppendCall]) -> list[AppendResult | Exception]:
        """Append several orders, queued together (in this order) for the next batches.

        What ``asyncio.gather(*(append(...) for ...), return_exceptions=True)`` gives, without a
        task per order: one outcome per call, in call order, each a result or that call's own
        error (:class:`Unencodable` for a call that cannot be encoded, which is not sent while
        the others are; a ``RedisError`` for a failed append or batch).

        Raises:
            redis.exceptions.ConnectionError: the appender is not running (nothing was queued).
        """
        self._check_running()
        outcomes: list[AppendResult | Exception | None] = [None] * len(calls)
        group: list[_Pending] = []
        indexes: list[int] = []
        for index, call in enumerate(calls):
            try:
                group.append(self._pending(call.fields, call.order_id, call.idempotency_key, call.body_hash))
            except Unencodable as exc:
                outcomes[index] = exc
                continue
            indexes.append(index)
        if group:
            self._queue.append(group)
            self._queued += len(group)
            self._wake.set()
            # A group is never split, and its futures are settled in one synchronous loop, in
            # order (_settle, _flush): once the last one is done, all are. So the group waits on
            # that one future, not on a gather of all of them (which scheduled a callback per
            # order: ~2 us an order of a 100-order POST /orders/batch, issue 12).
            last = group[-1].future
            try:
                await asyncio.wait((last,))
            except asyncio.CancelledError:
                for item in group:
                    item.future.cancel()
                raise
            for index, item in zip(indexes, group, strict=True):
                future = item.future
                outcomes[index] = future.exception() or future.result()
        return outcomes  # type: ignore[return-value]  # every slot is filled above

    def _check_running(self) -> None:
        if self._closing or not self._tasks:
            raise RedisConnectionError("the appender is not running")

    def _pending(self, fields: dict[str, str], order_id: str, idempotency_key: str | None, body_hash: str) -> _Pending:
        """Build the queued form of one append: its part of the script's keys and arguments,
        encoded to UTF-8 here, and a future for its outcome.

        Raises:
            Unencodable: a key or value cannot be encoded as UTF-8.
        """
        order_keys, order_args = append_part(self._keys, fields, order_id, idempotency_key=idempotency_key,
                                             body_hash=body_hash)
        # Encode here, per caller: a batch encoded as a whole when it is sent failed every
        # append batched with one value it could not encode (a lone surrogate).
        try:
            encoded_keys = [k.encode() for k in order_keys]
            encoded_args = [a.encode() for a in order_args]
        except UnicodeEncodeError as exc:
            raise Unencodable(f"this order cannot be sent to Redis: {exc.reason} at position {exc.start}") from None
        return _Pending(encoded_keys, encoded_args, body_hash, self._loop.create_future())  # type: ignore[union-attr]  # set by start()

    def _command(self, batch: list[_Pending]) -> tuple:
        """The ``EVALSHA`` of the append script for ``batch``: the head keys and arguments, then
        every order's part, in batch order."""
        keys = self._head_keys.copy()
        args = self._head_args.copy()
        for item in batch:
            keys += item.keys
            args += item.args
        return (b"EVALSHA", self._scripts.append.sha, len(keys), *keys, *args)

    async def _run(self) -> None:
        """One flushing task: send batches from the queue until it is empty and closing."""
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            batch = self._take()
            self._in_flight.append(batch)
            try:
                await self._flush(batch)
            finally:
                self._in_flight = [b for b in self._in_flight if b is not batch]

    def _take(self) -> list[_Pending]:
        """The next batch: whole groups from the queue's head, this pipeline's share of the queue
        (``ceil(queued / idle pipelines)``, this one included, at least ``min_batch``, at most
        ``max_batch`` appends), unless the first group alone is larger (a group is never split,
        see the module docstring)."""
        idle = self._pipelines - len(self._in_flight)  # this task's batch is not in flight yet
        limit = min(self._max_batch, max(self._min_batch, -(-self._queued // max(idle, 1))))
        batch = self._queue.popleft()
        while self._queue and len(batch) + len(self._queue[0]) <= limit:
            batch = batch + self._queue.popleft()
        self._queued -= len(batch)
        return batch

    async def _flush(self, batch: list[_Pending]) -> None:
        """Send ``batch`` and settle each future with its own outcome (see the module docstring)."""
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                if not self._script_loaded:
                    await self._load_script()
                replies = await self._exchange(batch)
            except Exception as exc:  # the whole batch failed (connection lost, timeout)
                logger.warning("append batch of %d failed: %s", len(batch), exc)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return
            reply = replies[0]
            if isinstance(reply, (NoScriptError, MovedError)) and attempt < _ATTEMPTS:
                # Redis lost the script (SCRIPT FLUSH, a restart, a failover), or (a cluster
                # batch sent with its WAIT, see _exchange) the slot moved to another node: the
                # script did not run, so sending the batch again cannot append twice.
                if isinstance(reply, MovedError):
                    self._r.mark_stale()  # only a cluster client's replies can be MOVED
                    logger.warning("slot moved under an append batch; resending %d appends to its new owner", len(batch))
                else:
                    self._script_loaded = False
                    logger.warning("script cache flushed under an append batch; resending %d appends", len(batch))
                batch = [item for item in batch if not item.future.done()]  # not for cancelled callers
                if not batch:
                    return
                continue
            shortfall = self._shortfall(replies[1]) if self._wait else None
            self._settle(batch, reply, shortfall)
            return

    @staticmethod
    def _settle(batch: list[_Pending], reply: object, shortfall: Exception | None) -> None:
        """Give each caller of ``batch`` its outcome: its item of the script's ``reply`` (a
        result, or its own error), or the batch's error when the script failed as a whole
        (``reply`` is an exception) or fewer replicas than required confirmed it (``shortfall``).
        Callers that were cancelled are skipped."""
        if isinstance(reply, Exception) or shortfall is not None:
            error = reply if isinstance(reply, Exception) else shortfall
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)  # type: ignore[arg-type]  # an exception here
            return
        for item, outcome in zip(batch, reply, strict=True):  # type: ignore[call-overload]  # a list here
            if item.future.done():  # the caller was cancelled
                continue
            if isinstance(outcome, Exception):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(append_result(outcome, item.body_hash))

    def _shortfall(self, reply: object) -> Exception | None:
        """WAIT's reply as the error of the batch's appends, or None when enough replicas
        confirmed. An error reply (WAIT refused) fails them as it is."""
        if isinstance(reply, Exception):
            return reply
        confirmed = int(reply)  # type: ignore[call-overload]  # WAIT answers an integer
        if confirmed >= self._wait_replicas:
            return None
        logger.warning("append batch confirmed by %d of %d replicas", confirmed, self._wait_replicas)
        return NotReplicated(confirmed, self._wait_replicas)

    async def _load_script(self) -> None:
        """Make sure Redis has the append script: redis-py's pipeline check (``SCRIPT EXISTS``,
        then ``SCRIPT LOAD`` when missing). Done before the first batch and again after a
        ``NOSCRIPT`` reply, not before every batch: that was one more round trip per batch.

        Raises:
            redis.exceptions.RedisError: Redis did not answer or refused.
        """
        if self._cluster:  # SCRIPT LOAD goes to every primary
            await self._r.script_load(self._scripts.append.script)
            self._script_loaded = True
            return
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.scripts.add(self._scripts.append)
            await pipe.load_scripts()
        self._script_loaded = True

    async def _exchange(self, batch: list[_Pending]) -> list:
        """Send the batch's script call in one write on a pooled connection and read its reply:
        one item per append (a result, or that append's error reply as an exception object, not
        raised), or the script's error as an exception object when it failed as a whole
        (``NOSCRIPT``, ``MOVED``, ``OOM``); with REDIS_WAIT_REPLICAS, ``WAIT``'s reply after it
        (it waits for this connection's writes, so for the whole batch).

        The call is packed with hiredis in one go (redis-py would pack it argument by argument
        and run its response callbacks). As for a pipeline, a connection error is retried with
        the client's retry policy on a fresh connection (the whole batch again: on a retry some
        of its appends may already have been made, which an ``Idempotency-Key`` replays; see
        :func:`streamcore.connection.create_redis`).

        With a Redis Cluster client the call goes through redis-py's cluster pipeline instead
        (every key of one appender is in one slot: one node), which follows ``MOVED``/``ASK``
        after a failover or a resharding and retries on the new owner. With REDIS_WAIT_REPLICAS
        too, the call and its ``WAIT`` go in one write on one connection to the primary of the
        partition's slot (:meth:`streamcore.connection._Cluster.exchange_with_primary`), as for
        a standalone Redis: a pipeline would follow a redirection to another node on another
        connection, which that ``WAIT`` would not cover. A ``MOVED`` reply (the slot moved: a
        failover, a resharding) is sent again by :meth:`_flush` after the slot map is re-read;
        an ``ASK`` or ``TRYAGAIN`` reply (a slot half migrated) fails the batch (503; the
        clients retry).

        Returns:
            ``[script reply]`` or ``[script reply, WAIT reply]``.

        Raises:
            redis.exceptions.ConnectionError, redis.exceptions.TimeoutError: the batch failed.
        """
        command = self._command(batch)
        if self._cluster and not self._wait:
            async with self._r.pipeline(transaction=False) as pipe:
                # redis-py's cluster client routes by the command name as text (and the first key).
                pipe.execute_command("EVALSHA", *command[1:])
                return await pipe.execute(raise_on_error=False)
        packed = hiredis.pack_command(command) + self._wait
        count = 2 if self._wait else 1
        if self._cluster:
            return await self._r.exchange_with_primary(
                self._keys.stream, lambda conn: self._send_and_read(conn, packed, count))
        pool = self._r.connection_pool
        conn = await pool.get_connection()
        try:
            return await conn.retry.call_with_retry(lambda: self._send_and_read(conn, packed, count), lambda _error: conn.disconnect())
        finally:
            await pool.release(conn)

    @staticmethod
    async def _send_and_read(conn: Connection, packed: bytes, count: int) -> list:
        """Write ``packed`` and read ``count`` replies within one socket timeout for the batch
        (``conn.socket_timeout``, one timer for all of them).

        Raises:
            redis.exceptions.TimeoutError: the replies did not all come within the timeout.
            redis.exceptions.ConnectionError: the connection failed.
        """
        if not conn.is_connected:
            # After a failed attempt the retry policy disconnected it: connect() as the pool does,
            # where a Sentinel-managed connection asks the Sentinels for the primary's address
            # (send_packed_command would reconnect to the address it had, a demoted primary).
            await conn.connect()
        await conn.send_packed_command(packed)
        replies: list = []
        try:
            async with asyncio.timeout(conn.socket_timeout):
                for _ in range(count):
                    try:
                        replies.append(await conn.read_response(timeout=math.inf))
                    except ResponseError as exc:
                        replies.append(exc)
        except TimeoutError:
            await conn.disconnect(nowait=True)
            raise RedisTimeoutError(f"Timeout reading the {count} replies of an append batch") from None
        except BaseException:
            # Cancelled or failed mid-batch: the rest of the replies are still on the socket, so
            # the connection must not go back to the pool as it is.
            await conn.disconnect(nowait=True)
            raise
        return replies

    async def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (within ``timeout_s`` seconds), then stop; later calls raise.

        Callers still waiting after the deadline get ``redis.exceptions.ConnectionError``.
        """
        self._closing = True
        self._wake.set()
        if self._tasks:
            running = asyncio.gather(*self._tasks)
            try:
                await asyncio.wait_for(asyncio.shield(running), timeout_s)
            except TimeoutError:
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(running, return_exceptions=True)
        for item in [*(p for batch in self._in_flight for p in batch), *(p for group in self._queue for p in group)]:
            if not item.future.done():
                item.future.set_exception(RedisConnectionError("the producer is shutting down"))
        self._queue.clear()
        self._queued = 0


class RoutedAppender:
    """One :class:`Appender` per partition; each order goes to partition
    :func:`streamcore.keys.partition_of` of its orderId (``STREAM_PARTITIONS``). Same interface as
    :class:`Appender`; with one partition it is that appender's behaviour exactly.

    Args:
        r: the client (standalone or cluster; not owned).
        parts: the key names of every partition, in index order.
        scripts: the registered scripts of ``r``.
        **options: passed to every :class:`Appender`. Without ``pipelines``, each appender gets
            :data:`PIPELINES`, fewer when the partitions would together pass
            :data:`PIPELINE_BUDGET` (at least 1): 4 for up to 8 partitions, 2 for 16, 1 from 32.
    """

    def __init__(self, r: aioredis.Redis, parts: tuple[Keys, ...] | list[Keys], scripts: Scripts, **options) -> None:
        self.parts = tuple(parts)
        options.setdefault("pipelines", max(1, min(PIPELINES, PIPELINE_BUDGET // len(self.parts))))
        self.appenders = [Appender(r, keys, scripts, **options) for keys in self.parts]

    def start(self) -> None:
        """Start every partition's flushing tasks (call from a running loop)."""
        for appender in self.appenders:
            appender.start()

    def appender_for(self, order_id: str) -> Appender:
        """The appender of ``order_id``'s partition."""
        return self.appenders[partition_of(order_id, len(self.appenders))]

    def append(self, fields: dict[str, str], order_id: str, *, idempotency_key: str | None = None,
               body_hash: str = "") -> asyncio.Future[AppendResult]:
        """:meth:`Appender.append` on the order's partition (the same future, the same errors)."""
        return self.appender_for(order_id).append(fields, order_id, idempotency_key=idempotency_key, body_hash=body_hash)

    async def append_many(self, calls: list[AppendCall]) -> list[AppendResult | Exception]:
        """:meth:`Appender.append_many` split by partition: the calls of one partition are queued
        together in call order (so one order's entries keep their order); outcomes come back in
        call order."""
        if len(self.appenders) == 1:
            return await self.appenders[0].append_many(calls)
        by_part: dict[int, list[int]] = {}
        for index, call in enumerate(calls):
            by_part.setdefault(partition_of(call.order_id, len(self.appenders)), []).append(index)
        outcomes: list[AppendResult | Exception | None] = [None] * len(calls)
        parts = list(by_part.items())
        results = await asyncio.gather(*(self.appenders[p].append_many([calls[i] for i in idx]) for p, idx in parts))
        for (_, idx), got in zip(parts, results, strict=True):
            for i, outcome in zip(idx, got, strict=True):
                outcomes[i] = outcome
        return outcomes  # type: ignore[return-value]

    async def close(self, timeout_s: float = 5.0) -> None:
        """:meth:`Appender.close` of every partition, at once."""
        await asyncio.gather(*(a.close(timeout_s) for a in self.appenders))
