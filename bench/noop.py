"""A no-op order handler for the consumer benchmark (``HANDLER=bench.noop:handle``)."""

from __future__ import annotations


async def handle(order, ctx) -> None:
    """Do nothing, so the benchmark measures reading, dispatch and acknowledgement only."""
    return None
