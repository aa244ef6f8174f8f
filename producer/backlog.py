"""The backlog figures the producer's /metrics exports for dashboards and alerts.

Read at every scrape from what Redis keeps as counters and indexes, never by walking a stream
or a PEL: ``XINFO GROUPS`` (lag, pending, consumers of each group), ``XPENDING`` in its summary
form (the oldest pending entry ID, per group with pending entries), ``XLEN`` of the dead-letter
stream and the reclaimer's last-pass key (:attr:`streamcore.keys.Keys.reclaimer_last_pass`).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from streamcore import ids
from streamcore.keys import Keys
from streamcore.streams import is_no_such_key, is_nogroup


@dataclass(frozen=True, slots=True)
class GroupBacklog:
    """One consumer group of the stream.

    Attributes:
        name: the group's name.
        lag: entries not yet delivered to the group (``XINFO GROUPS`` ``lag``); None when Redis
            cannot tell (after ``XGROUP SETID`` or a deletion inside the unread range).
        pending: delivered, not yet acknowledged entries (the PEL's size).
        consumers: consumers the group lists (``XINFO GROUPS`` ``consumers``), live or not.
        oldest_pending_ms: the milliseconds part of the smallest pending entry ID (when that
            order was appended, Redis's clock), or None with nothing pending.
        paused: the group's paused key exists (``POST /groups/{group}/pause``).
    """

    name: str
    lag: int | None
    pending: int
    consumers: int
    oldest_pending_ms: int | None
    paused: bool = False


@dataclass(frozen=True, slots=True)
class Backlog:
    """The stream's groups, its dead-letter stream and the reclaimer's last pass.

    Attributes:
        stream: the stream's key.
        dlq: the dead-letter stream's key.
        groups: every group ``XINFO GROUPS`` lists (none when the stream does not exist).
        dead_letters: entries in the dead-letter stream (``XLEN``; 0 when it does not exist).
        reclaimer_last_pass_ms: when the last reclaimer pass ended (ms since the epoch), or
            None when no pass has ended yet (or its key holds something else).
    """

    stream: str
    dlq: str
    groups: list[GroupBacklog]
    dead_letters: int
    reclaimer_last_pass_ms: int | None


async def read_backlog(r: aioredis.Redis, keys: Keys) -> Backlog:
    """Two pipelined round trips: ``XINFO GROUPS``, ``XLEN`` of the DLQ and ``GET`` of the
    last-pass key, then one ``XPENDING <stream> <group>`` (summary form: count, smallest and
    largest ID, per-consumer counts) per group with pending entries.

    Raises:
        redis.exceptions.RedisError: Redis failed (a missing stream is not an error).
    """
    async with r.pipeline(transaction=False) as pipe:
        pipe.xinfo_groups(keys.stream)
        pipe.xlen(keys.dlq)
        pipe.get(keys.reclaimer_last_pass)
        groups, dead_letters, last_pass = await pipe.execute(raise_on_error=False)
    for reply in (dead_letters, last_pass):
        if isinstance(reply, Exception):
            raise reply
    if isinstance(groups, ResponseError) and is_no_such_key(groups):
        groups = []
    elif isinstance(groups, Exception):
        raise groups
    oldest = {name: ids.parse_id(entry_id)[0] for name, entry_id in (await oldest_pending(r, keys, groups)).items()}
    paused = await paused_groups(r, keys, [g["name"] for g in groups])
    return Backlog(
        stream=keys.stream,
        dlq=keys.dlq,
        groups=[GroupBacklog(name=g["name"], lag=None if g.get("lag") is None else int(g["lag"]),
                             pending=int(g["pending"]), consumers=int(g["consumers"]),
                             oldest_pending_ms=oldest.get(g["name"]), paused=g["name"] in paused)
                for g in groups],
        dead_letters=int(dead_letters),
        reclaimer_last_pass_ms=int(last_pass) if last_pass and str(last_pass).isdigit() else None,
    )


async def oldest_pending(r: aioredis.Redis, keys: Keys, groups: list[dict]) -> dict[str, str]:
    """The smallest pending entry ID of each group of ``groups`` (as ``XINFO GROUPS`` lists
    them) that has pending entries: one pipelined ``XPENDING <stream> <group>`` (summary form)
    per such group. A group destroyed meanwhile is left out.

    Returns:
        ``{group name: entry ID}``; groups with nothing pending are absent.

    Raises:
        redis.exceptions.RedisError: Redis failed.
    """
    busy = [g["name"] for g in groups if int(g["pending"]) > 0]
    if not busy:
        return {}
    async with r.pipeline(transaction=False) as pipe:
        for name in busy:
            pipe.xpending(keys.stream, name)
        summaries = await pipe.execute(raise_on_error=False)
    out: dict[str, str] = {}
    for name, summary in zip(busy, summaries, strict=True):
        if isinstance(summary, Exception) and not is_nogroup(summary):
            raise summary
        if isinstance(summary, dict) and summary.get("min"):
            out[name] = summary["min"]
    return out


async def paused_groups(r: aioredis.Redis, keys: Keys, names: list[str]) -> set[str]:
    """Which of the groups ``names`` are paused: one pipelined ``EXISTS keys.paused(group)`` each.

    Raises:
        redis.exceptions.RedisError: Redis failed.
    """
    if not names:
        return set()
    async with r.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.exists(keys.paused(name))
        found = await pipe.execute()
    return {name for name, n in zip(names, found, strict=True) if n}
