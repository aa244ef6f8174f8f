"""Read-side queries of the API: history, pending entries, stream info, order status, dead letters.

Every function takes the client and key names and returns plain JSON-ready dicts; none writes.
Missing streams and groups are answered as empty results (case C11), never as errors. Entry
IDs given by users must already be validated (:func:`streamcore.ids.validate_bound`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from producer.backlog import oldest_pending, paused_groups
from producer.rendering import BASE64_SUFFIX, put_text, raw_fields, readable, text_fields
from producer.validation import MAX_NESTING, too_deep
from streamcore import envelope, ids
from streamcore.keys import Keys
from streamcore.loss import removed_before_delivery
from streamcore.groups import ABANDONED_AFTER_MS, GroupState, classify_group, is_ahead, quiet_ms, settled_last_generated
from streamcore.streams import is_nogroup, stream_state

_FULL_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")

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


def _unreadable(entry_id: str, fields: dict[str, str] | None, error: str, reason: str) -> dict[str, Any]:
    return {"id": entry_id, "order": None, "error": readable(error), "reason": reason, "rawFields": raw_fields(fields or {})}


def order_item(entry_id: str, fields: dict[str, str] | None) -> dict[str, Any]:
    """One history item: ``{"id", "order"}`` (plus ``redrivenFrom`` when re-driven), or, when the
    entry holds no readable order, ``{"id", "order": null, "error", "reason", "rawFields"}``.

    ``error`` is a sentence naming the entry and the field; ``reason`` is the
    :class:`streamcore.envelope.EnvelopeError` reason (``not_utf8``, ``no_data``, ``not_json``,
    ``not_object``) or ``too_deep`` (nested deeper than the API returns); ``rawFields`` lists every
    field of the entry in stream order as ``{"name", "value"}``, where a name or value that is not
    UTF-8 is null with its bytes in ``nameBase64``/``valueBase64`` (:mod:`producer.rendering`).
    """
    try:
        env = envelope.decode(entry_id, fields)
    except envelope.EnvelopeError as exc:
        return _unreadable(entry_id, fields, str(exc), exc.reason)
    except RecursionError:
        return _unreadable(entry_id, fields, _TOO_DEEP.format(entry_id), "too_deep")
    if _maybe_deep(env.fields["data"]) and too_deep(env.order) is not None:
        return _unreadable(entry_id, fields, _TOO_DEEP.format(entry_id), "too_deep")
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
        ``{"orders": [order_item...], "count": n, "next": "(<id>" | None,
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
        a consumer name that is not UTF-8 is null with ``nameBase64``/``consumerBase64`` beside it
        (:mod:`producer.rendering`).
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
        consumers=[{**text_fields(name=c["name"]), "pending": int(c["pending"])} for c in summary["consumers"]],
        entries=[
            {
                "id": row["message_id"],
                **text_fields(consumer=row["consumer"]),
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


def _stream_id(value: str | None) -> str | None:
    """``value`` when it is a full entry ID ``<ms>-<seq>``, else None."""
    if value is None or not _FULL_ID.fullmatch(value):
        return None
    try:
        ids.parse_id(value)
    except ids.InvalidStreamId:
        return None
    return value


def _int_or_none(value: Any) -> int | None:
    """``int(value)``; None when absent or not an integer (a hand-written field must not fail a page)."""
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def group_state(group: dict[str, Any], consumers: list[dict[str, Any]], abandoned_after_ms: int,
                last_generated_id: str | None) -> GroupState:
    """:func:`streamcore.groups.classify_group` of one group listed by ``XINFO GROUPS``, from its
    ``pending``, its ``last-delivered-id`` against the stream's ``last_generated_id`` (``XINFO
    STREAM``) and its consumers' quiet time (``XINFO CONSUMERS``, :func:`streamcore.groups.quiet_ms`)."""
    return classify_group(stream_exists=True, group_exists=True, pending=int(group["pending"]),
                          consumer_quiet_ms=[quiet_ms(c) for c in consumers], abandoned_after_ms=abandoned_after_ms,
                          last_delivered_id=group.get("last-delivered-id"), last_generated_id=last_generated_id)


