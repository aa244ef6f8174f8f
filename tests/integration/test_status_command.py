"""``orderstream status`` against a live producer on real Redis (issue 14): the overview the
console's first page shows, as text, from the HTTP API."""

from __future__ import annotations

import asyncio
import sys

from tests.integration.consumer_support import ROOT
from tests.integration.producer_support import api, keys, make_api  # noqa: F401 (fixtures)


async def status(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "streamcore.cli", "status", *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_status_prints_groups_consumers_oldest_pending_and_dead_letters(api, r, keys):
    for i in range(3):
        resp = await api.post("/orders", json={"orderId": f"s-{i}", "product": "p", "quantity": 1, "userId": 1})
        assert resp.status == 201
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=2)
    await r.xadd(keys.dlq, {"data": '{"orderId": "s-9"}', "source_id": "1-1", "order_id": "s-9",
                            "reason": "max_deliveries", "deliveries": "5", "error": "ValueError: out of stock"},
                 id="5-0")
    code, out, err = await status("--url", str(api.make_url("/")))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    last_id = (await r.xinfo_stream(keys.stream))["last-generated-id"]
    assert lines[1:5] == [f"stream {keys.stream}: 3 entries, last {last_id}, lost 0",
                          f"dead letters ({keys.dlq}): 1",
                          f"configured group {keys.group}: ok",
                          ""]
    head, row = lines[5].split(), lines[6].split()
    assert head == ["GROUP", "STATE", "LAG", "PENDING", "OLDEST", "PENDING", "CONSUMERS"]
    assert row[:4] + row[5:] == [keys.group, "ok", "1", "2", "1"]
    assert row[4].endswith("ms") or row[4].endswith("s")  # the age of the oldest pending order
    assert lines[8].split() == ["CONSUMERS", "OF", keys.group, "PENDING", "IDLE", "INACTIVE"]
    assert lines[9].split()[:2] == ["pod-a", "2"]
    assert lines[11].split() == ["DEAD", "LETTERS", "(oldest", "1", "of", "1)", "ORDER", "REASON", "DELIVERIES", "ERROR"]
    assert lines[12].split() == ["5-0", "s-9", "max_deliveries", "5", "ValueError:", "out", "of", "stock"]


async def test_status_names_the_producer_it_cannot_reach_and_exits_1():
    code, out, err = await status("--url", "http://127.0.0.1:9")
    assert (code, out) == (1, "")
    assert err.startswith("orderstream status: cannot reach the producer at http://127.0.0.1:9")
    assert len(err.splitlines()) == 1
