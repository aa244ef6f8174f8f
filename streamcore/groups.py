"""How healthy a consumer group is, judged the same way by the producer's /stream/info, the
metrics and the autoscaler's status conditions (issue 9, items 7 and 8).

States, most urgent first:

``missing``
    the stream exists but the group does not (nobody created it yet, or it was destroyed):
    every entry of the stream is undelivered backlog, yet ``XINFO GROUPS`` shows nothing;
``ahead``
    the group's last-delivered-id (``XINFO GROUPS``) is past the stream's last-generated-id
    (``XINFO STREAM``, read again after XINFO GROUPS when it was read before:
    :func:`settled_last_generated`) *and* its time part is more than :data:`AHEAD_MARGIN_MS` past the clock:
    ``XGROUP SETID`` moved it into the future (e.g. to the largest ID,
    ``18446744073709551615-18446744073709551615``). ``XREADGROUP ... >`` delivers only entries
    above that ID and ``XADD *`` takes its IDs from Redis's clock, so every order appended until
    the clock passes that ID (for the largest ID: never) stays in the stream unread by this group,
    until someone moves its ID back (``XGROUP SETID <stream> <group> <id>`` with an ID *below* the
    first entry it must deliver: the ID given counts as delivered). Redis reports ``lag`` and
    ``entries-read`` as nil then. A group never gets there by reading: it is always an operator's
    (or a tool's) SETID. A position past the last entry but not past the clock (SETID to the last
    entry's ID plus one, to "now", ``XGROUP CREATE ... 1-0 MKSTREAM``) strands nothing: the next
    ``XADD *`` gets a larger ID, so it is ``ok``;
``abandoned``
    the group has pending entries (``XINFO GROUPS`` ``pending`` > 0) and no consumer of it has
    been seen for ``abandoned_after_ms``: no consumer at all, or every consumer quiet that long.
    Quiet is ``inactive`` where the server reports it (Redis >= 7.2, Valkey; ``-1`` = never read)
    and ``idle`` otherwise (Redis 7.0). Those entries wait for a reader that is gone;
``ok``
    anything else, including a group with backlog and no consumer yet (scale-to-zero waits for
    the autoscaler, which sees that lag).

``no-stream`` (the stream itself does not exist) is reported as such: nothing was ever accepted.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from redis.exceptions import ResponseError

from streamcore.ids import InvalidStreamId, parse_id
from streamcore.streams import is_no_such_key

GroupState = Literal["ok", "ahead", "abandoned", "missing", "no-stream"]

#: Which state a group of a stream split into partitions (``STREAM_PARTITIONS``) shows when its
#: partitions disagree: the first that any partition has (the producer's ``/stream/info`` and
#: the autoscaler's signals merge the same way).
MERGE_ORDER: tuple[GroupState, ...] = ("ahead", "abandoned", "missing", "no-stream", "ok")

#: How far (ms) past the clock a group's last-delivered-id must be to count as ``ahead``. IDs come
#: from Redis's clock, the judge reads this host's: the margin covers the skew between the two.
#: A group set less than this into the future strands the orders appended until the clock
#: passes it, unreported (they read ``acknowledged``, as any entry skipped by a SETID does).
AHEAD_MARGIN_MS = 1_000

#: Default for ``abandoned_after_ms``: a group whose consumers have all been quiet this long (ms)
#: while it holds pending entries is reported as abandoned.
ABANDONED_AFTER_MS = 15 * 60 * 1000


def quiet_ms(consumer: Mapping[str, Any]) -> int | None:
    """How long (ms) a consumer of ``XINFO CONSUMERS`` has been quiet: ``inactive`` when reported
    and not ``-1``, else ``idle``; None when neither is present."""
    inactive = consumer.get("inactive")
    if inactive is not None and int(inactive) >= 0:
        return int(inactive)
    idle = consumer.get("idle")
    return int(idle) if idle is not None else None


def is_ahead(last_delivered_id: str | None, last_generated_id: str | None, *, now_ms: int | None = None) -> bool:
    """True in the ``ahead`` state (module docstring): a group's last-delivered-id (``XINFO
    GROUPS``) is past the stream's last-generated-id (``XINFO STREAM``) and its milliseconds are
    more than :data:`AHEAD_MARGIN_MS` past ``now_ms`` (Unix ms; this host's clock when None), so
    the entries ``XADD *`` appends now get smaller IDs and are never delivered to it. False when
    either ID is unknown or not an entry ID (nothing to judge by)."""
    if not last_delivered_id or not last_generated_id:
        return False
    try:
        delivered, generated = parse_id(last_delivered_id), parse_id(last_generated_id)
    except InvalidStreamId:
        return False
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    return delivered > generated and delivered[0] > now_ms + AHEAD_MARGIN_MS


async def settled_last_generated(r: Any, stream: str, last_generated_id: str | None,
                                 last_delivered_ids: Iterable[str | None], *, now_ms: int | None = None) -> str | None:
    """The stream's last-generated-id to judge ``ahead`` by.

    ``XINFO STREAM`` is read before ``XINFO GROUPS`` where both are needed (loss detection,
    :func:`streamcore.loss.removed_before_delivery`, needs that order), so an entry appended and
    delivered between the two reads makes a healthy group look past the last entry (seen under
    traffic, most often on a stream holding IDs ahead of the clock). When any of
    ``last_delivered_ids`` (``XINFO GROUPS``) is :func:`is_ahead` of ``last_generated_id``, the
    stream's ``last-generated-id`` is read again with ``XINFO STREAM`` (after the groups were
    read, so it is at least every ID they had delivered) and returned; otherwise
    ``last_generated_id`` is returned unchanged, with no round trip.

    Args:
        r: a redis-py asyncio client (standalone or cluster; bytes or str replies).
        stream: the stream key.

    Raises:
        redis.exceptions.RedisError: the re-read failed (a stream deleted meanwhile is not an
            error: ``last_generated_id`` is returned).
    """
    if not any(is_ahead(d, last_generated_id, now_ms=now_ms) for d in last_delivered_ids):
        return last_generated_id
    try:
        info = await r.xinfo_stream(stream)
    except ResponseError as exc:
        if is_no_such_key(exc):
            return last_generated_id
        raise
    fresh = info.get("last-generated-id", info.get(b"last-generated-id"))
    if isinstance(fresh, bytes):
        fresh = fresh.decode()
    return fresh or last_generated_id


def classify_group(*, stream_exists: bool, group_exists: bool, pending: int,
                   consumer_quiet_ms: Iterable[int | None], abandoned_after_ms: int = ABANDONED_AFTER_MS,
                   last_delivered_id: str | None = None, last_generated_id: str | None = None,
                   now_ms: int | None = None) -> GroupState:
    """The state of one (stream, group), see the module docstring.

    Args:
        stream_exists: the stream key exists (``XINFO STREAM`` answered).
        group_exists: the group is listed by ``XINFO GROUPS``.
        pending: the group's PEL size (``XINFO GROUPS`` ``pending``).
        consumer_quiet_ms: per consumer, :func:`quiet_ms` (None counts as not seen recently).
        abandoned_after_ms: quiet time (ms) after which a consumer no longer counts as seen.
        last_delivered_id: the group's ``last-delivered-id`` (``XINFO GROUPS``); with
            ``last_generated_id`` (``XINFO STREAM``) it tells ``ahead`` (:func:`is_ahead`).
            Either None: ``ahead`` is not judged.
        now_ms: the clock (Unix ms) ``ahead`` is judged against; this host's when None.

    Returns:
        ``no-stream``, ``missing``, ``ahead``, ``abandoned`` or ``ok``.
    """
    if not stream_exists:
        return "no-stream"
    if not group_exists:
        return "missing"
    if is_ahead(last_delivered_id, last_generated_id, now_ms=now_ms):
        return "ahead"
    if pending > 0 and not any(q is not None and q < abandoned_after_ms for q in consumer_quiet_ms):
        return "abandoned"
    return "ok"
