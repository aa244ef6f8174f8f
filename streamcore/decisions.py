"""The autoscaler's decisions, kept in Redis beside the stream they are about, so the producer's
console and API can show what it decided and when without access to the Kubernetes API.

One capped stream per order stream, ``<stream>:autoscaler`` (:attr:`streamcore.keys.Keys.autoscaler_decisions`):
the operator appends an entry whenever it scales a target (or would, in dry-run mode, or failed
to); ``GET /autoscaler/decisions`` reads them back, newest first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from streamcore.keys import Keys

#: Approximate cap of each decisions stream (``XADD ... MAXLEN ~``).
DECISIONS_MAXLEN = 1000


@dataclass(frozen=True, slots=True)
class Decision:
    """One scaling decision of a StreamAutoscaler.

    Attributes:
        autoscaler: ``<namespace>/<name>`` of the StreamAutoscaler.
        target: the Deployment it scales.
        current: replicas before (the Deployment's ``spec.replicas``).
        desired: replicas the policy chose.
        outcome: ``scaled``, ``dry_run`` or ``failed``.
        reason: the policy's reason (``ScaleUp``, ``ScaleDown``, ``ScaleToZero``, ...).
        message: the policy's explanation (backlog, limits, windows).
        backlog: the backlog it decided on (lag + pending on live consumers), or None when unknown.
    """

    autoscaler: str
    target: str
    current: int
    desired: int
    outcome: str
    reason: str
    message: str
    backlog: int | None


async def record(r: aioredis.Redis, streams: list[str], decision: Decision) -> None:
    """Append ``decision`` to the decisions stream of each of ``streams`` (one pipeline; time
    in ms from the operator's clock).

    Raises:
        redis.exceptions.RedisError: Redis failed (callers log it: a decision is not undone
            because its record could not be written).
    """
    fields = {"autoscaler": decision.autoscaler, "target": decision.target, "current": str(decision.current),
              "desired": str(decision.desired), "outcome": decision.outcome, "reason": decision.reason,
              "message": decision.message[:500], "backlog": "" if decision.backlog is None else str(decision.backlog),
              "at_ms": str(int(time.time() * 1000))}
    async with r.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xadd(Keys(stream=stream, group="", dlq="").autoscaler_decisions, fields, maxlen=DECISIONS_MAXLEN,
                      approximate=True)
        await pipe.execute()


async def read(r: aioredis.Redis, keys: Keys, limit: int) -> list[dict]:
    """The newest ``limit`` decisions about ``keys.stream`` (``XREVRANGE ... COUNT``), newest
    first: ``[{"id", "autoscaler", "target", "current", "desired", "outcome", "reason",
    "message", "backlog" (None when unknown), "atMs"}]``. Fields another writer left malformed
    come back as None rather than failing the read.

    Raises:
        redis.exceptions.RedisError: Redis failed.
    """
    def number(value: str | None) -> int | None:
        return int(value) if value is not None and value.isdigit() else None

    out = []
    for entry_id, f in await r.xrevrange(keys.autoscaler_decisions, count=limit):
        out.append({"id": entry_id, "autoscaler": f.get("autoscaler"), "target": f.get("target"),
                    "current": number(f.get("current")), "desired": number(f.get("desired")),
                    "outcome": f.get("outcome"), "reason": f.get("reason"), "message": f.get("message"),
                    "backlog": number(f.get("backlog")), "atMs": number(f.get("at_ms"))})
    return out
