"""The consumer-group worker loop.

Shape of one worker (one per pod, consumer name = pod name):

* **Start**: create the group (``XGROUP CREATE ... 0 MKSTREAM``, BUSYGROUP is fine) and the consumer
  (``XGROUP CREATECONSUMER``, so that XINFO CONSUMERS lists an idle pod too). Then the own
  PEL: entries already delivered ``MAX_DELIVERIES`` times are dead-lettered without another
  delivery (``XPENDING`` with the consumer filter), the rest are re-read with ID ``0`` (which
  counts a delivery) page by page and handled before any new entry (case C06).
* **Read loop**: ``XREADGROUP ... COUNT n BLOCK BLOCK_MS >`` where ``n`` is the free capacity,
  at most ``READ_COUNT``; a second read is in flight while the last one came back full (a
  backlog), so its reply is there when the handlers finish (:meth:`Worker._issue_reads`). At most
  ``max(READ_COUNT, CONCURRENCY) + 2 x READ_COUNT`` entries are held at once (with a batch
  handler ``max(READ_COUNT, CONCURRENCY x READ_COUNT) + 2 x READ_COUNT``): what the handlers can
  work on plus two reads. Never ``BLOCK 0``; the client's socket timeout is longer than BLOCK,
  so an empty read returns normally (C12). When idle that is one read per BLOCK interval (C22).
* **Handlers** run in *lanes*, at most ``CONCURRENCY`` tasks that each take queued entries one
  after another (a batch handler's lane takes up to ``READ_COUNT`` at once, one call), through
  :class:`streamcore.handling.EntryRunner`. Successes are acked in batches (one ``XACK`` for up to
  ``ACK_BATCH`` IDs, pipelined, at most ``ACK_FLUSH_MS`` after the handler finished) — never
  before the handler finished. Failures stay pending; on delivery ``MAX_DELIVERIES`` they are
  dead-lettered at once.
* **Timer** (independent of the read loop, so a blocked read or a busy worker never delays it):
  heartbeat key (``SET keys.heartbeat(name) PX 3*BLOCK_MS`` every BLOCK_MS/2, the liveness signal
  the reclaimer trusts, C04); lease renewal of held entries every ``CLAIM_IDLE_MS/3`` (owner-checked
  ``XCLAIM JUSTID``, C05); the claim pass every ``CLAIM_INTERVAL_MS`` (default
  ``max(1 s, CLAIM_IDLE_MS/4)``): :func:`streamcore.claiming.claim_due` with back-off by delivery
  count. A permanently failing pending entry therefore never stops new orders being read (C22).
* **Pause** (``POST /groups/{group}/pause`` sets ``keys.paused(group)``): the timer reads the key
  with each heartbeat (one pipeline, every BLOCK_MS/2); while it is set no new read and no claim
  pass start (what reads in flight deliver is handled and acked), ``/healthz`` counts ``paused``
  as progress, and the consumer reads again within BLOCK_MS/2 of the resume. No restart.
* **Errors**: NOGROUP (stream flushed, deleted, empty restart) recreates the group at ``0`` with
  capped, jittered back-off, counted in ``orderstream_nogroup_incidents_total`` and in the health
  details (C09, C10); transient Redis errors (unreachable, restarting, LOADING, BUSY; redis-py
  already retried each command on a fresh connection) back off and resume (C14), counted in
  ``orderstream_redis_errors_total{where}`` with ``orderstream_redis_up`` at 0 and the outage shown
  in ``/healthz`` while it lasts. An unexpected exception in the read loop is logged with its
  traceback and retried with back-off: no entry, however malformed, ends the process. Repeated
  errors are logged at most every 30 s.
* **Poison**: an entry that can never be processed (not UTF-8, no ``data``, not a JSON object) is
  dead-lettered at once with its reason by :class:`streamcore.handling.EntryRunner`.
* **Supervision**: the timer and the acker run under a :class:`streamcore.lifecycle.Supervisor`:
  if one raises it is logged with its traceback and restarted with back-off; ``/healthz`` fails
  when one keeps failing.
* **Shutdown** (``stop`` set): readiness goes false, a blocked read is cancelled (what it may have
  delivered stays in the PEL), no new read or claim starts. Every entry already read is still
  handled: within ``DRAIN_TIMEOUT_SECONDS`` the handlers finish (queued ones start as slots free
  up), heartbeat and lease renewal keep running, and the acks are flushed; then the process
  exits. Past the deadline the unfinished handlers are cancelled and their entries stay pending
  for reclaim. One log line says how many were finished and how many were left (C13, issue 9
  item 11). A second SIGTERM exits at once (:func:`streamcore.lifecycle.install_shutdown_handlers`).
  Last, a consumer whose PEL is empty deletes itself from the group (``XGROUP DELCONSUMER``,
  owner-checked in Lua: :func:`streamcore.claiming.leave_group`), so that after a scale-down or a
  rollout XINFO CONSUMERS lists only the running pods; one that still owns entries stays a member
  until the reclaimer has claimed them (issue 11 item 3).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from consumer.settings import ConsumerSettings
from streamcore.claiming import ClaimScripts, claim_due, dead_letter_pending, leave_group, renew_leases, scan_pending
from streamcore.connection import is_redis_fault, is_transient, retried_failures, server_info
from streamcore.envelope import Envelope
from streamcore.keys import Keys
from streamcore.handling import FAILED, GONE, OK, EntryRunner, HandlerContext, load_handler
from streamcore.lifecycle import RedisHealth, Supervisor
from streamcore.metrics import StreamMetrics, stream_metrics
from streamcore.pacing import Backoff, RateLimitedLog
from streamcore.streams import Scripts, ensure_group, is_nogroup

logger = logging.getLogger(__name__)

#: How the stop's log line tells the outcome of :meth:`Worker._leave_group`.
_LEAVE_SAID = {"left": "deleted its consumer from the group (PEL empty)",
               "pending": ("its consumer stays in the group: its PEL still holds entries (failed deliveries "
                           "waiting for their retry, or entries left above), which the next start or the "
                           "reclaimer takes up"),
               "not_found": "its consumer was not in the group",
               "error": "could not leave the group"}

COMPONENT = "consumer"


class Worker:
    """One consumer of the group; ``await worker.run(stop)`` until ``stop`` is set.

    Args:
        settings: the consumer settings.
        r: an asyncio client with ``decode_responses=True`` and a socket timeout longer than
            ``BLOCK_MS``; the caller owns and closes it.
        handler: the order handler; default: loaded from ``settings.handler``.
        registry: where the metrics live (a fresh one per worker in tests).
        keys: the partition this worker reads (default ``settings.keys``, the only one when
            ``STREAM_PARTITIONS`` is 1); see :class:`PartitionedWorker`.
    """

    def __init__(self, settings: ConsumerSettings, r: aioredis.Redis, *,
                 handler: Callable[[Envelope, HandlerContext], Awaitable[None]] | None = None,
                 registry: CollectorRegistry | None = None, metrics: StreamMetrics | None = None,
                 keys: Keys | None = None) -> None:
        self.settings = settings
        self.name = settings.consumer_name
        self.keys = keys if keys is not None else settings.keys
        self.r = r
        self.scripts = Scripts(r)
        self.claim_scripts = ClaimScripts(r)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = metrics or stream_metrics(self.registry)
        self.redis_health = RedisHealth(COMPONENT, self.metrics)
        self.runner = EntryRunner(r, self.keys, handler or load_handler(settings.handler), scripts=self.scripts,
                                  metrics=self.metrics, component=COMPONENT, max_deliveries=settings.max_deliveries,
                                  failure_rate=settings.failure_rate, processed_ttl_s=settings.processed_ttl_seconds,
                                  handler_timeout_s=settings.handler_timeout_seconds,
                                  delete_source=settings.dead_letter_xdel, redis_health=self.redis_health)
        self.supervisor = Supervisor(COMPONENT, self.metrics.task_restarts)
        #: Most entries held at once (read, not yet finished): two reads beyond what the lanes
        #: can work on, so the next XREADGROUPs are in flight while the last read is handled.
        per_lane = settings.read_count if self.runner.batch else 1
        self.capacity = max(settings.read_count, settings.concurrency * per_lane) + 2 * settings.read_count
        self.renew_interval_s = max(settings.claim_idle_ms / 3000.0, 0.05)
        self.claim_interval_s = (settings.claim_interval_ms / 1000.0 if settings.claim_interval_ms
                                 else max(1.0, settings.claim_idle_ms / 4000.0))
        self.heartbeat_interval_s = settings.block_ms / 2000.0
        #: Stall threshold of /healthz (s): several BLOCK intervals without a completed read.
        self.stall_after_s = 4 * settings.block_ms / 1000.0 + 1.0

        self.held: dict[str, float] = {}  # entry ID -> monotonic time of delivery or last lease renewal
        #: Own pending entries that failed and wait for their back-off (the claim pass retries them).
        self.backing_off: set[str] = set()
        self._acking: set[str] = set()  # IDs of the XACK in flight
        #: Set after a transient error: a reply may have been lost (see _recover_lost_replies).
        self._resync = False
        #: The client's retried failures when last looked at (see _note_hidden_retries).
        self._retries_seen = retried_failures(self.r)
        self.lost_lease: set[str] = set()
        #: Entries read and waiting for a lane: ``(entry ID, fields, delivery number)``.
        self._queue: deque[tuple[str, dict[str, str] | None, int]] = deque()
        #: The lane tasks (at most CONCURRENCY), and how many of them are not inside a handler call.
        self._lanes: set[asyncio.Task] = set()
        self._ready_lanes = 0
        self._freed = asyncio.Event()
        #: XREADGROUP calls in flight, oldest first, with the COUNT each asked for (see _issue_reads).
        self._reads: deque[tuple[asyncio.Future, int]] = deque()
        self._reserved = 0  # sum of those counts
        self._backlog = False  # the last read came back full
        #: True while the read loop waits for capacity: only then must a finished entry set _freed.
        self._capacity_wanted = False
        self._acks: list[str] = []
        self._ack_wanted = asyncio.Event()
        self._ack_full = asyncio.Event()
        self._stopping = False
        self._stop: asyncio.Event | None = None
        #: A future that completes when ``stop`` is set, for the whole run (see _until_stop).
        self._stopper: asyncio.Future | None = None
        self._group_ok = False
        #: True once the own PEL has been re-read at start; the claim pass waits for it (see _claim).
        self._own_pel_done = False
        #: The group's paused key as the timer last read it (``POST /groups/{group}/pause``), and
        #: an event set while the group is not paused (the read loop waits on it).
        self.paused = False
        self._unpaused = asyncio.Event()
        self._unpaused.set()

        # State shown by /healthz and /readyz.
        self.state = "starting"  # starting | reading | waiting | paused | backoff | draining | stopped
        self.last_progress = time.monotonic()
        self.reads = 0
        #: Entries whose handling ended (any outcome but cancelled), since start.
        self.finished = 0
        self.nogroup_incidents = 0
        self.last_error = ""
        #: Entries finished and left by the last drain (for the log line and tests).
        self.drained: tuple[int, int] = (0, 0)
        #: Outcome of leaving the group at the end of the last stop (``left``, ``pending``, ...).
        self.left_group = ""
        self._error_log = RateLimitedLog(logger, 30.0)
        self._nogroup_log = RateLimitedLog(logger, 30.0)

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Process orders until ``stop`` is set, then drain (see the module docstring).

        Never raises for Redis errors or malformed entries (they are retried with back-off or
        dead-lettered); returns after the drain, within ``DRAIN_TIMEOUT_SECONDS`` plus the time
        the last XACK takes (at most 2 s more).
        """
        logger.info("consumer %s starting on stream %s group %s", self.name, self.keys.stream, self.keys.group)
        self._stop = stop
        self._stopper = asyncio.ensure_future(stop.wait())
        self._stopper.add_done_callback(lambda _: self._freed.set())  # wakes a wait for capacity
        self.supervisor.start("timer", lambda: self._timer(stop))
        self.supervisor.start("acks", self._ack_loop)
        try:
            await self._read_loop(stop)
        finally:
            self._stopping = True
            self.state = "draining"
            deadline = time.monotonic() + self.settings.drain_timeout_seconds
            try:
                await self._take_up_cancelled_read(deadline)
                finished, left = await self._drain(deadline)
                await self.supervisor.stop("acks")  # its batch in flight, if any, is queued again
                unacked = await self._final_flush(max(deadline, time.monotonic() + 2.0))
            finally:
                await self.supervisor.stop()
                self._stopper.cancel()
                self._stopper = None
            self.drained = (finished, left)
            self.left_group = await self._leave_group()
            self.state = "stopped"
            logger.info("consumer %s stopped on %s: drained %d orders read before shutdown, left %d of them "
                        "unfinished for reclaim%s; %s", self.name, self.keys.stream, finished, left,
                        f", {unacked} processed but not acked" if unacked else "",
                        _LEAVE_SAID.get(self.left_group, self.left_group))

    async def _leave_group(self) -> str:
        """At the end of a clean stop, delete this consumer from the group when its PEL is empty
        (:func:`streamcore.claiming.leave_group`): a pod replaced by a scale-down or a rollout does
        not stay listed in XINFO CONSUMERS under a name no pod has. Returns the outcome, or
        ``error`` when Redis could not be asked (the reclaimer removes the consumer later)."""
        try:
            async with asyncio.timeout(2.0):
                return await leave_group(self.r, self.keys, self.name, scripts=self.claim_scripts)
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("could not leave the consumer group (%s); the reclaimer removes %s once it is idle",
                           f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, self.name)
            return "error"

    async def _take_up_cancelled_read(self, deadline: float) -> None:
        """Shutdown cancelled a blocked ``XREADGROUP``; if Redis had already delivered entries
        its reply is lost, but they are in our PEL: take them up so the drain handles them."""
        if not self._own_pel_done:
            return  # still re-reading the own PEL at start: the next start re-reads it anyway
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                await self._recover_lost_replies()
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("could not look for entries delivered while shutdown began (%s); they stay pending", exc)

    async def _drain(self, deadline: float) -> tuple[int, int]:
        """Let every entry already read finish by ``deadline`` (monotonic s); cancel the rest
        (they stay pending). Returns ``(finished, left)``."""
        read = len(self.held)
        if not read:
            return 0, 0
        finished_before = self.finished
        logger.info("draining %d orders read before shutdown (deadline %.1fs)", read,
                    max(deadline - time.monotonic(), 0.0))
        if self._queue and not self._lanes:
            self._start_lane()
        while self._lanes and time.monotonic() < deadline:
            await asyncio.wait(set(self._lanes), timeout=max(deadline - time.monotonic(), 0.0))
        if self._lanes:
            self._queue.clear()  # not started: they stay pending
            lanes = set(self._lanes)
            for lane in lanes:
                lane.cancel()
            # Bounded: a handler that swallows cancellation must not keep the process alive.
            await asyncio.wait(lanes, timeout=1.0)
        # Entries cancelled at the deadline leave ``held`` too (they stay pending): count the
        # finished ones, not the ones no longer held.
        done = self.finished - finished_before
        left = read - done
        if left:
            logger.warning("%d orders did not finish within the drain deadline; they stay pending for reclaim", left)
        return done, left

    async def _final_flush(self, deadline: float) -> int:
        """Send the queued acks, retrying until ``deadline`` (monotonic s). Returns how many stay
        unacked (they are redelivered later; the processed marker makes that harmless)."""
        backoff = Backoff(0.05, 0.5)
        while self._acks or self._ack_wanted.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await self._flush_acks()
            except (RedisError, OSError, TimeoutError) as exc:
                logger.warning("could not send the last acks yet: %s", exc)
                if deadline - time.monotonic() > 0:
                    await asyncio.sleep(min(backoff.next_delay(), max(deadline - time.monotonic(), 0.0)))
        if self._acks:
            logger.error("%d processed orders could not be acked before exit; they stay pending and will be "
                         "redelivered (the processed marker makes that harmless)", len(self._acks))
        return len(self._acks)

    # ------------------------------------------------------------------ health

    def live(self) -> tuple[bool, dict]:
        """Liveness: the read loop made progress within ``stall_after_s`` (waiting for free
        capacity while handlers run counts as progress; a Redis outage longer than that does
        not, C14), and no supervised background task keeps failing."""
        age = time.monotonic() - self.last_progress
        ok = self.state in ("starting", "waiting", "paused", "draining", "stopped") or age < self.stall_after_s
        tasks_ok, task_details = self.supervisor.healthy()
        return ok and tasks_ok, {**self.details(age), **task_details}

    def ready(self) -> tuple[bool, dict]:
        """Readiness: not shutting down, and the group is usable."""
        stopping = self._stopping or (self._stop is not None and self._stop.is_set())
        ok = not stopping and self._group_ok and self.state in ("reading", "waiting", "paused")
        return ok, self.details(time.monotonic() - self.last_progress)

    def details(self, age: float) -> dict:
        return {"consumer": self.name, "state": self.state, "seconds_since_progress": round(age, 3),
                "reads": self.reads, "in_flight": len(self.held), "nogroup_incidents": self.nogroup_incidents,
                **self.redis_health.details(), "last_error": self.last_error}

    # ------------------------------------------------------------------ reading

    async def _read_loop(self, stop: asyncio.Event) -> None:
        backoff = Backoff(0.05, 5.0)
        own_pel_done = False
        checked_server = False
        try:
            await self._read_until(stop, backoff, own_pel_done, checked_server)
        finally:
            await self._settle_reads()

    async def _read_until(self, stop: asyncio.Event, backoff: Backoff, own_pel_done: bool, checked_server: bool) -> None:
        while not stop.is_set():
            try:
                if not checked_server:
                    await server_info(self.r)
                    # Paused before we started: known before the own PEL is re-read (the timer's
                    # first heartbeat may come after it).
                    self._set_paused(bool(await self.r.exists(self.keys.paused(self.keys.group))))
                    checked_server = True
                if self.paused and not self._reads:
                    # Nothing is read or re-read while paused, the own PEL included.
                    if not await self._wait_unpaused(stop):
                        break
                    continue
                if not self._group_ok:
                    await ensure_group(self.r, self.keys, "0")
                    # Listed in XINFO CONSUMERS from the start, not from its first entry (Redis
                    # 7.0 adds a consumer on a read only when that read delivers something).
                    await self.r.xgroup_createconsumer(self.keys.stream, self.keys.group, self.name)
                    self._group_ok = True
                if not own_pel_done:
                    await self._read_own_pel(stop)
                    if stop.is_set():
                        # Stopped part-way: what was dispatched is drained, the rest of the own
                        # PEL stays pending for the next start (not taken up as "lost replies").
                        break
                    own_pel_done = self._own_pel_done = True
                    self._resync = False
                if self._resync and not self._reads:
                    await self._recover_lost_replies()
                    self._resync = False
                if not self._reads and not await self._wait_capacity(stop):
                    break
                self.state = "reading"
                if not self.paused:  # paused: only the reads already in flight are taken
                    self._issue_reads()
                head, count = self._reads[0]
                reply = await self._until_stop(head)
                if reply is _STOPPED:
                    break
                self._reads.popleft()
                self._reserved -= count
                self.reads += 1
                self._note_hidden_retries()
                self.last_progress = time.monotonic()
                self.redis_health.ok()
                backoff.reset()
                got = 0
                for _stream, entries in reply or ():
                    got += len(entries)
                    for entry_id, fields in entries:
                        self._dispatch(entry_id, fields, 1)
                self._backlog = got >= count
            except Exception as exc:
                await self._settle_reads()
                if isinstance(exc, OSError) or is_redis_fault(exc):
                    await self._on_error(exc, backoff, stop)
                    continue
                # A bug or data we did not foresee: never a crash loop.
                self.state = "backoff"
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._error_log.log(logging.ERROR, "unexpected error in the read loop, retrying with back-off: %s",
                                    self.last_error)
                logger.debug("read loop error", exc_info=True)
                await backoff.sleep(stop)

    def _issue_reads(self) -> None:
        """Keep one ``XREADGROUP ... >`` in flight, and a second one while the last read came back
        full (a backlog), each for at most ``READ_COUNT`` entries and never more than the free
        capacity (``held`` plus what the reads in flight may deliver stays within ``capacity``).

        With one read at a time the consumer sat idle for the round trip after every read (a
        quarter of its time with a no-op handler); the second read's reply is already there when
        the lanes finish the first (bench/README.md). An idle consumer has one blocking read, as
        before (C22).
        """
        depth = 2 if self._backlog else 1
        while len(self._reads) < depth:
            count = min(self.settings.read_count, self.capacity - len(self.held) - self._reserved)
            if count <= 0:
                return
            read = asyncio.ensure_future(self.r.xreadgroup(self.keys.group, self.name, {self.keys.stream: ">"},
                                                           count=count, block=self.settings.block_ms))
            self._reads.append((read, count))
            self._reserved += count

    async def _settle_reads(self) -> None:
        """After an error, and when the read loop ends: cancel the reads still in flight, and
        dispatch what a finished one delivered (its entries are in our PEL). A read cancelled
        before its reply may have delivered entries whose reply is lost: ``_resync`` (or the
        stop's take-up) finds them in our PEL."""
        reads, self._reads = self._reads, deque()
        self._reserved = 0
        self._backlog = False
        if not reads:
            return
        for read, _ in reads:
            if not read.done():
                read.cancel()
                self._resync = True
        await asyncio.gather(*(read for read, _ in reads), return_exceptions=True)
        for read, _ in reads:
            if read.cancelled() or read.exception() is not None:
                continue
            for _stream, entries in read.result() or ():
                for entry_id, fields in entries:
                    self._dispatch(entry_id, fields, 1)

    async def _on_error(self, exc: BaseException, backoff: Backoff, stop: asyncio.Event) -> None:
        self.state = "backoff"
        self.last_error = f"{type(exc).__name__}: {exc}"
        if is_transient(exc) or isinstance(exc, OSError):
            self.redis_health.failed("read", exc)
            self._resync = True
        if group_lost(exc):
            self._group_ok = False
            self.nogroup_incidents += 1
            self.metrics.nogroup.labels(COMPONENT).inc()
            self._nogroup_log.log(logging.ERROR, "consumer group %s on %s is missing (stream flushed, deleted or "
                                 "evicted: %s); recreating it at 0 (incident %d)", self.keys.group, self.keys.stream,
                                 self.last_error, self.nogroup_incidents)
        else:
            self._error_log.log(logging.ERROR, "redis error in the read loop, retrying with back-off: %s", self.last_error)
        await backoff.sleep(stop)

    def _note_hidden_retries(self) -> None:
        """Set ``_resync`` when redis-py retried any command of our client since the last look
        (:class:`streamcore.connection.CountingRetry`): a read or a claim it retried after a
        broken connection succeeded without an error reaching us, yet its first attempt may have
        delivered or claimed entries whose reply was lost. Looking at the own PEL when nothing
        was lost costs one XPENDING."""
        seen = retried_failures(self.r)
        if seen != self._retries_seen:
            self._retries_seen = seen
            self._resync = True

    async def _recover_lost_replies(self) -> None:
        """After a connection broke, take up own pending entries whose delivery reply was lost.

        When Redis executed an ``XREADGROUP`` (or an ``XCLAIM``) but the connection broke before
        the reply arrived (Redis killed or restarted with AOF), the entries are in our PEL with
        a delivery counted, yet no handler has them. Waiting for the claim pass would add a
        second delivery (and ``CLAIM_IDLE_MS`` of delay) for a fault that was not the order's.
        So: own PEL rows (``XPENDING`` consumer filter) that we neither hold, nor wait to retry
        (``backing_off``), nor are acknowledging, are read with ``XRANGE id id`` (no delivery
        counted) and handled under their current delivery count.
        """
        busy = set(self.held) | self.backing_off | set(self._acks) | self._acking
        rows = [row for row in await scan_pending(self.r, self.keys, consumer=self.name, limit=100_000)
                if row.entry_id not in busy]
        if not rows:
            return
        async with self.r.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.xrange(self.keys.stream, row.entry_id, row.entry_id)
            found = await pipe.execute()
        busy = set(self.held) | self.backing_off | set(self._acks) | self._acking  # changed while we read
        taken = 0
        for row, entries in zip(rows, found):
            if row.entry_id in busy:
                continue
            self._dispatch(row.entry_id, entries[0][1] if entries else None, row.deliveries)
            taken += 1
        if taken:
            logger.warning("took up %d own pending entries whose delivery reply was lost when the connection broke",
                           taken)

    async def _read_own_pel(self, stop: asyncio.Event) -> None:
        """Dead-letter own entries already at the limit, then re-read the own PEL with ID ``0``."""
        counts: dict[str, int] = {}
        for row in await scan_pending(self.r, self.keys, consumer=self.name, limit=100_000):
            if row.deliveries >= self.settings.max_deliveries:
                res = await dead_letter_pending(self.r, self.keys, row.entry_id, scripts=self.scripts, consumer=self.name,
                                        deliveries=row.deliveries,
                                        error=f"delivered {row.deliveries} times without success (the worker "
                                              f"restarted while handling it)",
                                        delete_source=self.settings.dead_letter_xdel)
                if res.status == "dead_lettered":
                    self.metrics.dead_lettered.labels(COMPONENT).inc()
                    logger.error("entry %s reached %d deliveries; dead-lettered", row.entry_id, row.deliveries)
                elif res.status == "gone":
                    self.metrics.gone.labels(COMPONENT).inc()
                    logger.warning("entry %s was pending but its data is gone; acked", row.entry_id)
            else:
                counts[row.entry_id] = row.deliveries
        if counts:
            logger.info("re-reading %d entries of my own PEL before new ones", len(counts))
        start = "0"
        while counts and not stop.is_set():
            if not await self._wait_capacity(stop):
                return
            count = min(self.settings.read_count, self.capacity - len(self.held))
            reply = await self.r.xreadgroup(self.keys.group, self.name, {self.keys.stream: start}, count=count)
            entries = reply[0][1] if reply else []
            if not entries:
                return
            for entry_id, fields in entries:
                # Reading with ID 0 counts a delivery, except for entries whose data is gone.
                # Only entries of the snapshot: anything else in our PEL now was claimed meanwhile
                # and is handled by that path, with its true delivery count.
                if entry_id in counts:
                    self._dispatch(entry_id, fields, counts[entry_id] + 1)
            start = entries[-1][0]
            self.last_progress = time.monotonic()

    async def _wait_unpaused(self, stop: asyncio.Event) -> bool:
        """While the group is paused: issue no read (what was read is still handled and acked),
        until the timer sees the paused key gone; False if ``stop`` was set meanwhile."""
        self.state = "paused"
        logger.info("group %s is paused: %s reads no more until it is resumed", self.keys.group, self.name)
        resumed = asyncio.ensure_future(self._unpaused.wait())
        try:
            await asyncio.wait({resumed, self._stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            resumed.cancel()
        if stop.is_set():
            return False
        logger.info("group %s resumed: %s reads again", self.keys.group, self.name)
        self.last_progress = time.monotonic()
        return True

    def _set_paused(self, paused: bool) -> None:
        self.paused = paused
        if paused:
            self._unpaused.clear()
        else:
            self._unpaused.set()

    async def _wait_capacity(self, stop: asyncio.Event) -> bool:
        """Wait until fewer than ``capacity`` entries are held; False if ``stop`` was set meanwhile."""
        while len(self.held) >= self.capacity and not stop.is_set():
            self.state = "waiting"
            self._freed.clear()
            self._capacity_wanted = True
            try:
                await self._freed.wait()  # set by a finished entry, or by stop (see run)
            finally:
                self._capacity_wanted = False
        return not stop.is_set()

    async def _until_stop(self, aw: Awaitable):
        """Await ``aw`` unless the run's ``stop`` is set first: then cancel it and return ``_STOPPED``.

        Waits on the run's long-lived waiter on ``stop`` (one per run, not one per read)."""
        task = asyncio.ensure_future(aw)
        await asyncio.wait({task, self._stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return _STOPPED

    # ------------------------------------------------------------------ handling

    def _dispatch(self, entry_id: str, fields: dict[str, str] | None, deliveries: int) -> None:
        """Hold an entry and queue it for a lane; start a lane if none is free."""
        if entry_id in self.held:
            return
        self.backing_off.discard(entry_id)
        self.held[entry_id] = time.monotonic()
        self._queue.append((entry_id, fields, deliveries))
        if self._ready_lanes == 0 and len(self._lanes) < self.settings.concurrency:
            self._start_lane()

    def _start_lane(self) -> None:
        self._ready_lanes += 1
        lane = asyncio.create_task(self._lane())
        self._lanes.add(lane)
        lane.add_done_callback(self._lanes.discard)

    async def _lane(self) -> None:
        """Handle queued entries one after another until the queue is empty.

        At most ``CONCURRENCY`` lanes run, so at most that many handler calls are in progress.
        A lane about to call a handler starts another lane when entries are still queued and no
        other lane is free: a handler that awaits I/O lets the next entry start at once, while a
        handler that never suspends runs a whole read's entries in one task (a task per entry
        cost about a third of the consumer's throughput with a no-op handler, bench/README.md).
        """
        lane = asyncio.current_task()
        queue = self._queue
        try:
            while queue:
                if self.runner.batch:
                    work = [queue.popleft() for _ in range(min(len(queue), self.settings.read_count))]
                else:
                    work = queue.popleft()
                self._ready_lanes -= 1
                if queue and self._ready_lanes == 0 and len(self._lanes) < self.settings.concurrency:
                    self._start_lane()
                try:
                    if self.runner.batch:
                        await self._process_batch(work, lane)
                    else:
                        await self._process(*work, lane)
                finally:
                    self._ready_lanes += 1
        finally:
            self._ready_lanes -= 1
            # Now, not in a done callback: an entry dispatched before that callback ran would
            # find this lane still counted at the CONCURRENCY limit, and no lane would take it.
            self._lanes.discard(lane)

    async def _process(self, entry_id: str, fields: dict[str, str] | None, deliveries: int,
                       lane: asyncio.Task | None = None) -> None:
        outcome = FAILED
        try:
            # Also during the drain: an entry read before shutdown is handled now, not left for a
            # reclaim that a replacement pod (new name) would wait 30 s or more for.
            outcome = await self.runner.run(entry_id, fields, deliveries, self.name, lane)
        except RedisError as exc:
            logger.error("entry %s: redis error while handling it, it stays pending: %s", entry_id, exc)
        except asyncio.CancelledError:
            outcome = _CANCELLED
            raise
        finally:
            self._settle(entry_id, outcome)

    async def _process_batch(self, work: list[tuple[str, dict[str, str] | None, int]], lane: asyncio.Task) -> None:
        """Handle a batch handler's share of the queue in one call (:meth:`EntryRunner.run_batch`)."""
        outcomes = [FAILED] * len(work)
        try:
            outcomes = await self.runner.run_batch(work, self.name, lane)
        except RedisError as exc:
            logger.error("entries %s..%s: redis error while handling them, they stay pending: %s", work[0][0],
                         work[-1][0], exc)
        except asyncio.CancelledError:
            outcomes = [_CANCELLED] * len(work)
            raise
        finally:
            for (entry_id, _, _), outcome in zip(work, outcomes):
                self._settle(entry_id, outcome)

    def _settle(self, entry_id: str, outcome: str) -> None:
        """After an entry's handling: queue its XACK (``ok``, ``gone``), or remember it waits for its
        back-off (``failed``); either way it is no longer held."""
        if outcome == OK:  # the common case first: an append, and the acker woken when needed
            acks = self._acks
            acks.append(entry_id)
            if len(acks) == 1:
                self._ack_wanted.set()
            if len(acks) >= self.settings.ack_batch:
                self._ack_full.set()
        elif outcome == GONE:
            self.metrics.gone.labels(COMPONENT).inc()
            logger.warning("entry %s was pending but its data is gone (trimmed or deleted); acking it", entry_id)
            self._queue_ack(entry_id)
        elif outcome == FAILED:
            self.backing_off.add(entry_id)
        if outcome is not _CANCELLED:
            self.finished += 1
        self.held.pop(entry_id, None)
        if self.lost_lease:
            self.lost_lease.discard(entry_id)
        self.last_progress = time.monotonic()
        if self._capacity_wanted:
            self._freed.set()

    # ------------------------------------------------------------------ acks

    def _queue_ack(self, entry_id: str) -> None:
        self._acks.append(entry_id)
        self._ack_wanted.set()
        if len(self._acks) >= self.settings.ack_batch:
            self._ack_full.set()

    async def _ack_loop(self) -> None:
        backoff = Backoff(0.05, 2.0)
        while True:
            await self._ack_wanted.wait()
            if len(self._acks) < self.settings.ack_batch:
                try:
                    await asyncio.wait_for(self._ack_full.wait(), self.settings.ack_flush_ms / 1000.0)
                except TimeoutError:
                    pass
            try:
                await self._flush_acks()
                backoff.reset()
            except Exception as exc:
                if not is_redis_fault(exc):
                    raise  # a bug: the supervisor logs it and restarts the task
                if is_transient(exc):
                    self.redis_health.failed("acks", exc)
                self._error_log.log(logging.WARNING, "acks not sent yet, retrying: %s", exc)
                await backoff.sleep()

    async def _flush_acks(self) -> None:
        """Send the queued acks: one XACK per 1000 IDs, pipelined. On a connection error the IDs
        stay queued; on NOGROUP they are dropped (the group and its PEL are gone)."""
        ids, self._acks = self._acks, []
        self._ack_wanted.clear()
        self._ack_full.clear()
        if not ids:
            return
        self._acking = set(ids)
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                for i in range(0, len(ids), 1000):
                    pipe.xack(self.keys.stream, self.keys.group, *ids[i:i + 1000])
                results = await pipe.execute(raise_on_error=False)
        except BaseException:  # a connection error, or cancellation at shutdown: keep them queued
            self._acks[:0] = ids
            self._ack_wanted.set()
            raise
        finally:
            self._acking = set()
        for res in results:
            if isinstance(res, Exception):
                if is_nogroup(res):
                    logger.warning("group gone while acking %d entries; nothing left to ack", len(ids))
                    continue
                self._acks[:0] = ids
                self._ack_wanted.set()
                raise res
            self.metrics.acked.labels(COMPONENT).inc(int(res))

    # ------------------------------------------------------------------ timer

    async def _timer(self, stop: asyncio.Event) -> None:
        """Heartbeat, lease renewal and the claim pass, each on its own interval."""
        tick = min(self.heartbeat_interval_s, self.renew_interval_s, self.claim_interval_s, 0.5)
        next_heartbeat = next_claim = time.monotonic()
        # Runs until cancelled after the drain: heartbeat and lease renewal go on while the
        # entries read before shutdown finish (the claim pass stops with ``_stopping``).
        while True:
            now = time.monotonic()
            try:
                if now >= next_heartbeat:
                    # The heartbeat and the group's paused key in one round trip, every BLOCK_MS/2.
                    async with self.r.pipeline(transaction=False) as pipe:
                        pipe.set(self.keys.heartbeat(self.name), str(int(time.time() * 1000)),
                                 px=3 * self.settings.block_ms)
                        pipe.exists(self.keys.paused(self.keys.group))
                        _, paused = await pipe.execute()
                    self._set_paused(bool(paused))
                    self.redis_health.ok()
                    next_heartbeat = now + self.heartbeat_interval_s
                await self._renew(now)
                if now >= next_claim and self._group_ok:
                    next_claim = now + self.claim_interval_s
                    await self._claim()
            except OSError as exc:
                self._error_log.log(logging.WARNING, "timer: connection error (will retry): %s", exc)
            except Exception as exc:
                if not is_redis_fault(exc):
                    raise  # a bug: the supervisor logs it and restarts the task
                if is_transient(exc):
                    self.redis_health.failed("timer", exc)
                if not is_nogroup(exc):
                    self._error_log.log(logging.WARNING, "timer: redis error (will retry): %s", exc)
            await asyncio.sleep(tick)

    async def _renew(self, now: float) -> None:
        stale = [i for i, t in self.held.items() if now - t >= self.renew_interval_s and i not in self.lost_lease]
        if not stale:
            return
        renewed = await renew_leases(self.r, self.keys, self.name, stale, scripts=self.claim_scripts)
        for entry_id in stale:
            if entry_id in renewed:
                if entry_id in self.held:
                    self.held[entry_id] = now
            elif entry_id in self.held:
                # Claimed by someone else (or acked, or gone) while we work on it: the processed
                # marker keeps the effect single; our late XACK is harmless.
                self.lost_lease.add(entry_id)
                logger.warning("lost the lease on entry %s while handling it (claimed by another consumer)", entry_id)

    async def _claim(self) -> None:
        free = self.capacity - len(self.held)
        if free <= 0 or self._stopping or not self._own_pel_done or self.paused:
            # Not before the own PEL is re-read: a claim during that phase takes our own not yet
            # re-read entries (idle since we died) and others' entries into our PEL, and the
            # re-read then handed them to the handler a second time with a wrong delivery count.
            return
        out = await claim_due(self.r, self.keys, self.name, scripts=self.scripts, base_ms=self.settings.claim_idle_ms,
                              max_deliveries=self.settings.max_deliveries, limit=free, exclude=set(self.held),
                              component=COMPONENT, delete_source=self.settings.dead_letter_xdel)
        if out.dead_lettered:
            self.metrics.dead_lettered.labels(COMPONENT).inc(len(out.dead_lettered))
        if out.gone:
            self.metrics.gone.labels(COMPONENT).inc(len(out.gone))
        if out.claimed:
            self.metrics.claimed.labels(COMPONENT).inc(len(out.claimed))
            logger.info("claimed %d pending entries for retry", len(out.claimed))
        for entry in out.claimed:
            if self._stopping:
                break  # claimed after shutdown began: stays pending under our name for the next claimer
            self._dispatch(entry.entry_id, entry.fields, entry.deliveries)


_STOPPED = object()
#: The outcome of an entry whose handling was cancelled (drain deadline): it stays pending.
_CANCELLED = "cancelled"


def group_lost(exc: BaseException) -> bool:
    """NOGROUP, or a blocked read ended because the stream or the group was deleted (Redis 7.0
    answers ``UNBLOCKED the stream key no longer exists`` / ``... consumer group ... no longer exists``)."""
    if is_nogroup(exc):
        return True
    text = str(exc)
    return isinstance(exc, RedisError) and text.startswith("UNBLOCKED") and "no longer exists" in text


class PartitionedWorker:
    """The consumer of a partitioned stream (``STREAM_PARTITIONS`` > 1, or Redis Cluster mode):
    one :class:`Worker` per partition in this process, all under the same consumer name, sharing
    the Redis client, the handler and the metrics registry.

    **Assignment rule**: every consumer reads every partition; within a partition the consumer
    group spreads entries over the consumers, so nothing is rebalanced when consumers come or go.
    Each partition's worker issues its own ``XREADGROUP`` (in a cluster a multi-key XREADGROUP
    must stay in one slot, and partitions live in different slots), acks to that partition, runs
    its own claim pass, lease renewal and heartbeat there; ``CONCURRENCY`` and ``READ_COUNT``
    apply per partition.

    Args: as :class:`Worker`; ``parts`` the key names of every partition (``settings.partitions``).
    """

    def __init__(self, settings: ConsumerSettings, r: aioredis.Redis, *, parts: tuple[Keys, ...] | list[Keys],
                 handler: Callable[[Envelope, HandlerContext], Awaitable[None]] | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.name = settings.consumer_name
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = stream_metrics(self.registry)
        handler = handler or load_handler(settings.handler)
        self.workers = [Worker(settings, r, handler=handler, registry=self.registry, metrics=self.metrics, keys=keys)
                        for keys in parts]

    async def run(self, stop: asyncio.Event) -> None:
        """Run every partition's worker until ``stop`` is set and each has drained
        (:meth:`Worker.run`)."""
        await asyncio.gather(*(w.run(stop) for w in self.workers))

    def live(self) -> tuple[bool, dict]:
        """Liveness: every partition's worker is live; details per partition under ``partitions``."""
        found = [w.live() for w in self.workers]
        return all(ok for ok, _ in found), {"consumer": self.name, "partitions": [d for _, d in found]}

    def ready(self) -> tuple[bool, dict]:
        """Readiness: every partition's worker is ready."""
        found = [w.ready() for w in self.workers]
        return all(ok for ok, _ in found), {"consumer": self.name, "partitions": [d for _, d in found]}
