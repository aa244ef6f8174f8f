"""Commands are packed by hiredis (:class:`streamcore.connection._HiredisPacking`): the bytes on
the wire are redis-py's own for every argument, every client kind packs that way, and a value
that is not UTF-8 (read with ``surrogateescape``) still goes back to Redis byte for byte."""

from __future__ import annotations

import enum
from array import array

import pytest
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.exceptions import DataError

from streamcore.settings import CommonSettings
from streamcore.connection import ENCODING_ERRORS, _Cluster, _HiredisPacking, _hiredis_packing, _safe, create_redis

EXTRA_SERVER_KINDS = ("cluster", "tls-acl")  # the round trip below through every client kind we make

class _Level(enum.IntEnum):
    HIGH = 3


class _Upper(str):
    def encode(self, *args, **kwargs):  # type: ignore[override]
        return super().encode(*args, **kwargs).upper()


ARGS = {
    "text": ("XACK", "orders", "workers", "1700000000000-0", "1700000000001-12"),
    "non-ascii text": ("SET", "k", "café ☕"),
    "bytes": ("SET", b"k", b"\x00\xff\r\n"),
    "numbers": ("XADD", "s", "MAXLEN", 10, "*", "f", 0.1, "g", 1e20, "h", -3, "i", 2**70),
    "memoryview": ("SET", "k", memoryview(b"view")),
    "name with a space": ("XINFO GROUPS", "orders"),
    "bytes name with a space": (b"CONFIG GET", "maxmemory"),
    "lone surrogate": ("SET", "k", "caf\udcc3\udca9 \udcff"),  # bytes that were not UTF-8, as read
    "empty values": ("SET", "", ""),
    # What hiredis would pack differently; each must reach redis-py's packer.
    "name with a tab": ("XINFO\tGROUPS", "orders"),
    "name with a no-break space": ("XINFO\u00a0GROUPS x", "orders"),
    "empty name": ("",),
    "strided memoryview": ("SET", "k", memoryview(b"abcdefgh")[::2]),
    "int memoryview": ("SET", "k", memoryview(array("i", [1, 2, 3]))),
    "IntEnum": ("SET", "k", _Level.HIGH),
    "str subclass": ("SET", "k", _Upper("quiet")),
}


def _packed(cls: type, args: tuple) -> bytes:
    return b"".join(bytes(chunk) for chunk in cls(encoding_errors=ENCODING_ERRORS).pack_command(*args))


@pytest.mark.parametrize("args", ARGS.values(), ids=ARGS.keys())
def test_hiredis_packing_sends_the_bytes_redis_py_sends(args):
    assert _packed(_hiredis_packing(Connection), args) == _packed(Connection, args)


def _released() -> memoryview:
    view = memoryview(bytearray(b"secret-data-123"))
    view.release()
    return view


@pytest.mark.parametrize(("args", "error"), [
    (("SET", "k", True), DataError), (("SET", "k", None), DataError), (("SET", "k", bytearray(b"x")), DataError),
    (("SET", "k", _released()), ValueError),  # hiredis would send freed memory
    (("SET \udc80", "k"), UnicodeEncodeError), ((7, "k"), TypeError),
], ids=["bool", "None", "bytearray", "released memoryview", "surrogate in the name", "int name"])
def test_a_command_redis_py_refuses_is_refused_the_same_way(args, error):
    with pytest.raises(error) as ours:
        _hiredis_packing(Connection)(encoding_errors=ENCODING_ERRORS).pack_command(*args)
    with pytest.raises(error) as theirs:
        Connection(encoding_errors=ENCODING_ERRORS).pack_command(*args)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize(("url", "base"), [("redis://127.0.0.1:1/0", Connection),
                                           ("rediss://127.0.0.1:1/0", SSLConnection),
                                           ("unix:///nonexistent/redis.sock", UnixDomainSocketConnection)])
def test_every_standalone_connection_packs_with_hiredis(url, base):
    connection = create_redis(url).connection_pool.make_connection()
    assert isinstance(connection, _HiredisPacking) and isinstance(connection, base)
    assert create_redis(url).connection_pool.connection_class is type(connection)  # one class, not one per client


def test_sentinel_and_cluster_connections_pack_with_hiredis():
    pool = create_redis("redis://ignored:1/0", sentinels=[("127.0.0.1", 1)], sentinel_master="m").connection_pool
    assert issubclass(pool.connection_class, _HiredisPacking)
    assert issubclass(pool.connection_class, SentinelManagedConnection)
    cluster = _Cluster(host="127.0.0.1", port=1)  # nodes it makes later, on a redirection, too
    assert issubclass(cluster.nodes_manager.connection_kwargs["connection_class"], _HiredisPacking)
    node = _safe(ClusterNode("127.0.0.1", 1))
    assert issubclass(node.connection_class, _HiredisPacking) and issubclass(node.connection_class, Connection)
    assert _hiredis_packing(node.connection_class) is node.connection_class  # made once, not stacked


async def test_values_that_are_not_utf8_go_back_byte_for_byte(redis_url, names, raw):
    fields = {b"data": b'{"orderId":"x"}', b"n\x80me": b"caf\xc3\xa9 \xff\xfe", b"crlf": b"a\r\nb"}
    await raw.xadd(names.stream, fields, id="1-1")
    r = create_redis(redis_url, cluster=names.cluster, **CommonSettings(redis_url=redis_url).redis_options())
    try:
        [(_, read)] = await r.xrange(names.stream)
        assert read["n\udc80me"] == "café \udcff\udcfe"  # decoded losslessly: the bytes as lone surrogates
        await r.xadd(names.dlq, read, id="2-2")  # written back by our client: the surrogate fallback
        await r.xgroup_create(names.stream, names.group, id="0")
        groups = await r.xinfo_groups(names.stream)  # "XINFO GROUPS" split into two arguments
        if names.cluster:
            assert all(isinstance(n.connection_class(), _HiredisPacking) for n in r.get_nodes())
    finally:
        await r.aclose()
    assert [g["name"] for g in groups] == [names.group]
    assert await raw.xrange(names.dlq) == [(b"2-2", fields)]
