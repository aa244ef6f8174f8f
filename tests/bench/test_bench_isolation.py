"""The bench measures only its own Redis: its processes do not inherit our components' settings
from the shell that runs it, and it empties no Redis but the one it started."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from bench import run

ONLY_SERVER_KINDS = ("redis",)

pytestmark = pytest.mark.integration


def test_measured_processes_get_no_component_setting_from_the_shell(monkeypatch):
    monkeypatch.setenv("REDIS_SENTINELS", "127.0.0.1:26379")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "orders")
    monkeypatch.setenv("stream_partitions", "3")  # settings are read case-insensitively
    monkeypatch.setenv("REDIS_ANYTHING_NEW", "x")
    monkeypatch.setenv("BENCH_UNRELATED", "kept")
    env = run.env_for("redis://127.0.0.1:1/0", STREAM_NAME="s")
    assert not {"REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "stream_partitions", "REDIS_ANYTHING_NEW"} & env.keys()
    assert (env["REDIS_URL"], env["STREAM_NAME"], env["BENCH_UNRELATED"]) == ("redis://127.0.0.1:1/0", "s", "kept")


async def test_fresh_redis_refuses_a_server_the_bench_did_not_start(r, redis_url, names):
    await r.set(names.stream, "kept")
    with pytest.raises(RuntimeError, match="not the redis-server this bench started"):
        await run.fresh_redis(redis_url)
    assert await r.get(names.stream) == "kept"


async def test_fresh_redis_empties_the_bench_s_own_server():
    import redis.asyncio as aioredis

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = run.start_redis(Path(tmp), None)
        try:
            await run.wait_redis(url)
            client = aioredis.Redis.from_url(url)
            await client.set("left-behind", "x")
            await run.fresh_redis(url)
            assert await client.dbsize() == 0
            assert (await client.info("persistence"))["aof_rewrite_in_progress"] == 0
            await client.aclose()
        finally:
            run.stop(proc)
