"""The read endpoints over every partition (``STREAM_PARTITIONS > 1`` or Redis Cluster mode).

Each function takes the key names of every partition (``settings.partitions``) and answers with
the shape :mod:`producer.queries` gives for one stream; with a single partition it *is* that
function's answer. With several:

* **history**, **dead letters**, **pending entries**: each partition is read as one stream would
  be (same ``start``/``end``/``limit``/byte cap), then the pages are merged by entry ID (time, then
  sequence, then partition index). The page ends at the smallest last ID among partitions that
  have more, so an exclusive ``next`` cursor (``"(<id>"``) given to every partition skips
  nothing; a page never ends between two entries that share an ID in different partitions.
  Last-N reads (``count``) mirror this from the newest end.
* **stream info**: sums (length, pending, lag, dead letters, lost entries), the oldest first and
  newest last entry, groups and consumers merged by name; each partition's own answer is in the
  added ``partitions`` list.
* **order status**: asked on the order's own partition (:func:`streamcore.keys.partition_of`).

Entry IDs of different partitions are independent: two partitions can hold the same ID. Pending
entries and dead letters therefore carry an added ``partition`` field (its index).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from producer import queries
from producer.queries import GroupHealth, Page, entry_size, order_item, dead_letter_item, read_forward, read_last
from streamcore import ids
from streamcore.groups import ABANDONED_AFTER_MS, MERGE_ORDER, GroupState
from streamcore.keys import Keys, partition_of

Parts = tuple[Keys, ...] | list[Keys]



def _key(entry_id: str) -> tuple[int, int]:
    return ids.parse_id(entry_id)


def _merge_forward(pages: list[Page], *, limit: int, max_bytes: int) -> tuple[list[tuple[int, str, dict]], str | None, bool]:
    """Merge forward pages of every partition (see the module docstring).

    Returns:
        ``(rows, next, truncated)`` with rows ``(partition, entry_id, fields)`` oldest first.
    """
    rows = sorted(((_key(i), p, i, f) for p, page in enumerate(pages) for i, f in page.entries), key=lambda r: (r[0], r[1]))
    bounds = [_key(page.entries[-1][0]) for page in pages if page.next is not None and page.entries]
    more = bool(bounds)
    if bounds:
        bound = min(bounds)
        kept = [r for r in rows if r[0] <= bound]
        more = True
        rows = kept
    taken: list = []
    size = 0
    truncated = any(page.truncated for page in pages)
    for row in rows:
        if len(taken) >= limit:
            more = True
            break
        s = entry_size(row[3])
        if taken and size + s > max_bytes:
            truncated = more = True
            break
        taken.append(row)
        size += s
    cut = len(taken)
    if cut < len(rows) and cut and rows[cut][0] == taken[-1][0]:
        # Never end a page between two entries with the same ID (the cursor is exclusive).
        same = [r for r in taken if r[0] != taken[-1][0]]
        taken = same or taken + [r for r in rows[cut:] if r[0] == taken[-1][0]]
    nxt = ("(" + taken[-1][2]) if taken and more else None
    return [(p, i, f) for _, p, i, f in taken], nxt, truncated and bool(taken)


async def history(r: aioredis.Redis, parts: Parts, *, start: str = "-", end: str = "+", count: int | None = None,
                  limit: int, max_bytes: int) -> dict[str, Any]:
    """GET /orders/history over every partition: the answer of :func:`producer.queries.history`
    (``{"orders", "count", "next", "before", "truncated"}``), merged by entry ID."""
    if len(parts) == 1:
        return await queries.history(r, parts[0], start=start, end=end, count=count, limit=limit, max_bytes=max_bytes)
    if count is not None:
        pages = await asyncio.gather(*(read_last(r, k.stream, start, end, count=count, max_bytes=max_bytes) for k in parts))
        rows = sorted(((_key(i), p, i, f) for p, page in enumerate(pages) for i, f in page.entries), key=lambda r: (r[0], r[1]))
        bounds = [_key(page.entries[0][0]) for page in pages if page.before is not None and page.entries]
        truncated = False
        if bounds:
            bound = max(bounds)
            truncated = any(r[0] < bound for r in rows)
            rows = [r for r in rows if r[0] >= bound]
        taken: list = []
        size = 0
        for row in reversed(rows):
            if len(taken) >= count:
                break
            s = entry_size(row[3])
            if taken and size + s > max_bytes:
                truncated = True
                break
            taken.append(row)
            size += s
        taken.reverse()
        if truncated and len(taken) < len(rows) and taken:
            cut = len(rows) - len(taken)
            if rows[cut - 1][0] == taken[0][0]:
                taken = [r for r in taken if r[0] != taken[0][0]] or taken
        return {
            "orders": [order_item(i, f) for _, _, i, f in taken],
            "count": len(taken),
            "next": None,
            "before": ("(" + taken[0][2]) if truncated and taken else None,
            "truncated": truncated,
        }
    pages = await asyncio.gather(*(read_forward(r, k.stream, start, end, limit=limit, max_bytes=max_bytes) for k in parts))
    merged, nxt, truncated = _merge_forward(list(pages), limit=limit, max_bytes=max_bytes)
    return {
        "orders": [order_item(i, f) for _, i, f in merged],
        "count": len(merged),
        "next": nxt,
        "before": None,
        "truncated": truncated,
    }


async def dead_letters(r: aioredis.Redis, parts: Parts, *, start: str = "-", end: str = "+", limit: int,
                       max_bytes: int, dlq_name: str = "") -> dict[str, Any]:
    """GET /dead-letters over every partition's dead-letter stream: the answer of
    :func:`producer.queries.dead_letters`, merged by dead-letter ID, each item with its
    ``partition``; ``stream`` is ``dlq_name`` (DLQ_STREAM) and ``length`` the sum of XLENs."""
    if len(parts) == 1 and not dlq_name:
        return await queries.dead_letters(r, parts[0], start=start, end=end, limit=limit, max_bytes=max_bytes)
    pages = await asyncio.gather(*(read_forward(r, k.dlq, start, end, limit=limit, max_bytes=max_bytes) for k in parts))
    merged, nxt, truncated = _merge_forward(list(pages), limit=limit, max_bytes=max_bytes)
    lengths = await asyncio.gather(*(r.xlen(k.dlq) for k in parts))
    return {
        "stream": dlq_name or parts[0].dlq,
        "length": sum(int(n) for n in lengths),
        "deadLetters": [{**dead_letter_item(i, f), "partition": p} for p, i, f in merged],
        "count": len(merged),
        "next": nxt,
        "truncated": truncated,
    }


async def pending(r: aioredis.Redis, parts: Parts, *, consumer: str | None = None, min_idle_ms: int | None = None,
                  start: str = "-", end: str = "+", limit: int, stream_name: str = "") -> dict[str, Any]:
    """GET /orders/pending over every partition: the answer of :func:`producer.queries.pending`
    with ``count`` summed, ``lowest``/``highest`` the extremes, consumers merged by name (pending
    summed), and one page of entries merged by ID (each with its ``partition``)."""
    if len(parts) == 1 and not stream_name:
        return await queries.pending(r, parts[0], consumer=consumer, min_idle_ms=min_idle_ms, start=start, end=end,
                                     limit=limit)
    answers = await asyncio.gather(*(queries.pending(r, k, consumer=consumer, min_idle_ms=min_idle_ms, start=start,
                                                     end=end, limit=limit) for k in parts))
    rows = sorted(((_key(e["id"]), p, e) for p, a in enumerate(answers) for e in a["entries"]),
                  key=lambda row: (row[0], row[1]))
    bounds = [_key(a["entries"][-1]["id"]) for a in answers if a["next"] is not None and a["entries"]]
    more = bool(bounds)
    if bounds:
        rows = [row for row in rows if row[0] <= min(bounds)]
    if len(rows) > limit:
        more = True
        cut = limit
        if rows[cut][0] == rows[cut - 1][0]:
            same = [row for row in rows[:cut] if row[0] != rows[cut - 1][0]]
            rows = same or [row for row in rows if row[0] <= rows[cut - 1][0]]
        else:
            rows = rows[:cut]
    consumers: dict[str, dict[str, Any]] = {}
    for a in answers:
        for c in a["consumers"]:
            key = c.get("name") if c.get("name") is not None else "\0" + str(c.get("nameBase64"))
            if key in consumers:
                consumers[key]["pending"] += c["pending"]
            else:
                consumers[key] = dict(c)
    present = [a for a in answers if a["exists"]]
    lows = [a["lowest"] for a in present if a["lowest"]]
    highs = [a["highest"] for a in present if a["highest"]]
    return {
        "stream": stream_name or parts[0].stream,
        "group": parts[0].group,
        "exists": bool(present),
        "count": sum(a["count"] for a in answers),
        "lowest": min(lows, key=_key) if lows else None,
        "highest": max(highs, key=_key) if highs else None,
        "consumers": list(consumers.values()),
        "entries": [{**e, "partition": p} for _, p, e in rows],
        "next": ("(" + rows[-1][2]["id"]) if rows and more else None,
    }


def _combine_states(states: list[GroupState]) -> GroupState:
    for state in MERGE_ORDER:
        if state in states:
            return state
    return states[0]


def _combine_health(healths: list[GroupHealth]) -> GroupHealth:
    by_name: dict[str, list[GroupState]] = {}
    for h in healths:
        for name, state in h.groups:
            by_name.setdefault(name, []).append(state)
    return GroupHealth(any(h.stream_exists for h in healths),
                       [(name, _combine_states(states)) for name, states in by_name.items()])


async def group_health(r: aioredis.Redis, parts: Parts, *, abandoned_after_ms: int = ABANDONED_AFTER_MS) -> GroupHealth:
    """:func:`producer.queries.group_health` of every partition; a group's state is the first of
    ``ahead``, ``abandoned``, ``missing``, ``no-stream``, ``ok`` that any partition shows."""
    if len(parts) == 1:
        return await queries.group_health(r, parts[0], abandoned_after_ms=abandoned_after_ms)
    healths = await asyncio.gather(*(queries.group_health(r, k, abandoned_after_ms=abandoned_after_ms) for k in parts))
    return _combine_health(list(healths))


def _sum_or_none(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]


def _merge_consumers(lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for consumers in lists:
        for c in consumers:
            key = c.get("name") if c.get("name") is not None else "\0" + str(c.get("nameBase64"))
            if key not in out:
                out[key] = dict(c)
                continue
            seen = out[key]
            seen["pending"] += c["pending"]
            seen["idleMs"] = min(seen["idleMs"], c["idleMs"])
            inactive = [v for v in (seen["inactiveMs"], c["inactiveMs"]) if v is not None]
            seen["inactiveMs"] = min(inactive) if inactive else None
    return list(out.values())


async def stream_info(r: aioredis.Redis, parts: Parts, *, abandoned_after_ms: int = ABANDONED_AFTER_MS,
                      stream_name: str = "", dlq_name: str = "") -> tuple[dict[str, Any], GroupHealth]:
    """GET /stream/info over every partition: the shape of :func:`producer.queries.stream_info`
    with lengths, pending counts, lag (None when any partition cannot tell), entries added, lost
    entries and dead letters summed; ``firstEntry`` the oldest and ``lastEntry`` the newest of any
    partition; groups merged by name (consumers merged by name: pending summed, the smallest
    ``idleMs``/``inactiveMs``). Added: ``partitions``, each partition's own answer, in index order."""
    if len(parts) == 1 and not stream_name:
        return await queries.stream_info(r, parts[0], abandoned_after_ms=abandoned_after_ms)
    got = await asyncio.gather(*(queries.stream_info(r, k, abandoned_after_ms=abandoned_after_ms) for k in parts))
    answers = [a for a, _ in got]
    health = _combine_health([h for _, h in got])
    present = [a for a in answers if a["exists"]]
    firsts = [a["firstEntry"] for a in present if a["firstEntry"]]
    lasts = [a["lastEntry"] for a in present if a["lastEntry"]]
    generated = [a["lastGeneratedId"] for a in present if a["lastGeneratedId"]]
    deleted = [a["maxDeletedEntryId"] for a in present if a["maxDeletedEntryId"]]
    recorded = [a["recordedFirstEntryId"] for a in present if a["recordedFirstEntryId"]]
    groups: dict[str, list[dict[str, Any]]] = {}
    for a in present:
        for g in a["groups"]:
            key = g.get("name") if g.get("name") is not None else "\0" + str(g.get("nameBase64"))
            groups.setdefault(key, []).append(g)
    states = dict(health.groups)
    merged_groups = []
    for key, gs in groups.items():
        consumers = _merge_consumers([g["consumers"] for g in gs])
        last_ids = [g["lastDeliveredId"] for g in gs if g["lastDeliveredId"]]
        merged = {k: v for k, v in gs[0].items() if k in ("name", "nameBase64")}
        merged.update(
            state=states.get(gs[0].get("name"), _combine_states([g["state"] for g in gs])),
            consumerCount=len(consumers),
            pending=sum(g["pending"] for g in gs),
            lag=_sum_or_none([g["lag"] for g in gs]) if len(gs) == len(present) else None,
            lastDeliveredId=max(last_ids, key=_key) if last_ids else None,
            entriesRead=_sum_or_none([g["entriesRead"] for g in gs]),
            undeliveredDeleted=any(g["undeliveredDeleted"] for g in gs),
            paused=any(g.get("paused") for g in gs),
            consumers=consumers,
        )
        aged = [g for g in gs if g.get("oldestPendingAgeMs") is not None]
        oldest = max(aged, key=lambda g: g["oldestPendingAgeMs"]) if aged else None
        merged.update(oldestPendingId=oldest["oldestPendingId"] if oldest else None,
                      oldestPendingAgeMs=oldest["oldestPendingAgeMs"] if oldest else None)
        merged_groups.append(merged)
    answer: dict[str, Any] = {
        "stream": stream_name or parts[0].stream,
        "exists": bool(present),
        "length": sum(a["length"] for a in answers),
        "firstEntry": min(firsts, key=lambda e: _key(e["id"])) if firsts else None,
        "lastEntry": max(lasts, key=lambda e: _key(e["id"])) if lasts else None,
        "lastGeneratedId": max(generated, key=_key) if generated else None,
        "maxDeletedEntryId": max(deleted, key=_key) if deleted else None,
        "entriesAdded": _sum_or_none([a["entriesAdded"] for a in present]) if present else None,
        "recordedFirstEntryId": min(recorded, key=_key) if recorded else None,
        "lostEntries": sum(a["lostEntries"] for a in answers),
        "failedDeliveries": sum(a["failedDeliveries"] for a in answers),
        "deadLetters": {"stream": dlq_name or parts[0].dlq, "length": sum(a["deadLetters"]["length"] for a in answers)},
        "group": parts[0].group,
        "groupState": states.get(parts[0].group, "no-stream"),
        "groups": merged_groups,
        "partitions": [{"partition": k.partition, **a} for k, a in zip(parts, answers, strict=True)],
    }
    return answer, health


async def order_status(r: aioredis.Redis, parts: Parts, order_id: str) -> dict[str, Any] | None:
    """GET /orders/{orderId}: :func:`producer.queries.order_status` on the order's partition
    (:func:`streamcore.keys.partition_of`)."""
    return await queries.order_status(r, parts[partition_of(order_id, len(parts))], order_id)
