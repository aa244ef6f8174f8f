"""Consumer settings, read once from environment variables in ``consumer.__main__``."""

from __future__ import annotations

import socket

from pydantic import Field, field_validator, model_validator

from streamcore.settings import HandlingSettings


class ConsumerSettings(HandlingSettings):
    """Settings of one consumer-group worker (``python -m consumer``).

    Every attribute is read from the upper-case environment variable of its name.
    """

    pod_name: str = Field(default="", description="POD_NAME: the consumer name (downward API); empty means the host name.")
    health_port: int = Field(default=8081, ge=0, le=65535, description="HEALTH_PORT: /healthz /readyz /metrics; 0 disables it.")
    health_host: str = Field(default="0.0.0.0", description="HEALTH_HOST: interface of the probe server.")
    claim_interval_ms: int = Field(default=0, ge=0, description="CLAIM_INTERVAL_MS: how often (ms) the worker looks for due pending entries; 0 means max(1000, CLAIM_IDLE_MS/4).")
    block_ms: int = Field(default=5000, ge=1, description="BLOCK_MS: XREADGROUP BLOCK in ms; must stay below the socket timeout; never 0.")
    read_count: int = Field(default=100, ge=1, description="READ_COUNT: XREADGROUP COUNT, and the most orders of one batch handler call; at most max(READ_COUNT, CONCURRENCY) + 2 x READ_COUNT entries are held at once (batch handler: max(READ_COUNT, CONCURRENCY x READ_COUNT) + 2 x READ_COUNT).")
    drain_timeout_seconds: float = Field(default=20.0, ge=0, description="DRAIN_TIMEOUT_SECONDS: how long in-flight orders may finish after SIGTERM (s).")
    ack_batch: int = Field(default=100, ge=1, description="ACK_BATCH: acks sent in one XACK once this many are waiting.")
    ack_flush_ms: int = Field(default=20, ge=1, description="ACK_FLUSH_MS: longest time (ms) a finished order waits for its XACK.")

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
