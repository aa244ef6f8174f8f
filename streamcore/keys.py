"""Every Redis key name orderstream uses, in one place.

All keys derive from the stream name, so several pipelines can share one Redis database.
Keys that hold a hash tag-free prefix keep ``{stream}:`` first, which makes ``SCAN MATCH`` easy.

**Partitions** (``STREAM_PARTITIONS=N``, and Redis Cluster mode): partition ``i`` of ``N`` has its
own stream ``<STREAM_NAME>:{tag}``, dead-letter stream ``<DLQ_STREAM>:{tag}`` and every per-order
and per-stream key below, all carrying the same hash tag, so each Lua script and MULTI of a
partition stays in one cluster slot. The tag is chosen (:func:`partition_tag`) so that its slot
falls in the ``i``-th of ``N`` equal slot ranges: the partitions spread over the masters of a
cluster whose slots are split evenly. An order goes to partition :func:`partition_of` ``=
crc32(orderId) % N``, so all events of one order stay on one partition, in order. With ``N = 1``
outside cluster mode the names are exactly the unpartitioned ones (``orders``, ``orders:dlq``).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from functools import lru_cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

#: Most partitions a stream may have (``STREAM_PARTITIONS``).
MAX_PARTITIONS = 256


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one order stream.

    Attributes:
        stream: the order stream (``XADD`` target), e.g. ``orders``.
        group: the consumer group name, e.g. ``order-processors``.
        dlq: the dead-letter stream, e.g. ``orders:dlq``.
    """

    stream: str
    group: str
    dlq: str
    #: Which partition these keys name (0 when unpartitioned), and of how many.
    partition: int = 0
    partitions: int = 1

    def idempotency(self, idempotency_key: str) -> str:
        """String key holding the first answer for an ``Idempotency-Key`` header (hashed, so any
        header value makes a safe key name)."""
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
        return f"{self.stream}:idem:{digest}"

    def order_index(self, order_id: str) -> str:
        """String key: orderId → the entry ID it was appended under (latest append wins)."""
        return f"{self.stream}:order:{order_id}"

    def processed(self, order_id: str) -> str:
        """Hash key: the processed marker of an orderId (fields ``consumer``, ``entry_id``, ``at_ms``).

        Its existence is what makes the default handler idempotent.
        """
        return f"{self.stream}:processed:{order_id}"

    def dlq_index(self, order_id: str) -> str:
        """String key: orderId → the dead-letter stream entry ID of its last dead-lettering."""
        return f"{self.stream}:dlqidx:{order_id}"

    @property
    def trim_floor(self) -> str:
        """String key: the safe ``MINID`` below which every group has delivered and acknowledged
        everything (written by the reclaimer, read by every ``XADD``)."""
        return f"{self.stream}:trim-floor"

    @property
    def lost_counter(self) -> str:
        """Integer key: entries detected as trimmed or deleted before the group acknowledged them."""
        return f"{self.stream}:lost"

    @property
    def lost_reported(self) -> str:
        """Hash key: per group, the loss already counted into ``lost_counter`` (so a reclaimer pass
        never counts the same trimmed-before-delivery entries twice)."""
        return f"{self.stream}:lost-reported"

    @property
    def reclaimer_last_pass(self) -> str:
        """String key: when the last reclaimer pass over this stream ended, in ms since the epoch
        (the reclaimer's clock; the producer exports it as
        ``orderstream_reclaimer_last_pass_timestamp_seconds`` for the "reclaimer not running" alert)."""
        return f"{self.stream}:reclaimer:last-pass"

    def paused(self, group: str) -> str:
        """String key: present while ``group`` is paused (``POST /groups/{group}/pause``); its
        consumers issue no new read and claim nothing, the reclaimer claims nothing for it."""
        return f"{self.stream}:paused:{group}"

    @property
    def autoscaler_decisions(self) -> str:
        """Stream key: the autoscaler's scaling decisions about this stream, capped
        (:mod:`streamcore.decisions`)."""
        return f"{self.stream}:autoscaler"

    @property
    def failed_counter(self) -> str:
        """Integer key: handler failures (failed deliveries, retried or dead-lettered) since the
        stream began, for the console's failed-per-second rate (``INCRBY`` per failure)."""
        return f"{self.stream}:failed"

    @property
    def audit(self) -> str:
        """Stream key: one entry per admin mutation (who, what, when, how many entries), capped."""
        return f"{self.stream}:audit"

    def heartbeat(self, consumer: str) -> str:
        """String key with a TTL: present while ``consumer`` is alive (refreshed by its read loop).

        Liveness is judged from this key (and ``inactive`` where the server reports it), never
        from XINFO's ``idle`` alone (case C04).
        """
        return f"{self.stream}:hb:{self.group}:{consumer}"


