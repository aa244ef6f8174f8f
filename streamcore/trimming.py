"""Safe trimming of the order stream and detection of loss (cases C15, C16).

The reclaimer runs :func:`trim_pass` once per pass:

1. **Group floor** — for every group (``XINFO GROUPS``): the oldest pending ID (``XPENDING``
   summary ``min``) and the ID right after ``last-delivered-id``; the group floor is the smallest
   of these over all groups. Nothing at or above it may be removed. A group at the largest ID
   (:data:`streamcore.ids.MAX_ID`, put there with ``XGROUP SETID``) has had everything delivered
   that can ever be: only its pending entries hold the floor (:data:`~streamcore.ids.MAX_ID` stands
   for "no limit"). Such a group, like any group whose ``last-delivered-id`` is past the stream's
   ``last-generated-id`` and the clock (:func:`streamcore.groups.is_ahead`), will never be
   delivered an entry added from now on: :attr:`TrimReport.ahead` names it so the caller can say so.
2. **Retention point** — keep at least ``STREAM_MAXLEN`` newest entries: when ``XLEN`` exceeds it,
   the first kept entry is the ``excess``-th (at most ``max_step`` entries per pass, so a huge
   backlog is trimmed over several passes), found by a Lua script that walks ``XRANGE`` on the
   server in chunks of :data:`WALK_CHUNK` and returns only IDs, so the entries' data never
   reaches this process (memory stays bounded whatever ``max_step`` and the entry sizes).
3. **Floor** = min(group floor, retention point, first entry). With an empty stream the first
   entry is replaced by the ID after ``last-generated-id``: every entry added later is above it,
   so a floor can never drop orders accepted after it was published (a group at the largest ID
   would otherwise publish the largest ID and every new order would be trimmed by its own
   ``XADD``). It is published in ``keys.trim_floor`` (every
   producer ``XADD`` then carries ``MINID ~ floor``, see :func:`streamcore.streams.append_order`) and
   applied with ``XTRIM MINID ~ floor``. ``~`` only drops whole radix-tree nodes below the floor,
   so it never passes it. Without any group there is no safe floor: the key is deleted and
   nothing is trimmed.
4. **Loss detection** — entries deleted before a group read them (a ``MAXLEN`` on another path,
   ``XDEL``, a manual trim) number ``entries-added - entries-read - entries still after
   last-delivered-id`` when the group's ``entries-read`` is known; otherwise only an ``XDEL``
   above ``last-delivered-id`` (``max-deleted-entry-id``) is detectable, counted 1 per new
   ``max-deleted-entry-id`` (details in :func:`detect_loss`); what was already counted
   is remembered per group in ``keys.lost_reported``, the new part is added to
   ``keys.lost_counter`` (INCRBY), logged as an error and counted in
   ``orderstream_entries_lost_total``.
5. **Gone pending entries** — pending IDs below the first entry (``XPENDING - (first``; or up to
   ``last-generated-id`` when the stream is empty) have no data any more: they are XACKed and
   reported as gone, so no phantom pending entry stays forever. Read and acked in pages of
   :data:`PAGE` rows.

IDs after another are computed with :func:`streamcore.ids.successor` (an inclusive start), never
as ``"(" + id``: Redis refuses an exclusive start at the largest ID.

Caveat: a published floor is a snapshot. A group created later at ``0`` does not see entries the
floor let producers trim before the next pass; create groups before producing, as we do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge

from streamcore.groups import is_ahead, settled_last_generated
from streamcore.ids import MAX_ID, compare, successor
from streamcore.keys import Keys
from streamcore.loss import removed_before_delivery
from streamcore.streams import stream_state

logger = logging.getLogger(__name__)

#: PEL rows read and acked per call when acking gone entries.
PAGE = 100
#: Stream entries the walk script reads per call (server-side; only IDs come back).
WALK_CHUNK = 100

# KEYS: stream. ARGV: inclusive start ID, count. Returns {n, last id ('' when n == 0)}: how many
# entries XRANGE start + COUNT count found and the ID of the last one, without their data.
_WALK = """
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
if #rows == 0 then return {0, ''} end
return {#rows, rows[#rows][1]}
"""


@dataclass(frozen=True)
class TrimMetrics:
    """Trimming metrics: ``lost`` (entries deleted before delivery), ``trimmed``, ``floor_ms``."""

    lost: Counter
    trimmed: Counter
    floor_ms: Gauge


def trim_metrics(registry: CollectorRegistry) -> TrimMetrics:
    """Create the trimming metrics in ``registry``."""
    return TrimMetrics(
        lost=Counter("orderstream_entries_lost_total", "Entries deleted or trimmed before a group read them.", registry=registry),
        trimmed=Counter("orderstream_entries_trimmed_total", "Entries removed by XTRIM MINID below the safe floor.", registry=registry),
        floor_ms=Gauge("orderstream_trim_floor_ms", "Millisecond part of the published safe trim floor.", registry=registry),
    )


@dataclass
class TrimReport:
    """What :func:`trim_pass` found and did.

    Attributes:
        group_floor: smallest ID any group still needs (None: no group).
        retention_floor: first entry kept by ``STREAM_MAXLEN`` (None: nothing to trim by retention).
        floor: the published floor (None: nothing published).
        trimmed: entries removed by XTRIM (its reply).
        lost: entries newly detected as deleted before delivery (added to ``keys.lost_counter``).
        gone: pending IDs without data that were XACKed.
        ahead: groups whose ``last-delivered-id`` is past the stream's ``last-generated-id`` and the clock (``ahead``)
            (``XGROUP SETID`` into the future, e.g. to the largest ID): entries added from now
            on are below their position, so ``XREADGROUP >`` will never deliver them.
    """

    group_floor: str | None = None
    retention_floor: str | None = None
    floor: str | None = None
    trimmed: int = 0
    lost: int = 0
    gone: list[str] = field(default_factory=list)
    ahead: list[str] = field(default_factory=list)


def _min_id(ids: list[str]) -> str | None:
    best = None
    for i in ids:
        if best is None or compare(i, best) < 0:
            best = i
    return best


async def group_floor(r: aioredis.Redis, keys: Keys, groups: list[dict]) -> str | None:
    """Smallest ID any group still needs: min over groups of (oldest pending, next after last-delivered).

    A group at :data:`~streamcore.ids.MAX_ID` needs nothing after its position (nothing can come
    after it); it contributes :data:`~streamcore.ids.MAX_ID` (no limit) besides its pending entries.
    None when there is no group.
    """
    candidates: list[str] = []
    for g in groups:
        candidates.append(successor(g["last-delivered-id"]) or MAX_ID)
        if int(g.get("pending") or 0):
            summary = await r.xpending(keys.stream, g["name"])
            if summary.get("min"):
                candidates.append(summary["min"])
    return _min_id(candidates)


async def _walk(r: aioredis.Redis, stream: str, start: str, count: int, *, chunk: int = WALK_CHUNK):
    """Yield ``(n, last_id)`` per chunk while walking ``count`` entries from ``start`` (inclusive)
    with the walk script; stops early at the stream's end. Only IDs cross the wire."""
    script = r.register_script(_WALK)
    left = count
    while left > 0:
        want = min(chunk, left)
        n, last = await script(keys=[stream], args=[start, want], client=r)
        n = int(n)
        if n:
            yield n, last
        left -= n
        nxt = successor(last) if n else None
        if n < want or nxt is None:
            return
        start = nxt


async def count_after(r: aioredis.Redis, stream: str, entry_id: str, *, cap: int) -> int:
    """How many entries come strictly after ``entry_id`` (at most ``cap``), counted on the
    server in chunks (0 after the largest ID)."""
    start = successor(entry_id)
    if start is None:
        return 0
    return sum([n async for n, _ in _walk(r, stream, start, cap)])


async def retention_floor(r: aioredis.Redis, keys: Keys, maxlen: int, *, max_step: int = 10_000) -> str | None:
    """ID of the first entry to keep so that at least ``maxlen`` newest entries stay.

    At most ``max_step`` entries are passed per call. None when ``XLEN <= maxlen``. The entries
    are walked on the server (:data:`WALK_CHUNK` per call); only IDs are read here.
    """
    excess = await r.xlen(keys.stream) - maxlen
    if excess <= 0:
        return None
    take = min(excess, max_step)
    seen, last = 0, None
    async for n, last in _walk(r, keys.stream, "-", take + 1):
        seen += n
    return last if seen == take + 1 else None


async def detect_loss(r: aioredis.Redis, keys: Keys, info: dict, groups: list[dict], *, count_cap: int = 100_000) -> int:
    """Count entries deleted before some group read them (see the module docstring, step 4).

    Per group, with ``added`` = XINFO STREAM ``entries-added`` and ``read`` = XINFO GROUPS
    ``entries-read`` (0 for a group that never read, i.e. ``last-delivered-id`` 0-0), the entries
    the group can still never read number ``added - read - surviving``, where ``surviving`` is
    the count of entries after ``last-delivered-id`` (``XLEN`` when the first entry is already past
    it, else a capped exclusive ``XRANGE``). Trimming does not move ``max-deleted-entry-id`` (only
    XDEL does), so the count is what catches a MAXLEN cut. When ``entries-read`` is unknown
    (None), only XDEL above ``last-delivered-id`` is detectable: 1 per new ``max-deleted-entry-id``.

    Returns:
        the newly detected number (already added to ``keys.lost_counter``).
    """
    max_deleted = info.get("max-deleted-entry-id") or "0-0"
    added = info.get("entries-added")
    first = info.get("first-entry")
    first_id = first[0] if first else None
    length = int(info.get("length") or 0)
    new_total = 0
    for g in groups:
        last = g["last-delivered-id"]
        head_past = first_id is None or compare(first_id, last) > 0
        tombstone = compare(max_deleted, last) > 0
        # The same yes/no test the producer's /stream/info uses, so both always agree.
        if not removed_before_delivery(info, last, g.get("entries-read")):
            continue
        read = g.get("entries-read")
        if read is None and last == "0-0":
            read = 0
        prev = await r.hget(keys.lost_reported, g["name"])
        prev_max, _, prev_total_s = (prev or "0-0|0").partition("|")
        prev_total = int(prev_total_s or 0)
        if read is not None and added is not None:
            if head_past:
                surviving = length
            else:
                surviving = await count_after(r, keys.stream, last, cap=count_cap)
            total = max(0, int(added) - int(read) - surviving)
        else:
            total = prev_total + (1 if tombstone and prev_max != max_deleted else 0)
        delta = total - prev_total
        if delta > 0:
            await r.incrby(keys.lost_counter, delta)
            new_total += delta
            logger.error("LOSS: %d entries of %s were deleted or trimmed before group %s read them "
                         "(last-delivered-id %s, first entry %s, max-deleted-entry-id %s)", delta, keys.stream,
                         g["name"], last, first_id, max_deleted)
        value = f"{max_deleted}|{max(total, prev_total)}"
        if prev != value:
            await r.hset(keys.lost_reported, g["name"], value)
    return new_total


async def ack_gone_below_first(r: aioredis.Redis, keys: Keys, info: dict, groups: list[dict], *,
                               cap: int = 10_000, page: int = PAGE) -> list[str]:
    """XACK pending entries of every group whose IDs lie below the first entry (their data is gone).

    Reads ``XPENDING - <upper> page`` and acks it, page after page (acked rows leave the PEL, so
    each page starts at ``-`` again), at most ``cap`` per group. Returns the acked IDs.
    """
    first = info.get("first-entry")
    upper = "(" + first[0] if first else info.get("last-generated-id") or "0-0"
    if upper == "0-0":
        return []
    gone: list[str] = []
    for g in groups:
        if not int(g.get("pending") or 0):
            continue
        acked: list[str] = []
        while len(acked) < cap:
            want = min(page, cap - len(acked))
            ids = [row["message_id"] for row in await r.xpending_range(keys.stream, g["name"], "-", upper, want)]
            if ids:
                await r.xack(keys.stream, g["name"], *ids)
                acked += ids
            if len(ids) < want:
                break
        if acked:
            logger.warning("group %s: %d pending entries below the first entry %s had no data; acked as gone: %s",
                           g["name"], len(acked), upper, ", ".join(acked[:20]))
            gone += acked
    return gone


async def trim_pass(r: aioredis.Redis, keys: Keys, *, maxlen: int, max_step: int = 10_000, approximate: bool = True,
                    metrics: TrimMetrics | None = None) -> TrimReport:
    """Detect loss, ack gone pending entries, publish the safe floor and trim below it.

    Args:
        maxlen: ``STREAM_MAXLEN``, the retention in entries.
        max_step: most entries removed by retention in one pass.
        approximate: ``XTRIM MINID ~`` (default; whole nodes only) or exact ``=``.

    Raises:
        redis.exceptions.RedisError: connection errors. A missing stream is not an error
        (empty report).
    """
    report = TrimReport()
    state = await stream_state(r, keys)
    if state is None:
        return report
    info, groups = state
    report.lost = await detect_loss(r, keys, info, groups)
    report.gone = await ack_gone_below_first(r, keys, info, groups)
    if report.gone:
        groups = await r.xinfo_groups(keys.stream)
    last_generated = await settled_last_generated(r, keys.stream, info.get("last-generated-id") or "0-0",
                                                  [g["last-delivered-id"] for g in groups])
    report.ahead = [g["name"] for g in groups if is_ahead(g["last-delivered-id"], last_generated)]
    report.group_floor = await group_floor(r, keys, groups)
    if report.group_floor is None:
        await r.delete(keys.trim_floor)
        logger.info("no consumer group on %s: no safe trim floor, nothing trimmed", keys.stream)
        return report
    report.retention_floor = await retention_floor(r, keys, maxlen, max_step=max_step)
    if report.retention_floor is None:
        first = info.get("first-entry")
        # An empty stream: the next entry will be above last-generated-id, so the floor stays at
        # or below that; a floor above it would trim the orders accepted next (see step 3).
        bound = first[0] if first else successor(last_generated) or MAX_ID
        floor = _min_id([report.group_floor, bound])
    else:
        floor = _min_id([report.group_floor, report.retention_floor])
    report.floor = floor
    await r.set(keys.trim_floor, floor)
    report.trimmed = int(await r.xtrim(keys.stream, minid=floor, approximate=approximate))
    if metrics is not None:
        metrics.lost.inc(report.lost)
        metrics.trimmed.inc(report.trimmed)
        metrics.floor_ms.set(int(floor.split("-")[0]))
    return report
