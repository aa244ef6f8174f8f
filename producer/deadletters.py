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
import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from producer.appender import Appender
from producer.validation import MAX_NESTING, canonical_hash, too_deep
from streamcore import envelope
from streamcore.keys import Keys


class DeadLetterUnreadable(ValueError):
    """The dead letter has no readable order (``data`` missing or not a JSON object with an
    orderId); it stays in the dead-letter stream."""


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
        order = json.loads(fields.get("data", ""))
    except RecursionError:
        raise DeadLetterUnreadable(f"dead letter {dlq_id} data is nested too deeply") from None
    except ValueError as exc:
        raise DeadLetterUnreadable(f"dead letter {dlq_id} data is not JSON: {exc}") from None
    if not isinstance(order, dict) or "orderId" not in order:
        raise DeadLetterUnreadable(f"dead letter {dlq_id} holds no order object with an orderId")
    # Re-driving must not put back what POST /orders would refuse: readers fail on it.
    if too_deep(order) is not None:
        raise DeadLetterUnreadable(f"dead letter {dlq_id} data is nested more than {MAX_NESTING} levels deep")
    return order


async def _append(appender: Appender, dlq_id: str, fields: dict[str, str]) -> Redriven:
    order = _order_of(dlq_id, fields)
    key = f"redrive {dlq_id}"
    try:
        result = await appender.append(
            envelope.encode(order, idempotency_key=key, redriven_from=dlq_id),
            str(order["orderId"]),
            idempotency_key=key,
            body_hash=canonical_hash(order),
        )
    except ValueError as exc:  # appender.Unencodable (a lone surrogate), a non-finite number: nothing was sent
        raise DeadLetterUnreadable(f"dead letter {dlq_id} cannot be appended again: {exc}") from None
    return Redriven(dlq_id, result.entry_id, str(order["orderId"]), replayed=not result.created)


async def redrive_one(r: aioredis.Redis, keys: Keys, appender: Appender, dlq_id: str) -> Redriven | None:
    """Re-drive one dead letter (XRANGE it, append the order, XDEL it).

    Returns:
        The outcome, or None when ``dlq_id`` is not in the dead-letter stream.

    Raises:
        DeadLetterUnreadable: it holds no readable order (left in place).
        redis.exceptions.RedisError: Redis failed; the dead letter is still there unless the
            append already happened (then a retry replays it and deletes it).
    """
    rows = await r.xrange(keys.dlq, dlq_id, dlq_id)
    if not rows:
        return None
    done = await _append(appender, dlq_id, rows[0][1])
    await r.xdel(keys.dlq, dlq_id)
    return done


async def redrive_many(r: aioredis.Redis, keys: Keys, appender: Appender, *, limit: int) -> dict[str, Any]:
    """Re-drive the oldest ``limit`` dead letters (their appends share pipelines).

    Returns:
        ``{"redriven": n, "items": [{"dlqId", "id", "orderId", "replayed"}], "skipped":
        [{"dlqId", "error"}] (unreadable ones, left in place), "remaining": XLEN afterwards}``.

    Raises:
        redis.exceptions.RedisError: the first Redis error; dead letters whose append succeeded
            are deleted before it is raised.
    """
    rows = await r.xrange(keys.dlq, "-", "+", count=limit)
    outcomes = await asyncio.gather(*(_append(appender, i, f) for i, f in rows), return_exceptions=True)
    items: list[Redriven] = []
    skipped: list[dict[str, str]] = []
    failure: BaseException | None = None
    for (dlq_id, _), outcome in zip(rows, outcomes, strict=True):
        if isinstance(outcome, Redriven):
            items.append(outcome)
        elif isinstance(outcome, DeadLetterUnreadable):
            skipped.append({"dlqId": dlq_id, "error": str(outcome)})
        else:
            failure = failure or outcome
    if items:
        await r.xdel(keys.dlq, *(i.dlq_id for i in items))
    if failure is not None:
        raise failure
    return {
        "redriven": len(items),
        "items": [i.as_json() for i in items],
        "skipped": skipped,
        "remaining": int(await r.xlen(keys.dlq)),
    }
