"""Redis over mutual TLS with a private CA, as the least-privilege ACL user (issue 13).

The server (kind ``tls-acl``, tests/servers.py) listens on TLS only, checks client certificates
and has its default user off. The core modules run their tests against it too
(``EXTRA_SERVER_KINDS``); here: what the user may not do, and how a wrong setup fails.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import redis.asyncio as aioredis
import trustme
from redis.exceptions import AuthenticationError, ConnectionError as RedisConnectionError, NoPermissionError

from streamcore.acl import rules
from streamcore.connection import create_redis
from streamcore.keys import Keys
from streamcore.streams import Scripts, append_order
from streamcore import envelope
from tests.integration.consumer_support import ROOT
from tests.servers import TlsAclServer

ONLY_SERVER_KINDS = ("tls-acl",)


@pytest.fixture
async def app_client(redis_server: TlsAclServer, names):
    """A client of a user made with exactly ``rules(names.stream, names.dlq)``, as the components connect."""
    user = f"strict-{names.group}"
    url = redis_server.add_user(user, "strict-secret", rules(names.stream, names.dlq))
    client = create_redis(url, socket_timeout_s=5, **redis_server.tls_files)
    yield client, user
    await client.aclose()
    redis_server.remove_user(user)


async def test_the_user_appends_but_is_refused_outside_its_commands_and_keys(app_client, redis_server, names):
    client, user = app_client
    keys = Keys(stream=names.stream, group=names.group, dlq=names.dlq)
    result = await append_order(client, keys, envelope.encode({"orderId": 1, "product": "x", "quantity": 1, "userId": 2}),
                                "1", scripts=Scripts(client))
    assert await client.xlen(names.stream) == 1 and result.entry_id
    await client.set(keys.trim_floor, "0-1")
    assert await client.get(keys.trim_floor) == "0-1"
    for command in (("FLUSHALL",), ("KEYS", "*"), ("GET", "someone-else:orders"), ("CONFIG", "GET", "dir"),
                    ("XADD", "other-stream", "*", "a", "b"), ("ACL", "WHOAMI")):
        with pytest.raises(NoPermissionError, match="no permissions"):  # NOPERM (redis-py drops the code)
            await client.execute_command(*command)
    assert sorted(redis_server.denials(user)) == sorted([
        "command flushall", "command keys", "key someone-else:orders", "command config|get", "key other-stream",
        "command acl|whoami"])


async def test_a_script_cannot_reach_keys_outside_the_patterns(app_client):
    client, _ = app_client
    with pytest.raises(NoPermissionError):
        await client.eval("return redis.call('GET', KEYS[1])", 1, "someone-else:orders")


async def test_a_wrong_ca_fails_at_connect_with_a_verification_error(redis_server, tmp_path):
    other = trustme.CA()
    other.cert_pem.write_to_path(str(tmp_path / "other-ca.crt"))
    files = {**redis_server.tls_files, "ssl_ca_certs": str(tmp_path / "other-ca.crt")}
    client = create_redis(redis_server.url, socket_timeout_s=5, retries=0, **files)
    try:
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.ping()
    finally:
        await client.aclose()


async def test_without_a_client_certificate_or_without_tls_the_server_refuses(redis_server):
    no_cert = aioredis.Redis.from_url(redis_server.url, ssl_ca_certs=redis_server.tls_files["ssl_ca_certs"],
                                      socket_timeout=5)
    plain = aioredis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=2)
    try:
        with pytest.raises(RedisConnectionError):
            await no_cert.ping()
        with pytest.raises(RedisConnectionError):
            await plain.ping()
    finally:
        await no_cert.aclose()
        await plain.aclose()


async def test_the_default_user_is_off(redis_server):
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port, ssl=True, socket_timeout=5, **redis_server.tls_files)
    try:
        with pytest.raises((AuthenticationError, NoPermissionError, RedisConnectionError)) as info:
            await client.ping()
        assert "NOAUTH" in str(info.value) or "Authentication" in str(info.value) or "auth" in str(info.value).lower()
    finally:
        await client.aclose()


@pytest.mark.parametrize(("case", "line"), [
    ("missing cert", "python -m consumer: invalid setting REDIS_TLS_CERT_FILE='/nonexistent/tls.crt': no such file\n"),
    ("cert without key", "python -m consumer: invalid settings: REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together; "
                         "REDIS_TLS_KEY_FILE is unset\n"),
])
def test_a_bad_cert_setting_exits_2_with_one_line_before_connecting(redis_server, case, line):
    files = redis_server.tls_env
    full = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_TLS_")}
    full.update(REDIS_URL=redis_server.url, REDIS_TLS_CA_FILE=files["REDIS_TLS_CA_FILE"], HEALTH_PORT="0")
    if case == "missing cert":
        full.update(REDIS_TLS_CERT_FILE="/nonexistent/tls.crt", REDIS_TLS_KEY_FILE=files["REDIS_TLS_KEY_FILE"])
    else:
        full.update(REDIS_TLS_CERT_FILE=files["REDIS_TLS_CERT_FILE"])
    proc = subprocess.run([sys.executable, "-m", "consumer"], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=30)
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, line, "")


async def test_the_operator_reaches_a_rediss_target_with_its_own_tls_files(app_client, redis_server, names, monkeypatch):
    from autoscaler.handlers import Runtime
    from autoscaler.settings import AutoscalerSettings

    for var, value in redis_server.tls_env.items():
        monkeypatch.setenv(var, value)
    runtime = Runtime(settings=AutoscalerSettings(redis_url=redis_server.url), api=None, metrics=None)  # type: ignore[arg-type]
    _, user = app_client
    target = redis_server.user_url(user, "strict-secret")  # the URL a StreamAutoscaler's Secret holds
    try:
        client = runtime.redis_for(target)
        assert await client.ping() is True
        assert await client.xlen(names.stream) == 0
        plain = runtime.redis_for("redis://127.0.0.1:1/0")  # a plain target gets no TLS options
        assert "ssl_ca_certs" not in plain.connection_pool.connection_kwargs
    finally:
        for c in runtime.clients.values():
            await c.aclose()


async def test_a_reclaim_pass_needs_nothing_beyond_the_documented_user(app_client, redis_server, names, r):
    """The suite's other tests add the test handlers' commands (MULTI, EXEC, ...) to the user,
    which would hide a component sending one of them itself. Here a whole reclaimer pass (the
    back-off claim, the sweep, consumer hygiene, trimming) runs as exactly ``rules()`` with a
    handler that sends nothing: every step completes and Redis refuses nothing."""
    from reclaimer.reclaim import Reclaimer
    from reclaimer.settings import ReclaimerSettings
    from streamcore.streams import ensure_group

    client, user = app_client
    keys = Keys(stream=names.stream, group=names.group, dlq=names.dlq)
    await ensure_group(r, keys)
    for i in range(30):
        await r.xadd(keys.stream, envelope.encode({"orderId": i, "product": "x", "quantity": 1, "userId": 2}))
    await r.xreadgroup(keys.group, "pod-gone", {keys.stream: ">"})
    settings = ReclaimerSettings(**names.settings(), handler="bench.noop:handle", claim_idle_ms=1, redis_tls_ca_file=None,
                                 redis_tls_cert_file=None, redis_tls_key_file=None,
                                 reclaim_page_size=7, consumer_inactive_ttl_ms=1)
    rec = Reclaimer(settings, client)
    rec.backoff_scan_rows = 10  # step 1 claims 10, the sweep the other 20
    await asyncio.sleep(0.05)  # idle past the back-off ceiling of 1 ms
    summary = await rec.run_once()
    assert (summary.claimed, summary.processed, summary.consumers_removed) == (30, 30, 1)
    assert (await r.xpending(keys.stream, keys.group))["pending"] == 0
    assert redis_server.denials(user) == []