async def _consumers_of(r: aioredis.Redis, keys: Keys, groups: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``XINFO CONSUMERS`` of every group, pipelined; a group destroyed meanwhile has none."""
    if not groups:
        return []
    async with r.pipeline(transaction=False) as pipe:
        for g in groups:
            pipe.xinfo_consumers(keys.stream, g["name"])
        replies = await pipe.execute(raise_on_error=False)
    out: list[list[dict[str, Any]]] = []
    for reply in replies:
        if isinstance(reply, ResponseError) and is_nogroup(reply):
            out.append([])
        elif isinstance(reply, Exception):
            raise reply
        else:
            out.append(reply)
    return out


@dataclass(frozen=True, slots=True)
class GroupHealth:
    """The state of every group of the stream (for the ``orderstream_group_state`` gauge).

    Attributes:
        stream_exists: the stream key exists.
        groups: ``(group name, state)`` for every group ``XINFO GROUPS`` lists, plus the
            configured group as ``missing`` (``no-stream`` when the stream does not exist) when
            it is not among them.
    """

    stream_exists: bool
    groups: list[tuple[str, GroupState]]


def _health(keys: Keys, stream_exists: bool, listed: list[tuple[str, GroupState]]) -> GroupHealth:
    if not any(name == keys.group for name, _ in listed):
        listed = [*listed, (keys.group, "missing" if stream_exists else "no-stream")]
    return GroupHealth(stream_exists, listed)


async def group_health(r: aioredis.Redis, keys: Keys, *, abandoned_after_ms: int = ABANDONED_AFTER_MS) -> GroupHealth:
    """Classify every group of ``keys.stream`` with ``XINFO STREAM`` (its last-generated-id),
    ``XINFO GROUPS`` and ``XINFO CONSUMERS`` (cheap enough for every ``/metrics`` scrape: no
    range of entries is read, only the stream's first and last entry come with XINFO STREAM).

    Raises:
        redis.exceptions.RedisError: Redis failed (a missing stream is not an error).
    """
    state = await stream_state(r, keys)
    if state is None:
        return _health(keys, False, [])
    info, groups = state
    consumers = await _consumers_of(r, keys, groups)
    last_generated = await settled_last_generated(r, keys.stream, info.get("last-generated-id"),
                                                  [g.get("last-delivered-id") for g in groups])
    return _health(keys, True, [(g["name"], group_state(g, c, abandoned_after_ms, last_generated))
                                for g, c in zip(groups, consumers, strict=True)])


async def stream_info(r: aioredis.Redis, keys: Keys, *, abandoned_after_ms: int = ABANDONED_AFTER_MS) -> tuple[dict[str, Any], GroupHealth]:
    """GET /stream/info from XINFO STREAM, XINFO GROUPS, XINFO CONSUMERS, XLEN of the DLQ and the
    lost-entries counter.

    Args:
        abandoned_after_ms: quiet time (ms) after which a group with pending entries and no
            consumer seen since counts as ``abandoned`` (``ABANDONED_AFTER_MS``).

    Returns:
        The answer and the :class:`GroupHealth` it shows (for the metrics). The answer is
        ``{"stream", "exists", "length", "firstEntry", "lastEntry" (:func:`order_item` or None),
        "lastGeneratedId", "maxDeletedEntryId", "entriesAdded", "recordedFirstEntryId",
        "lostEntries", "failedDeliveries" (handler failures counted by the consumers and the
        reclaimer, :attr:`streamcore.keys.Keys.failed_counter`), "deadLetters": {"stream", "length"}, "group" (the configured group's name),
        "groupState", "groups": [{"name", "state", "consumerCount", "pending", "lag" (None when the
        server cannot tell — never turned into 0), "lastDeliveredId", "entriesRead",
        "undeliveredDeleted", "paused" (``POST /groups/{group}/pause``), "oldestPendingId",
        "oldestPendingAgeMs" (the smallest pending entry ID
        from the ``XPENDING`` summary, and how long ago it was appended: now minus the ID's
        milliseconds; None with nothing pending), "consumers": [{"name", "pending", "idleMs",
        "inactiveMs" (None where not reported)}]}]}``.

        ``groupState`` is the configured group's state (:mod:`streamcore.groups`): ``ok``,
        ``ahead`` (its last-delivered-id is past the stream's last-generated-id and the clock:
        new entries are never delivered to it until its ID is set back), ``abandoned`` (pending entries, no
        consumer seen for ``abandoned_after_ms``), ``missing``
        (the stream exists but the group does not: all ``length`` entries wait for a group that
        nobody created) or ``no-stream``; every listed group has its own ``state``.
        ``undeliveredDeleted`` is True when entries were trimmed or deleted before this group read
        them (case C16; see :func:`streamcore.loss.removed_before_delivery`). A group or consumer
        name that is not UTF-8 is null with ``nameBase64`` beside it (:mod:`producer.rendering`).
        A missing stream gives ``exists: false``.
    """
    async with r.pipeline(transaction=False) as pipe:
        pipe.get(keys.lost_counter)
        pipe.xlen(keys.dlq)
        pipe.get(keys.failed_counter)
        lost, dlq_len, failed = await pipe.execute()
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
        "lostEntries": _int_or_none(lost) or 0,
        "failedDeliveries": _int_or_none(failed) or 0,
        "deadLetters": {"stream": keys.dlq, "length": int(dlq_len)},
        "group": keys.group,
        "groupState": "no-stream",
        "groups": [],
    }
    state = await stream_state(r, keys)
    if state is None:
        return answer, _health(keys, False, [])
    info, groups = state
    consumers_by_group = await _consumers_of(r, keys, groups)
    oldest = await oldest_pending(r, keys, groups)
    paused = await paused_groups(r, keys, [g["name"] for g in groups])
    now_ms = int(time.time() * 1000)
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
    listed: list[tuple[str, GroupState]] = []
    last_generated = await settled_last_generated(r, keys.stream, info.get("last-generated-id"),
                                                  [g.get("last-delivered-id") for g in groups])
    for g, consumers in zip(groups, consumers_by_group, strict=True):
        last = g["last-delivered-id"]
        undelivered_deleted = removed_before_delivery(info, last, _int_or_none(g.get("entries-read")))
        g_state = group_state(g, consumers, abandoned_after_ms, last_generated)
        listed.append((g["name"], g_state))
        answer["groups"].append(
            {
                **text_fields(name=g["name"]),
                "state": g_state,
                "consumerCount": int(g["consumers"]),
                "pending": int(g["pending"]),
                "lag": _int_or_none(g.get("lag")),
                "lastDeliveredId": last,
                "entriesRead": _int_or_none(g.get("entries-read")),
                "undeliveredDeleted": undelivered_deleted,
                "paused": g["name"] in paused,
                "oldestPendingId": oldest.get(g["name"]),
                "oldestPendingAgeMs": (max(now_ms - ids.parse_id(oldest[g["name"]])[0], 0)
                                       if g["name"] in oldest else None),
                "consumers": [
                    {
                        **text_fields(name=c["name"]),
                        "pending": int(c["pending"]),
                        "idleMs": int(c["idle"]),
                        "inactiveMs": _int_or_none(c.get("inactive")),
                    }
                    for c in consumers
                ],
            }
        )
    health = _health(keys, True, listed)
    answer["groupState"] = dict(health.groups)[keys.group]
    return answer, health


async def order_status(r: aioredis.Redis, keys: Keys, order_id: str) -> dict[str, Any] | None:
    """GET /orders/{orderId}: where an order stands.

    Reads ``keys.order_index`` (entry ID), the processed marker hash ``keys.processed`` (fields
    ``consumer``, ``entry_id``, ``at_ms``), ``keys.dlq_index`` and the DLQ entry, the entry itself
    (XRANGE), its PEL record (XPENDING ... id id 1) and the group's last-delivered-id (XINFO GROUPS).

    Status, first match wins:

    ``processed``     the marker exists: ``processed: {consumer, entryId, atMs}``;
    ``pending``       delivered, not acked: ``pending: {consumer, deliveries, idleMs}``;
    ``dead_lettered`` the DLQ entry named by the DLQ index still exists (a re-driven one is
                      deleted from the DLQ): ``deadLetter: {dlqId, sourceId, originalId (the
                      same, its old name), reason, deliveries, error, consumer, deadLetteredMs}``;
    ``waiting``       in the stream and after the group's last-delivered-id (or no group yet);
    ``stranded``      in the stream, not pending, no marker, and the group is ``ahead``
                      (:func:`streamcore.groups.is_ahead`: XGROUP SETID moved its
                      last-delivered-id past the stream's last entry and the clock): the group
                      will not deliver it until its ID is set back below it; whether it was
                      delivered before the move cannot be told (no marker says so: an order
                      whose marker expired, ``PROCESSED_TTL``, shows here too);
    ``acknowledged``  not pending, no marker, at or below the group's last-delivered-id: delivered and
                      acked by a handler that writes none, a marker expired, or skipped by an
                      XGROUP SETID (which cannot be told apart);
    ``gone``          indexed, but the entry was trimmed or deleted and nothing else is known.

    A consumer name (or any other stored text) that is not UTF-8 is null with ``<key>Base64``
    beside it (:mod:`producer.rendering`).

    Returns:
        ``{"orderId", "id" (entry ID or None), "status", "order" (when readable), ...detail}``, or
        None when nothing at all is known about the orderId (404).
    """
    async with r.pipeline(transaction=False) as pipe:
        pipe.get(keys.order_index(order_id))
        pipe.hgetall(keys.processed(order_id))
        pipe.get(keys.dlq_index(order_id))
        entry_id, marker, dlq_id = await pipe.execute()
    # These keys are ours, but a value that is not an entry ID (written by hand) must not reach
    # XRANGE, which would refuse it: such a value counts as absent.
    entry_id, dlq_id = _stream_id(entry_id), _stream_id(dlq_id)
    answer: dict[str, Any] = {"orderId": order_id, "id": entry_id}
    if marker:
        answer["id"] = entry_id or _stream_id(marker.get("entry_id"))
        answer["status"] = "processed"
        answer["processed"] = {
            **text_fields(consumer=marker.get("consumer"), entryId=marker.get("entry_id")),
            "atMs": _int_or_none(marker.get("at_ms")),
        }
    entry = None
    if answer["id"]:
        rows = await r.xrange(keys.stream, answer["id"], answer["id"])
        if rows:
            entry = rows[0]
            item = order_item(*entry)
            if item["order"] is not None:
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
                **text_fields(consumer=rows[0]["consumer"]),
                "deliveries": int(rows[0]["times_delivered"]),
                "idleMs": int(rows[0]["time_since_delivered"]),
            }
            return answer
    if dlq_id:
        rows = await r.xrange(keys.dlq, dlq_id, dlq_id)
        if rows:
            dead = dead_letter_item(rows[0][0], rows[0][1])
            answer["status"] = "dead_lettered"
            answer["id"] = entry_id or dead["sourceId"]
            if "order" not in answer and dead.get("order") is not None:
                answer["order"] = dead["order"]
            answer["deadLetter"] = {
                k: v for k, v in dead.items()
                if k.removesuffix(BASE64_SUFFIX) in ("dlqId", "sourceId", "originalId", "reason", "deliveries", "consumer",
                                                      "deadLetteredMs")
            }
            put_text(answer["deadLetter"], "error", rows[0][1].get("error"))
            return answer
    if not entry_id:
        return None
    if entry is None:
        answer["status"] = "gone"
        return answer
    last_delivered, last_generated = await _positions(r, keys)
    if last_delivered is None or ids.compare(entry_id, last_delivered) > 0:
        answer["status"] = "waiting"
    elif is_ahead(last_delivered, last_generated):
        answer["status"] = "stranded"
    else:
        answer["status"] = "acknowledged"
    return answer


async def _positions(r: aioredis.Redis, keys: Keys) -> tuple[str | None, str | None]:
    """``(last-delivered-id of keys.group, last-generated-id of keys.stream)`` from XINFO GROUPS
    and XINFO STREAM; None for what is not there (no stream, no group)."""
    try:
        state = await stream_state(r, keys)
    except ResponseError:
        return None, None
    if state is None:
        return None, None
    info, groups = state
    for g in groups:
        if g["name"] == keys.group:
            delivered = g["last-delivered-id"]
            return delivered, await settled_last_generated(r, keys.stream, info.get("last-generated-id"), [delivered])
    return None, info.get("last-generated-id")


#: Fields a dead letter adds after the original entry's fields (:func:`streamcore.streams.dead_letter`);
#: ``original_id`` is the old name of ``source_id``. Everything else is the original entry's.
DEAD_LETTER_METADATA = frozenset({
    "source_id", "original_id", "source_stream", "group", "reason", "error", "deliveries", "consumer", "owner",
    "first_seen_ms", "dead_lettered_ms",
})


def original_fields(fields: dict[str, str]) -> dict[str, str]:
    """The original entry's fields of a dead letter (every field that is not metadata)."""
    return {k: v for k, v in fields.items() if k not in DEAD_LETTER_METADATA}


def dead_letter_order(dlq_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """The order a dead letter holds, judged like a stream entry by :func:`streamcore.envelope.decode`
    over its original fields (so a field name or value there that is not UTF-8, a missing
    ``data``, or ``data`` that is not a JSON object makes it unreadable; a consumer name in the
    metadata that is not UTF-8 does not).

    Raises:
        envelope.EnvelopeError: no readable order; ``reason`` as in :func:`streamcore.envelope.decode`,
            or ``too_deep`` (nested deeper than the API accepts); the message names the dead letter.
    """
    try:
        env = envelope.decode(dlq_id, original_fields(fields))
    except envelope.EnvelopeError as exc:
        raise envelope.EnvelopeError(f"dead letter {dlq_id} has no readable order: {readable(str(exc))}", exc.reason) from None
    except RecursionError:
        raise envelope.EnvelopeError(f"dead letter {dlq_id} has no readable order: nested too deeply", "too_deep") from None
    if _maybe_deep(env.fields["data"]) and too_deep(env.order) is not None:
        raise envelope.EnvelopeError(f"dead letter {dlq_id} has no readable order: nested more than {MAX_NESTING} levels deep",
                                     "too_deep")
    return env.order


def dead_letter_item(dlq_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """One dead letter as ``GET /dead-letters`` shows it.

    Shape: ``{"dlqId", "sourceId" (the source entry: ``source_id``, or ``original_id`` in dead
    letters written before the field was renamed), "originalId" (the same value, its old API name),
    "sourceStream", "group", "reason" (``not_utf8``, ``no_data``, ``not_json``, ``not_object`` or
    ``max_deliveries``; None in old dead letters), "orderId", "order", "deliveries", "lastError",
    "consumer", "owner", "firstSeenMs", "deadLetteredMs"}``, from the fields written by
    :func:`streamcore.streams.dead_letter`.

    When the order is not readable (:func:`dead_letter_order`), ``order`` is None and ``error``
    says why (naming the field), ``orderReason`` gives the reason code, and ``rawFields`` lists
    the original fields byte-exact (``{"name", "value"}``). Any text that is not UTF-8 is null
    with its bytes in ``<key>Base64`` (:mod:`producer.rendering`); a number field that is not
    a number is None.
    """
    item: dict[str, Any] = {"dlqId": dlq_id}
    source_id = fields.get("source_id", fields.get("original_id"))
    put_text(item, "sourceId", source_id)
    put_text(item, "originalId", source_id)
    put_text(item, "sourceStream", fields.get("source_stream"))
    put_text(item, "group", fields.get("group"))
    put_text(item, "reason", fields.get("reason"))
    put_text(item, "orderId", fields.get("order_id"))
    try:
        item["order"] = dead_letter_order(dlq_id, fields)
    except envelope.EnvelopeError as exc:
        item.update(order=None, error=str(exc), orderReason=exc.reason, rawFields=raw_fields(original_fields(fields)))
    item["deliveries"] = _int_or_none(fields.get("deliveries"))
    put_text(item, "lastError", fields.get("error"))
    put_text(item, "consumer", fields.get("consumer"))
    put_text(item, "owner", fields.get("owner"))
    item["firstSeenMs"] = _int_or_none(fields.get("first_seen_ms"))
    item["deadLetteredMs"] = _int_or_none(fields.get("dead_lettered_ms"))
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
