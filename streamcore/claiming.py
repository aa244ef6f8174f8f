"""Claiming pending entries: back-off by delivery count, dead-lettering, leases, consumer hygiene.

Delivery counting (case C03), as the server does it and as we rely on it:

* ``XREADGROUP ... >`` delivers with count 1;
* ``XCLAIM`` without ``JUSTID`` and ``XAUTOCLAIM`` without ``JUSTID`` add 1 (a real delivery: we
  hand the entry to a handler);
* ``XREADGROUP ... 0`` (reading one's own PEL) adds 1;
* ``XCLAIM ... JUSTID`` leaves the count alone: that is how a lease is renewed (:func:`renew_leases`).

Back-off (:func:`backoff_ms`): an entry delivered ``d`` times is due for another delivery once its
idle time (``XPENDING`` ``time_since_delivered``, ms) reaches ``base_ms * 2**(d-1)``, capped at
``CAP_FACTOR`` times ``base_ms``, with +-``JITTER`` random spread. ``XAUTOCLAIM`` has one
``min-idle`` and cannot filter by count, so :func:`claim_due` scans the PEL with the extended form
``XPENDING key group IDLE base start + count`` instead, pages with an exclusive start ID, and:

* dead-letters entries with ``deliveries >= max_deliveries`` (:func:`streamcore.streams.dead_letter`:
  atomic, checks the entry is still pending) — dead-lettering therefore fires right after the
  ``max_deliveries``-th delivery failed, and no further delivery happens (case C21);
* ``XCLAIM``\\ s the rest with ``min-idle = base_ms`` as a race guard: when another claimer took an
  entry first, its idle time was reset and our XCLAIM returns nothing for it;
* checks every requested-but-not-returned ID with ``XRANGE id id``: when the data is gone
  (Redis >= 7.0 drops deleted entries from the PEL on XCLAIM) it is counted as *gone* and XACKed
  to be sure; otherwise someone else won the race.

:func:`iter_autoclaim` follows the ``XAUTOCLAIM`` cursor to ``0-0`` at one min-idle (the reclaimer
uses the back-off ceiling, where every entry is due whatever its count) and collects the deleted-ID
list (reply element 3, Redis >= 7.0). redis-py 8.1's ``xautoclaim`` keeps that list for the
non-JUSTID form (``parse_xautoclaim`` only drops the cursor when ``justid=True``), so the sweep
uses the non-JUSTID form, which also matches its meaning: what it claims is handed to a handler.

**Paging and memory.** The paging helpers read the PEL a page at a time and never hold more
than one page: :func:`iter_pending` pages ``XPENDING``; :func:`iter_autoclaim` yields one ``XAUTOCLAIM``
page at a time, with ``COUNT`` cut to what is left of its limit (so the limit is exact), and
reads the page's delivery counts with an ``XPENDING`` in the same round trip; and
:func:`claim_due` resumes a scan where the previous call stopped (``start`` /
:attr:`ClaimOutcome.resume`). A caller that handles and acks each page before asking for the next
(the reclaimer) holds one page of entries whatever its total limit. The ID after the last row of
a page is :func:`streamcore.ids.successor` (an inclusive start), never ``"(" + id``, which Redis
refuses for the largest ID.
"""

from __future__ import annotations

import logging
import random
from contextlib import aclosing
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from streamcore.ids import successor
from streamcore.keys import Keys
from streamcore.streams import DeadLetterResult, Scripts, dead_letter

logger = logging.getLogger(__name__)

#: Longest back-off, as a multiple of the base idle time (``2**4``).
CAP_FACTOR = 16
#: Random spread of each back-off, as a fraction (+-10 %).
JITTER = 0.1


def backoff_ms(deliveries: int, base_ms: int, *, cap_factor: int = CAP_FACTOR, jitter: float = JITTER,
               rand: Callable[[], float] = random.random) -> int:
    """Idle time (ms) after which an entry delivered ``deliveries`` times is due again.

    ``base_ms * min(2**(deliveries-1), cap_factor)``, spread by ``+-jitter`` (``rand()`` in [0, 1)).
    ``deliveries < 1`` is treated as 1.
    """
    factor = min(2 ** max(deliveries - 1, 0), cap_factor)
    spread = 1.0 + jitter * (2.0 * rand() - 1.0)
    return int(base_ms * factor * spread)


