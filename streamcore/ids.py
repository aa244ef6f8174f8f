"""Stream entry IDs: parsing and validating IDs that come from users (case C23).

An entry ID is ``<ms>-<seq>``, both unsigned 64-bit integers. Range bounds given to XRANGE may
also be ``-``/``+``, an ms-only ID (``1700000000000``, which Redis completes with ``-0`` for a start
and ``-18446744073709551615`` for an end), and may be made exclusive with a ``(`` prefix.
Anything else is rejected here, before it reaches Redis, with a reason a client can act on.
"""

from __future__ import annotations

import re

U64_MAX = 2**64 - 1
#: The largest entry ID. Nothing comes after it: ``XGROUP SETID`` accepts it (a group put there
#: will never be delivered another entry), ``XADD`` with it exhausts the stream, and an exclusive
#: start ``(`` + it is refused by XRANGE/XPENDING ("invalid start ID for the interval").
MAX_ID = f"{U64_MAX}-{U64_MAX}"
# ASCII digits and fullmatch: ``\d`` matches every Unicode digit and ``$`` also matches before a
# final newline, so "\u0661" and "5\n" passed here and Redis refused them (a 503, not a 400).
_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")


class InvalidStreamId(ValueError):
    """A user-supplied entry ID or range bound is malformed; ``str(e)`` says why."""


def parse_id(text: str) -> tuple[int, int]:
    """Parse a full entry ID ``ms-seq`` (no ``-``, ``+``, ``(``; ms-only allowed, seq 0).

    Returns:
        ``(ms, seq)``.

    Raises:
        InvalidStreamId: not two unsigned 64-bit integers joined by ``-``.
    """
    m = _ID.fullmatch(text)
    if not m:
        raise InvalidStreamId(f"{text!r} is not a stream entry ID of the form <ms>-<seq>")
    ms, seq = int(m.group(1)), int(m.group(2) or 0)
    if ms > U64_MAX or seq > U64_MAX:
        raise InvalidStreamId(f"{text!r} has a part larger than 2^64-1")
    return ms, seq


def format_id(ms: int, seq: int) -> str:
    """Format ``(ms, seq)`` as ``"ms-seq"``."""
    return f"{ms}-{seq}"


def validate_bound(text: str, *, end: bool) -> str:
    """Validate an XRANGE bound as Redis reads it and return it unchanged.

    Accepts ``-``, ``+``, ``<ms>``, ``<ms>-<seq>`` and ``(`` + an ID for exclusive bounds
    (Redis >= 6.2). ``(-`` / ``(+`` and an exclusive bound that cannot be advanced
    (``(0-0`` as an end, ``(18446744073709551615-18446744073709551615`` as a start) are rejected.

    Args:
        text: the raw query parameter.
        end: whether this is the end bound (changes which extreme cannot be exclusive).

    Raises:
        InvalidStreamId: with a reason.
    """
    if text in ("-", "+"):
        return text
    exclusive = text.startswith("(")
    body = text[1:] if exclusive else text
    if body in ("-", "+"):
        raise InvalidStreamId(f"{text!r}: '-' and '+' cannot be exclusive")
    ms, seq = parse_id(body)
    if exclusive and "-" not in body:
        # Redis completes ms-only bounds before excluding; keep the same reading.
        seq = U64_MAX if end else 0
    if exclusive and not end and (ms, seq) == (U64_MAX, U64_MAX):
        raise InvalidStreamId(f"{text!r}: nothing comes after the largest ID")
    if exclusive and end and (ms, seq) == (0, 0):
        raise InvalidStreamId(f"{text!r}: nothing comes before 0-0")
    return text


def next_id(entry_id: str) -> str:
    """The smallest ID strictly greater than ``entry_id`` (for paging and ``MINID``).

    Raises:
        InvalidStreamId: ``entry_id`` is malformed or the largest ID (:data:`MAX_ID`); code
        that handles IDs from Redis uses :func:`successor`, which answers None there instead.
    """
    after = successor(entry_id)
    if after is None:
        raise InvalidStreamId("nothing comes after the largest ID")
    return after


def successor(entry_id: str) -> str | None:
    """The smallest ID strictly greater than ``entry_id``, or None when it is :data:`MAX_ID`.

    For IDs read from Redis (a group's ``last-delivered-id``, the last row of a page): use the
    result as an inclusive start instead of ``"(" + entry_id``, which Redis refuses for the
    largest ID, and treat None as "nothing can come after it".

    Raises:
        InvalidStreamId: ``entry_id`` is malformed.
    """
    ms, seq = parse_id(entry_id)
    if seq < U64_MAX:
        return format_id(ms, seq + 1)
    if ms < U64_MAX:
        return format_id(ms + 1, 0)
    return None


def compare(a: str, b: str) -> int:
    """Compare two full entry IDs: -1, 0 or 1."""
    pa, pb = parse_id(a), parse_id(b)
    return (pa > pb) - (pa < pb)
