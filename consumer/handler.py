"""The default order handler (``HANDLER=consumer.handler:process_order``).

It logs the order, fails with probability ``FAILURE_RATE`` *before* applying anything, and applies
each orderId once: the processed marker ``keys.processed(order_id)`` (a hash with ``consumer``,
``entry_id``, ``at_ms``) is written only if absent, so redeliveries are harmless (DESIGN §4).
"""

from __future__ import annotations

import logging
import random
import time
import weakref

from streamcore.envelope import Envelope
from streamcore.handling import HandlerContext, HandlerFailure

__all__ = ["HandlerContext", "HandlerFailure", "mark_processed", "process_order"]

logger = logging.getLogger(__name__)


# KEYS: processed marker. ARGV: consumer, entry id, now ms, ttl s. Returns 1 if this call applied it.
_MARK = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'consumer', ARGV[1], 'entry_id', ARGV[2], 'at_ms', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""

#: The marker script per client (weak keys: a closed client's entry goes with it).
_mark_scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def mark_processed(ctx: HandlerContext, order_id: str) -> bool:
    """Write the processed marker of ``order_id`` (hash ``consumer``, ``entry_id``, ``at_ms``) unless it exists.

    Check and write run in one Lua script: the first writer wins, later deliveries change nothing.

    Returns:
        True if this call applied the order, False if it had been applied before.
    """
    now_ms = int(time.time() * 1000)
    # By SHA (EVALSHA, reloaded on NOSCRIPT after a Redis restart), registered once per client:
    # EVAL with the script text parsed and hashed it on the server, and sent it, for every order.
    script = _mark_scripts.get(ctx.redis)
    if script is None:
        script = _mark_scripts[ctx.redis] = ctx.redis.register_script(_MARK)
    applied = await script(keys=[ctx.keys.processed(order_id)],
                           args=[ctx.consumer, ctx.entry_id, now_ms, ctx.processed_ttl_s], client=ctx.redis)
    return bool(int(applied))


async def process_order(order: Envelope, ctx: HandlerContext) -> None:
    """The default handler: log the order, fail with probability ``ctx.failure_rate``, apply it once.

    Raises:
        HandlerFailure: the simulated failure (before anything is applied).
    """
    o = order.order
    ctx.logger.info("processing order %s (%s x%s) entry %s by %s, delivery %d", order.order_id, o.get("product"),
                    o.get("quantity"), order.entry_id, ctx.consumer, ctx.deliveries)
    if ctx.failure_rate and random.random() < ctx.failure_rate:
        raise HandlerFailure(f"simulated failure of order {order.order_id} (FAILURE_RATE={ctx.failure_rate})")
    if not await mark_processed(ctx, order.order_id):
        ctx.logger.info("order %s was already processed; entry %s is a redelivery", order.order_id, order.entry_id)
