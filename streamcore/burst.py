"""``orderstream burst``: post a burst of orders to a running producer, the way a sale would.

It sends ``POST /orders/batch`` requests of ``batch`` orders each (the producer's per-order
validation and idempotent append; ``BATCH_MAX_ITEMS`` caps a batch, 1000 by default) over
``concurrency`` connections, and counts what the producer accepted (201 and the entry IDs it
returned). Each request carries an ``Idempotency-Key``, so one that fails on the wire is retried
without appending its orders twice. The order IDs are ``<prefix>-<n>``, ``n`` counting from 1.

Used by `make cluster-demo`'s walk-through (README, "Run it on Kubernetes") and by the cluster
tier to build lag; it is a client of the HTTP API and imports no component.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiohttp

__all__ = ["BurstResult", "post_burst"]


@dataclass
class BurstResult:
    """What one burst did.

    Attributes:
        accepted: order ID -> stream entry ID, for every order the producer answered 201 for.
        rejected: ``(HTTP status, body text)`` of each batch that was refused for good (4xx), or
            ``(0, reason)`` for one that got no answer in ``attempts`` tries (the producer
            unreachable, timing out, or answering 5xx).
        seconds: wall time of the burst (s).
    """

    accepted: dict[str, str] = field(default_factory=dict)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Accepted orders per second."""
        return len(self.accepted) / self.seconds if self.seconds > 0 else 0.0


def _orders(prefix: str, first: int, count: int) -> list[dict]:
    return [{"orderId": f"{prefix}-{n}", "product": "Laptop", "quantity": 1 + n % 3, "userId": n % 97}
            for n in range(first, first + count)]


async def post_burst(url: str, orders: int, *, batch: int = 100, concurrency: int = 8, prefix: str = "",
                     attempts: int = 5, timeout_s: float = 10.0) -> BurstResult:
    """Post ``orders`` orders to ``url`` (the producer's base URL, e.g. ``http://127.0.0.1:30080``).

    A batch that meets a connection error, a timeout or a 5xx (503 when Redis is away) is retried
    up to ``attempts`` times with the same ``Idempotency-Key``, 0.2 s, 0.4 s, ... apart; a 4xx is
    recorded in ``rejected`` and not retried.

    A batch that still fails after ``attempts`` tries (each bounded by ``timeout_s`` seconds) is
    recorded in ``rejected`` as ``(0, reason)``, and the batches not sent yet are given up (one
    ``(0, ...)`` line says how many): a producer that does not answer five times in a row will
    not answer the next batch either, and a burst must not hang for an hour. What was accepted
    is always returned.

    Raises:
        ValueError: ``orders``, ``batch`` or ``concurrency`` below 1, or a URL aiohttp cannot use.
    """
    if orders < 1 or batch < 1 or concurrency < 1:
        raise ValueError("orders, batch and concurrency must be at least 1")
    prefix = prefix or f"burst-{uuid.uuid4().hex[:8]}"
    result = BurstResult()
    starts: Iterable[int] = iter(range(1, orders + 1, batch))
    started = time.monotonic()

    async def post(session: aiohttp.ClientSession, first: int) -> None:
        body = _orders(prefix, first, min(batch, orders - first + 1))
        headers = {"Idempotency-Key": f"{prefix}:{first}"}
        failure = ""
        for attempt in range(attempts):
            try:
                async with session.post(f"{url.rstrip('/')}/orders/batch", json=body, headers=headers) as resp:
                    if resp.status == 201:
                        for item in (await resp.json())["orders"]:
                            result.accepted[str(item["orderId"])] = str(item["id"])
                        return
                    text = await resp.text()
                    if resp.status < 500:
                        result.rejected.append((resp.status, text))
                        return
                    failure = f"HTTP {resp.status}: {text[:200]}"
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if attempt < attempts - 1:
                await asyncio.sleep(0.2 * 2 ** attempt)
        result.rejected.append((0, f"batch from {prefix}-{first}: no answer after {attempts} attempts ({failure})"))
        given_up.set()

    given_up = asyncio.Event()
    unsent = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal unsent
        for first in starts:  # one shared iterator: each batch is taken by exactly one worker
            if given_up.is_set():
                unsent += 1
                continue
            await post(session, first)

    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--url must start with http:// or https://, got {url!r}")
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    if unsent:
        result.rejected.insert(0, (0, f"{unsent} batches not sent: the producer stopped answering"))
    result.seconds = time.monotonic() - started
    return result
