"""One reclaim pass over the group (``python -m reclaimer``).

Order of work in a pass, and why:

1. **Back-off claim** (:func:`streamcore.claiming.claim_due`): entries whose back-off has passed
   are XCLAIMed to the reclaimer (one delivery each); those delivered ``MAX_DELIVERIES`` times are
   dead-lettered instead, with their true count. This runs first so the count-blind sweep below
   finds nothing it would mis-count.
2. **Sweep** (:func:`streamcore.claiming.autoclaim_sweep`): XAUTOCLAIM from ``0-0`` to cursor
   ``0-0`` at the back-off ceiling (16 x ``CLAIM_IDLE_MS`` + jitter): orphans of any count, and the
   deleted-ID list (entries whose data is gone), which is acked and counted (C01, C02).
3. **Handling**: every claimed order runs through the same handler as the consumers (``HANDLER``),
   with leases renewed while it runs. Success: batched XACK. Failure: stays pending (next pass
   retries after the back-off), or dead-lettered when this was delivery ``MAX_DELIVERIES``.
4. **Consumer hygiene**: every other consumer is checked and deleted in one Lua script
   (:func:`streamcore.claiming.delete_consumer_if_dead`) only if it has no heartbeat, has been
   quiet for ``CONSUMER_INACTIVE_TTL_MS`` (``inactive`` where reported, else ``idle``) and owns no
   pending entry; dead consumers with pending entries keep them until steps 1-3 empty them (C07, C08).
5. **Trimming and loss detection** (:func:`streamcore.trimming.trim_pass`, C15, C16).

The pass prints one line: ``reclaim: claimed=N processed=N failed=N dead_lettered=N gone=N
consumers_removed=N trimmed=N lost=N``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from reclaimer.settings import ReclaimerSettings
from streamcore.claiming import (ClaimedEntry, ClaimScripts, autoclaim_sweep, ceiling_ms, claim_due,
                                 dead_letter_pending, delete_consumer_if_dead, renew_leases)
from streamcore.envelope import Envelope
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
    """Counts of one pass (entries unless named otherwise)."""

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
    """Runs reclaim passes with one client (owned by the caller) and one handler."""

    def __init__(self, settings: ReclaimerSettings, r: aioredis.Redis, *,
                 handler: Callable[[Envelope, HandlerContext], Awaitable[None]] | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.name = settings.reclaimer_name
        self.keys = settings.keys
        self.r = r
        self.scripts = Scripts(r)
        self.claim_scripts = ClaimScripts(r)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = stream_metrics(self.registry)
        self.trim_metrics = trim_metrics(self.registry)
        self._orphan_log: dict[str, RateLimitedLog] = {}
        self._ahead_log: dict[str, RateLimitedLog] = {}
        self.runner = EntryRunner(r, self.keys, handler or load_handler(settings.handler), scripts=self.scripts,
                                  metrics=self.metrics, component=COMPONENT, max_deliveries=settings.max_deliveries,
                                  failure_rate=settings.failure_rate, processed_ttl_s=settings.processed_ttl_seconds,
                                  handler_timeout_s=settings.handler_timeout_seconds)

    async def run_once(self) -> Summary:
        """One pass (see the module docstring).

        Raises:
            redis.exceptions.RedisError: the pass could not complete (the CronJob records a failure).
        """
        s = Summary()
        if not await self.r.exists(self.keys.stream):
            logger.info("stream %s does not exist yet; nothing to reclaim", self.keys.stream)
            return s
        await ensure_group(self.r, self.keys, "0")
        base = self.settings.claim_idle_ms
        due = await claim_due(self.r, self.keys, self.name, scripts=self.scripts, base_ms=base,
                              max_deliveries=self.settings.max_deliveries, limit=self.settings.reclaim_limit,
                              component=COMPONENT)
        swept = await autoclaim_sweep(self.r, self.keys, self.name, min_idle_ms=ceiling_ms(base),
                                      limit=max(self.settings.reclaim_limit - len(due.claimed), 1), component=COMPONENT)
        s.dead_lettered += len(due.dead_lettered)
        s.gone += len(due.gone) + len(swept.gone)
        work = list(due.claimed)
        for entry in swept.claimed:
            if entry.deliveries > self.settings.max_deliveries:
                # The sweep cannot filter by count; it added a delivery no handler will see.
                res = await dead_letter_pending(self.r, self.keys, entry.entry_id, scripts=self.scripts, consumer=self.name,
                                        deliveries=entry.deliveries - 1,
                                        error=f"gave up after {entry.deliveries - 1} deliveries")
                s.dead_lettered += res.status == "dead_lettered"
                s.gone += res.status == "gone"
            else:
                work.append(entry)
        claim_dead_lettered = s.dead_lettered
        s.claimed = len(work)
        self.metrics.claimed.labels(COMPONENT).inc(s.claimed)
        await self._handle_all(work, s)
        s.consumers_removed = await self._remove_dead_consumers()
        report = await trim_pass(self.r, self.keys, maxlen=self.settings.stream_maxlen,
                                 max_step=self.settings.trim_max_step, metrics=self.trim_metrics)
        s.trimmed, s.lost = report.trimmed, report.lost
        s.gone += len(report.gone)
        for group in report.ahead:
            self._ahead_log.setdefault(group, RateLimitedLog(logger, ORPHAN_LOG_INTERVAL_S)).log(
                logging.WARNING, "group %s of %s is positioned past the stream's last entry ID (XGROUP SETID); "
                "entries added from now on will never be delivered to it", group, self.keys.stream)
        self.metrics.dead_lettered.labels(COMPONENT).inc(claim_dead_lettered)  # the runner counts its own
        self.metrics.gone.labels(COMPONENT).inc(s.gone)
        return s

    async def _handle_all(self, work: list[ClaimedEntry], s: Summary) -> None:
        if not work:
            return
        sem = asyncio.Semaphore(self.settings.concurrency)
        in_flight = {e.entry_id for e in work}
        acks: list[str] = []

        async def one(entry: ClaimedEntry) -> None:
            try:
                async with sem:
                    outcome = await self.runner.run(entry.entry_id, entry.fields, entry.deliveries, self.name)
            finally:
                in_flight.discard(entry.entry_id)
            if outcome == OK:
                s.processed += 1
                acks.append(entry.entry_id)
            elif outcome == GONE:
                s.gone += 1
                acks.append(entry.entry_id)
            elif outcome == DEAD_LETTERED:
                s.failed += 1
                s.dead_lettered += 1
            else:
                s.failed += 1

        renewer = asyncio.create_task(self._renew_while(in_flight))
        try:
            results = await asyncio.gather(*(one(e) for e in work), return_exceptions=True)
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            if acks:
                acked = await self.r.xack(self.keys.stream, self.keys.group, *acks)
                self.metrics.acked.labels(COMPONENT).inc(int(acked))
        errors = [e for e in results if isinstance(e, BaseException)]
        if errors:
            raise errors[0]

    async def _renew_while(self, in_flight: set[str]) -> None:
        """Renew the leases of orders still being handled every ``CLAIM_IDLE_MS/3``."""
        interval = max(self.settings.claim_idle_ms / 3000.0, 0.05)
        while True:
            await asyncio.sleep(interval)
            if in_flight:
                await renew_leases(self.r, self.keys, self.name, list(in_flight), scripts=self.claim_scripts)

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


async def run_loop(reclaimer: Reclaimer, stop: asyncio.Event, interval_s: float) -> None:
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
