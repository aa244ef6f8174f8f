"""Re-driving dead letters back to the order stream.

A re-drive appends the order again (``XADD`` through the atomic append script, with the
``redriven_from`` provenance field) and only then deletes the dead letter (``XDEL``), so a crash
between the two leaves a duplicate dead letter, never a lost order. The append uses the internal
idempotency key ``"redrive <dlqId>"`` (client keys cannot contain spaces), so re-driving the same
dead letter twice — a retry after a crash, or two operators at once — appends it once.

Nothing else needs clearing: a dead-lettered order never got a processed marker, so the default
handler processes the re-driven entry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from producer.appender import Appender, RoutedAppender
from producer.queries import dead_letter_order
from producer.validation import canonical_hash
from streamcore import envelope, ids
from streamcore.keys import Keys


class DeadLetterUnreadable(ValueError):
    """The dead letter holds no order that can be appended again: its original fields are judged
    by :func:`producer.queries.dead_letter_order` (a field name or value that is not UTF-8, no
    ``data``, ``data`` not a JSON object, nested too deeply) or the order has no ``orderId`` or
    cannot be encoded. It stays in the dead-letter stream.

    Attributes:
        dlq_id: the dead letter's entry ID (named in the message too).
        reason: ``not_utf8``, ``no_data``, ``not_json``, ``not_object``, ``too_deep``,
            ``no_order_id`` or ``unencodable``.
    """

    def __init__(self, dlq_id: str, message: str, reason: str) -> None:
        super().__init__(message)
        self.dlq_id = dlq_id
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Redriven:
    """One re-drive: ``dlq_id`` → new entry ``entry_id`` of ``order_id``; ``replayed`` when an
    earlier re-drive of the same dead letter had already appended it."""

    dlq_id: str
    entry_id: str
    order_id: str
    replayed: bool

    def as_json(self) -> dict[str, Any]:
        """``{"dlqId", "id", "orderId", "replayed"}``."""
        return {"dlqId": self.dlq_id, "id": self.entry_id, "orderId": self.order_id, "replayed": self.replayed}


def _order_of(dlq_id: str, fields: dict[str, str]) -> dict[str, Any]:
    try:
        order = dead_letter_order(dlq_id, fields)
    except envelope.EnvelopeError as exc:
        raise DeadLetterUnreadable(dlq_id, str(exc), exc.reason) from None
    if "orderId" not in order:
        raise DeadLetterUnreadable(dlq_id, f"dead letter {dlq_id} holds no order object with an orderId", "no_order_id")
    return order


async def _append(appender: Appender | RoutedAppender, dlq_id: str, fields: dict[str, str]) -> Redriven:
    order = _order_of(dlq_id, fields)
    key = f"redrive {dlq_id}"
    try:
        result = await appender.append(
            envelope.encode(order, idempotency_key=key, redriven_from=dlq_id),
            str(order["orderId"]),
            idempotency_key=key,
            body_hash=canonical_hash(order),
        )
    except ValueError as exc:  # appender.Unencodable (a lone surrogate escape), a non-finite number: nothing was sent
        raise DeadLetterUnreadable(dlq_id, f"dead letter {dlq_id} cannot be appended again: {exc}", "unencodable") from None
    return Redriven(dlq_id, result.entry_id, str(order["orderId"]), replayed=not result.created)


async def redrive_one(r: aioredis.Redis, parts: Sequence[Keys], appender: RoutedAppender, dlq_id: str) -> Redriven | None:
    """Re-drive one dead letter (XRANGE it, append the order, XDEL it).

    With several partitions the dead letter is looked for in each partition's dead-letter stream
    (index order; the first that holds ``dlq_id`` is re-driven). The order goes back to its own
    partition, the one of its orderId, which is the partition it was dead-lettered from.

    Returns:
        The outcome, or None when ``dlq_id`` is not in the dead-letter stream.

    Raises:
        DeadLetterUnreadable: it holds no readable order (left in place).
        redis.exceptions.RedisError: Redis failed; the dead letter is still there unless the
            append already happened (then a retry replays it and deletes it).
    """
    for keys in parts:
        rows = await r.xrange(keys.dlq, dlq_id, dlq_id)
        if rows:
            break
    else:
        return None
    done = await _append(appender, dlq_id, rows[0][1])
    await r.xdel(keys.dlq, dlq_id)
    return done


async def redrive_many(r: aioredis.Redis, parts: Sequence[Keys], appender: RoutedAppender, *, limit: int) -> dict[str, Any]:
    """Re-drive the oldest ``limit`` dead letters (their appends share batches); with several
    partitions, the oldest by dead-letter ID over every partition's dead-letter stream, each
    deleted from its own.

    Returns:
        ``{"redriven": n, "items": [{"dlqId", "id", "orderId", "replayed"}], "skipped":
        [{"dlqId", "error", "reason"}] (unreadable ones, left in place; ``reason`` as in
        :class:`DeadLetterUnreadable`), "remaining": XLEN afterwards}``.

    Raises:
        redis.exceptions.RedisError: the first Redis error; dead letters whose append succeeded
            are deleted before it is raised.
    """
    found = await asyncio.gather(*(r.xrange(keys.dlq, "-", "+", count=limit) for keys in parts))
    tagged = sorted(((ids.parse_id(i), p, i, f) for p, rows_p in enumerate(found) for i, f in rows_p),
                    key=lambda row: (row[0], row[1]))[:limit]
    rows = [(i, f) for _, _, i, f in tagged]
    where = [p for _, p, _, _ in tagged]
    outcomes = await asyncio.gather(*(_append(appender, i, f) for i, f in rows), return_exceptions=True)
    items: list[Redriven] = []
    skipped: list[dict[str, str]] = []
    failure: BaseException | None = None
    done_in: dict[int, list[str]] = {}
    for (dlq_id, _), p, outcome in zip(rows, where, outcomes, strict=True):
        if isinstance(outcome, Redriven):
            items.append(outcome)
            done_in.setdefault(p, []).append(dlq_id)
        elif isinstance(outcome, DeadLetterUnreadable):
            skipped.append({"dlqId": dlq_id, "error": str(outcome), "reason": outcome.reason})
        else:
            failure = failure or outcome
    for p, deleted in done_in.items():
        await r.xdel(parts[p].dlq, *deleted)
    if failure is not None:
        raise failure
    return {
        "redriven": len(items),
        "items": [i.as_json() for i in items],
        "skipped": skipped,
        "remaining": sum(int(n) for n in await asyncio.gather(*(r.xlen(keys.dlq) for keys in parts))),
    }
