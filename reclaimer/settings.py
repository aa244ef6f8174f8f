"""Reclaimer settings, read once from environment variables in ``reclaimer.__main__``."""

from __future__ import annotations

from pydantic import Field

from streamcore.settings import HandlingSettings


class ReclaimerSettings(HandlingSettings):
    """Settings of ``python -m reclaimer``; every attribute comes from its upper-case env var."""

    reclaimer_name: str = Field(default="reclaimer", min_length=1, description="RECLAIMER_NAME: the consumer name the reclaimer claims under.")
    consumer_inactive_ttl_ms: int = Field(default=3_600_000, ge=0, description="CONSUMER_INACTIVE_TTL_MS: quiet time (ms) after which a consumer without heartbeat and pending entries is deleted.")
    reclaim_interval_seconds: float = Field(default=5.0, gt=0, description="RECLAIM_INTERVAL_SECONDS: pause between passes with --loop (s).")
    reclaim_limit: int = Field(default=1000, ge=1, description="RECLAIM_LIMIT: most entries claimed in one pass (XCLAIM and XAUTOCLAIM together), exactly; the rest stays pending for the next pass.")
    reclaim_page_size: int = Field(default=100, ge=1, le=10_000, description="RECLAIM_PAGE_SIZE: entries claimed, handled and acked at a time (claim_due limit, XAUTOCLAIM COUNT); a pass holds one page in memory whatever RECLAIM_LIMIT is.")
    reclaim_retry_seconds: float = Field(default=30.0, ge=0, description="RECLAIM_RETRY_SECONDS: how long a one-shot pass (the CronJob's) retries while Redis is unreachable or not ready (connection refused, LOADING, ...), with back-off from 0.5 s to 5 s, before it exits 1; keep it below the Job's activeDeadlineSeconds.")
    trim_max_step: int = Field(default=10_000, ge=1, description="TRIM_MAX_STEP: most entries removed by retention in one pass.")
