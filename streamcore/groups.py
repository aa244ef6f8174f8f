"""How healthy a consumer group is, judged the same way by the producer's /stream/info, the
metrics and the autoscaler's status conditions (issue 9, items 7 and 8).

States, most urgent first:

``missing``
    the stream exists but the group does not (nobody created it yet, or it was destroyed):
    every entry of the stream is undelivered backlog, yet ``XINFO GROUPS`` shows nothing;
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

from collections.abc import Iterable, Mapping
from typing import Any, Literal

GroupState = Literal["ok", "abandoned", "missing", "no-stream"]

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


def classify_group(*, stream_exists: bool, group_exists: bool, pending: int,
                   consumer_quiet_ms: Iterable[int | None], abandoned_after_ms: int = ABANDONED_AFTER_MS) -> GroupState:
    """The state of one (stream, group), see the module docstring.

    Args:
        stream_exists: the stream key exists (``XINFO STREAM`` answered).
        group_exists: the group is listed by ``XINFO GROUPS``.
        pending: the group's PEL size (``XINFO GROUPS`` ``pending``).
        consumer_quiet_ms: per consumer, :func:`quiet_ms` (None counts as not seen recently).
        abandoned_after_ms: quiet time (ms) after which a consumer no longer counts as seen.

    Returns:
        ``no-stream``, ``missing``, ``abandoned`` or ``ok``.
    """
    if not stream_exists:
        return "no-stream"
    if not group_exists:
        return "missing"
    if pending > 0 and not any(q is not None and q < abandoned_after_ms for q in consumer_quiet_ms):
        return "abandoned"
    return "ok"
