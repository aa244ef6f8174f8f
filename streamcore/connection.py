"""Redis client construction and the server-version check.

One :class:`redis.asyncio.Redis` per process, owned by whoever created it (``await r.aclose()``).
The socket timeout is always longer than any ``BLOCK`` we issue (case C12), so an empty blocking
read returns normally instead of raising ``TimeoutError`` and reconnecting.

**Bytes-safe decoding.** Redis stores bytes; other tools may write entries, field names or
consumer names that are not UTF-8. Every reply is decoded by one codec, the client's, with the
``surrogateescape`` error handler: valid UTF-8 becomes ordinary text, each invalid byte becomes a
lone surrogate (``U+DC80``..``U+DCFF``). Nothing is lost (encoding back with the same handler,
which the client does for every argument, gives the original bytes), nothing raises
``UnicodeDecodeError``, and whether a value was valid UTF-8 is judged in one place,
:func:`streamcore.envelope.decode` (with :func:`streamcore.envelope.is_clean_text`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import hiredis
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (BusyLoadingError, ClusterDownError, OutOfMemoryError, ReadOnlyError, RedisClusterException,
                              RedisError, ResponseError, SlotNotCoveredError, TryAgainError)
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How replies are decoded (see the module docstring): lossless, never raises.
ENCODING_ERRORS = "surrogateescape"

#: Server families and major versions our CI runs the integration tier against.
TESTED_SERVERS: dict[str, tuple[int, ...]] = {"redis": (7, 8), "valkey": (8, 9)}


#: Connections beyond CONCURRENCY that a worker needs besides its handlers: the blocked
#: XREADGROUP, the acker, the timer (heartbeat, lease renewal, claim pass), scripts.
POOL_HEADROOM = 16


class _HiredisPacking:
    """Mixin for redis-py's asyncio connection classes: commands packed by hiredis in C, as
    redis-py's synchronous client already does (``redis.connection.HiredisRespSerializer``).

    redis-py 7.4's asyncio connections pack every argument in Python (``Encoder.encode`` and a
    bytes join per argument): an XACK of 100 entry IDs cost the consumer ~7 % of its CPU
    (issue 12, bench/README.md). hiredis gives the same bytes for arguments of exactly the types
    ``str`` (UTF-8), ``bytes``, ``int`` and ``float``, which is all our commands pass; the
    command name is split into words first exactly as redis-py splits it (``"XINFO GROUPS"``).
    Every other command goes to redis-py's own packer, so its behaviour is unchanged: one with a
    lone surrogate (a value read with :data:`ENCODING_ERRORS` from bytes that are not UTF-8,
    written back byte for byte), a ``memoryview`` (hiredis ignores its strides and would pack a
    released one), a subclass (a bool, an IntEnum, a str with its own ``encode``), None (redis-py's
    ``DataError``).
    """

    def pack_command(self, *args):  # type: ignore[no-untyped-def]  # redis-py's signature
        first = args[0] if args else None
        try:
            # redis-py: a str name is split on ASCII whitespace, a bytes name only when it holds a space.
            if type(first) is str:
                words = (*first.encode().split(), *args[1:])
            elif type(first) is bytes:
                words = (*first.split(), *args[1:]) if b" " in first else args
            else:
                words = ()  # no command name, or another type: redis-py's packer (or its error)
            if words and _PACKED_BY_HIREDIS.issuperset(map(type, words)):
                return [hiredis.pack_command(words)]
        except UnicodeEncodeError:
            pass  # a lone surrogate: redis-py's packer (surrogateescape) or its error
        return super().pack_command(*args)  # type: ignore[misc]  # the redis-py class mixed with


#: Argument types hiredis packs to redis-py's exact bytes (subclasses excluded).
_PACKED_BY_HIREDIS = frozenset({str, bytes, int, float})


_PACKING: dict[type, type] = {}


def _hiredis_packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` (a redis-py connection class: TCP, TLS, Unix socket, Sentinel-managed) with
    :class:`_HiredisPacking`; one subclass per class, made once."""
    if issubclass(cls, _HiredisPacking):
        return cls
    if cls not in _PACKING:
        _PACKING[cls] = type(f"Hiredis{cls.__name__}", (_HiredisPacking, cls), {"__module__": __name__})
    return _PACKING[cls]