def slot_range(index: int, count: int) -> tuple[int, int]:
    """The ``index``-th of ``count`` equal ranges of the 16384 cluster slots, as ``(first, last)``
    inclusive (the split ``redis-cli --cluster create`` makes for ``count`` masters)."""
    first = index * REDIS_CLUSTER_HASH_SLOTS // count
    last = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // count - 1
    return first, last


@lru_cache(maxsize=None)
def partition_tag(index: int, count: int) -> str:
    """The hash tag (without braces) of partition ``index`` of ``count``: ``p<index>.<count>``
    when its CRC16 slot already lies in :func:`slot_range` ``(index, count)``, else the first
    ``p<index>.<count>.<k>`` (k = 0, 1, ...) whose slot does. Deterministic: every process finds
    the same tag.

    Raises:
        ValueError: ``count`` is not within 1..:data:`MAX_PARTITIONS` or ``index`` not below it.
    """
    if not 1 <= count <= MAX_PARTITIONS or not 0 <= index < count:
        raise ValueError(f"partition {index} of {count} is out of range (1..{MAX_PARTITIONS} partitions)")
    first, last = slot_range(index, count)
    candidate = f"p{index}.{count}"
    k = 0
    while not first <= key_slot(candidate.encode()) <= last:
        candidate = f"p{index}.{count}.{k}"
        k += 1
    return candidate


def partition_of(order_id: str, count: int) -> int:
    """The partition of an order: ``crc32(order_id.encode()) % count`` (``zlib.crc32``, the orderId
    as text, as it is in the stream entry). Every event of one order lands on the same partition,
    so one order's entries keep their order."""
    if count == 1:
        return 0
    return zlib.crc32(order_id.encode("utf-8", "surrogateescape")) % count


@lru_cache(maxsize=64)
def partition_keys(stream: str, group: str, dlq: str, count: int = 1, *, cluster: bool = False) -> tuple[Keys, ...]:
    """The :class:`Keys` of every partition, index order.

    With ``count == 1`` and ``cluster`` false: one ``Keys`` with exactly the given names. Otherwise
    partition ``i`` is ``Keys(stream=f"{stream}:{{tag}}", dlq=f"{dlq}:{{tag}}", group)`` with
    ``tag = partition_tag(i, count)`` (in cluster mode even one partition is tagged, so its stream
    and dead-letter stream share a slot).

    Raises:
        ValueError: ``count`` out of range, or ``stream``/``dlq`` already hold ``{`` or ``}``
            (their own hash tag would override the partition's).
    """
    if count == 1 and not cluster:
        return (Keys(stream=stream, group=group, dlq=dlq),)
    for name in (stream, dlq):
        if "{" in name or "}" in name:
            raise ValueError(f"stream name {name!r} holds a brace; partitioned or cluster keys add their own hash tag")
    out = []
    for i in range(count):
        tag = partition_tag(i, count)
        out.append(Keys(stream=f"{stream}:{{{tag}}}", group=group, dlq=f"{dlq}:{{{tag}}}", partition=i, partitions=count))
    return tuple(out)
