"""The soak's order handler (``HANDLER=soak.handler:apply``), run by every consumer and the reclaimer.

It applies each orderId at most once, like the default handler (a processed marker,
``keys.processed(order_id)``, written only if absent), and in the same Lua script it counts:

``<stream>:soak:applied``
    hash orderId -> how many times the marker was absent when a handler ran the script, i.e. how
    many times the order was *applied*. The soak's target is 1 for every accepted order: 0 is a
    lost order (unless dead-lettered), 2 or more is an order applied twice.
``<stream>:soak:calls``
    hash orderId -> how many handler calls reached the script (applications plus redeliveries
    that found the marker), so the report can show how much redelivery the faults caused.

Counting in the script that writes the marker makes "applied" exact: there is no window in which
the marker is written but the count is not (or the other way round), whatever is SIGKILLed when.

Two environment variables shape the load (both optional):

``FAILURE_RATE``
    read by the components into ``ctx.failure_rate``: the call fails on purpose *before* applying
    anything, so retries and back-off happen during the soak.
``SOAK_HANDLER_MAX_MS``
    each call first sleeps a random 0..N ms (default 20), so a SIGKILL finds orders in flight.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import weakref

from streamcore.envelope import Envelope
from streamcore.handling import BatchContext, HandlerContext, HandlerFailure, batch_handler


def applied_key(stream: str) -> str:
    """Hash key: orderId -> number of applications (see the module docstring)."""
    return f"{stream}:soak:applied"


def calls_key(stream: str) -> str:
    """Hash key: orderId -> number of handler calls that reached Redis."""
    return f"{stream}:soak:calls"


# KEYS: processed marker, applied hash, calls hash. ARGV: orderId, consumer, entry id, now ms, ttl s.
# Returns 1 if this call applied the order, 0 if the marker was already there.
_APPLY = """
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'consumer', ARGV[2], 'entry_id', ARGV[3], 'at_ms', ARGV[4])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return 1
"""

#: The script object per client (weak keys: a closed client's entry goes with it).
_scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

_MAX_SLEEP_S = max(0.0, float(os.environ.get("SOAK_HANDLER_MAX_MS", "20"))) / 1000.0


async def apply(order: Envelope, ctx: HandlerContext) -> None:
    """Apply ``order`` at most once and count it (see the module docstring).

    Raises:
        HandlerFailure: the simulated failure (probability ``ctx.failure_rate``), before anything
            is applied or counted.
        redis.exceptions.RedisError: Redis failed; nothing or everything of the script happened.
    """
    if _MAX_SLEEP_S:
        await asyncio.sleep(random.uniform(0.0, _MAX_SLEEP_S))
    if ctx.failure_rate and random.random() < ctx.failure_rate:
        raise HandlerFailure(f"simulated failure of order {order.order_id} (FAILURE_RATE={ctx.failure_rate})")
    script = _scripts.get(ctx.redis)
    if script is None:
        script = _scripts[ctx.redis] = ctx.redis.register_script(_APPLY)
    stream = ctx.keys.stream
    await script(keys=[ctx.keys.processed(order.order_id), applied_key(stream), calls_key(stream)],
                 args=[order.order_id, ctx.consumer, ctx.entry_id, int(time.time() * 1000), ctx.processed_ttl_s],
                 client=ctx.redis)


@batch_handler
async def apply_batch(orders: list[Envelope], ctx: BatchContext) -> dict[str, Exception] | None:
    """The batch form of :func:`apply` (``HANDLER=soak.handler:apply_batch``): one sleep per call,
    the simulated failure drawn per order, and the script of every other order in one pipeline.

    Returns:
        ``{entry ID: HandlerFailure}`` for the orders that failed on purpose, or None.

    Raises:
        redis.exceptions.RedisError: Redis failed; for each order nothing or everything of its
            script happened (every order of the call is then retried).
    """
    if _MAX_SLEEP_S:
        await asyncio.sleep(random.uniform(0.0, _MAX_SLEEP_S))
    failed: dict[str, Exception] = {}
    if ctx.failure_rate:
        failed = {o.entry_id: HandlerFailure(f"simulated failure of order {o.order_id} "
                                             f"(FAILURE_RATE={ctx.failure_rate})")
                  for o in orders if random.random() < ctx.failure_rate}
    script = _scripts.get(ctx.redis)
    if script is None:
        script = _scripts[ctx.redis] = ctx.redis.register_script(_APPLY)
    stream = ctx.keys.stream
    now_ms = int(time.time() * 1000)
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for order in orders:
            if order.entry_id not in failed:
                await script(keys=[ctx.keys.processed(order.order_id), applied_key(stream), calls_key(stream)],
                             args=[order.order_id, ctx.consumer, order.entry_id, now_ms, ctx.processed_ttl_s],
                             client=pipe)
        await pipe.execute()
    return failed or None