def ceiling_ms(base_ms: int, *, cap_factor: int = CAP_FACTOR, jitter: float = JITTER) -> int:
    """The longest back-off including jitter (ms): an entry idle this long is due whatever its count."""
    return int(base_ms * cap_factor * (1.0 + jitter)) + 1


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """One PEL row from extended ``XPENDING``.

    Attributes:
        entry_id: ``message_id``.
        consumer: the owner (``consumer``).
        idle_ms: ``time_since_delivered`` in ms.
        deliveries: ``times_delivered``.
    """

    entry_id: str
    consumer: str
    idle_ms: int
    deliveries: int


@dataclass(frozen=True, slots=True)
class ClaimedEntry:
    """An entry claimed for handling: its data and its delivery count *including* this delivery."""

    entry_id: str
    fields: dict[str, str]
    deliveries: int
    previous_owner: str = ""


@dataclass
class ClaimOutcome:
    """What one claiming call did (lists of entry IDs, in PEL order).

    Attributes:
        scanned: PEL rows :func:`claim_due` read (``XPENDING``).
        resume: where :func:`claim_due`'s scan can go on (an inclusive start ID for its
            ``start``), or None when it reached the end of the PEL.
    """

    claimed: list[ClaimedEntry] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    lost_race: list[str] = field(default_factory=list)
    scanned: int = 0
    resume: str | None = None

    def merge(self, other: ClaimOutcome) -> None:
        self.claimed += other.claimed
        self.dead_lettered += other.dead_lettered
        self.gone += other.gone
        self.lost_race += other.lost_race


async def iter_pending(r: aioredis.Redis, keys: Keys, *, min_idle_ms: int | None = None, consumer: str | None = None,
                       page: int = 100, limit: int = 10_000, start: str = "-", end: str = "+") -> AsyncIterator[PendingEntry]:
    """Yield PEL rows from extended ``XPENDING`` (optionally ``IDLE min_idle_ms`` and a consumer filter).

    Reads ``page`` rows per call from ``start`` to ``end`` (inclusive IDs, or ``-``/``+``); the
    next page starts at the ID after the last row (:func:`streamcore.ids.successor`), until a
    short page, ``limit`` rows, or a row at the largest ID.

    Raises:
        redis.exceptions.ResponseError: NOGROUP when the stream or group is missing.
    """
    seen = 0
    while seen < limit:
        want = min(page, limit - seen)
        got = await r.xpending_range(keys.stream, keys.group, start, end, want, consumername=consumer, idle=min_idle_ms)
        for g in got:
            yield PendingEntry(g["message_id"], g["consumer"], int(g["time_since_delivered"]), int(g["times_delivered"]))
        seen += len(got)
        if len(got) < want:
            return
        after = successor(got[-1]["message_id"])
        if after is None:
            return
        start = after


async def scan_pending(r: aioredis.Redis, keys: Keys, *, min_idle_ms: int | None = None, consumer: str | None = None,
                       page: int = 100, limit: int = 10_000) -> list[PendingEntry]:
    """:func:`iter_pending` collected into a list."""
    return [row async for row in iter_pending(r, keys, min_idle_ms=min_idle_ms, consumer=consumer, page=page, limit=limit)]


async def ack_gone(r: aioredis.Redis, keys: Keys, entry_ids: Collection[str], *, component: str) -> None:
    """XACK entries whose data was trimmed or deleted, and log them (the caller counts the metric)."""
    if not entry_ids:
        return
    await r.xack(keys.stream, keys.group, *entry_ids)
    logger.warning("%s: %d pending entries had no data any more (trimmed or deleted), acked as gone: %s",
                   component, len(entry_ids), ", ".join(list(entry_ids)[:20]))


async def dead_letter_pending(r: aioredis.Redis, keys: Keys, entry_id: str, *, scripts: Scripts, consumer: str,
                              deliveries: int, error: str, delete_source: bool = False) -> DeadLetterResult:
    """:func:`streamcore.streams.dead_letter` for an entry we hold no data of: its ``order_id`` is
    read first with ``XRANGE id id`` so the orderId index of the DLQ is written too."""
    rows = await r.xrange(keys.stream, entry_id, entry_id)
    order_id = rows[0][1].get("order_id", "") if rows else ""
    return await dead_letter(r, keys, entry_id, scripts=scripts, consumer=consumer, deliveries=deliveries,
                             error=error, order_id=order_id, delete_source=delete_source)


async def _split_missing(r: aioredis.Redis, keys: Keys, missing: list[str]) -> tuple[list[str], list[str]]:
    """Split IDs XCLAIM did not return into (gone, lost_race) with ``XRANGE id id`` each (pipelined)."""
    if not missing:
        return [], []
    async with r.pipeline(transaction=False) as pipe:
        for entry_id in missing:
            pipe.xrange(keys.stream, entry_id, entry_id)
        found = await pipe.execute()
    gone = [i for i, rows in zip(missing, found) if not rows]
    race = [i for i, rows in zip(missing, found) if rows]
    return gone, race


