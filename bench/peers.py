"""Peer consumers for the consumer benchmark: FastStream, installed from PyPI and run as itself.

The issue-12 figures ``consumer_vs_faststream_default`` and ``consumer_vs_faststream_batch``
divide our consumer's orders/s by a FastStream Redis-stream consumer's orders/s, both measured
in the same bench invocation against the same Redis. This module provides the FastStream side:

:func:`ensure_faststream_venv`
    builds (once, cached) a virtual environment with ``faststream[redis]==FASTSTREAM_VERSION``
    from PyPI under ``~/.cache/orderstream/bench-peers/faststream-<version>/`` and returns its
    python. FastStream never enters the project's own environment.
:func:`faststream_drain`
    runs ``bench/peers/faststream_consumer.py`` under that python, pinned to one CPU, on a
    stream the caller pre-filled (and whose group the caller created, as ``prefill`` in
    ``bench/run.py`` does), and times it from the group's first read until the group has read
    all entries and has nothing pending (``XINFO GROUPS``), like ``drain_time`` in
    ``bench/run.py``.

FastStream 0.7.8's defaults for a consumer-group stream subscriber
(``broker.subscriber(stream=StreamSub(name, group=..., consumer=...))``), read from its source
(``faststream/redis/schemas/stream_sub.py``, ``subscriber/usecases/stream_subscriber.py``,
``subscriber/config.py``, ``message.py``):

- ``max_records=None``: ``XREADGROUP`` is sent **without COUNT**, so one read takes every
  entry the group has not delivered yet (the whole pre-filled stream);
- ``polling_interval=100``: ``BLOCK 100`` (ms);
- ``last_id=">"``; the group is created at ``$`` with ``MKSTREAM`` unless it exists (ours does,
  at ``0``, so nothing is skipped);
- ``batch=False``: the handler is called once per entry, one after the other (``max_workers=1``);
- ack policy ``AckPolicy.REJECT_ON_ERROR``: after the handler returns, one awaited ``XACK`` per
  entry (a batch subscriber sends one ``XACK`` with the batch's IDs);
- ``no_ack=False``, no ``min_idle_time`` (no XAUTOCLAIM), no ``claim_min_idle_time``;
- broker ``log_level=logging.INFO``: a "Received" and a "Processed" access-log line per message.

Our entries (``{"data": "<order JSON>", "order_id": ..., "v": "1"}``, see
``streamcore/envelope.py``) need no custom parser: FastStream's stream parser takes the ``data``
field, its message format finds no FastStream header in it and keeps the bytes as the body, and
the default decoder JSON-decodes it (no content-type), so the handler receives the order as a
dict (a list of order dicts with ``batch=True``).

The one change from FastStream's defaults, unless ``access_log=True``: the broker's per-message
access log is moved to ``logging.DEBUG`` (``RedisBroker(log_level=logging.DEBUG)``), which
FastStream's logger (level INFO) drops, so both consumers log nothing per order (our consumer
runs with ``LOG_LEVEL=WARNING`` in the bench). Everything else is FastStream's default; the
event loop is asyncio's default one (no uvloop), as FastStream runs by default.

Both functions are blocking; from asyncio code call them with :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

#: The FastStream release measured (newest on PyPI that supports Python 3.11; needs >= 3.10).
FASTSTREAM_VERSION = "0.7.8"
#: Where cached peer environments live.
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orderstream" / "bench-peers"
#: The consumer script run under the FastStream environment.
CONSUMER_SCRIPT = Path(__file__).resolve().parent / "peers" / "faststream_consumer.py"
#: Marker written last into a complete environment (before it is renamed into place).
_COMPLETE = ".complete"
#: Temporary build folders older than this are leftovers of an interrupted build (s).
_STALE_BUILD_S = 3600.0


def faststream_venv_dir(version: str = FASTSTREAM_VERSION) -> Path:
    """The cache folder of the FastStream environment (it may not exist yet)."""
    return CACHE_ROOT / f"faststream-{version}"


def ensure_faststream_venv(*, version: str = FASTSTREAM_VERSION, timeout_s: float = 900.0) -> Path:
    """Return the python of a venv holding ``faststream[redis]==version``, building it once.

    The venv is built in a temporary folder beside the target (``python -m venv`` with this
    interpreter's base Python, then ``pip install faststream[redis]==version`` from PyPI), marked
    complete, and renamed into place in one step, so an interrupted build leaves no half-built
    environment at the target (its temporary folder is removed by a later call once it is an
    hour old). When two builds race, the first rename wins and the other build is discarded.
    Only ``bin/python`` of the renamed venv is used (its console scripts keep the temporary
    path in their shebang lines).

    Args:
        version: the FastStream release to install.
        timeout_s: bound on each of the venv creation and the install (s).

    Returns:
        Path of the environment's python.

    Raises:
        RuntimeError: venv creation or the install failed (pip's output is in the message), or
            the installed FastStream is not ``version``.
        subprocess.TimeoutExpired: a step took longer than ``timeout_s``.
    """
    target = faststream_venv_dir(version)
    python = target / "bin" / "python"
    if (target / _COMPLETE).is_file() and python.exists():
        return python
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.build-"
    now = time.time()
    for old in CACHE_ROOT.glob(prefix + "*"):
        try:
            if now - old.stat().st_mtime > _STALE_BUILD_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    build = Path(tempfile.mkdtemp(prefix=prefix, dir=CACHE_ROOT))
    os.chmod(build, 0o755)  # mkdtemp makes it 0700
    try:
        base = getattr(sys, "_base_executable", None) or sys.executable
        _run([base, "-m", "venv", str(build)], "create the FastStream venv", timeout_s)
        _run([str(build / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q",
              f"faststream[redis]=={version}"], f"install faststream[redis]=={version}", timeout_s)
        got = _run([str(build / "bin" / "python"), "-c", "from importlib.metadata import version; print(version('faststream'))"],
                   "import faststream", 60).strip()
        if got != version:
            raise RuntimeError(f"installed FastStream is {got}, not {version}")
        (build / _COMPLETE).write_text(f"faststream[redis]=={version}\n")
        if target.exists() and not (target / _COMPLETE).is_file():
            shutil.rmtree(target, ignore_errors=True)  # not ours to keep: an incomplete leftover
        try:
            os.rename(build, target)
        except OSError:
            if not (target / _COMPLETE).is_file():
                raise
            # a concurrent build finished first: use it
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    return python


def _run(argv: list[str], what: str, timeout_s: float) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"could not {what} (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}".rstrip())
    return proc.stdout


def faststream_version(python: Path | None = None) -> dict[str, str]:
    """``{"faststream": ..., "redis_py": ...}``: the versions in the FastStream environment."""
    python = python or ensure_faststream_venv()
    out = _run([str(python), "-c", "import json; from importlib.metadata import version as v; "
                "print(json.dumps({'faststream': v('faststream'), 'redis_py': v('redis')}))"],
               "read the FastStream version", 60)
    return json.loads(out)


def _taskset(cpu: str | None) -> list[str]:
    if cpu is None:
        return []
    binary = shutil.which("taskset")
    return [binary, "-c", cpu] if binary else []


def faststream_drain(
    redis_url: str,
    stream: str,
    group: str,
    n: int,
    *,
    batch: bool,
    batch_size: int = 100,
    cpu: str | None = "1",
    timeout_s: float = 120,
    access_log: bool = False,
    consumer: str = "faststream-1",
) -> dict:
    """Drain a pre-filled stream with a FastStream consumer and time it.

    The caller has appended ``n`` entries to ``stream`` and created ``group`` (at ``0``) with no
    reads yet. The FastStream process (``bench/peers/faststream_consumer.py`` under
    :func:`ensure_faststream_venv`'s python; ``taskset -c cpu`` unless ``cpu`` is None or
    taskset is missing) subscribes with ``StreamSub(stream, group=group, consumer=consumer)``
    in FastStream's defaults, or with ``batch=True, max_records=batch_size``; its handler does
    nothing but count what it receives. ``XINFO GROUPS`` is polled every 10 ms: the clock starts
    at the group's first read (``entries-read`` or ``pending`` above 0, so start-up is not
    counted) and stops when ``entries-read >= n`` and ``pending == 0``. The process is then
    stopped with SIGTERM by its PID (SIGKILL after 30 s) and reports how many entries its
    handler received, which must be ``n``.

    Args:
        redis_url: ``redis://host:port/db`` of the Redis holding the stream.
        stream, group: the pre-filled stream and its consumer group.
        n: entries in the stream (all unread by the group).
        batch: False for FastStream's default per-message subscriber, True for ``batch=True``.
        batch_size: ``max_records`` in batch mode (ignored otherwise: the default is no COUNT).
        cpu: CPU list for taskset, or None for no pinning.
        timeout_s: bound on the drain, from the process start (s).
        access_log: keep FastStream's per-message access log at INFO (its default; written to
            a temporary file). False moves it to DEBUG, where it is dropped.
        consumer: the consumer name in the group.

    Returns:
        ``{"orders": n, "seconds": float (s), "orders_per_s": float, "version": "0.7.8",
        "redis_py": "...", "settings": "<one line>", "received": int, "bodies": "<type names>"}``.

    Raises:
        TimeoutError: not drained within ``timeout_s`` (the process's log tail in the message).
        RuntimeError: the process exited early or its handler did not receive ``n`` entries.
        redis.RedisError: Redis unreachable, or the stream/group missing.
    """
    python = ensure_faststream_venv()
    argv = [*_taskset(cpu), str(python), str(CONSUMER_SCRIPT), "--redis-url", redis_url, "--stream", stream,
            "--group", group, "--consumer", consumer]
    if batch:
        argv += ["--batch", "--batch-size", str(batch_size)]
    if access_log:
        argv.append("--access-log")
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        seconds = None
        try:
            t_first = None
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                g = next((x for x in r.xinfo_groups(stream) if x["name"] == group), None)
                if g is None:
                    raise RuntimeError(f"group {group!r} of stream {stream!r} is gone")
                read = g.get("entries-read") or 0
                if t_first is None and (read > 0 or g["pending"] > 0):
                    t_first = time.perf_counter()
                if read >= n and g["pending"] == 0:
                    seconds = time.perf_counter() - (t_first or time.perf_counter())
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"the FastStream consumer exited with {proc.returncode} before draining:\n"
                                       + _tail(err) + _tail(out))
                time.sleep(0.01)
            if seconds is None:
                raise TimeoutError(f"FastStream did not drain {n} entries of {stream!r} in {timeout_s} s "
                                   f"(entries-read {read}, pending {g['pending']}):\n" + _tail(err))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            r.close()
        lines = _json_lines(out)
    ready = next((x for x in lines if x.get("event") == "ready"), None)
    done = next((x for x in lines if x.get("event") == "stopped"), None)
    if ready is None or done is None:
        raise RuntimeError("the FastStream consumer did not report its settings and count:\n" + _tail(err) + _tail(out))
    if done["received"] != n:
        raise RuntimeError(f"the FastStream handler received {done['received']} entries, not {n}: {done}")
    return {
        "orders": n,
        "seconds": seconds,
        "orders_per_s": n / seconds if seconds else float("inf"),
        "version": ready["faststream"],
        "redis_py": ready["redis_py"],
        "settings": ready["settings"],
        "received": done["received"],
        "bodies": done["bodies"],
    }


def _tail(f, limit: int = 4000) -> str:
    f.flush()
    f.seek(0)
    text = f.read()
    return text[-limit:]


def _json_lines(f) -> list[dict]:
    f.flush()
    f.seek(0)
    found = []
    for line in f:
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                pass
    return found


if __name__ == "__main__":
    print(ensure_faststream_venv())
    print(json.dumps(faststream_version()))
