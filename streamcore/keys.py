"""Every Redis key name orderstream uses, in one place.

All keys derive from the stream name, so several pipelines can share one Redis database.
Keys that hold a hash tag-free prefix keep ``{stream}:`` first, which makes ``SCAN MATCH`` easy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


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
    def audit(self) -> str:
        """Stream key: one entry per admin mutation (who, what, when, how many entries), capped."""
        return f"{self.stream}:audit"

    def heartbeat(self, consumer: str) -> str:
        """String key with a TTL: present while ``consumer`` is alive (refreshed by its read loop).

        Liveness is judged from this key (and ``inactive`` where the server reports it), never
        from XINFO's ``idle`` alone (case C04).
        """
        return f"{self.stream}:hb:{self.group}:{consumer}"