async def claim_due(r: aioredis.Redis, keys: Keys, consumer: str, *, scripts: Scripts, base_ms: int,
                    max_deliveries: int, limit: int = 100, scan_limit: int = 10_000, exclude: Collection[str] = (), component: str = "consumer",
                    rand: Callable[[], float] = random.random, delete_source: bool = False, start: str = "-") -> ClaimOutcome:
    """Claim the pending entries whose back-off has passed, dead-letter those at the limit.

    Args:
        consumer: who claims (our consumer name).
        base_ms: ``CLAIM_IDLE_MS``; nothing idle less than this is touched.
        max_deliveries: entries delivered this many times are dead-lettered instead of claimed.
        limit: at most this many entries are claimed per call (the caller's free capacity).
        scan_limit: at most this many PEL rows are read per call (entries still backing off are
            skipped, so the scan goes on past them).
        exclude: entry IDs the caller is handling right now (never claimed from under itself).
        delete_source: dead-lettering also XDELs the entry (``DEAD_LETTER_XDEL``).
        start: where the PEL scan begins (inclusive ID); pass the previous call's
            :attr:`ClaimOutcome.resume` to go on page by page without reading the same rows again.

    Returns:
        claimed entries with data and new delivery count (old + 1), dead-lettered IDs, gone IDs
        (acked, logged), IDs another claimer won, the rows scanned and where to resume (None:
        the scan reached the end of the PEL).

    Raises:
        redis.exceptions.RedisError: NOGROUP, connection errors.
    """
    out = ClaimOutcome(resume=start)
    if limit <= 0:
        return out
    due: list[PendingEntry] = []
    excluded = set(exclude)
    last_row: str | None = None
    async with aclosing(iter_pending(r, keys, min_idle_ms=base_ms, limit=scan_limit, start=start)) as rows:
        async for row in rows:
            out.scanned += 1
            last_row = row.entry_id
            if row.entry_id in excluded or row.idle_ms < backoff_ms(row.deliveries, base_ms, rand=rand):
                continue
            if row.deliveries >= max_deliveries:
                # Guarded by owner and idle time as scanned: if the owner renewed its lease (it was
                # only slow) or someone claimed the entry since the scan, leave it alone.
                res = await dead_letter(r, keys, row.entry_id, scripts=scripts, consumer=consumer, deliveries=row.deliveries,
                                        error=f"gave up after {row.deliveries} deliveries (last owner {row.consumer})",
                                        owner=row.consumer, min_idle_ms=base_ms, delete_source=delete_source)
                if res.status == "dead_lettered":
                    out.dead_lettered.append(row.entry_id)
                    logger.error("%s: entry %s dead-lettered after %d deliveries (owner %s)", component, row.entry_id,
                                 row.deliveries, row.consumer)
                elif res.status == "gone":
                    out.gone.append(row.entry_id)
                continue
            due.append(row)
            if len(due) >= limit:  # stop here: reading on would fetch a page we do not use
                break
    more = len(due) >= limit or out.scanned >= scan_limit
    out.resume = successor(last_row) if more and last_row is not None else None
    if not due:
        if out.gone:
            logger.warning("%s: entries gone while dead-lettering: %s", component, ", ".join(out.gone))
        return out
    got = await r.xclaim(keys.stream, keys.group, consumer, base_ms, [row.entry_id for row in due])
    by_id = {entry_id: fields for entry_id, fields in got}
    for row in due:
        fields = by_id.get(row.entry_id)
        if fields:
            out.claimed.append(ClaimedEntry(row.entry_id, fields, row.deliveries + 1, row.consumer))
    missing = [row.entry_id for row in due if not by_id.get(row.entry_id)]
    gone, race = await _split_missing(r, keys, missing)
    await ack_gone(r, keys, gone, component=component)
    out.gone += gone
    out.lost_race += race
    return out


async def _delivery_counts(r: aioredis.Redis, keys: Keys, consumer: str, entry_ids: list[str]) -> dict[str, int]:
    """Delivery counts of ``entry_ids`` (ascending, owned by ``consumer``) from ``XPENDING`` over
    ``entry_ids[0]..entry_ids[-1]`` with the consumer filter: one call, unless the range also holds
    more than a page of the consumer's other entries, which are skipped."""
    wanted = set(entry_ids)
    # Usually the range holds exactly these entries: one XPENDING of that many rows answers it.
    rows = await r.xpending_range(keys.stream, keys.group, entry_ids[0], entry_ids[-1], len(entry_ids),
                                  consumername=consumer)
    counts = {row["message_id"]: int(row["times_delivered"]) for row in rows if row["message_id"] in wanted}
    if len(counts) == len(wanted) or len(rows) < len(entry_ids):
        return counts
    counts = {}
    async with aclosing(iter_pending(r, keys, consumer=consumer, start=entry_ids[0], end=entry_ids[-1],
                                     page=max(len(wanted), 10), limit=2**62)) as rows:
        async for row in rows:
            if row.entry_id in wanted:
                counts[row.entry_id] = row.deliveries
                if len(counts) == len(wanted):
                    break
    return counts


