"""End-to-end latency handlers for the benchmark: ``HANDLER=bench.latency:handle``.

Each call records ``now - accepted`` in ms, where *accepted* is the millisecond part of the
order's entry ID: the time Redis executed the producer's XADD, i.e. when ``POST /orders`` was
accepted. The entry ID has millisecond resolution and is rounded down, so each sample is 0 to
1 ms *longer* than the true latency: the figures are an upper bound. Redis and the consumer
read the same clock (one machine).

At exit (the consumer's clean stop after SIGTERM) the samples are written to the file named by
``BENCH_LATENCY_FILE`` as one float per line.
"""

from __future__ import annotations

import atexit
import os
import time
from array import array

_samples = array("d")


async def handle(order, ctx) -> None:
    """Record this order's latency from acceptance to this call (ms)."""
    _samples.append(time.time() * 1000.0 - int(order.entry_id.partition("-")[0]))


def _dump() -> None:
    path = os.environ.get("BENCH_LATENCY_FILE")
    if path:
        with open(path, "w") as fh:
            fh.write("\n".join(f"{v:.3f}" for v in _samples))


atexit.register(_dump)
