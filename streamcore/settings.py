"""Settings read from environment variables, once, in each component's ``__main__``.

Every component builds one frozen settings object and passes it explicitly. Variable names are
the upper-case field names (``redis_url`` ← ``REDIS_URL``). The Redis URL may carry a password,
so it is a :class:`pydantic.SecretStr` and never appears in ``repr`` or in the start-up log.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamcore.groups import ABANDONED_AFTER_MS
from streamcore.keys import Keys

logger = logging.getLogger(__name__)


class CommonSettings(BaseSettings):
    """What every component needs: where Redis is and which stream and group to use."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    redis_url: SecretStr = Field(
        default=SecretStr("redis://localhost:6379/0"),
        description="REDIS_URL: redis:// or rediss:// URL, may include user and password.",
    )
    stream_name: str = Field(default="orders", min_length=1, description="STREAM_NAME: the order stream key.")
    group_name: str = Field(default="order-processors", min_length=1, description="GROUP_NAME: the consumer group.")
    dlq_stream: str = Field(default="orders:dlq", min_length=1, description="DLQ_STREAM: the dead-letter stream key.")
    stream_maxlen: int = Field(
        default=100_000,
        ge=1,
        description=(
            "STREAM_MAXLEN: retention in entries. Trimming never passes the safe floor computed "
            "by the reclaimer from the groups' positions (see streamcore.trimming)."
        ),
    )
    redis_socket_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="REDIS_SOCKET_TIMEOUT_S: client socket timeout in seconds; must exceed any BLOCK.",
    )
    abandoned_after_ms: int = Field(
        default=ABANDONED_AFTER_MS,
        ge=1,
        description=(
            "ABANDONED_AFTER_MS: a consumer group with pending entries whose consumers have all been quiet this "
            "long (ms) is reported as abandoned (/stream/info, orderstream_group_state, autoscaler status)."
        ),
    )
    log_level: str = Field(default="INFO", description="LOG_LEVEL: DEBUG, INFO, WARNING, ERROR.")
    log_format: Literal["text", "json"] = Field(default="text", description="LOG_FORMAT: text or json.")

    @property
    def keys(self) -> Keys:
        """The key names for this stream (:class:`streamcore.keys.Keys`)."""
        return Keys(stream=self.stream_name, group=self.group_name, dlq=self.dlq_stream)

    def log_effective(self, component: str) -> None:
        """Log the effective settings at start; secrets are shown as ``**********``."""
        logger.info("%s settings: %s", component, self.model_dump_json())


class HandlingSettings(CommonSettings):
    """What every process that runs the order handler reads: the consumer and the reclaimer.

    Both must agree on these (the reclaimer retries and dead-letters with the same rules), so
    they are declared once here.
    """

    handler: str = Field(default="consumer.handler:process_order", description="HANDLER: the order handler as module:function.")
    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="FAILURE_RATE: probability the default handler fails before applying an order.")
    handler_timeout_seconds: float = Field(
        default=300.0,
        ge=0,
        description=(
            "HANDLER_TIMEOUT_SECONDS: longest one handler call may run (s); past it the delivery fails "
            "(retried, then dead-lettered) instead of renewing its lease forever; 0 disables."
        ),
    )
    claim_idle_ms: int = Field(
        default=30_000,
        ge=1,
        description="CLAIM_IDLE_MS: base idle time (ms) before a pending entry is retried; grows 2x per delivery up to 16x.",
    )
    max_deliveries: int = Field(default=5, ge=1, description="MAX_DELIVERIES: deliveries after which a failing order is dead-lettered.")
    dead_letter_xdel: bool = Field(
        default=False,
        description=(
            "DEAD_LETTER_XDEL: when true, dead-lettering also deletes the entry from the order stream (XDEL, in the "
            "same atomic step as the dead-letter XADD and the XACK); by default it stays there, readable in the history."
        ),
    )
    concurrency: int = Field(default=16, ge=1, description="CONCURRENCY: handlers running at once.")
    processed_ttl_seconds: int = Field(
        default=7 * 86400, ge=1, description="PROCESSED_TTL_SECONDS: lifetime of processed-order markers (s)."
    )