async def iter_autoclaim(r: aioredis.Redis, keys: Keys, consumer: str, *, min_idle_ms: int, count: int = 100,
                         limit: int = 10_000, component: str = "reclaimer") -> AsyncIterator[ClaimOutcome]:
    """``XAUTOCLAIM`` from ``0-0`` following the cursor until it returns ``0-0`` or ``limit`` entries
    were claimed, yielding one :class:`ClaimOutcome` per page (``claimed`` and ``gone``).

    Each call asks for ``COUNT min(count, limit - claimed so far)``, so exactly ``limit`` entries
    are claimed when that many are due, never more. Every claimed entry's delivery count goes up
    by 1 (non-JUSTID form). The deleted IDs of each reply (element 3) are XACKed to be sure and
    reported as gone. Delivery counts (XAUTOCLAIM does not return them) come with the claim: each
    page is one pipelined round trip of the ``XAUTOCLAIM`` and an ``XPENDING`` of the consumer's
    rows from the cursor on, with a second ``XPENDING`` over the page's ID range only when the consumer already
    owned entries among them. The next page is claimed only when the caller asks
    for it, so a caller that handles each page first holds one page at a time.

    Raises:
        redis.exceptions.RedisError: NOGROUP, connection errors.
    """
    cursor = "0-0"
    left = limit
    while left > 0:
        want = min(count, left)
        # One round trip: the claim, and the delivery counts of what it claimed. Everything
        # claimed is ours and at or after the cursor, so the first ``want`` of our PEL rows from
        # the cursor on hold them, unless we already owned entries among them (not idle enough
        # to be swept), or another client acked one in between: then _delivery_counts reads the
        # rest. A pipeline, not MULTI/EXEC: the least-privilege ACL user grants no MULTI.
        async with r.pipeline(transaction=False) as pipe:
            pipe.xautoclaim(keys.stream, keys.group, consumer, min_idle_ms, cursor, count=want)
            pipe.xpending_range(keys.stream, keys.group, cursor, "+", want, consumername=consumer)
            reply, rows = await pipe.execute()
        cursor, entries = reply[0], reply[1]
        page = ClaimOutcome()
        page.gone = list(reply[2]) if len(reply) > 2 else []
        claimed = []
        for entry_id, fields in entries:
            if fields:
                claimed.append((entry_id, fields))
            else:  # defensive: a nil body means the data is gone
                page.gone.append(entry_id)
        if page.gone:
            await ack_gone(r, keys, page.gone, component=component)
        if claimed:
            counts = {row["message_id"]: int(row["times_delivered"]) for row in rows}
            if any(i not in counts for i, _ in claimed):
                # XAUTOCLAIM walks the PEL in ID order, so the page is sorted.
                counts = await _delivery_counts(r, keys, consumer, [i for i, _ in claimed])
            page.claimed = [ClaimedEntry(i, f, counts.get(i, 1)) for i, f in claimed]
            left -= len(claimed)
        if page.claimed or page.gone:
            yield page
        if cursor == "0-0":
            return


async def autoclaim_sweep(r: aioredis.Redis, keys: Keys, consumer: str, *, min_idle_ms: int, count: int = 100,
                          limit: int = 10_000, component: str = "reclaimer") -> ClaimOutcome:
    """:func:`iter_autoclaim` collected into one :class:`ClaimOutcome` (at most ``limit`` claimed;
    holds them all: callers with a large limit iterate the pages instead).

    Raises:
        redis.exceptions.RedisError: NOGROUP, connection errors.
    """
    out = ClaimOutcome()
    async with aclosing(iter_autoclaim(r, keys, consumer, min_idle_ms=min_idle_ms, count=count, limit=limit,
                                       component=component)) as pages:
        async for page in pages:
            out.merge(page)
    return out


# KEYS: stream. ARGV: group, consumer, entry ids...
_RENEW = """
local renewed = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    table.insert(renewed, ARGV[i])
  end
end
return renewed
"""

