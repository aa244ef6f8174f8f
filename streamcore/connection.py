"""Redis client construction and the server-version check.

One :class:`redis.asyncio.Redis` per process, owned by whoever created it (``await r.aclose()``).
The socket timeout is always longer than any ``BLOCK`` we issue (case C12), so an empty blocking
read returns normally instead of raising ``TimeoutError`` and reconnecting.

**Bytes-safe decoding.** Redis stores bytes; other tools may write entries, field names or
consumer names that are not UTF-8. Every reply is decoded by one codec, the client's, with the
``surrogateescape`` error handler: valid UTF-8 becomes ordinary text, each invalid byte becomes a
lone surrogate (``U+DC80``..``U+DCFF``). Nothing is lost (encoding back with the same handler,
which the client does for every argument, gives the original bytes), nothing raises
``UnicodeDecodeError``, and whether a value was valid UTF-8 is judged in one place,
:func:`streamcore.envelope.decode` (with :func:`streamcore.envelope.is_clean_text`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio as aioredis

logger = logging.getLogger(__name__)

#: How replies are decoded (see the module docstring): lossless, never raises.
ENCODING_ERRORS = "surrogateescape"

#: Server families and major versions our CI runs the integration tier against.
TESTED_SERVERS: dict[str, tuple[int, ...]] = {"redis": (7, 8), "valkey": (8, 9)}


def create_redis(url: str, *, socket_timeout_s: float = 15.0, max_connections: int = 64) -> aioredis.Redis:
    """Create an asyncio Redis client with ``decode_responses=True`` and lossless decoding
    (``encoding_errors="surrogateescape"``, see the module docstring).

    Args:
        url: ``redis://`` or ``rediss://`` URL (user, password and db in the URL).
        socket_timeout_s: read timeout in seconds; callers must keep every ``BLOCK`` below it.
        max_connections: connection pool size.

    Returns:
        A client; the caller owns it and must ``await client.aclose()``.

    Raises:
        ValueError: the URL is not a Redis URL.
    """
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        encoding_errors=ENCODING_ERRORS,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=min(socket_timeout_s, 5.0),
        health_check_interval=30,
        max_connections=max_connections,
        retry_on_timeout=False,
    )


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """Which server we talk to, from ``INFO server``.

    Attributes:
        family: ``"redis"`` or ``"valkey"`` (``server_name`` field, present on Valkey).
        version: ``(major, minor, patch)`` from ``valkey_version`` or ``redis_version``.
    """

    family: str
    version: tuple[int, int, int]

    @property
    def has_inactive(self) -> bool:
        """XINFO CONSUMERS reports ``inactive`` (Redis >= 7.2 and every Valkey)."""
        return self.family == "valkey" or self.version >= (7, 2, 0)

    @property
    def tested(self) -> bool:
        """Whether this server family and major version is in our CI matrix."""
        return self.version[0] in TESTED_SERVERS.get(self.family, ())


def _version(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split(".")[:3] if p.isdigit()]
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


async def server_info(r: aioredis.Redis) -> ServerInfo:
    """Read the server family and version with ``INFO server``; warn once on an untested one.

    Raises:
        redis.exceptions.ConnectionError: Redis is unreachable.
    """
    info = await r.info("server")
    if info.get("server_name") == "valkey" or "valkey_version" in info:
        found = ServerInfo("valkey", _version(str(info.get("valkey_version", info.get("redis_version", "0")))))
    else:
        found = ServerInfo("redis", _version(str(info.get("redis_version", "0"))))
    if found.version < (7, 0, 0) and found.family == "redis":
        logger.error("Redis %s is older than 7.0, which orderstream requires", found.version)
    elif not found.tested:
        logger.warning("server %s %s is not in our test matrix", found.family, ".".join(map(str, found.version)))
    return found
