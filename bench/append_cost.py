"""What one append-script call per batch saves Redis, against one call per order (issue 12).

The producer sends the appends of concurrent requests as a batch. Until issue 12 a batch was a
pipeline of one ``EVALSHA`` per order; now it is one ``EVALSHA`` of the same script naming every
order of the batch (``streamcore.streams._APPEND`` takes one or many). This script measures both
shapes with that one script, on the same Redis, alternated:

``per order``
    ``--batch`` calls of the script with one order each, written in one go (a pipeline).
``per batch``
    one call of the script with ``--batch`` orders.

For each shape it sends ``--orders`` orders (new orderIds, no Idempotency-Key, the fields
:func:`producer.encoding.order_fields` gives a bench order) from one blocking connection and
reports the **CPU time Redis spent per order** (µs, ``utime + stime`` of the redis-server
process from ``/proc/PID/stat``, which nothing else uses during the run) and the client's wall
time per order. Redis runs as the bench runs it (``bench/run.py``: loopback, AOF ``everysec``).

Run: ``.venv/bin/python bench/append_cost.py`` (about 30 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import hiredis
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reclaim_memory import connect  # noqa: E402
from bench.run import start_redis, stop  # noqa: E402
from producer.encoding import order_fields  # noqa: E402
from streamcore.keys import Keys  # noqa: E402
from streamcore.streams import _APPEND, append_head, append_part  # noqa: E402

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` has used (``/proc/PID/stat`` fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def calls(keys: Keys, sha: str, first: int, count: int, per_batch: bool) -> tuple[list[bytes], int]:
    """The packed ``EVALSHA`` calls appending orders ``first .. first + count - 1``, and how many
    replies they give."""
    head_keys, head_args = append_head(keys)
    parts = []
    for n in range(first, first + count):
        order = {"orderId": f"o{n}", "product": "Widget", "quantity": 3, "userId": "u1"}
        parts.append(append_part(keys, order_fields(order), str(order["orderId"])))
    if per_batch:
        ks = head_keys + [k for p in parts for k in p[0]]
        args = head_args + [a for p in parts for a in p[1]]
        return [hiredis.pack_command(("EVALSHA", sha, len(ks), *ks, *args))], 1
    packed = [hiredis.pack_command(("EVALSHA", sha, 2 + len(p[0]), *head_keys, *p[0], *head_args, *p[1])) for p in parts]
    return [b"".join(packed)], len(packed)


def measure(r: redis.Redis, pid: int, keys: Keys, orders: int, batch: int, per_batch: bool) -> tuple[float, float]:
    """Append ``orders`` orders in batches of ``batch``; returns (Redis CPU µs, client wall µs) per order.

    Raises:
        RuntimeError: an append failed (every reply item must say "appended").
    """
    sha = r.script_load(_APPEND)
    conn = r.connection_pool.get_connection()
    try:
        cpu0, wall0 = cpu_s(pid), time.perf_counter()
        for first in range(0, orders, batch):
            packed, replies = calls(keys, sha, first, batch, per_batch)
            conn.send_packed_command(packed)
            for _ in range(replies):
                reply = conn.read_response()
                if any(item[0] != 1 for item in reply):
                    raise RuntimeError(f"an append failed: {reply[:3]}")
        cpu1, wall1 = cpu_s(pid), time.perf_counter()
    finally:
        r.connection_pool.release(conn)
    return (cpu1 - cpu0) / orders * 1e6, (wall1 - wall0) / orders * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=128, help="orders per batch (APPEND_BATCH_MAX's default)")
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(Path(tmp), None)
        try:
            r = connect(url)
            runs: dict[str, list[tuple[float, float]]] = {"per order": [], "per batch": []}
            for rep in range(opts.repeats):
                for shape in runs:
                    keys = Keys(f"bench:append:{shape.replace(' ', '-')}:{rep}", "g", "dlq")
                    runs[shape].append(measure(r, proc.pid, keys, opts.orders, opts.batch, shape == "per batch"))
            r.close()
        finally:
            stop(proc)
    print(f"{opts.orders:,} orders in batches of {opts.batch}, {opts.repeats} runs each, alternated")
    print("| script calls | Redis CPU per order (µs), median | runs | client wall per order (µs), median |")
    print("|---|---|---|---|")
    for shape, got in runs.items():
        cpu = [c for c, _ in got]
        wall = [w for _, w in got]
        print(f"| one {shape} | {statistics.median(cpu):.1f} | {' / '.join(f'{c:.1f}' for c in cpu)} | "
              f"{statistics.median(wall):.1f} |")


if __name__ == "__main__":
    main()
