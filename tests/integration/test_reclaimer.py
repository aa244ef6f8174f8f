"""``python -m reclaimer`` as the CronJob runs it: one pass, one summary line, meaningful exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from streamcore.streams import ensure_group
from tests.handlers import applied_key
from tests.integration.consumer_support import HANDLER, ROOT, keys_for, pending_rows, post, wait_idle
from tests.servers import free_port


async def run_reclaimer(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    full = {**os.environ, "HANDLER": HANDLER, "LOG_LEVEL": "INFO", **env}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "reclaimer", *args, cwd=ROOT, env=full,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(), err.decode()


async def test_one_pass_processes_a_dead_consumers_orders_and_prints_one_summary_line(r, redis_url, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    ids = [await post(r, keys, i) for i in range(3)]
    await r.xreadgroup(keys.group, "pod-gone", {keys.stream: ">"}, count=3)
    await r.xdel(keys.stream, ids[2])
    await wait_idle(r, keys, 250, 3)
    code, out, err = await run_reclaimer({"REDIS_URL": redis_url, "CLAIM_IDLE_MS": "200",
                                          "CONSUMER_INACTIVE_TTL_MS": "0", **names.env()})
    assert code == 0, err
    assert out.splitlines() == ["reclaim: claimed=2 processed=2 failed=0 dead_lettered=0 gone=1 consumers_removed=1 "
                                "trimmed=0 lost=0"]
    assert await pending_rows(r, keys) == {}
    assert [await r.get(applied_key(keys.stream, i)) for i in range(2)] == ["1", "1"]
    assert '"redis_url":"**********"' in err  # effective settings logged, the URL hidden


async def test_missing_stream_is_a_successful_empty_pass(redis_url, names):
    code, out, err = await run_reclaimer({"REDIS_URL": redis_url, **names.env()})
    assert code == 0, err
    assert out.strip() == "reclaim: claimed=0 processed=0 failed=0 dead_lettered=0 gone=0 consumers_removed=0 trimmed=0 lost=0"


async def test_unreachable_redis_exits_non_zero(names):
    code, out, err = await run_reclaimer({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                                          "REDIS_SOCKET_TIMEOUT_S": "2", **names.env()})
    assert code == 1
    assert out == ""
    assert "reclaim pass failed" in err


async def test_loop_mode_runs_passes_until_sigterm(redis_url, names):
    full = {**os.environ, "HANDLER": HANDLER, "REDIS_URL": redis_url, "RECLAIM_INTERVAL_SECONDS": "0.2", **names.env()}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "reclaimer", "--loop", cwd=ROOT, env=full,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        lines = [await asyncio.wait_for(proc.stdout.readline(), 20) for _ in range(3)]
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert [line.decode().split(":")[0] for line in lines] == ["reclaim"] * 3
    assert code == 0
