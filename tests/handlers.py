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
``<stream>:applied:<orderId>`` — INCR when this call wrote the processed marker (must end at 1),
in the same script as the marker (see :func:`mark_and_apply`).
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref

from streamcore.envelope import Envelope
from streamcore.handling import BatchContext, HandlerContext, batch_handler


#: Commands these handlers send besides the stack's own (added to the ACL user of the
#: ``tls-acl`` server kind, as an operator adds a custom HANDLER's commands).
HANDLER_COMMANDS = ("multi", "exec", "incr", "rpush", "blpop", "llen", "hincrby")


def calls_key(stream: str, order_id: object) -> str:
    return f"{stream}:calls:{order_id}"


def call_log_key(stream: str) -> str:
    return f"{stream}:calls"


def applied_key(stream: str, order_id: object) -> str:
    return f"{stream}:applied:{order_id}"


def done_key(stream: str, order_id: object) -> str:
    return f"{stream}:done:{order_id}"


# KEYS: processed marker, applied counter. ARGV: consumer, entry id, now ms, marker TTL s (0: none).
_MARK_AND_APPLY = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'consumer', ARGV[1], 'entry_id', ARGV[2], 'at_ms', ARGV[3])
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4])) end
redis.call('INCR', KEYS[2])
return 1
"""

_mark_and_apply_scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def mark_and_apply(ctx: HandlerContext | BatchContext, order_id: str, entry_id: str) -> bool:
    """Write the processed marker of ``order_id`` and apply its effect (INCR of its applied
    counter) in one script, unless the marker exists; True if this call applied it.

    One script, as soak.handler does, and as a handler whose effect lives in the same Redis
    must: with the marker and the effect as two commands, a process killed between them, or a
    failover that replicated the marker and not the effect, left a marker without its effect,
    and every redelivery then skipped the order (seen: an order applied 0 times after a cluster
    master's SIGKILL)."""
    script = _mark_and_apply_scripts.get(ctx.redis)
    if script is None:
        script = _mark_and_apply_scripts[ctx.redis] = ctx.redis.register_script(_MARK_AND_APPLY)
    applied = await script(
        keys=[ctx.keys.processed(order_id), applied_key(ctx.keys.stream, order_id)],
        args=[ctx.consumer, entry_id, int(time.time() * 1000), getattr(ctx, "processed_ttl_s", 0)],
        client=ctx.redis)
    return bool(int(applied))


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
    await mark_and_apply(ctx, oid, ctx.entry_id)
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


def batch_sizes_key(stream: str) -> str:
    """List key: the number of orders of each call of :func:`scripted_batch`, in call order."""
    return f"{stream}:batch_sizes"


def batch_deliveries_key(stream: str) -> str:
    """Hash key: orderId -> ``ctx.deliveries`` of its entry in the last call of :func:`scripted_batch`."""
    return f"{stream}:batch_deliveries"


@batch_handler
async def scripted_batch(orders: list[Envelope], ctx: BatchContext):
    """The batch form of :func:`scripted`: counts calls per order, records each call's size and
    each order's delivery number, then fails the whole call while an order's ``raise_batch``
    exceeds its call count, and fails single orders with ``fail_until`` or ``poison`` (returned
    as a mapping); the rest are applied once (marker written with SET NX semantics)."""
    stream = ctx.keys.stream
    async with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.rpush(batch_sizes_key(stream), len(orders))
        for o in orders:
            pipe.incr(calls_key(stream, o.order_id))
            pipe.rpush(call_log_key(stream), o.order_id)
            pipe.hset(batch_deliveries_key(stream), o.order_id, ctx.deliveries[o.entry_id])
        res = await pipe.execute()
    calls = [int(n) for n in res[1::3]]
    if any(n <= int(o.order.get("raise_batch", 0)) for o, n in zip(orders, calls)):
        raise RuntimeError("the whole call fails")
    failed: dict[str, object] = {}
    for o, n in zip(orders, calls):
        if o.order.get("poison"):
            failed[o.entry_id] = RuntimeError(f"poison order {o.order_id}")
        elif n <= int(o.order.get("fail_until", 0)):
            failed[o.entry_id] = f"order {o.order_id} fails on call {n}"
    for o in orders:
        if o.entry_id in failed:
            continue
        await mark_and_apply(ctx, o.order_id, o.entry_id)
        await ctx.redis.incr(done_key(stream, o.order_id))
    return failed or None


def sync_handler(order, ctx):
    """Not a coroutine function: HANDLER must refuse it."""
    return None


@batch_handler
async def keyed_by_order_id(orders: list[Envelope], ctx: BatchContext):
    """A buggy batch handler: it names its failures by orderId, not entry ID (first call of each
    order only). The call must count as failed as a whole, never as a success."""
    stream = ctx.keys.stream
    calls = [await ctx.redis.incr(calls_key(stream, o.order_id)) for o in orders]
    if any(n == 1 for n in calls):
        return {o.order_id: "failed" for o in orders}
    for o in orders:
        await ctx.redis.incr(applied_key(stream, o.order_id))
    return None


@batch_handler
async def consuming_batch(orders: list[Envelope], ctx: BatchContext):
    """A batch handler that empties the list it was given while applying every order."""
    while orders:
        o = orders.pop()
        await ctx.redis.incr(calls_key(ctx.keys.stream, o.order_id))
        await ctx.redis.incr(applied_key(ctx.keys.stream, o.order_id))
    return None
