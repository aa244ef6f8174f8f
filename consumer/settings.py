"""Consumer settings, read once from environment variables in ``consumer.__main__``."""

from __future__ import annotations

import socket

from pydantic import Field, field_validator, model_validator

from streamcore.settings import CommonSettings


class ConsumerSettings(CommonSettings):
    """Settings of one consumer-group worker (``python -m consumer``).

    Every attribute is read from the upper-case environment variable of its name.
    """

    pod_name: str = Field(default="", description="POD_NAME: the consumer name (downward API); empty means the host name.")
    health_port: int = Field(default=8081, ge=0, le=65535, description="HEALTH_PORT: /healthz /readyz /metrics; 0 disables it.")
    health_host: str = Field(default="0.0.0.0", description="HEALTH_HOST: interface of the probe server.")
    handler: str = Field(default="consumer.handler:process_order", description="HANDLER: the order handler as module:function.")
    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="FAILURE_RATE: probability the default handler fails before applying an order.")
    handler_timeout_seconds: float = Field(default=300.0, ge=0, description="HANDLER_TIMEOUT_SECONDS: longest one handler call may run (s); past it the delivery fails (retried, then dead-lettered) instead of renewing its lease forever; 0 disables.")
    claim_idle_ms: int = Field(default=30_000, ge=1, description="CLAIM_IDLE_MS: base idle time (ms) before a pending entry is retried; grows 2x per delivery.")
    claim_interval_ms: int = Field(default=0, ge=0, description="CLAIM_INTERVAL_MS: how often (ms) the worker looks for due pending entries; 0 means max(1000, CLAIM_IDLE_MS/4).")
    max_deliveries: int = Field(default=5, ge=1, description="MAX_DELIVERIES: deliveries after which a failing order is dead-lettered.")
    block_ms: int = Field(default=5000, ge=1, description="BLOCK_MS: XREADGROUP BLOCK in ms; must stay below the socket timeout; never 0.")
    read_count: int = Field(default=100, ge=1, description="READ_COUNT: XREADGROUP COUNT, also the most entries held at once.")
    concurrency: int = Field(default=16, ge=1, description="CONCURRENCY: handlers running at once.")
    drain_timeout_seconds: float = Field(default=20.0, ge=0, description="DRAIN_TIMEOUT_SECONDS: how long in-flight orders may finish after SIGTERM (s).")
    ack_batch: int = Field(default=100, ge=1, description="ACK_BATCH: acks sent in one XACK once this many are waiting.")
    ack_flush_ms: int = Field(default=20, ge=1, description="ACK_FLUSH_MS: longest time (ms) a finished order waits for its XACK.")
    processed_ttl_seconds: int = Field(default=7 * 86400, ge=1, description="PROCESSED_TTL_SECONDS: lifetime of processed-order markers (s).")

    @field_validator("pod_name")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @model_validator(mode="after")
    def _block_below_socket_timeout(self) -> "ConsumerSettings":
        if self.block_ms / 1000.0 >= self.redis_socket_timeout_s:
            raise ValueError(f"BLOCK_MS ({self.block_ms}) must be shorter than REDIS_SOCKET_TIMEOUT_S ({self.redis_socket_timeout_s}s)")
        return self

    @property
    def consumer_name(self) -> str:
        """``POD_NAME``, else the host name."""
        return self.pod_name or socket.gethostname()
