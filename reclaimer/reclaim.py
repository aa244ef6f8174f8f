"""One reclaim pass over the group (``python -m reclaimer``).

Order of work in a pass, and why:

1. **Back-off claim** (:func:`streamcore.claiming.claim_due`): entries whose back-off has passed
   are XCLAIMed to the reclaimer (one delivery each); those delivered ``MAX_DELIVERIES`` times are
   dead-lettered instead, with their true count. This runs first so the count-blind sweep below
   finds nothing it would mis-count. The PEL scan reads at most :attr:`Reclaimer.backoff_scan_rows`
   rows per pass (entries still backing off are skipped, so one pass never reads a huge PEL).
2. **Sweep** (:func:`streamcore.claiming.iter_autoclaim`): XAUTOCLAIM from ``0-0`` to cursor
   ``0-0`` at the back-off ceiling (16 x ``CLAIM_IDLE_MS`` + jitter): orphans of any count, and the
   deleted-ID list (entries whose data is gone), which is acked and counted (C01, C02). An entry
   the sweep took at more than ``MAX_DELIVERIES`` deliveries is dead-lettered with its count
   before the sweep's own delivery.
3. **Handling**: every claimed order runs through the same handler as the consumers (``HANDLER``),
   with leases renewed while it runs. Success: batched XACK. Failure: stays pending (next pass
   retries after the back-off), or dead-lettered when this was delivery ``MAX_DELIVERIES``.
4. **Consumer hygiene**: every other consumer is checked and deleted in one Lua script
   (:func:`streamcore.claiming.delete_consumer_if_dead`) only if it has no heartbeat, has been
   quiet for ``CONSUMER_INACTIVE_TTL_MS`` (``inactive`` where reported, else ``idle``) and owns no
   pending entry; dead consumers with pending entries keep them until steps 1-3 empty them (C07, C08).
5. **Trimming and loss detection** (:func:`streamcore.trimming.trim_pass`, C15, C16).

**Pages.** Steps 1-3 run a page at a time: claim ``RECLAIM_PAGE_SIZE`` entries (step 1's
``claim_due`` limit, resuming its PEL scan where the last page stopped; then step 2's XAUTOCLAIM
COUNT), handle them, ack them, drop them, then claim the next page; a page's XACK is sent while
the next page is claimed, so the pass waits for one round trip per page (the sweep's XAUTOCLAIM
and the XPENDING of its delivery counts share one). The next page is never claimed before this
one is handled: a claim counts a delivery of each entry (XAUTOCLAIM, XCLAIM), and a page claimed
ahead behind a slow one, in a pass killed meanwhile, would have spent a delivery of each without
any handler seeing it (an order one try from MAX_DELIVERIES would be dead-lettered untried). So
the pass holds one page of entries (plus the IDs of the page being acked), and its memory does not
grow with ``RECLAIM_LIMIT``. Every entry the pass holds, handled or not, keeps its lease until it
is acked: one renewer (``XCLAIM ... JUSTID``, owner-checked) runs for the whole pass every
``CLAIM_IDLE_MS/3``, so no consumer's claim pass takes an entry handled early while the page's
XACK waits for its slowest one.
``RECLAIM_LIMIT`` counts every entry claimed by steps 1 and 2 together and is honoured exactly:
the last page asks only for what is left; everything else stays pending for the next pass.

The pass prints one line: ``reclaim: claimed=N processed=N failed=N dead_lettered=N gone=N
consumers_removed=N trimmed=N lost=N`` (see :class:`Summary` for what each counts).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, fields
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from reclaimer.settings import ReclaimerSettings
from streamcore.claiming import (ClaimedEntry, ClaimScripts, ceiling_ms, claim_due, dead_letter_pending,
                                 delete_consumer_if_dead, iter_autoclaim, renew_leases)
from streamcore.connection import is_transient
from streamcore.envelope import Envelope
from streamcore.keys import Keys
from streamcore.handling import DEAD_LETTERED, GONE, OK, EntryRunner, HandlerContext, load_handler
from streamcore.metrics import stream_metrics
from streamcore.pacing import RateLimitedLog
from streamcore.streams import Scripts, ensure_group
from streamcore.trimming import trim_metrics, trim_pass

logger = logging.getLogger(__name__)

#: How often (s) ``--loop`` repeats that a dead consumer still owns pending entries.
ORPHAN_LOG_INTERVAL_S = 300.0

COMPONENT = "reclaimer"


@dataclass
class Summary:
    """Counts of one pass (entries unless named otherwise).

    Attributes:
        claimed: taken over with XCLAIM (step 1) or XAUTOCLAIM (step 2), each a delivery; at most
            ``RECLAIM_LIMIT``. All of them are handled, except those the sweep found past
            ``MAX_DELIVERIES``, which are dead-lettered at once.
        processed: handled successfully (and acked).
        failed: handler failures (left pending, or dead-lettered on the last delivery).
        dead_lettered: moved to the dead-letter stream by any step.
        gone: pending entries whose data was deleted or trimmed (acked).
        consumers_removed: dead consumers deleted (step 4).
        trimmed, lost: from :func:`streamcore.trimming.trim_pass`.
    """

    claimed: int = 0
    processed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    gone: int = 0
    consumers_removed: int = 0
    trimmed: int = 0
    lost: int = 0

    def line(self) -> str:
        """``reclaim: claimed=N processed=N ...`` in field order."""
        return "reclaim: " + " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


class Reclaimer:
    """Runs reclaim passes with one client (owned by the caller) and one handler, over one
    stream: ``keys`` (default ``settings.keys``); see :class:`PartitionedReclaimer`."""

    def __init__(self, settings: ReclaimerSettings, r: aioredis.Redis, *,
                 handler: Callable[[Envelope, HandlerContext], Awaitable[None]] | None = None,
                 registry: CollectorRegistry | None = None, keys: Keys | None = None,
                 shared_metrics: tuple[Any, Any] | None = None) -> None:
        self.settings = settings
        self.name = settings.reclaimer_name
        self.keys = keys if keys is not None else settings.keys
        self.r = r
        self.scripts = Scripts(r)
        self.claim_scripts = ClaimScripts(r)
        self.registry = registry if registry is not None else CollectorRegistry()
        if shared_metrics is not None:  # several partitions' reclaimers in one registry
            self.metrics, self.trim_metrics = shared_metrics
        else:
            self.metrics = stream_metrics(self.registry)
            self.trim_metrics = trim_metrics(self.registry)
        self._orphan_log: dict[str, RateLimitedLog] = {}
        self._ahead_log: dict[str, RateLimitedLog] = {}
        #: Most PEL rows step 1 reads per pass (``claim_due``'s ``scan_limit``, spread over pages).
        self.backoff_scan_rows = 10_000
        self.runner = EntryRunner(r, self.keys, handler or load_handler(settings.handler), scripts=self.scripts,
                                  metrics=self.metrics, component=COMPONENT, max_deliveries=settings.max_deliveries,
                                  failure_rate=settings.failure_rate, processed_ttl_s=settings.processed_ttl_seconds,
                                  handler_timeout_s=settings.handler_timeout_seconds,
                                  delete_source=settings.dead_letter_xdel)

    async def run_once(self) -> Summary:
        """One pass (see the module docstring).

        Raises:
            redis.exceptions.RedisError: the pass could not complete (the CronJob records a failure).
        """
        s = Summary()
        if not await self.r.exists(self.keys.stream):
            logger.info("stream %s does not exist yet; nothing to reclaim", self.keys.stream)
            await self._record_pass()
            return s
        await ensure_group(self.r, self.keys, "0")
        if await self.r.exists(self.keys.paused(self.keys.group)):
            # Paused (POST /groups/{group}/pause): no handler runs for the group, so nothing is
            # claimed; dead consumers are still removed and the stream still trimmed.
            logger.info("group %s is paused: nothing claimed this pass", self.keys.group)
            claim_dead_lettered = 0
        else:
            claim_dead_lettered = await self._claim_and_handle(s)
        s.consumers_removed = await self._remove_dead_consumers()
        report = await trim_pass(self.r, self.keys, maxlen=self.settings.stream_maxlen,
                                 max_step=self.settings.trim_max_step, metrics=self.trim_metrics)
        s.trimmed, s.lost = report.trimmed, report.lost
        s.gone += len(report.gone)
        for group in report.ahead:
            self._ahead_log.setdefault(group, RateLimitedLog(logger, ORPHAN_LOG_INTERVAL_S)).log(
                logging.WARNING, "group %s of %s is positioned past the stream's last entry ID and the clock (XGROUP SETID); "
                "entries added from now on will never be delivered to it", group, self.keys.stream)
        self.metrics.dead_lettered.labels(COMPONENT).inc(claim_dead_lettered)  # the runner counts its own
        self.metrics.gone.labels(COMPONENT).inc(s.gone)
        await self._record_pass()
        return s

    async def _record_pass(self) -> None:
        """``SET keys.reclaimer_last_pass`` to now (ms): the producer exports it, and the chart's
        alert fires when no pass ended for longer than the CronJob's schedule allows."""
        await self.r.set(self.keys.reclaimer_last_pass, int(time.time() * 1000))

    async def _claim_and_handle(self, s: Summary) -> int:
        """Steps 1 to 3 with the pass's lease renewer running (see the module docstring).
        Returns how many entries steps 1 and 2 dead-lettered (the runner counts its own)."""
        held: set[str] = set()
        done = asyncio.Event()
        renewer = asyncio.create_task(self._renew_while(held, done))
        try:
            dead_lettered = await self._handle_pages(self._backoff_pages(s), s, held)
            left = self.settings.reclaim_limit - s.claimed
            if left > 0:
                dead_lettered += await self._handle_pages(self._sweep_pages(s, left), s, held)
            return dead_lettered
        finally:
            # Stopped by an event, not by cancelling it: a cancellation that lands while its
            # EVALSHA is in flight can be lost on Python 3.11 (the task goes on, and one pass
            # in three hung after its last page). It ends after its current call, at most one
            # socket timeout; past that it is cancelled and left behind.
            done.set()
            if not (await asyncio.wait({renewer}, timeout=self.settings.redis_socket_timeout_s + 1.0))[0]:
                logger.warning("lease renewal did not stop within the socket timeout; left behind")
                renewer.cancel()

    async def _handle_pages(self, pages: AsyncIterator[tuple[list[ClaimedEntry], int]], s: Summary,
                            held: set[str]) -> int:
        """Handle each page of ``pages`` (claimed entries, how many the claim dead-lettered), its
        entries in ``held`` (leases renewed) from the moment they are claimed until acked or
        failed; a page's XACK goes out while the next page is claimed. Returns the dead-lettered
        total."""
        dead_lettered = 0
        acking: asyncio.Future | None = None  # the previous page's XACK
        try:
            async for work, claim_dead_lettered in pages:
                held.update(e.entry_id for e in work)
                dead_lettered += claim_dead_lettered
                acks = await self._handle_page(work, s, held)
                if acking is not None:
                    await acking
                acking = asyncio.ensure_future(self._ack(acks, held)) if acks else None
            if acking is not None:
                await acking
        finally:
            # A failed page or claim ends the pass; the XACK being sent is let finish (within one
            # socket timeout, +1 s), not cancelled mid-call (see _claim_and_handle).
            if acking is not None:
                bound = self.settings.redis_socket_timeout_s + 1.0
                if not acking.done() and not (await asyncio.wait({acking}, timeout=bound))[0]:
                    acking.cancel()
                if acking.done() and not acking.cancelled():
                    acking.exception()  # retrieved: the pass fails with the first error already raised
            await pages.aclose()  # type: ignore[attr-defined]  # an async generator
        return dead_lettered

    async def _ack(self, entry_ids: list[str], held: set[str]) -> None:
        """XACK ``entry_ids`` (handled, or gone) in one call, count them, and stop renewing them."""
        try:
            acked = await self.r.xack(self.keys.stream, self.keys.group, *entry_ids)
            self.metrics.acked.labels(COMPONENT).inc(int(acked))
        finally:
            held.difference_update(entry_ids)

    async def _backoff_pages(self, s: Summary) -> AsyncIterator[tuple[list[ClaimedEntry], int]]:
        """Step 1, a page at a time: ``claim_due`` resumes its PEL scan where the previous page
        stopped, until the limit, the end of the PEL or :attr:`backoff_scan_rows` rows. Counts
        what it claims in ``s`` as it claims it (the limit of the next page depends on it)."""
        scanned, start = 0, "-"
        limit, page = self.settings.reclaim_limit, self.settings.reclaim_page_size
        while s.claimed < limit and start is not None and scanned < self.backoff_scan_rows:
            due = await claim_due(self.r, self.keys, self.name, scripts=self.scripts, base_ms=self.settings.claim_idle_ms,
                                  max_deliveries=self.settings.max_deliveries, limit=min(page, limit - s.claimed),
                                  scan_limit=self.backoff_scan_rows - scanned, component=COMPONENT, start=start,
                                  delete_source=self.settings.dead_letter_xdel)
            scanned += due.scanned
            start = due.resume
            s.dead_lettered += len(due.dead_lettered)
            s.gone += len(due.gone)
            self._count_claimed(s, len(due.claimed))
            yield due.claimed, len(due.dead_lettered)

    async def _sweep_pages(self, s: Summary, left: int) -> AsyncIterator[tuple[list[ClaimedEntry], int]]:
        """Step 2, a page at a time: XAUTOCLAIM pages of at most ``left`` entries in all; an entry
        the sweep took past ``MAX_DELIVERIES`` is dead-lettered here, the rest yielded for handling."""
        pages = iter_autoclaim(self.r, self.keys, self.name, min_idle_ms=ceiling_ms(self.settings.claim_idle_ms),
                               count=self.settings.reclaim_page_size, limit=left, component=COMPONENT)
        async with aclosing(pages):
            async for page in pages:
                s.gone += len(page.gone)
                work: list[ClaimedEntry] = []
                dead_lettered = 0
                for entry in page.claimed:
                    if entry.deliveries <= self.settings.max_deliveries:
                        work.append(entry)
                        continue
                    # The sweep cannot filter by count; it added a delivery no handler will see.
                    self._count_claimed(s, 1)
                    res = await dead_letter_pending(self.r, self.keys, entry.entry_id, scripts=self.scripts,
                                                    consumer=self.name, deliveries=entry.deliveries - 1,
                                                    error=f"gave up after {entry.deliveries - 1} deliveries",
                                                    delete_source=self.settings.dead_letter_xdel)
                    dead_lettered += res.status == "dead_lettered"
                    s.dead_lettered += res.status == "dead_lettered"
                    s.gone += res.status == "gone"
                self._count_claimed(s, len(work))
                yield work, dead_lettered

    def _count_claimed(self, s: Summary, n: int) -> None:
        if n:
            s.claimed += n
            self.metrics.claimed.labels(COMPONENT).inc(n)

    async def _handle_page(self, work: list[ClaimedEntry], s: Summary, held: set[str]) -> list[str]:
        """Run ``work`` (claimed, counted, in ``held``) through the handler, ``CONCURRENCY`` at a
        time. Returns the IDs to XACK (succeeded, or gone), which stay in ``held`` (leases renewed)
        until acked: a page's XACK waits for its slowest entry, and an entry handled early must
        not be taken by a consumer's claim meanwhile and handled twice. A failed entry leaves
        ``held`` at once, to back off. When a lane raised (a Redis error while dead-lettering)
        or the page is cancelled, what was handled is acked here before the error goes on."""
        if not work:
            return []
        acks: list[str] = []
        queue = iter(work)

        async def lane() -> None:
            # A few lanes, each taking the next entry when its last one is done: CONCURRENCY
            # handlers at most, without a task per entry (bench/README.md).
            task = asyncio.current_task()
            for entry in queue:
                outcome = await self.runner.run(entry.entry_id, entry.fields, entry.deliveries, self.name, task)
                if outcome == OK:
                    s.processed += 1
                    acks.append(entry.entry_id)
                    continue
                if outcome == GONE:
                    s.gone += 1
                    acks.append(entry.entry_id)
                    continue
                held.discard(entry.entry_id)
                s.failed += 1
                s.dead_lettered += outcome == DEAD_LETTERED

        try:
            lanes = min(self.settings.concurrency, len(work))
            results = await asyncio.gather(*(lane() for _ in range(lanes)), return_exceptions=True)
            errors = [e for e in results if isinstance(e, BaseException)]
        except BaseException:
            errors = None
            raise
        finally:
            if errors != []:  # cancelled or failed: ack what was handled, then go on
                done = set(acks)
                held.difference_update(e.entry_id for e in work if e.entry_id not in done)
                if acks:
                    await self._ack(acks, held)
        if errors:
            raise errors[0]
        return acks

    async def _renew_while(self, held: set[str], done: asyncio.Event) -> None:
        """Renew the leases of the entries in ``held`` (claimed by this pass, not yet handled)
        every ``CLAIM_IDLE_MS/3`` until ``done`` is set.

        A transient Redis error (:func:`streamcore.connection.is_transient`) skips one renewal
        and is reported to the runner's :class:`~streamcore.lifecycle.RedisHealth`; anything else
        is logged with its traceback and ends renewal for this pass (the entries stay owned by
        this pass and are handled; at worst a consumer's claim takes one over once it is idle
        past its back-off, which at-least-once allows).
        """
        interval = max(self.settings.claim_idle_ms / 3000.0, 0.05)
        while True:
            try:
                await asyncio.wait_for(done.wait(), interval)
                return
            except TimeoutError:
                pass
            if not held:
                continue
            try:
                await renew_leases(self.r, self.keys, self.name, list(held), scripts=self.claim_scripts)
            except Exception as exc:
                if not is_transient(exc):
                    logger.exception("lease renewal stopped for this pass")
                    return
                self.runner.redis_health.failed("renew", exc)
            else:
                self.runner.redis_health.ok()

    async def _remove_dead_consumers(self) -> int:
        removed = 0
        for c in await self.r.xinfo_consumers(self.keys.stream, self.keys.group):
            if c["name"] == self.name:
                continue
            result = await delete_consumer_if_dead(self.r, self.keys, c["name"], caller=self.name,
                                                   inactive_ttl_ms=self.settings.consumer_inactive_ttl_ms,
                                                   scripts=self.claim_scripts)
            if result == "deleted":
                removed += 1
                logger.info("removed dead consumer %s (no heartbeat, quiet, nothing pending)", c["name"])
            elif result == "pending" and not await self.r.exists(self.keys.heartbeat(c["name"])):
                # Said once per consumer every few minutes: with --loop it would repeat every pass
                # until the back-off lets the entries be claimed.
                self._orphan_log.setdefault(c["name"], RateLimitedLog(logger, ORPHAN_LOG_INTERVAL_S)).log(
                    logging.INFO, "consumer %s has no heartbeat and %s pending entries; they are claimed once due, "
                    "then it is removed", c["name"], c.get("pending"))
        return removed


