"""The audit stream: one entry per admin mutation (issue 14's safety requirement).

Every re-drive, dead-letter deletion, pause and resume appends ``XADD <stream>:audit MAXLEN ~
AUDIT_MAXLEN`` with who asked (the ``X-Admin-Actor`` header when the caller names itself, the
client address, its User-Agent, whether a token was checked), what (``action``, ``target``),
when (``at_ms``) and how many entries it touched (``count``). ``GET /audit`` reads it back, newest first.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from producer.rendering import text_fields
from streamcore.keys import Keys

#: Approximate cap of the audit stream (``XADD ... MAXLEN ~``): the newest mutations are kept.
AUDIT_MAXLEN = 10_000

#: Longest value kept from a client-supplied header (actor, User-Agent).
_MAX_HEADER = 200


def who(request: web.Request, token_checked: bool) -> dict[str, str]:
    """The audit fields that say who asked: ``actor`` (``X-Admin-Actor``, or empty), ``remote``
    (the first ``X-Forwarded-For`` address behind an ingress, else the peer address),
    ``user_agent`` and ``auth`` (``token`` when ADMIN_TOKEN was checked, else ``none``)."""
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
    return {
        "actor": request.headers.get("X-Admin-Actor", "")[:_MAX_HEADER],
        "remote": (forwarded or request.remote or "")[:_MAX_HEADER],
        "user_agent": request.headers.get("User-Agent", "")[:_MAX_HEADER],
        "auth": "token" if token_checked else "none",
    }


async def record(r: aioredis.Redis, keys: Keys, request: web.Request, *, action: str, target: str, count: int,
                 token_checked: bool) -> str:
    """Append one audit entry; returns its entry ID.

    Args:
        action: ``redrive``, ``redrive_all``, ``delete_dead_letter``, ``pause`` or ``resume``.
        target: what it applied to (a dlqId, ``*``, a group name).
        count: entries it touched (dead letters moved or deleted; 0 for pause/resume).

    Raises:
        redis.exceptions.RedisError: the XADD failed (the mutation is done; the caller answers 503).
    """
    fields = {"action": action, "target": target, "count": str(count), "at_ms": str(int(time.time() * 1000)),
              **who(request, token_checked)}
    return await r.xadd(keys.audit, fields, maxlen=AUDIT_MAXLEN, approximate=True)


async def read(r: aioredis.Redis, keys: Keys, limit: int) -> dict[str, Any]:
    """GET /audit: ``{"stream", "entries": [{"id", "action", "target", "count", "atMs", "actor",
    "remote", "userAgent", "auth"}...]}``, newest first (``XREVRANGE ... COUNT limit``)."""
    rows = await r.xrevrange(keys.audit, count=limit)
    entries = []
    for entry_id, f in rows:
        entries.append({
            "id": entry_id,
            **text_fields(action=f.get("action"), target=f.get("target"), actor=f.get("actor"), remote=f.get("remote"),
                          userAgent=f.get("user_agent"), auth=f.get("auth")),
            "count": int(f["count"]) if str(f.get("count", "")).isdigit() else None,
            "atMs": int(f["at_ms"]) if str(f.get("at_ms", "")).isdigit() else None,
        })
    return {"stream": keys.audit, "entries": entries}
