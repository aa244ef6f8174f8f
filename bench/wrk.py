"""HTTP load with wrk for the ingest benchmarks: run wrk pinned to a CPU, read its figures.

wrk (the Debian package, ``apt-get install wrk``) is driven by the Lua scripts in
``bench/wrk/``, whose ``done()`` prints one line ``ORDERSTREAM_WRK_JSON {...}`` with wrk's own
counts (``summary.requests``, ``summary.duration`` in µs, socket errors, HTTP status counts) and
latency percentiles (µs). :func:`run_wrk` parses that line, not wrk's human-readable report.

Scripts (script arguments are ``key=value``; see each script's header):

``order.lua``
    ``POST /orders``, one new order per request (``prefix=``).
``batch.lua``
    ``POST /orders/batch``, ``n=`` new orders per request (default 100; ``prefix=``).
``paced.lua``
    ``POST /orders`` with ``delay=`` ms between requests on each connection, for a bounded
    offered rate of about ``connections / (delay + latency)`` (``prefix=``).

Every orderId is unique across threads and connections; :func:`run_wrk` adds a run-unique
``prefix=`` unless ``script_args`` has one, so repeated runs against the same Redis append new
orders (a repeated orderId would be answered 200 as a duplicate, not appended).

Usage from asyncio code: ``await asyncio.to_thread(run_wrk, ...)`` (it blocks for the run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

#: The directory of the Lua scripts.
SCRIPTS = Path(__file__).resolve().parent / "wrk"
ORDER_LUA = SCRIPTS / "order.lua"
BATCH_LUA = SCRIPTS / "batch.lua"
PACED_LUA = SCRIPTS / "paced.lua"
#: The prefix of the line the scripts' ``done()`` prints.
MARKER = "ORDERSTREAM_WRK_JSON "

_run_counter = 0


def wrk_path() -> str:
    """The wrk binary on PATH.

    Raises:
        RuntimeError: wrk is not installed (the message says ``apt-get install wrk``).
    """
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk (Debian/Ubuntu package 'wrk')")
    return binary


def run_prefix() -> str:
    """A prefix unique to this call: ``r<pid in base 36><time in ms, base 36><counter>`` (only
    letters and digits, 14 to 20 characters, so ``<prefix>-t<thread>-<n>`` stays a valid orderId)."""
    global _run_counter
    _run_counter += 1
    return f"r{_b36(os.getpid())}{_b36(time.time_ns() // 1_000_000)}{_run_counter}"


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = digits[d] + out
        if n == 0:
            return out


def run_wrk(
    url: str,
    *,
    script: Path,
    duration_s: float,
    connections: int,
    threads: int = 1,
    cpu: str | None = "0",
    script_args: list[str] | tuple[str, ...] = (),
    timeout_s: float = 2.0,
) -> dict:
    """Run wrk against ``url`` with a Lua script of ``bench/wrk/`` and return its figures.

    Command: ``[taskset -c CPU] wrk -t THREADS -c CONNECTIONS -d DURATIONs --timeout TIMEOUTs
    --latency -s SCRIPT URL -- prefix=<run-unique> SCRIPT_ARGS...`` (taskset is skipped when
    ``cpu`` is None or taskset is not installed; ``prefix=`` is added unless ``script_args``
    holds one). The figures come from the script's marker line, not from wrk's report.

    Args:
        url: full URL; the scripts use its path when it is not ``/`` (else ``/orders`` or
            ``/orders/batch``), e.g. ``http://127.0.0.1:3000/orders``.
        script: a Lua script printing the marker line (:data:`ORDER_LUA`, :data:`BATCH_LUA`,
            :data:`PACED_LUA`).
        duration_s: how long wrk sends requests (s); rounded to whole seconds, at least 1
            (wrk takes no fractions).
        connections: open connections (at least ``threads``).
        threads: wrk threads.
        cpu: CPU list for ``taskset -c``, or None.
        script_args: ``key=value`` arguments for the script (``n=100``, ``delay=5``, ``prefix=...``).
        timeout_s: wrk's per-request timeout (s); slower answers count as ``timeout`` errors.

    Returns:
        ``{"requests": int, "seconds": float (s, wrk's measured run time), "rps": float
        (requests/s), "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms": float (ms),
        "errors": int (socket errors connect+read+write+timeout, plus non-2xx answers),
        "non2xx": int, "socket_errors": {"connect", "read", "write", "timeout": int},
        "status": {"201": int, ...} (answers per HTTP status), "orders_per_request": int,
        "orders_per_s": float (rps * orders_per_request), "ok_orders_per_s": float (2xx answers
        * orders_per_request / seconds), "prefix": str, "command": [str, ...]}``; paced runs
        add ``"delay_ms"``. ``non2xx`` counts answers outside 200-299 (from the script's
        ``response()``; with ``count=0`` it is wrk's count of status > 399, and ``status`` is empty).

    Raises:
        RuntimeError: wrk is missing, exits non-zero, or prints no marker line (wrk's stderr
            and the end of its stdout are in the message), or the line is not JSON.
        ValueError: bad ``duration_s``, ``connections`` or ``threads``.
        subprocess.TimeoutExpired: wrk ran far past ``duration_s`` (it is killed).
    """
    if duration_s <= 0 or connections < 1 or threads < 1:
        raise ValueError(f"need duration_s > 0, connections >= 1, threads >= 1 (got {duration_s}, {connections}, {threads})")
    if connections < threads:
        raise ValueError(f"wrk needs connections >= threads (got {connections} < {threads})")
    script = Path(script)
    if not script.is_file():
        raise ValueError(f"no wrk script at {script}")
    args = list(script_args)
    prefix = next((a.split("=", 1)[1] for a in args if a.startswith("prefix=")), None)
    if prefix is None:
        prefix = run_prefix()
        args.insert(0, f"prefix={prefix}")
    seconds = max(1, round(duration_s))
    argv = [wrk_path(), "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", f"{max(1, round(timeout_s))}s",
            "--latency", "-s", str(script), url, "--", *args]
    if cpu is not None and shutil.which("taskset"):
        argv = [shutil.which("taskset"), "-c", cpu, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60 + 2 * timeout_s)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)), None)
    if proc.returncode != 0 or line is None:
        why = f"exited with {proc.returncode}" if proc.returncode != 0 else f"printed no {MARKER.strip()} line"
        raise RuntimeError(f"wrk {why}: {' '.join(argv)}\nstderr:\n{proc.stderr.strip()}\nstdout (end):\n{proc.stdout[-2000:].strip()}")
    try:
        raw = json.loads(line[len(MARKER):])
    except ValueError as exc:
        raise RuntimeError(f"wrk's marker line is not JSON ({exc}): {line!r}") from None
    secs = raw["duration_us"] / 1e6
    e = raw["errors"]
    socket_errors = {k: e[k] for k in ("connect", "read", "write", "timeout")}
    per = int(raw.get("orders_per_request", 1))
    requests = int(raw["requests"])
    non2xx = int(raw["non2xx"])
    rps = requests / secs if secs > 0 else 0.0
    out = {
        "requests": requests,
        "seconds": secs,
        "rps": rps,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "p999_ms": raw["p999_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "errors": sum(socket_errors.values()) + non2xx,
        "non2xx": non2xx,
        "socket_errors": socket_errors,
        "status": raw.get("status", {}),
        "orders_per_request": per,
        "orders_per_s": rps * per,
        "ok_orders_per_s": max(0, requests - non2xx) * per / secs if secs > 0 else 0.0,
        "prefix": prefix,
        "command": argv,
    }
    if "delay_ms" in raw:
        out["delay_ms"] = raw["delay_ms"]
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run one wrk load and print its figures as JSON.")
    parser.add_argument("url")
    parser.add_argument("--script", default=str(ORDER_LUA))
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cpu", default="0", help="CPU list for taskset; 'none' for no pinning")
    parser.add_argument("script_args", nargs="*", help="key=value arguments for the script")
    ns = parser.parse_intermixed_args()
    result = run_wrk(ns.url, script=Path(ns.script), duration_s=ns.duration, connections=ns.connections, threads=ns.threads,
                     cpu=None if ns.cpu == "none" else ns.cpu, script_args=ns.script_args)
    result.pop("command")
    print(json.dumps(result))
