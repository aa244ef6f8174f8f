"""Order handlers for tests, loaded like any handler (``HANDLER=tests.handlers:scripted``).

``scripted`` records every call and then behaves as the order tells it to:

* ``sleep_s``: sleep this long (seconds) first (slow handler, C05, C13);
* ``fail_until``: raise while this call's number for the orderId is <= the value (retry tests);
* ``poison``: raise on every call;
* ``crash``: end the whole process with ``os._exit(3)`` (poison that kills the worker, C21);
* otherwise apply it like the default handler (processed marker, first writer wins).

Records (test-only keys under the stream name):
``<stream>:calls:<orderId>`` — INCR per call; ``<stream>:calls`` — RPUSH of ``orderId`` per call,
in call order; ``<stream>:done:<orderId>`` — INCR per successful call;
``<stream>:applied:<orderId>`` — INCR when this call wrote the processed marker (must end at 1).
"""

from __future__ import annotations

import asyncio
import os

from consumer.handler import mark_processed
from streamcore.envelope import Envelope
from streamcore.handling import HandlerContext


def calls_key(stream: str, order_id: object) -> str:
    return f"{stream}:calls:{order_id}"


def call_log_key(stream: str) -> str:
    return f"{stream}:calls"


def applied_key(stream: str, order_id: object) -> str:
    return f"{stream}:applied:{order_id}"


def done_key(stream: str, order_id: object) -> str:
    return f"{stream}:done:{order_id}"


async def scripted(order: Envelope, ctx: HandlerContext) -> None:
    o = order.order
    oid = order.order_id
    async with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.incr(calls_key(ctx.keys.stream, oid))
        pipe.rpush(call_log_key(ctx.keys.stream), oid)
        n, _ = await pipe.execute()
    if o.get("crash"):
        os._exit(3)
    if o.get("sleep_s"):
        await asyncio.sleep(float(o["sleep_s"]))
    if o.get("poison"):
        raise RuntimeError(f"poison order {oid}")
    if int(n) <= int(o.get("fail_until", 0)):
        raise RuntimeError(f"order {oid} fails on call {n}")
    if await mark_processed(ctx, oid):
        await ctx.redis.incr(applied_key(ctx.keys.stream, oid))
    await ctx.redis.incr(done_key(ctx.keys.stream, oid))


async def safe(order: Envelope, ctx: HandlerContext) -> None:
    """Like :func:`scripted`, but a ``crash`` order raises instead of ending the process (for
    in-process workers that run beside a crashing subprocess)."""
    if order.order.get("crash"):
        await ctx.redis.incr(calls_key(ctx.keys.stream, order.order_id))
        raise RuntimeError("crash order handled by a safe worker")
    await scripted(order, ctx)


def deliveries_key(stream: str) -> str:
    return f"{stream}:deliveries"


async def holds_connection(order: Envelope, ctx: HandlerContext) -> None:
    """Holds one pooled connection for ``hold_s`` seconds (BLPOP on an empty list), then applies
    the order and records the delivery number it was applied under (item 3: many at once)."""
    await ctx.redis.blpop(f"{ctx.keys.stream}:never", timeout=float(order.order.get("hold_s", 0.3)))
    await _apply_recording_delivery(order, ctx)


async def redis_heavy(order: Envelope, ctx: HandlerContext) -> None:
    """Several Redis calls per order, so a Redis restart hits handlers mid-way (item 4)."""
    async with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.incr(calls_key(ctx.keys.stream, order.order_id))
        pipe.rpush(call_log_key(ctx.keys.stream), order.order_id)
        await pipe.execute()
    await asyncio.sleep(float(order.order.get("sleep_s", 0.02)))
    await _apply_recording_delivery(order, ctx)


# KEYS: processed marker, applied counter, deliveries hash. ARGV: consumer, entry id, order id, delivery.
# Marker, applied count and the delivery number in one script: a Redis restart between them
# cannot leave an order marked but not counted.
_APPLY = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'consumer', ARGV[1], 'entry_id', ARGV[2])
redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
return 1
"""


async def _apply_recording_delivery(order: Envelope, ctx: HandlerContext) -> None:
    stream, oid = ctx.keys.stream, order.order_id
    await ctx.redis.eval(_APPLY, 3, ctx.keys.processed(oid), applied_key(stream, oid), deliveries_key(stream),
                         ctx.consumer, ctx.entry_id, oid, ctx.deliveries)
