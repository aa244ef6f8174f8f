"""CPU per ``POST /orders`` of the server's own path: aiohttp's protocol fed from memory.

``python bench/http_path.py [--orders N] [--connections C] [--rounds R] [--code DIR ...]``

The wrk figures of ``bench/run.py`` include the kernel's loopback networking (the same for every
server, about 25 µs a request on the machine of bench/README.md) and move with whatever else
the shared host runs, often by ±20 % between two runs a minute apart: too coarse to tell a
change of a few percent in the producer. This measures what is left: the producer's
:class:`aiohttp.web_protocol.RequestHandler` (through ``web.AppRunner``, exactly as ``python
-m producer`` serves) gets each request's bytes from memory and writes its answers to an
in-memory transport; ``C`` such connections each send their next order as soon as the last
answer is written. No sockets but Redis's; one process, on uvloop.

It starts its own redis-server (loopback, a free port, AOF everysec), pinned to CPU 0 with the
process under test on CPU 1 when there are two CPUs, and alternates, ``--rounds`` times:

``plain``
    the baseline of ``bench/plain_app.py`` (parse the JSON, answer 201, no Redis call);
each ``--code DIR``
    the producer of that checkout (default: this one), with every order appended to Redis;
``xadd`` (with ``--xadd``)
    the plain app plus what a hand-written producer does: one awaited redis-py ``XADD`` of the
    body per request (``redis.asyncio.Redis.from_url``, default pool, hiredis), no validation,
    no idempotency, no batching;
``floor`` (with ``--floor``)
    this checkout's producer with each append answered at once, no Redis call (a finished future
    with a made-up entry ID): everything the producer does per request but the append itself,
    i.e. the least CPU per request its request path can reach while it runs on aiohttp's
    ``web.Application`` as the plain app does. Not a way to run the producer: a probe for
    bench/README.md ("What is not met").

It prints, per side, the median over the rounds of each round's CPU time per request (µs,
``time.process_time``; the fastest of 3 repetitions of ``--orders`` requests) and the paired
ratio to ``plain`` of the same round, then the wall time per request (the process also waits
for Redis: in memory, with no network in between, that wait shows here and not under wrk).
Every answer is checked to be a 201; the script fails otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _MemoryTransport(asyncio.Transport):
    """What aiohttp writes goes to the connection's :meth:`_Connection.written`."""

    def __init__(self, connection: _Connection) -> None:
        super().__init__()
        self._connection = connection
        self._closing = False

    def write(self, data: bytes) -> None:
        self._connection.written(bytes(data))

    def writelines(self, chunks) -> None:
        self._connection.written(b"".join(chunks))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    abort = close

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 3000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False


class _Run:
    """One measured run: ``total`` requests over the connections; ``finished`` when all are answered."""

    def __init__(self, total: int, prefix: bytes) -> None:
        self.total, self.prefix = total, prefix
        self.sent = self.answered = 0
        self.not_created: list[bytes] = []
        self.finished = asyncio.get_running_loop().create_future()