# KEYS: stream, heartbeat key of the consumer. ARGV: group, consumer, min quiet ms, caller's name.
# Returns 1 deleted, 0 not found, -1 is the caller, -2 heartbeat present, -3 has pending, -4 not quiet long enough.
_DELETE_CONSUMER = """
if ARGV[2] == ARGV[4] then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
local cs = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, c in ipairs(cs) do
  local info = {}
  for j = 1, #c, 2 do info[c[j]] = c[j + 1] end
  if info['name'] == ARGV[2] then
    if tonumber(info['pending']) ~= 0 then return -3 end
    local quiet = tonumber(info['idle'])
    if info['inactive'] ~= nil and tonumber(info['inactive']) >= 0 then quiet = tonumber(info['inactive']) end
    if quiet < tonumber(ARGV[3]) then return -4 end
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
    return 1
  end
end
return 0
"""

# KEYS: stream, heartbeat key of the consumer. ARGV: group, consumer.
# Returns 1 left (deleted), 0 not a member, -3 still owns pending entries (kept).
_LEAVE = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return -3 end
redis.call('DEL', KEYS[2])
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  if c[2] == ARGV[2] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
    return 1
  end
end
return 0
"""


class ClaimScripts:
    """Lua scripts of this module, registered once per client."""

    def __init__(self, r: aioredis.Redis) -> None:
        self.renew = r.register_script(_RENEW)
        self.delete_consumer = r.register_script(_DELETE_CONSUMER)
        self.leave = r.register_script(_LEAVE)


async def renew_leases(r: aioredis.Redis, keys: Keys, consumer: str, entry_ids: Collection[str], *,
                       scripts: ClaimScripts) -> set[str]:
    """Reset the idle time of entries ``consumer`` still owns (``XCLAIM ... JUSTID``, no delivery counted).

    Owner check (``XPENDING id id 1``) and claim run in one Lua script, so a renewal never takes
    an entry back from a consumer that claimed it meanwhile (case C05).

    Returns:
        the IDs renewed; the others were claimed by someone else, acked, or are gone.
    """
    if not entry_ids:
        return set()
    renewed = await scripts.renew(keys=[keys.stream], args=[keys.group, consumer, *entry_ids], client=r)
    return set(renewed)


async def leave_group(r: aioredis.Redis, keys: Keys, consumer: str, *, scripts: ClaimScripts) -> str:
    """Delete ``consumer`` (the caller itself, at the end of a clean stop) from the group if its PEL is empty.

    ``XPENDING <stream> <group> - + 1 <consumer>``, then ``DEL`` of its heartbeat key and
    ``XGROUP DELCONSUMER``, in one Lua script: a consumer that still owns entries stays a member
    so that they keep their owner and delivery counts until the reclaimer claims them (DELCONSUMER
    would drop them from the PEL: case C08). Call it only once the consumer reads and claims no more.

    Returns:
        ``left`` (deleted), ``pending`` (kept: it owns entries) or ``not_found``.
    Raises:
        redis.exceptions.RedisError: the script failed (NOGROUP when the group is gone).
    """
    code = int(await scripts.leave(keys=[keys.stream, keys.heartbeat(consumer)], args=[keys.group, consumer], client=r))
    return {1: "left", 0: "not_found", -3: "pending"}[code]


#: Reasons :func:`delete_consumer_if_dead` gives for not deleting.
DELETE_RESULTS = {1: "deleted", 0: "not_found", -1: "self", -2: "heartbeat", -3: "pending", -4: "active"}


async def delete_consumer_if_dead(r: aioredis.Redis, keys: Keys, consumer: str, *, caller: str, inactive_ttl_ms: int,
                                  scripts: ClaimScripts) -> str:
    """Delete ``consumer`` from the group only if it is dead, owns nothing and is not ``caller``.

    Dead means: no heartbeat key (``keys.heartbeat``) and quiet for ``inactive_ttl_ms`` — quiet is
    XINFO CONSUMERS ``inactive`` where the server reports it (Redis >= 7.2, Valkey; ``-1`` = never
    read, then ``idle``), else ``idle`` (Redis 7.0). The checks and ``XGROUP DELCONSUMER`` run in one
    Lua script, so an entry delivered to the consumer between check and delete cannot be lost
    (DELCONSUMER of a consumer with pending entries drops them: case C08).

    Returns:
        one of ``deleted``, ``not_found``, ``self``, ``heartbeat``, ``pending``, ``active``.
    """
    code = await scripts.delete_consumer(keys=[keys.stream, keys.heartbeat(consumer)],
                                         args=[keys.group, consumer, inactive_ttl_ms, caller], client=r)
    return DELETE_RESULTS[int(code)]
