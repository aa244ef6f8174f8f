"""Read-side queries of the API: history, pending entries, stream info, order status, dead letters.

Every function takes the client and key names and returns plain JSON-ready dicts; none writes.
Missing streams and groups are answered as empty results (case C11), never as errors. Entry
IDs given by users must already be validated (:func:`streamcore.ids.validate_bound`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from producer.validation import MAX_NESTING, too_deep
from streamcore import envelope, ids
from streamcore.keys import Keys
from streamcore.loss import removed_before_delivery
from streamcore.streams import is_nogroup, stream_state

#: First read size of a page; later reads are sized from the average entry size seen so far.
_FIRST_CHUNK = 10
_MAX_CHUNK = 200


@dataclass(slots=True)
class Page:
    """Raw entries of one page, oldest first.

    Attributes:
        entries: ``[(entry_id, fields)]`` from XRANGE/XREVRANGE.
        next: exclusive start (``"(<id>"``) of the following page, None when the range is done.
        before: in last-N reads cut short by the byte cap, the exclusive end (``"(<id>"``) for
            reading the older entries that did not fit; else None.
        truncated: the byte cap stopped the page before ``limit``/``count`` entries.
    """

    entries: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    next: str | None = None
    before: str | None = None
    truncated: bool = False


def entry_size(fields: dict[str, str]) -> int:
    """Approximate size of an entry in characters (names and values of all its fields)."""
    return sum(len(k) + len(v) for k, v in fields.items())


def _chunk(remaining: int, size: int, count: int, max_bytes: int) -> int:
    if count == 0:
        return min(remaining, _FIRST_CHUNK)
    average = max(1, size // count)
    return max(1, min(remaining, _MAX_CHUNK, (max_bytes - size) // average + 1))


async def read_forward(r: aioredis.Redis, key: str, start: str, end: str, *, limit: int, max_bytes: int) -> Page:
    """Read up to ``limit`` entries from ``start`` to ``end`` (XRANGE, oldest first), stopping
    early once ``max_bytes`` (characters, :func:`entry_size`) would be passed; at least one entry
    is always returned, so paging makes progress. Reads in chunks so memory stays near the cap.

    Returns:
        A :class:`Page` whose ``next`` is set when more entries exist in the range.
    """
    page = Page()
    size = 0
    cursor = start
    exhausted = False
    while len(page.entries) < limit and not exhausted:
        want = _chunk(limit - len(page.entries), size, len(page.entries), max_bytes)
        rows = await r.xrange(key, cursor, end, count=want)
        exhausted = len(rows) < want
        for entry_id, fields in rows:
            s = entry_size(fields)
            if page.entries and size + s > max_bytes:
                page.truncated = True
                exhausted = False
                break
            page.entries.append((entry_id, fields))
            size += s
        if page.truncated:
            break
        if rows:
            cursor = "(" + rows[-1][0]
    if page.entries and not exhausted:
        last = page.entries[-1][0]
        if page.truncated or await r.xrange(key, "(" + last, end, count=1):
            page.next = "(" + last
    return page


async def read_last(r: aioredis.Redis, key: str, start: str, end: str, *, count: int, max_bytes: int) -> Page:
    """Read the last ``count`` entries between ``start`` and ``end`` (XREVRANGE), returned oldest
    first. When ``max_bytes`` cuts it short the newest entries that fit are returned, with
    ``truncated`` and ``before`` (an exclusive end for the older rest)."""
    newest_first: list[tuple[str, dict[str, str]]] = []
    size = 0
    cursor = end
    page = Page()
    while len(newest_first) < count:
        want = _chunk(count - len(newest_first), size, len(newest_first), max_bytes)
        rows = await r.xrevrange(key, cursor, start, count=want)
        for entry_id, fields in rows:
            s = entry_size(fields)
            if newest_first and size + s > max_bytes:
                page.truncated = True
                break
            newest_first.append((entry_id, fields))
            size += s
        if page.truncated or len(rows) < want:
            break
        cursor = "(" + rows[-1][0]
    page.entries = newest_first[::-1]
    if page.truncated:
        page.before = "(" + page.entries[0][0]
    return page


#: An entry nested deeper than writers allow (written before the limit, or by another writer):
#: decoding or answering it could raise RecursionError, which failed the whole page with 500.
_TOO_DEEP = "entry {} data is nested too deeply to return"


def _maybe_deep(data: str) -> bool:
    """Cheap pre-check (C-speed counts) before walking an order for its depth."""
    return data.count("[") + data.count("{") > MAX_NESTING


def order_item(entry_id: str, fields: dict[str, str] | None) -> dict[str, Any]:
    """One history item: ``{"id", "order"}`` (plus ``redrivenFrom`` when re-driven), or
    ``{"id", "error"}`` when the entry has no readable order."""
    try:
        env = envelope.decode(entry_id, fields)
    except envelope.EnvelopeError as exc:
        return {"id": entry_id, "error": str(exc)}
    except RecursionError:
        return {"id": entry_id, "error": _TOO_DEEP.format(entry_id)}
    if _maybe_deep(fields["data"]) and too_deep(env.order) is not None:
        return {"id": entry_id, "error": _TOO_DEEP.format(entry_id)}
    item: dict[str, Any] = {"id": entry_id, "order": env.order}
    if "redriven_from" in env.fields:
        item["redrivenFrom"] = env.fields["redriven_from"]
    return item


async def history(
    r: aioredis.Redis,
    keys: Keys,
    *,
    start: str = "-",
    end: str = "+",
    count: int | None = None,
    limit: int,
    max_bytes: int,
) -> dict[str, Any]:
    """GET /orders/history.

    Args:
        start, end: validated XRANGE bounds (inclusive, ``(`` exclusive, ms-only allowed).
        count: the last ``count`` entries of the range (XREVRANGE), else the first ``limit`` (XRANGE).
        limit: page size when ``count`` is None.
        max_bytes: byte cap of the page.

    Returns:
        ``{"orders": [{"id", "order"} | {"id", "error"}], "count": n, "next": "(<id>" | None,
        "before": "(<id>" | None, "truncated": bool}``; a missing stream reads as empty.
    """
    if count is not None:
        page = await read_last(r, keys.stream, start, end, count=count, max_bytes=max_bytes)
    else:
        page = await read_forward(r, keys.stream, start, end, limit=limit, max_bytes=max_bytes)
    return {
        "orders": [order_item(i, f) for i, f in page.entries],
        "count": len(page.entries),
        "next": page.next,
        "before": page.before,
        "truncated": page.truncated,
    }


async def pending(
    r: aioredis.Redis,
    keys: Keys,
    *,
    consumer: str | None = None,
    min_idle_ms: int | None = None,
    start: str = "-",
    end: str = "+",
    limit: int,
) -> dict[str, Any]:
    """GET /orders/pending: the group's PEL summary (XPENDING) and one page of entries
    (extended XPENDING with ``IDLE``/consumer filters).

    Returns:
        ``{"stream", "group", "exists", "count", "lowest", "highest", "consumers": [{"name",
        "pending"}], "entries": [{"id", "consumer", "idleMs", "deliveries", "gone"}], "next"}``;
        ``gone`` is True when the entry's data was trimmed or deleted (the PEL still lists it
        until a consumer acks it, case C15). ``next`` (an exclusive start) is set when the page
        is full. A missing stream or group gives ``exists: false`` and zeros (case C11).
    """
    answer: dict[str, Any] = {
        "stream": keys.stream,
        "group": keys.group,
        "exists": False,
        "count": 0,
        "lowest": None,
        "highest": None,
        "consumers": [],
        "entries": [],
        "next": None,
    }
    try:
        summary = await r.xpending(keys.stream, keys.group)
        rows = await r.xpending_range(
            keys.stream, keys.group, start, end, limit, consumername=consumer, idle=min_idle_ms
        )
    except ResponseError as exc:
        if is_nogroup(exc):
            return answer
        raise
    gone = [False] * len(rows)
    if rows:
        async with r.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.xrange(keys.stream, row["message_id"], row["message_id"])
            found = await pipe.execute()
        gone = [not f for f in found]
    answer.update(
        exists=True,
        count=int(summary["pending"]),
        lowest=summary["min"],
        highest=summary["max"],
        consumers=[{"name": c["name"], "pending": int(c["pending"])} for c in summary["consumers"]],
        entries=[
            {
                "id": row["message_id"],
                "consumer": row["consumer"],
                "idleMs": int(row["time_since_delivered"]),
                "deliveries": int(row["times_delivered"]),
                "gone": g,
            }
            for row, g in zip(rows, gone, strict=True)
        ],
        next=("(" + rows[-1]["message_id"]) if len(rows) == limit else None,
    )
    return answer


def _entry(value: Any) -> dict[str, Any] | None:
    if not value or value[0] is None:
        return None
    return order_item(value[0], value[1])


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


async def stream_info(r: aioredis.Redis, keys: Keys, *, has_inactive: bool | None = None) -> dict[str, Any]:
    """GET /stream/info from XINFO STREAM, XINFO GROUPS, XINFO CONSUMERS, XLEN of the DLQ and the
    lost-entries counter.

    Returns:
        ``{"stream", "exists", "length", "firstEntry", "lastEntry" ({"id", "order"} or None),
        "lastGeneratedId", "maxDeletedEntryId", "entriesAdded", "recordedFirstEntryId",
        "lostEntries", "deadLetters": {"stream", "length"}, "groups": [{"name", "consumerCount",
        "pending", "lag" (None when the server cannot tell — never turned into 0), "lastDeliveredId",
        "entriesRead", "undeliveredDeleted", "consumers": [{"name", "pending", "idleMs",
        "inactiveMs" (None where not reported)}]}]}``. ``undeliveredDeleted`` is True when
        entries were trimmed or deleted before this group read them (case C16; see
        :func:`streamcore.loss.removed_before_delivery`). A missing stream gives ``exists: false``.
    """
    async with r.pipeline(transaction=False) as pipe:
        pipe.get(keys.lost_counter)
        pipe.xlen(keys.dlq)
        lost, dlq_len = await pipe.execute()
    answer: dict[str, Any] = {
        "stream": keys.stream,
        "exists": False,
        "length": 0,
        "firstEntry": None,
        "lastEntry": None,
        "lastGeneratedId": None,
        "maxDeletedEntryId": None,
        "entriesAdded": None,
        "recordedFirstEntryId": None,
        "lostEntries": int(lost or 0),
        "deadLetters": {"stream": keys.dlq, "length": int(dlq_len)},
        "groups": [],
    }
    state = await stream_state(r, keys)
    if state is None:
        return answer
    info, groups = state
    consumers_by_group: list[list[dict]] = []
    if groups:
        async with r.pipeline(transaction=False) as pipe:
            for g in groups:
                pipe.xinfo_consumers(keys.stream, g["name"])
            consumers_by_group = await pipe.execute()
    answer.update(
        exists=True,
        length=int(info["length"]),
        firstEntry=_entry(info.get("first-entry")),
        lastEntry=_entry(info.get("last-entry")),
        lastGeneratedId=info.get("last-generated-id"),
        maxDeletedEntryId=info.get("max-deleted-entry-id"),
        entriesAdded=_int_or_none(info.get("entries-added")),
        recordedFirstEntryId=info.get("recorded-first-entry-id"),
    )
    for g, consumers in zip(groups, consumers_by_group, strict=True):
        last = g["last-delivered-id"]
        undelivered_deleted = removed_before_delivery(info, last, _int_or_none(g.get("entries-read")))
        answer["groups"].append(
            {
                "name": g["name"],
                "consumerCount": int(g["consumers"]),
                "pending": int(g["pending"]),
                "lag": _int_or_none(g.get("lag")),
                "lastDeliveredId": last,
                "entriesRead": _int_or_none(g.get("entries-read")),
                "undeliveredDeleted": undelivered_deleted,
                "consumers": [
                    {
                        "name": c["name"],
                        "pending": int(c["pending"]),
                        "idleMs": int(c["idle"]),
                        "inactiveMs": _int_or_none(c.get("inactive")),
                    }
                    for c in consumers
                ],
            }
        )
    return answer


async def order_status(r: aioredis.Redis, keys: Keys, order_id: str) -> dict[str, Any] | None:
    """GET /orders/{orderId}: where an order stands.

    Reads ``keys.order_index`` (entry ID), the processed marker hash ``keys.processed`` (fields
    ``consumer``, ``entry_id``, ``at_ms``), ``keys.dlq_index`` and the DLQ entry, the entry itself
    (XRANGE), its PEL record (XPENDING ... id id 1) and the group's last-delivered-id (XINFO GROUPS).

    Status, first match wins:

    ``processed``     the marker exists: ``processed: {consumer, entryId, atMs}``;
    ``pending``       delivered, not acked: ``pending: {consumer, deliveries, idleMs}``;
    ``dead_lettered`` the DLQ entry named by the DLQ index still exists (a re-driven one is
                      deleted from the DLQ): ``deadLetter: {dlqId, deliveries, error, consumer,
                      deadLetteredMs}``;
    ``waiting``       in the stream and after the group's last-delivered-id (or no group yet);
    ``acknowledged``  delivered and acked but no marker (a handler that writes none);
    ``gone``          indexed, but the entry was trimmed or deleted and nothing else is known.

    Returns:
        ``{"orderId", "id" (entry ID or None), "status", "order" (when readable), ...detail}``, or
        None when nothing at all is known about the orderId (404).
    """
    async with r.pipeline(transaction=False) as pipe:
        pipe.get(keys.order_index(order_id))
        pipe.hgetall(keys.processed(order_id))
        pipe.get(keys.dlq_index(order_id))
        entry_id, marker, dlq_id = await pipe.execute()
    answer: dict[str, Any] = {"orderId": order_id, "id": entry_id}
    if marker:
        answer["id"] = entry_id or marker.get("entry_id")
        answer["status"] = "processed"
        answer["processed"] = {
            "consumer": marker.get("consumer"),
            "entryId": marker.get("entry_id"),
            "atMs": _int_or_none(marker.get("at_ms")),
        }
    entry = None
    if answer["id"]:
        rows = await r.xrange(keys.stream, answer["id"], answer["id"])
        if rows:
            entry = rows[0]
            item = order_item(*entry)
            if "order" in item:
                answer["order"] = item["order"]
    if marker:
        return answer
    if entry_id and entry is not None:
        try:
            rows = await r.xpending_range(keys.stream, keys.group, entry_id, entry_id, 1)
        except ResponseError as exc:
            if not is_nogroup(exc):
                raise
            rows = []
        if rows:
            answer["status"] = "pending"
            answer["pending"] = {
                "consumer": rows[0]["consumer"],
                "deliveries": int(rows[0]["times_delivered"]),
                "idleMs": int(rows[0]["time_since_delivered"]),
            }
            return answer
    if dlq_id:
        rows = await r.xrange(keys.dlq, dlq_id, dlq_id)
        if rows:
            f = rows[0][1]
            answer["status"] = "dead_lettered"
            answer["id"] = entry_id or f.get("original_id")
            if "order" not in answer:
                item = order_item(rows[0][0], f)
                if "order" in item:
                    answer["order"] = item["order"]
            answer["deadLetter"] = {
                "dlqId": dlq_id,
                "originalId": f.get("original_id"),
                "deliveries": _int_or_none(f.get("deliveries")),
                "error": f.get("error"),
                "consumer": f.get("consumer"),
                "deadLetteredMs": _int_or_none(f.get("dead_lettered_ms")),
            }
            return answer
    if not entry_id:
        return None
    if entry is None:
        answer["status"] = "gone"
        return answer
    last_delivered = await _last_delivered(r, keys)
    if last_delivered is None or ids.compare(entry_id, last_delivered) > 0:
        answer["status"] = "waiting"
    else:
        answer["status"] = "acknowledged"
    return answer


async def _last_delivered(r: aioredis.Redis, keys: Keys) -> str | None:
    try:
        groups = await r.xinfo_groups(keys.stream)
    except ResponseError:
        return None
    for g in groups:
        if g["name"] == keys.group:
            return g["last-delivered-id"]
    return None


def dead_letter_item(dlq_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """One dead letter: ``{"dlqId", "originalId", "orderId", "order" | "error", "deliveries",
    "lastError", "consumer", "owner", "firstSeenMs", "deadLetteredMs", "sourceStream"}``
    (the fields written by :func:`streamcore.streams.dead_letter`)."""
    item: dict[str, Any] = {"dlqId": dlq_id, "originalId": fields.get("original_id"), "orderId": fields.get("order_id")}
    data = fields.get("data", "")
    try:
        order = json.loads(data)
        if not isinstance(order, dict):
            raise ValueError("not a JSON object")
        if _maybe_deep(data) and too_deep(order) is not None:
            raise ValueError("nested too deeply to return")
        item["order"] = order
    except RecursionError:
        item["error"] = f"dead letter {dlq_id} has no readable order: nested too deeply to return"
    except ValueError as exc:
        item["error"] = f"dead letter {dlq_id} has no readable order: {exc}"
    item.update(
        deliveries=_int_or_none(fields.get("deliveries")),
        lastError=fields.get("error"),
        consumer=fields.get("consumer"),
        owner=fields.get("owner"),
        firstSeenMs=_int_or_none(fields.get("first_seen_ms")),
        deadLetteredMs=_int_or_none(fields.get("dead_lettered_ms")),
        sourceStream=fields.get("source_stream"),
    )
    return item


async def dead_letters(
    r: aioredis.Redis, keys: Keys, *, start: str = "-", end: str = "+", limit: int, max_bytes: int
) -> dict[str, Any]:
    """GET /dead-letters: one page of the dead-letter stream (XRANGE), oldest first.

    Returns:
        ``{"stream", "length" (XLEN), "deadLetters": [dead_letter_item...], "count", "next",
        "truncated"}``.
    """
    page = await read_forward(r, keys.dlq, start, end, limit=limit, max_bytes=max_bytes)
    return {
        "stream": keys.dlq,
        "length": int(await r.xlen(keys.dlq)),
        "deadLetters": [dead_letter_item(i, f) for i, f in page.entries],
        "count": len(page.entries),
        "next": page.next,
        "truncated": page.truncated,
    }