class _Connection:
    def __init__(self, protocol_factory, run: _Run, index: int) -> None:
        self.run, self.index, self.count = run, index, 0
        self.protocol = protocol_factory()
        self.protocol.connection_made(_MemoryTransport(self))

    def send(self) -> None:
        run = self.run
        run.sent += 1
        self.count += 1
        body = b'{"orderId":"%s-%d-%d","product":"Widget","quantity":3,"userId":42}' % (run.prefix, self.index, self.count)
        self.protocol.data_received(b"POST /orders HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def written(self, data: bytes) -> None:
        # An answer's status line and headers come in one write (its small body with them or
        # right after); count answers by their status lines.
        run = self.run
        for _ in range(data.count(b"HTTP/1.1 ")):
            if not data.startswith(b"HTTP/1.1 201"):
                run.not_created.append(data[:200])
            run.answered += 1
            if run.sent < run.total:
                asyncio.get_running_loop().call_soon(self.send)
            elif run.answered >= run.total and not run.finished.done():
                run.finished.set_result(None)


async def _measure(side: str, redis_url: str, orders: int, connections: int, repetitions: int) -> dict:
    from aiohttp import web

    if side == "plain":
        from bench.plain_app import post_order  # the plain side runs with this checkout on PYTHONPATH

        app = web.Application()
        app.router.add_post("/orders", post_order)
    elif side == "xadd":
        app = _xadd_app(redis_url)
    else:
        from prometheus_client import CollectorRegistry

        from producer.app import create_app
        from producer.settings import ProducerSettings

        app = create_app(ProducerSettings(redis_url=redis_url, stream_name=f"bench:http-path:{os.getpid()}"),
                         registry=CollectorRegistry())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    if side == "floor":
        _answer_appends_at_once(app)
    runs = []
    try:
        for rep in range(repetitions):
            run = _Run(orders, f"h{os.getpid()}r{rep}".encode())
            conns = [_Connection(runner.server, run, i) for i in range(connections)]
            wall, cpu = time.perf_counter(), time.process_time()
            for conn in conns[:orders]:
                conn.send()
            await asyncio.wait_for(run.finished, timeout=max(60.0, orders / 200))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            for conn in conns:
                conn.protocol.connection_lost(None)
            if run.not_created:
                raise SystemExit(f"{side}: {len(run.not_created)} answers were not 201, first: {run.not_created[0]!r}")
            runs.append({"cpu_us": cpu / orders * 1e6, "wall_us": wall / orders * 1e6})
    finally:
        await runner.cleanup()
    return min(runs, key=lambda r: r["cpu_us"])


def _xadd_app(redis_url: str):
    """The ``xadd`` side: bench/plain_app.py's handler plus one awaited ``XADD`` per request."""
    import json

    import redis.asyncio as aioredis
    from aiohttp import web

    r = aioredis.Redis.from_url(redis_url)
    stream = f"bench:http-path-xadd:{os.getpid()}"

    async def post_order(request: web.Request) -> web.Response:
        body = await request.text()
        order = json.loads(body)
        entry_id = await r.xadd(stream, {"data": body})
        return web.json_response({"id": entry_id.decode(), "orderId": order.get("orderId")}, status=201)

    async def close(_app: web.Application) -> None:
        await r.aclose()

    app = web.Application()
    app.router.add_post("/orders", post_order)
    app.on_cleanup.append(close)
    return app


def _answer_appends_at_once(app) -> None:
    """The ``floor`` side: the started producer's appender answers every append with a finished
    future (entry ID ``1-<n>``, created) instead of sending it to Redis."""
    from producer.appkeys import APPENDER
    from streamcore.streams import AppendResult

    appender = app[APPENDER]
    loop = asyncio.get_running_loop()
    count = 0

    def append(fields, order_id, *, idempotency_key=None, body_hash=""):
        nonlocal count
        count += 1
        future = loop.create_future()
        future.set_result(AppendResult(f"1-{count}", True))
        return future

    appender.append = append  # this instance only; its tasks still run and close as usual


def _child(args: argparse.Namespace) -> None:
    import uvloop

    # PYTHONPATH names the checkout to measure; nothing is imported from this one.
    result = uvloop.run(_measure(args.child, args.redis_url, args.orders, args.connections, 3))
    print(f"RESULT {result['cpu_us']:.3f} {result['wall_us']:.3f}")


def _run_side(side: str, code: Path, redis_url: str, args: argparse.Namespace, cpu_prefix: list[str]) -> dict:
    from bench.environ import clean_environ

    env = dict(clean_environ(), PYTHONPATH=str(code), LOG_LEVEL="WARNING")
    argv = cpu_prefix + [sys.executable, str(Path(__file__).resolve()), "--child", side, "--redis-url", redis_url,
                           "--orders", str(args.orders), "--connections", str(args.connections)]
    out = subprocess.run(argv, env=env, cwd=code, capture_output=True, text=True, check=False)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"{side} ({code}) failed:\n{out.stdout}\n{out.stderr}")
    _, cpu_us, wall_us = line.split()
    return {"cpu_us": float(cpu_us), "wall_us": float(wall_us)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=20_000, help="requests per repetition (3 repetitions a run)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="alternations of every side")
    parser.add_argument("--code", action="append", type=Path, help="a checkout whose producer to measure (repeatable; default: this one)")
    parser.add_argument("--xadd", action="store_true", help="also measure the plain app plus one awaited XADD per request")
    parser.add_argument("--floor", action="store_true", help="also measure this checkout's producer with every append answered at once (no Redis call)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench.run import start_redis, stop, taskset, wait_redis

    codes = [c.resolve() for c in (args.code or [ROOT])]
    two = (os.cpu_count() or 1) >= 2
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(Path(tmp), "0" if two else None)
        try:
            asyncio.run(wait_redis(url))
            sides = [("plain", ROOT)] + [(f"producer {c}", c) for c in codes] + ([("xadd", ROOT)] if args.xadd else []) + ([("floor", ROOT)] if args.floor else [])
            rounds: list[dict[str, dict]] = []
            for i in range(args.rounds):
                got = {}
                for name, code in sides:
                    got[name] = _run_side(name if name in ("plain", "xadd", "floor") else "producer", code, url, args,
                                          taskset("1" if two else None))
                    print(f"round {i + 1} {name}: {got[name]['cpu_us']:.1f} µs CPU, {got[name]['wall_us']:.1f} µs wall per request",
                          flush=True)
                rounds.append(got)
        finally:
            stop(proc)
    placement = "pinned: this side on CPU 1, Redis on CPU 0" if two else "not pinned (one CPU)"
    print(f"\n{args.orders} requests x 3 per run (the fastest kept), {args.connections} connections, {args.rounds} rounds, "
          f"{placement}; the ratio is CPU per request over the plain app's (lower is better):")
    for name, _ in sides:
        cpu = statistics.median(r[name]["cpu_us"] for r in rounds)
        wall = statistics.median(r[name]["wall_us"] for r in rounds)
        paired = statistics.median(r[name]["cpu_us"] / r["plain"]["cpu_us"] for r in rounds)
        print(f"  {name}: CPU {cpu:.1f} µs/request ({paired:.2f}x plain, paired median), wall {wall:.1f} µs/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