def pool_size(concurrency: int) -> int:
    """Connection-pool size for a process running ``concurrency`` handlers at once: one per
    handler plus :data:`POOL_HEADROOM`, so a high CONCURRENCY never runs out (issue 9 item 3)."""
    return concurrency + POOL_HEADROOM


class CountingRetry(Retry):
    """redis-py's :class:`~redis.asyncio.retry.Retry` that counts, in ``failures``, every failure
    it saw (retried or finally raised), for the whole client: each connection's copy of it is the
    same object (``deepcopy`` returns it), which is safe because our back-off is stateless.

    A command redis-py retried after a broken connection succeeds without an error reaching its
    caller, yet the first attempt may have run in Redis with its reply lost: an ``XREADGROUP``
    whose entries are then pending for us with a delivery counted and no handler (seen by a
    breaker: order held 20 s until the claim pass, handled as delivery 2), or an ``XCLAIM``
    whose entry sat owned by us unhandled until the next claim pass dead-lettered it without its
    handler having run. The consumer reads :func:`retried_failures` after each of its reads and,
    when it moved, looks for such entries in its own PEL (``consumer.worker.Worker``).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failures = 0

    def __deepcopy__(self, memo: dict) -> "CountingRetry":
        return self

    async def call_with_retry(self, do, fail, is_retryable=None, with_failure_count: bool = False):
        async def counted(error: Exception, *count: int) -> None:
            self.failures += 1
            result = fail(error, *count)
            if inspect.isawaitable(result):
                await result

        return await super().call_with_retry(do, counted, is_retryable=is_retryable,
                                             with_failure_count=with_failure_count)


def is_redis_fault(exc: BaseException) -> bool:
    """True for any Redis error (``RedisError``: a reply the loop logs and retries) or transient
    fault (:func:`is_transient`, which also covers uvloop's closed-transport RuntimeError): what
    a component's background loop waits out instead of crashing."""
    return isinstance(exc, RedisError) or is_transient(exc)


def retried_failures(r: aioredis.Redis) -> int:
    """How many command or connect failures ``r``'s :class:`CountingRetry` has seen so far (0 for
    a client made elsewhere, without one)."""
    retry = r.retry if isinstance(r, RedisCluster) else r.get_retry()
    return retry.failures if isinstance(retry, CountingRetry) else 0


def create_redis(url: str, *, socket_timeout_s: float = 15.0, max_connections: int = 64,
                 retries: int = 3, ssl_ca_certs: str | None = None, ssl_certfile: str | None = None,
                 ssl_keyfile: str | None = None, sentinels: list[tuple[str, int]] | None = None,
                 sentinel_master: str | None = None, cluster: bool = False) -> aioredis.Redis:
    """Create an asyncio Redis client with ``decode_responses=True`` and lossless decoding
    (``encoding_errors="surrogateescape"``, see the module docstring).

    The pool is a :class:`redis.asyncio.BlockingConnectionPool`: when all ``max_connections``
    are in use a caller *waits* (up to ``socket_timeout_s``) for one to come back instead of
    failing at once with "Too many connections" (which used to count as a handler failure and
    dead-letter good orders). Size it with :func:`pool_size`.

    Commands that fail with a connection error (Redis restarting, a stale pooled connection
    after a restart, LOADING) are retried on a fresh connection by redis-py's
    :class:`~redis.asyncio.retry.Retry` with :class:`~redis.backoff.ExponentialBackoff`
    (``retries`` times, 0.05 s doubling to 1 s); what still fails reaches the caller, which backs
    off further (see :func:`is_transient`).

    Args:
        url: ``redis://`` or ``rediss://`` URL (user, password and db in the URL).
        socket_timeout_s: read timeout in seconds; callers must keep every ``BLOCK`` below it.
        max_connections: connection pool size.
        retries: how often one command is retried on a connection error (0: never); a timeout
            is not retried.
            A retried append whose first attempt did reach Redis is answered from the
            idempotency record when the request had an ``Idempotency-Key``; without one it may
            append the order twice, which the handler's orderId marker applies once.
        ssl_ca_certs: PEM file of the CA that signed the server's certificate (REDIS_TLS_CA_FILE);
            None: the system's CA store. Only with a ``rediss://`` URL.
        ssl_certfile, ssl_keyfile: PEM client certificate and key (REDIS_TLS_CERT_FILE,
            REDIS_TLS_KEY_FILE), for servers with ``tls-auth-clients``. Only with ``rediss://``.
            Components pass these as ``**settings.redis_options()``
            (:meth:`streamcore.settings.CommonSettings.redis_options`). The server's certificate
            is always verified, its host name included (redis-py's defaults).
        sentinels, sentinel_master: ``[(host, port), ...]`` of Redis Sentinels and the master
            name they monitor (REDIS_SENTINELS, REDIS_SENTINEL_MASTER). The client then talks to
            the primary the Sentinels name, through redis-py's
            :class:`redis.asyncio.sentinel.Sentinel` and a master-bound pool (see
            :class:`BlockingSentinelPool`); the URL's host and port are not used, its scheme,
            user, password and db are. After a failover, connections to the old primary fail
            (or answer READONLY, which redis-py turns into a connection error); the retry
            reconnects and the pool asks the Sentinels for the new primary. The Sentinels
            themselves are reached with the same socket timeouts and, for a ``rediss://`` URL,
            the same TLS files, without a password.

        cluster: return redis-py's :class:`redis.asyncio.cluster.RedisCluster` instead (``url``
            names any seed node; see :func:`create_cluster_redis`).

    Returns:
        A client that owns its pool; the caller must ``await client.aclose()``.

    Raises:
        ValueError: the URL is not a Redis URL, or TLS files come with a URL that is not
            ``rediss://``.
    """
    tls = {k: v for k, v in (("ssl_ca_certs", ssl_ca_certs), ("ssl_certfile", ssl_certfile),
                             ("ssl_keyfile", ssl_keyfile)) if v is not None}
    if tls and not url.startswith("rediss://"):
        raise ValueError("TLS files need a rediss:// URL")
    options = dict(
        **_common_options(socket_timeout_s, max_connections, tls),
        timeout=socket_timeout_s,
        # No CLIENT SETINFO at connect: one round trip less per connection, and the ACL user of
        # streamcore.acl needs no CLIENT permission (Redis 7.0 cannot even name that subcommand).
        driver_info=None,
        # Not timeouts: a hung server must surface within one socket timeout (the producer
        # answers 503 within it), not after ``retries`` times it.
        retry=CountingRetry(ExponentialBackoff(cap=1.0, base=0.05), retries, supported_errors=(RedisConnectionError,)),
    )
    if cluster:
        if sentinels:
            raise ValueError("REDIS_CLUSTER and REDIS_SENTINELS exclude each other")
        return create_cluster_redis(url, socket_timeout_s=socket_timeout_s, max_connections=max_connections,
                                    retries=retries, **tls)  # type: ignore[return-value]
    if sentinels:
        if not sentinel_master:
            raise ValueError("sentinels need a master name")
        return _sentinel_client(url, sentinels, sentinel_master, tls, options)
    pool = aioredis.BlockingConnectionPool.from_url(url, **options)
    pool.connection_class = _hiredis_packing(pool.connection_class)  # from the URL's scheme: TCP, TLS, Unix
    return aioredis.Redis.from_pool(pool)


class BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """redis-py's master-bound :class:`~redis.asyncio.sentinel.SentinelConnectionPool` (it asks
    the Sentinels for the primary's address on every new connection and drops idle connections
    when the address changed) with :class:`~redis.asyncio.BlockingConnectionPool`'s waiting for
    a free connection, as :func:`create_redis` has without Sentinel."""


def _sentinel_client(url: str, sentinels: list[tuple[str, int]], master: str, tls: dict[str, str],
                     options: dict) -> aioredis.Redis:
    parsed = parse_url(url)  # scheme, user, password, db; host and port come from the Sentinels
    for unused in ("host", "port", "connection_class", "path"):
        parsed.pop(unused, None)
    sentinel_kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    if url.startswith("rediss://"):
        sentinel_kwargs.update(ssl=True, **tls)
        parsed["ssl"] = True  # SentinelConnectionPool picks its SSL connection class from this flag
    manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
    client = manager.master_for(master, redis_class=aioredis.Redis, connection_pool_class=BlockingSentinelPool,
                                **parsed, **options)
    pool = client.connection_pool
    pool.connection_class = _hiredis_packing(pool.connection_class)  # Sentinel-managed, TCP or TLS
    return client


def check_sentinel_master(sentinels: list[tuple[str, int]], master: str, *, timeout_s: float = 2.0,
                          tls: dict[str, str] | None = None) -> bool | None:
    """Ask each Sentinel (synchronously, before the event loop starts) whether it monitors
    ``master``, with ``SENTINEL GET-MASTER-ADDR-BY-NAME``.

    Args:
        sentinels: ``[(host, port), ...]`` from REDIS_SENTINELS.
        master: REDIS_SENTINEL_MASTER.
        timeout_s: connect and read timeout per Sentinel, seconds.
        tls: redis-py TLS keywords when the Sentinels speak TLS (``rediss://`` REDIS_URL).

    Returns:
        True when a Sentinel knows the master, False when at least one answered and none knows
        it (a wrong name: a bad setting), None when none answered (unreachable: transient, the
        process starts and retries like for an unreachable Redis).
    """
    answered = False
    for host, port in sentinels:
        client = redis.Redis(host=host, port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                             **({"ssl": True, **tls} if tls is not None else {}))
        try:
            address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            continue
        except ResponseError:
            answered = True
            continue
        finally:
            client.close()
        answered = True
        if address:
            return True
    return False if answered else None


#: A node object dropped by a slot-map re-read is forgotten (left to the garbage collector) only
#: after this many seconds without an open connection: longer than a command that picked it
#: before the re-read can take to connect to it (s).
FORGET_DROPPED_AFTER_S = 60.0


class _ClusterNode(ClusterNode):
    """redis-py's :class:`~redis.asyncio.cluster.ClusterNode` whose idle connections cannot be
    taken while they are being closed.

    redis-py 7.4's ``disconnect_free_connections`` (run after a connection error on the node, and
    for a node a slot-map re-read drops) closes the idle connections while they stay in the free
    list: a command that takes one during that close has its socket set to None under it
    (``AttributeError: 'NoneType' object has no attribute 'writelines'`` or "Connection closed by
    server"). Many concurrent first commands of a new client met it (14 to 20 failures in 400
    appends, a producer answering 500, a CI failure in test_streams on the cluster kind). Here the
    idle connections leave the free list while they close and come back closed (they reconnect on
    their next use); a command meanwhile opens a new connection.
    """

    __slots__ = ()

    async def disconnect_free_connections(self) -> None:
        idle = list(self._free)
        self._free.clear()
        try:
            await asyncio.gather(*(connection.disconnect() for connection in idle), return_exceptions=True)
        finally:
            self._free.extend(idle)


def _safe(node: ClusterNode) -> ClusterNode:
    """Make ``node`` a :class:`_ClusterNode` (same slots, so the class can be swapped in place)
    whose new connections pack commands with hiredis (:class:`_HiredisPacking`)."""
    if type(node) is ClusterNode:
        node.__class__ = _ClusterNode
        node.connection_class = _hiredis_packing(node.connection_class)
    return node


class _Cluster(RedisCluster):
    """redis-py's :class:`~redis.asyncio.cluster.RedisCluster` with these fixes:

    - ``SCRIPT LOAD`` goes to every node, replicas included, instead of the primaries only (the
      script cache is not replicated, so a replica promoted by a failover answered ``NOSCRIPT``
      to every script, and the client, whose node list still had it as a replica, loaded the
      script everywhere but there);
    - re-reading the slot map (after a failover, a connection error, a resharding) closes the
      node objects it drops (see :meth:`initialize`);
    - ``aclose`` always closes when we call it, and closes only idle connections when redis-py
      calls it from inside a command (see :meth:`aclose`); idle connections cannot be taken
      while they close (:class:`_ClusterNode`);
    - command attempts that failed on a connection are counted (:meth:`_execute_command`).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: Every node object the slot map or the node list has held, by id, until it was dropped
        #: from both more than FORGET_DROPPED_AFTER_S ago and has no connection open: a dropped
        #: node's connections are closed by the re-reads and by aclose, never left to the garbage
        #: collector (see :meth:`initialize`).
        self._held: dict[int, ClusterNode] = {}
        #: id -> when (monotonic s) a held node was first seen dropped.
        self._dropped_at: dict[int, float] = {}
        for node in self._known_nodes().values():
            _safe(node)
        # Nodes made later (a redirection to a node not in the slot map yet) get their connection
        # class from these keywords, shared with the nodes manager.
        node_kwargs = self.nodes_manager.connection_kwargs
        node_kwargs["connection_class"] = _hiredis_packing(node_kwargs.get("connection_class", Connection))

    async def _execute_command(self, target_node: ClusterNode, *args, **kwargs):
        """redis-py's per-node attempt of a command, counting a connection error or timeout in
        the client's :class:`CountingRetry` (the cluster client retries in its own loop, not
        through ``Retry.call_with_retry``): the attempt may have run with its reply lost."""
        try:
            return await super()._execute_command(target_node, *args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError):
            if isinstance(self.retry, CountingRetry):
                self.retry.failures += 1
            raise

    async def script_load(self, script):  # type: ignore[override]
        """``SCRIPT LOAD`` on every node; returns the script's SHA1."""
        return await self.execute_command("SCRIPT LOAD", script, target_nodes=RedisCluster.ALL_NODES)

    def _known_nodes(self) -> dict[int, ClusterNode]:
        """Every node object the client can reach now, by id: the node list, the seeds, the slot map."""
        manager = self.nodes_manager
        slot_lists = {id(nodes): nodes for nodes in manager.slots_cache.values()}
        return {id(n): n for n in [*manager.nodes_cache.values(), *manager.startup_nodes.values(),
                                   *(n for nodes in slot_lists.values() for n in nodes)]}

    async def initialize(self) -> RedisCluster:
        """Read the slot map when needed (redis-py's ``initialize``), then close the idle
        connections of every node object dropped since the last read.

        redis-py 7.4 builds new node objects for the slot map on every re-read while its node
        list keeps the old ones, drops the previous map's objects with their sockets open, and a
        ``MOVED`` after a failover drops one more from the slot's list: each surfaced as
        ``ResourceWarning: unclosed socket`` wherever the garbage collector ran next. A dropped
        node's connection that was in use at that moment goes back to its node when its command
        ends and is closed by the next re-read or by :meth:`aclose`.
        """
        if not self._initialize:
            return self
        self._held.update(self._known_nodes())
        try:
            return await super().initialize()
        finally:
            await self._close_dropped()

    async def _close_dropped(self) -> None:
        """Close the idle connections of held nodes that are no longer known; forget those with
        none open that were dropped more than :data:`FORGET_DROPPED_AFTER_S` ago (a command that
        picked the node before it was dropped may still open a connection on it: a node
        forgotten at once was then collected with that socket open); hold every known node."""
        known = self._known_nodes()
        for node in known.values():
            _safe(node)
        now = time.monotonic()
        for key, node in list(self._held.items()):
            if key in known:
                self._dropped_at.pop(key, None)
                continue
            dropped_at = self._dropped_at.setdefault(key, now)
            while node._free:  # idle connections (redis-py's own free list)
                connection = node._free.popleft()
                with contextlib.suppress(RedisError, OSError):
                    await connection.disconnect()
            if now - dropped_at > FORGET_DROPPED_AFTER_S and not any(c.is_connected for c in node._connections):
                # pop, not del: commands that found the map stale together each come here, and
                # another may have forgotten the node during our await.
                self._held.pop(key, None)
                self._dropped_at.pop(key, None)
        self._held.update(self._known_nodes())

    async def exchange_with_primary(self, key: str, exchange: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``exchange(connection)`` on one connection to the primary that owns ``key``'s slot,
        for commands that must share a connection with the writes before them (``WAIT``, which
        names no key, counts the replicas that have this connection's writes).

        The slot map is read first when stale. A connection error or timeout marks it stale
        (a failover moves the slot to another node) and is retried on the slot's primary of the
        fresh map with the client's retry policy (back-off, ``retries`` of
        :func:`create_cluster_redis`); whatever ``exchange`` sent may already have run.
        Redirections (``MOVED``, ``ASK``) are not followed: they are ``exchange``'s replies, and
        after a ``MOVED`` the caller calls :meth:`mark_stale` and tries again.

        Raises:
            redis.exceptions.ConnectionError, redis.exceptions.TimeoutError: still failing after
                the retries.
        """
        slot = key_slot(self.encoder.encode(key))

        async def once() -> T:
            await self.initialize()
            node = self.nodes_manager.get_node_from_slot(slot)
            connection = node.acquire_connection()
            try:
                await node.disconnect_if_needed(connection)
                return await exchange(connection)
            finally:
                node.release(connection)

        async def failed(_error: Exception) -> None:
            self.mark_stale()

        return await self.retry.call_with_retry(once, failed)

    def mark_stale(self) -> None:
        """Have the next command re-read the slot map (``CLUSTER SLOTS``) first."""
        self._initialize = True

    async def aclose(self) -> None:
        """Close every connection to every node. redis-py's own ``aclose`` does nothing while the
        client is marked for re-initialisation, which any connection error leaves it (a node
        restarting, a failover): its sockets then stayed open after the process closed it.

        redis-py also calls ``aclose`` itself while it goes on using the client: after
        ``CLUSTERDOWN``, after every ``reinitialize_steps``-th ``MOVED`` and when a cluster
        pipeline retries. Closing every connection then cut the commands other tasks had in
        flight (``'NoneType' object has no attribute 'writelines'``: 12 to 20 of 400 concurrent
        first appends of a new client, a CI failure). For those calls (made from redis-py's
        ``_execute_command`` or a pipeline's ``execute``) the slot map is marked stale and only
        idle connections are closed.
        """
        caller = sys._getframe(1)
        if caller.f_globals.get("__name__") == "redis.asyncio.cluster" and \
                caller.f_code.co_name in ("_execute_command", "execute"):
            self.mark_stale()
            self._held.update(self._known_nodes())
            for node in list(self._held.values()):
                await _safe(node).disconnect_free_connections()
            return
        await super().aclose()
        # The nodes stay held (a command in flight may still open a connection on one of them).
        self._held.update(self._known_nodes())
        for node in list(self._held.values()):
            await _disconnect_quietly(node)


async def _disconnect_quietly(node: ClusterNode) -> None:
    """Close every connection of ``node``; a node that is down cannot refuse a close."""
    try:
        await node.disconnect()
    except (RedisError, OSError):
        pass


#: Lowest per-node connection cap of a cluster client (see :func:`create_cluster_redis`).
CLUSTER_MIN_NODE_CONNECTIONS = 100_000


def create_cluster_redis(url: str, *, socket_timeout_s: float = 15.0, max_connections: int = 64,
                         retries: int = 3, **tls: str) -> RedisCluster:
    """Create redis-py's asyncio :class:`~redis.asyncio.cluster.RedisCluster` (``REDIS_CLUSTER=true``)
    with the same decoding, timeouts and retry policy as :func:`create_redis`.

    ``url`` names any one node (the seed); the client reads the slot map (``CLUSTER SLOTS``) on
    first use, follows ``MOVED``/``ASK`` redirections and re-reads the map after a failover or a
    resharding. ``max_connections`` is per node, at least :data:`CLUSTER_MIN_NODE_CONNECTIONS`
    (see the comment in the body). Scripts: ``EVALSHA`` goes to the node of the script's first
    key; on ``NOSCRIPT`` redis-py loads the script and retries, and our client loads it on every
    node, replicas too, so a replica promoted by a failover already has it.

    ``tls``: ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` as for :func:`create_redis`
    (every node is reached with them).

    Raises:
        ValueError: the URL is not a Redis URL, or names a database other than 0.
    """
    # Per node, and far above what we use at once: redis-py's cluster node keeps a connection
    # whose connect failed (its node was down) counted against the cap without ever freeing it,
    # so during a failover every retried command used one up; at 64 the client then refused
    # every command for that node with MaxConnectionsError, which never refreshes the slot map
    # (the producer stayed at 503 after the replica took over). Such connections hold no socket.
    max_connections = max(max_connections, CLUSTER_MIN_NODE_CONNECTIONS)
    return _Cluster.from_url(
        url,
        **_common_options(socket_timeout_s, max_connections, tls),
        retry=CountingRetry(ExponentialBackoff(cap=1.0, base=0.05), retries,
                    supported_errors=(RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError)),
    )


def _common_options(socket_timeout_s: float, max_connections: int, tls: dict[str, str]) -> dict:
    """The connection options every client of ours has, standalone, Sentinel or cluster: TLS
    files, lossless decoding (see the module docstring), the socket timeout (s) for reads and,
    capped at 5 s, for connects, a PING before reusing a connection idle for 30 s, and the pool
    cap (per node for a cluster)."""
    return dict(
        **tls,
        decode_responses=True,
        encoding_errors=ENCODING_ERRORS,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=min(socket_timeout_s, 5.0),
        health_check_interval=30,
        max_connections=max_connections,
    )


def is_cluster(r: aioredis.Redis) -> bool:
    """True when ``r`` is a :class:`~redis.asyncio.cluster.RedisCluster` client."""
    return isinstance(r, RedisCluster)


async def check_cluster(url: str, *, cluster: bool, timeout_s: float = 5.0) -> str | None:
    """Ask the node ``url`` names whether it runs in cluster mode (``INFO cluster``,
    ``cluster_enabled``) and compare with ``REDIS_CLUSTER``.

    Returns:
        None when they agree or the node cannot be reached (nothing can be told yet; the client
        keeps retrying), else a one-line reason to refuse to start.
    """
    r = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=timeout_s,
                                socket_connect_timeout=timeout_s)
    try:
        info = await r.info("cluster")
    except (RedisError, OSError):
        return None
    finally:
        await r.aclose()
    enabled = str(info.get("cluster_enabled", "0")) == "1"
    if cluster and not enabled:
        return "REDIS_CLUSTER=true but the server at REDIS_URL is not a cluster node (cluster_enabled:0)"
    if not cluster and enabled:
        return "the server at REDIS_URL is a cluster node; set REDIS_CLUSTER=true"
    return None


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """Which server we talk to, from ``INFO server``.

    Attributes:
        family: ``"redis"`` or ``"valkey"`` (``server_name`` field, present on Valkey).
        version: ``(major, minor, patch)`` from ``valkey_version`` or ``redis_version``.
    """

    family: str
    version: tuple[int, int, int]

    @property
    def has_inactive(self) -> bool:
        """XINFO CONSUMERS reports ``inactive`` (Redis >= 7.2 and every Valkey)."""
        return self.family == "valkey" or self.version >= (7, 2, 0)

    @property
    def tested(self) -> bool:
        """Whether this server family and major version is in our CI matrix."""
        return self.version[0] in TESTED_SERVERS.get(self.family, ())


def _version(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split(".")[:3] if p.isdigit()]
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


async def server_info(r: aioredis.Redis) -> ServerInfo:
    """Read the server family and version with ``INFO server``; warn once on an untested one.

    Raises:
        redis.exceptions.ConnectionError: Redis is unreachable.
    """
    if is_cluster(r):  # ask one node (a cluster runs one version), not every node and replica
        info = await r.info("server", target_nodes=RedisCluster.DEFAULT_NODE)
    else:
        info = await r.info("server")
    if info.get("server_name") == "valkey" or "valkey_version" in info:
        found = ServerInfo("valkey", _version(str(info.get("valkey_version", info.get("redis_version", "0")))))
    else:
        found = ServerInfo("redis", _version(str(info.get("redis_version", "0"))))
    if found.version < (7, 0, 0) and found.family == "redis":
        logger.error("Redis %s is older than 7.0, which orderstream requires", found.version)
    elif not found.tested:
        logger.warning("server %s %s is not in our test matrix", found.family, ".".join(map(str, found.version)))
    return found


#: Error replies that say "not now" rather than "never": a script or module is running (BUSY),
#: the dataset is loading after a restart (LOADING), a failover is under way (MASTERDOWN,
#: READONLY on a demoted primary, TRYAGAIN/CLUSTERDOWN in a cluster). OOM (Redis at ``maxmemory``
#: with ``noeviction``, refusing writes until memory is freed) and LOADING arrive as redis-py's
#: OutOfMemoryError and BusyLoadingError, checked by class in :func:`is_transient`.
_TRANSIENT_REPLIES = ("BUSY ", "LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN")


def is_transient(exc: BaseException) -> bool:
    """True for an infrastructure fault that a retry can outlive: Redis unreachable, a dropped
    or timed-out connection, the pool out of connections, or a "not now" error reply (BUSY,
    LOADING, MASTERDOWN, READONLY, TRYAGAIN, CLUSTERDOWN), or uvloop's RuntimeError for a write
    on a connection the server closed (see :func:`_raised_in_redis_py`).

    Such an error is never the order's fault: the processes wait and retry it with back-off
    instead of counting it as a failed delivery (issue 9, items 3 and 4). Only redis-py's own
    exceptions count: a handler's ``OSError`` or ``TimeoutError`` from another service is a
    real failure of that delivery.
    """
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OutOfMemoryError, BusyLoadingError)):
        return True  # redis-py strips the OOM/LOADING code from these replies' text
    if isinstance(exc, (ClusterDownError, TryAgainError, ReadOnlyError, SlotNotCoveredError)):
        return True  # Redis Cluster during a failover or a resharding (redis-py strips their codes too)
    if isinstance(exc, RedisClusterException) and "cannot be connected" in str(exc):
        return True  # RedisCluster: no node of the cluster answered
    if isinstance(exc, RuntimeError) and "the handler is closed" in str(exc):
        return _raised_in_redis_py(exc)  # uvloop: a write on a connection the server closed
    return isinstance(exc, ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


def _raised_in_redis_py(exc: BaseException) -> bool:
    """True when redis-py's connection module is among the frames ``exc`` went through.

    uvloop closes a transport as soon as it reads the server's reset (Redis restarted or killed)
    and answers the next write on it with ``RuntimeError: unable to perform
    operation on <TCPTransport closed=True>; the handler is closed`` where asyncio's own loop
    drops the write and lets the read fail with ConnectionError. redis-py disconnects that
    connection and raises the RuntimeError unchanged (it only maps OSError), so without this
    check a Redis restart counted as a failed delivery on uvloop. A handler's own transports
    raise the same text from other modules, and stay a failure of that delivery.
    """
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__") == "redis.asyncio.connection":
            return True
        tb = tb.tb_next
    return False
