"""Reclaimer settings, read once from environment variables in ``reclaimer.__main__``."""

from __future__ import annotations

from pydantic import Field

from streamcore.settings import CommonSettings


class ReclaimerSettings(CommonSettings):
    """Settings of ``python -m reclaimer``; every attribute comes from its upper-case env var."""

    reclaimer_name: str = Field(default="reclaimer", min_length=1, description="RECLAIMER_NAME: the consumer name the reclaimer claims under.")
    handler: str = Field(default="consumer.handler:process_order", description="HANDLER: the order handler as module:function (the consumer's).")
    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="FAILURE_RATE: probability the default handler fails on purpose.")
    handler_timeout_seconds: float = Field(default=300.0, ge=0, description="HANDLER_TIMEOUT_SECONDS: longest one handler call may run (s); past it the delivery fails (retried, then dead-lettered) instead of renewing its lease forever; 0 disables.")
    claim_idle_ms: int = Field(default=30_000, ge=1, description="CLAIM_IDLE_MS: base idle time (ms) before a pending entry is retried; grows 2x per delivery up to 16x.")
    max_deliveries: int = Field(default=5, ge=1, description="MAX_DELIVERIES: deliveries after which a failing order is dead-lettered.")
    consumer_inactive_ttl_ms: int = Field(default=3_600_000, ge=0, description="CONSUMER_INACTIVE_TTL_MS: quiet time (ms) after which a consumer without heartbeat and pending entries is deleted.")
    reclaim_interval_seconds: float = Field(default=5.0, gt=0, description="RECLAIM_INTERVAL_SECONDS: pause between passes with --loop (s).")
    reclaim_limit: int = Field(default=1000, ge=1, description="RECLAIM_LIMIT: most entries claimed and handled in one pass.")
    concurrency: int = Field(default=16, ge=1, description="CONCURRENCY: handlers running at once during a pass.")
    trim_max_step: int = Field(default=10_000, ge=1, description="TRIM_MAX_STEP: most entries removed by retention in one pass.")
    processed_ttl_seconds: int = Field(default=7 * 86400, ge=1, description="PROCESSED_TTL_SECONDS: lifetime of processed-order markers (s).")