class PartitionedReclaimer:
    """A reclaim pass over every partition (``STREAM_PARTITIONS`` > 1 or Redis Cluster mode): one
    :class:`Reclaimer` per partition, run one after another; the summary is the sum. Back-off
    claims, the sweep, consumer hygiene and trimming (safe floor, loss detection) are each done
    within one partition; ``RECLAIM_LIMIT`` applies per partition.
    """

    def __init__(self, settings: ReclaimerSettings, r: aioredis.Redis, *, parts: tuple[Keys, ...] | list[Keys],
                 handler: Callable[[Envelope, HandlerContext], Awaitable[None]] | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.name = settings.reclaimer_name
        self.registry = registry if registry is not None else CollectorRegistry()
        shared = (stream_metrics(self.registry), trim_metrics(self.registry))
        handler = handler or load_handler(settings.handler)
        self.reclaimers = [Reclaimer(settings, r, handler=handler, registry=self.registry, keys=keys,
                                     shared_metrics=shared) for keys in parts]

    async def run_once(self) -> Summary:
        """One pass over each partition in index order; the counts added up.

        Raises:
            redis.exceptions.RedisError: a partition's pass could not complete (the partitions
                before it are done; a pass is safe to repeat).
        """
        total = Summary()
        for reclaimer in self.reclaimers:
            part = await reclaimer.run_once()
            for f in fields(Summary):
                setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))
        return total


async def run_loop(reclaimer: Reclaimer | PartitionedReclaimer, stop: asyncio.Event, interval_s: float) -> None:
    """Run passes every ``interval_s`` seconds until ``stop`` is set; failures are logged and retried."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            summary = await reclaimer.run_once()
            print(summary.line(), flush=True)
        except Exception:  # keep looping locally; the CronJob mode exits non-zero instead
            logger.exception("reclaim pass failed; next try in %.1fs", interval_s)
        remaining = max(interval_s - (time.monotonic() - started), 0.0)
        try:
            await asyncio.wait_for(stop.wait(), remaining)
        except TimeoutError:
            pass
