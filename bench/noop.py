"""No-op order handlers for the consumer benchmarks: ``HANDLER=bench.noop:handle`` (per order)
and ``HANDLER=bench.noop:handle_batch`` (a batch handler)."""

from __future__ import annotations

from streamcore.handling import batch_handler


async def handle(order, ctx) -> None:
    """Do nothing, so the benchmark measures reading, dispatch and acknowledgement only."""
    return None


@batch_handler
async def handle_batch(orders, ctx) -> None:
    """Do nothing with a whole read's orders at once (every order succeeds)."""
    return None
