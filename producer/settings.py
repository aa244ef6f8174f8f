"""Producer settings (environment variables, read once in ``__main__``)."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from streamcore.settings import CommonSettings


class ProducerSettings(CommonSettings):
    """Settings of the HTTP API on top of :class:`streamcore.settings.CommonSettings`.

    Every attribute is read from the upper-case environment variable of the same name.
    """

    host: str = Field(default="0.0.0.0", description="HOST: interface to listen on.")
    port: int = Field(default=3000, ge=1, le=65535, description="PORT: HTTP port of the API, /healthz, /readyz and /metrics.")
    max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="MAX_BODY_BYTES: largest request body in bytes; larger bodies get 413 and nothing is appended.",
    )
    idempotency_ttl_seconds: int = Field(
        default=86_400,
        ge=1,
        description="IDEMPOTENCY_TTL_SECONDS: how long a retry with the same Idempotency-Key replays the first answer, seconds.",
    )
    order_index_ttl_seconds: int = Field(
        default=7 * 86_400,
        ge=1,
        description=(
            "ORDER_INDEX_TTL_SECONDS: how long GET /orders/{orderId} can find an order's entry ID "
            "(the orderId index key expires then, so keys do not grow with every order ever posted), seconds."
        ),
    )
    history_max_count: int = Field(
        default=1000,
        ge=1,
        description="HISTORY_MAX_COUNT: most entries one history, pending or dead-letter page returns (larger count/limit is clamped).",
    )
    history_max_bytes: int = Field(
        default=4 * 1_048_576,
        ge=1024,
        description=(
            "HISTORY_MAX_BYTES: most order bytes one history or dead-letter page returns; a page stops early "
            "(with a cursor) once it is reached, but always holds at least one entry."
        ),
    )
    max_product_length: int = Field(default=200, ge=1, description="MAX_PRODUCT_LENGTH: longest product name, characters.")
    max_id_length: int = Field(default=64, ge=1, le=512, description="MAX_ID_LENGTH: longest string orderId/userId, characters.")
    max_quantity: int = Field(default=1_000_000, ge=1, description="MAX_QUANTITY: largest quantity of one order.")
    batch_max_items: int = Field(default=1000, ge=1, description="BATCH_MAX_ITEMS: most orders in one POST /orders/batch.")
    in_flight_max_bytes: int = Field(
        default=8 * 1_048_576,
        ge=1024,
        description=(
            "IN_FLIGHT_MAX_BYTES: most request-body bytes (Content-Length, MAX_BODY_BYTES when chunked, at "
            "least 16 KiB per request) held by unfinished POSTs at once; past it a POST gets 503 with "
            "Retry-After before its body is read. A body of any allowed size is always admitted when nothing "
            "else is in flight. Bounds memory while Redis is slow or hung: a request holds ~7 copies of its "
            "body until Redis answers (measured: 500 POSTs of 900 KB to a hung Redis took 1.7 GB without "
            "this, ~215 MB with the default, most of it read-ahead buffers of the refused connections)."
        ),
    )
    redis_wait_replicas: int = Field(
        default=0,
        ge=0,
        description=(
            "REDIS_WAIT_REPLICAS: replicas that must confirm each append batch (WAIT) before its orders are answered "
            "201; fewer within REDIS_WAIT_TIMEOUT_MS gives 503 (the order may be in the stream: retry with the same "
            "Idempotency-Key). With REDIS_CLUSTER, replicas of the primary of the order's partition. 0: no WAIT."
        ),
    )
    redis_wait_timeout_ms: int = Field(
        default=1000,
        ge=1,
        description="REDIS_WAIT_TIMEOUT_MS: how long one WAIT may wait for REDIS_WAIT_REPLICAS replicas, ms; below REDIS_SOCKET_TIMEOUT_S.",
    )
    append_batch_max: int = Field(
        default=128,
        ge=1,
        description="APPEND_BATCH_MAX: most appends of concurrent requests sent to Redis in one batch (one call of the append script).",
    )
    redrive_max: int = Field(default=100, ge=1, description="REDRIVE_MAX: most dead letters one POST /dead-letters/redrive moves.")
    admin_token: SecretStr | None = Field(
        default=None,
        description=(
            "ADMIN_TOKEN: when set, every mutating admin route (re-drive, delete a dead letter, pause and resume a "
            "group) needs 'Authorization: Bearer <token>' and answers 401 without it; read-only routes never do. "
            "Unset: those routes are open to whoever reaches the API (the chart always sets it from a Secret)."
        ),
    )
    shutdown_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="SHUTDOWN_TIMEOUT_S: how long in-flight requests may finish after SIGTERM, seconds.",
    )

    @model_validator(mode="after")
    def _wait_within_the_socket_timeout(self) -> ProducerSettings:
        # The WAIT reply is read within the socket timeout of the append batch: a longer WAIT
        # would turn every shortfall into a timeout and a dropped connection.
        if self.redis_wait_replicas and self.redis_wait_timeout_ms >= self.redis_socket_timeout_s * 1000:
            raise ValueError(
                f"REDIS_WAIT_TIMEOUT_MS ({self.redis_wait_timeout_ms}) must be below REDIS_SOCKET_TIMEOUT_S "
                f"({self.redis_socket_timeout_s:g} s)")
        return self
