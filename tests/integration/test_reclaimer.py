"""``python -m reclaimer`` as the CronJob runs it: one pass, one summary line, meaningful exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time

import pytest

from streamcore import envelope
from streamcore.claiming import autoclaim_sweep, ceiling_ms
from streamcore.ids import next_id
from streamcore.streams import ensure_group
from tests.handlers import applied_key, calls_key, done_key
from tests.integration.consumer_support import (HANDLER, ROOT, keys_for, pending_ids, pending_rows, per_partition, post,
                                                reclaimer_for, wait_for, wait_idle)
from tests.servers import RedisServer, free_port, server_binary

#: Also run against Redis over mutual TLS as the least-privilege ACL user, and against a Redis
#: Cluster with 6 partitions (tests/conftest.py).
EXTRA_SERVER_KINDS = ("tls-acl", "cluster")

#: The largest entry ID (spelled out: older code has no name for it).
MAX_ID = "18446744073709551615-18446744073709551615"


def sample(registry, name: str) -> float | None:
    return registry.get_sample_value(name, {"component": "reclaimer"})


async def run_reclaimer(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """``python -m reclaimer`` with ``env``; (exit code, stdout, stderr). A pass that has not
    ended after 30 s is killed and the test fails with its log (written to a file, so a killed
    pass still shows what it did)."""
    full = {**os.environ, "HANDLER": HANDLER, "LOG_LEVEL": "INFO", **env}
    with tempfile.TemporaryFile() as log:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "reclaimer", *args, cwd=ROOT, env=full,
                                                    stdout=asyncio.subprocess.PIPE, stderr=log)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            log.seek(0)
            raise AssertionError("the reclaimer pass did not end within 30 s; its log:\n"
                                 + log.read().decode(errors="replace")[-8000:]) from None
        log.seek(0)
        return proc.returncode, out.decode(), log.read().decode()


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
    # The pass recorded when it ended (ms), for the "reclaimer not running" alert.
    assert abs(int(await r.get(keys.reclaimer_last_pass)) - time.time() * 1000) < 30_000


async def test_missing_stream_is_a_successful_empty_pass(r, redis_url, names):
    code, out, err = await run_reclaimer({"REDIS_URL": redis_url, **names.env()})
    assert code == 0, err
    assert out.strip() == "reclaim: claimed=0 processed=0 failed=0 dead_lettered=0 gone=0 consumers_removed=0 trimmed=0 lost=0"
    assert await r.get(keys_for(names).reclaimer_last_pass) is not None  # a pass that found nothing still ran


async def test_unreachable_redis_is_retried_for_reclaim_retry_seconds_then_exits_non_zero(names):
    started = time.monotonic()
    code, out, err = await run_reclaimer({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "LOG_FORMAT": "text",
                                          "REDIS_SOCKET_TIMEOUT_S": "2", "RECLAIM_RETRY_SECONDS": "1.2", **names.env()})
    elapsed = time.monotonic() - started
    assert (code, out) == (1, "")
    retries = [line for line in err.splitlines() if "reclaim: Redis unavailable (ConnectionError" in line]
    # The client's own connection retries take part of the 1.2 s; at least one back-off of ours.
    assert 1 <= len(retries) <= 3, err
    failed = [line for line in err.splitlines() if "reclaim pass failed" in line]
    assert len(failed) == 1 and "Redis unavailable for 1 s (RECLAIM_RETRY_SECONDS)" in failed[0], err
    assert "Traceback" not in err  # an outage is not a crash
    assert elapsed >= 1.2


async def test_a_pass_that_starts_before_redis_completes_once_redis_is_up(names, tmp_path):
    """The CronJob's Job may start while Redis (re)starts, e.g. right after helm install: it
    retries instead of failing its pod."""
    binary = server_binary("redis")
    if binary is None:
        pytest.skip("redis-server not on PATH")
    server = RedisServer("redis", binary, tmp_path / "late")
    env = {**os.environ, "HANDLER": HANDLER, "REDIS_URL": server.url, "LOG_FORMAT": "text",
           "RECLAIM_RETRY_SECONDS": "20", **names.env()}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "reclaimer", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        seen = []
        while not any("reclaim: Redis unavailable" in line for line in seen):
            line = await asyncio.wait_for(proc.stderr.readline(), 15)
            assert line, "the reclaimer ended without retrying: " + "".join(seen)
            seen.append(line.decode())
        server.start()  # while the reclaimer backs off
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, "".join(seen) + err.decode()
        assert out.decode().startswith("reclaim: claimed=0 "), out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        server.stop(kill=True)


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


# --- issue 9 item 5: the largest ID, an exact RECLAIM_LIMIT, memory bounded by the page ---

def _order(i: int) -> dict[str, str]:
    return envelope.encode({"orderId": i, "product": "Laptop", "quantity": 2, "userId": 42})


async def dead_consumer_pel(r, keys, n: int, *, consumer: str = "pod-gone", ids: list[str] | None = None) -> list[str]:
    """XADD ``n`` orders (pipelined; with the given ``ids`` when set) and read them all as
    ``consumer``, which never acks: a dead consumer's PEL. Returns the entry IDs."""
    await ensure_group(r, keys)
    added: list[str] = []
    for start in range(0, n, 500):
        async with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + 500)):
                pipe.xadd(keys.stream, _order(i), id=ids[i] if ids else "*")
            added += await pipe.execute()
    while (got := await r.xreadgroup(keys.group, consumer, {keys.stream: ">"}, count=1000)) and got[0][1]:
        pass
    assert (await r.xpending(keys.stream, keys.group))["pending"] == n
    return added


async def wait_all_idle(r, keys, last_id: str, ms: int) -> None:
    """Wait until the newest pending entry (so every one) has been idle ``ms``."""
    async def check():
        return await r.xpending_range(keys.stream, keys.group, last_id, last_id, 1, idle=ms)
    await wait_for(check, what=f"PEL idle {ms}ms")


async def owners(r, keys) -> dict[str, int]:
    """consumer -> pending entries (XPENDING summary)."""
    summary = await r.xpending(keys.stream, keys.group)
    return {c["name"]: int(c["pending"]) for c in summary["consumers"] or []}


async def test_group_at_the_largest_id_is_a_pass_like_any_other(r, redis_url, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    ids = [await post(r, keys, i) for i in range(3)]
    await r.xreadgroup(keys.group, "pod-gone", {keys.stream: ">"}, count=2)
    await r.xgroup_setid(keys.stream, keys.group, MAX_ID)  # an operator skipping everything
    await wait_idle(r, keys, 250, 2)
    code, out, err = await run_reclaimer({"REDIS_URL": redis_url, "CLAIM_IDLE_MS": "200", "STREAM_MAXLEN": "1",
                                          "CONSUMER_INACTIVE_TTL_MS": "0", **names.env()})
    assert code == 0, err
    assert out.splitlines() == ["reclaim: claimed=2 processed=2 failed=0 dead_lettered=0 gone=0 consumers_removed=1 "
                                "trimmed=0 lost=0"]
    assert [await r.get(applied_key(keys.stream, i)) for i in range(3)] == ["1", "1", None]
    # Retention (1 entry) decides the floor: the group at the largest ID needs nothing.
    assert await r.get(keys.trim_floor) == ids[2]
    assert "will never be delivered" in err and keys.group in err


async def test_group_at_the_largest_id_on_an_empty_stream_never_trims_new_orders(r, redis_url, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    for i in range(2):
        await post(r, keys, i)
    await r.xgroup_setid(keys.stream, keys.group, MAX_ID)
    await r.xtrim(keys.stream, maxlen=0, approximate=False)
    last_generated = (await r.xinfo_stream(keys.stream))["last-generated-id"]
    code, out, err = await run_reclaimer({"REDIS_URL": redis_url, **names.env()})
    assert code == 0, err
    # The largest ID as a floor would make every XADD MINID ~ floor drop the order it adds.
    assert await r.get(keys.trim_floor) == next_id(last_generated)
    new = await post(r, keys, 2)
    assert [e[0] for e in await r.xrange(keys.stream)] == [new]


async def test_pending_entry_at_the_largest_id_ends_the_scan_instead_of_failing(r, names):
    keys = keys_for(names)
    ms = int(time.time() * 1000)
    # 99 ordinary entries and one at the largest ID: the scan's first XPENDING page is full
    # (100 rows) and ends at it, so a next page would start after the largest ID.
    ids = [f"{ms}-{i}" for i in range(1, 100)] + [MAX_ID]
    await dead_consumer_pel(r, keys, 100, ids=ids)
    await wait_all_idle(r, keys, MAX_ID, ceiling_ms(20))
    rec = reclaimer_for(r, names, claim_idle_ms=20, consumer_inactive_ttl_ms=0)
    summary = await rec.run_once()
    assert (summary.claimed, summary.processed, summary.failed, summary.gone) == (100, 100, 0, 0)
    assert await owners(r, keys) == {}
    assert await r.get(applied_key(keys.stream, 99)) == "1"


async def test_one_pass_claims_exactly_reclaim_limit_and_leaves_the_rest_pending(r, redis_url, names):
    keys = keys_for(names)
    ids = await dead_consumer_pel(r, keys, 1500)
    await wait_all_idle(r, keys, ids[-1], ceiling_ms(20))  # due for the back-off claim and the sweep
    env = {"REDIS_URL": redis_url, "CLAIM_IDLE_MS": "20", "RECLAIM_LIMIT": "1000", **names.env()}
    code, out, err = await run_reclaimer(env)
    assert code == 0, err
    assert out.splitlines() == ["reclaim: claimed=1000 processed=1000 failed=0 dead_lettered=0 gone=0 "
                                "consumers_removed=0 trimmed=0 lost=0"]
    assert await owners(r, keys) == {"pod-gone": 500}
    assert await pending_ids(r, keys) == ids[1000:1500]
    assert [await r.get(applied_key(keys.stream, i)) for i in (0, 999, 1000)] == ["1", "1", None]
    # The next pass takes the rest, then the dead consumer owns nothing and is removed.
    await wait_all_idle(r, keys, ids[-1], ceiling_ms(20))
    code, out, err = await run_reclaimer({**env, "CONSUMER_INACTIVE_TTL_MS": "0"})
    assert code == 0, err
    assert out.splitlines() == ["reclaim: claimed=500 processed=500 failed=0 dead_lettered=0 gone=0 "
                                "consumers_removed=1 trimmed=0 lost=0"]
    assert await owners(r, keys) == {}


async def test_limit_is_exact_when_the_back_off_claim_and_the_sweep_share_it(r, names):
    keys = keys_for(names)
    ids = await dead_consumer_pel(r, keys, 1500)
    await wait_all_idle(r, keys, ids[-1], ceiling_ms(20))
    rec = reclaimer_for(r, names, claim_idle_ms=20, reclaim_limit=1000, reclaim_page_size=100)
    for each in per_partition(rec):
        each.backoff_scan_rows = 150  # step 1 stops after 150 rows; the sweep goes on from 0-0
    summary = await rec.run_once()
    assert (summary.claimed, summary.processed) == (1000, 1000)
    assert sample(rec.registry, "orderstream_entries_claimed_total") == 1000
    assert await pending_ids(r, keys) == ids[1000:1500]
    assert await owners(r, keys) == {"pod-gone": 500}


async def test_autoclaim_sweep_cuts_its_last_page_to_the_limit(r, names):
    keys = keys_for(names)
    ids = await dead_consumer_pel(r, keys, 400)
    out = await autoclaim_sweep(r, keys, "reclaimer", min_idle_ms=0, count=100, limit=250)
    assert [c.entry_id for c in out.claimed] == ids[:250]
    assert {c.deliveries for c in out.claimed} == {2}
    assert await owners(r, keys) == {"reclaimer": 250, "pod-gone": 150}


async def test_sweep_reads_delivery_counts_per_page_around_its_own_entries(r, names):
    """The sweep's delivery counts come from one XPENDING per page over the page's ID range,
    which also holds entries the reclaimer already owns (not idle, not swept): they are skipped,
    and an entry swept past MAX_DELIVERIES is dead-lettered with its count before the sweep."""
    keys = keys_for(names)
    ids = await dead_consumer_pel(r, keys, 8)
    counts = [1, 5, 2, 5, 1, 3, 5, 1]
    for entry_id, n in zip(ids, counts):
        await r.xclaim(keys.stream, keys.group, "pod-gone", 0, [entry_id], retrycount=n)
    await r.xclaim(keys.stream, keys.group, "reclaimer", 0, [ids[2], ids[5]], retrycount=4)  # ours, busy
    await wait_all_idle(r, keys, ids[-1], ceiling_ms(100))
    await r.xclaim(keys.stream, keys.group, "reclaimer", 0, [ids[2], ids[5]], justid=True)  # lease renewed
    rec = reclaimer_for(r, names, claim_idle_ms=100, reclaim_page_size=2)
    for each in per_partition(rec):
        each.backoff_scan_rows = 0  # the sweep alone
    summary = await rec.run_once()
    assert (summary.claimed, summary.processed, summary.dead_lettered) == (6, 3, 3)
    dlq = {f["source_id"]: f["deliveries"] for _, f in await r.xrange(keys.dlq)}
    assert dlq == {ids[1]: "5", ids[3]: "5", ids[6]: "5"}
    assert await pending_rows(r, keys) == {ids[2]: ("reclaimer", 4), ids[5]: ("reclaimer", 4)}


async def _watch_the_pass(r, keys, rec, orders: dict[str, int]) -> tuple[object, dict[int, float], list[int]]:
    """Run one pass of ``rec`` and poll the reclaimer's PEL rows every 20 ms meanwhile. Returns
    the summary; for each order seen owned by the pass before its handler started, how long (s)
    it was seen so; and the idle times (ms) seen of entries it owned already handled (not yet
    acked)."""
    first_seen: dict[int, float] = {}
    last_seen: dict[int, float] = {}
    handled: list[int] = []
    run = asyncio.ensure_future(rec.run_once())
    deadline = time.monotonic() + 20
    while not run.done() and time.monotonic() < deadline:
        for row in await r.xpending_range(keys.stream, keys.group, "-", "+", 10, consumername="reclaimer"):
            order = orders[row["message_id"]]
            if await r.get(done_key(keys.stream, order)) is not None:
                handled.append(int(row["time_since_delivered"]))
            elif await r.get(calls_key(keys.stream, order)) is None:
                now = time.monotonic()
                first_seen.setdefault(order, now)
                last_seen[order] = now
        await asyncio.sleep(0.02)
    waited = {order: last_seen[order] - first_seen[order] for order in first_seen}
    return await asyncio.wait_for(run, 5), waited, handled


async def _slow_and_fast_pel(r, keys, sleeps: list[float]) -> dict[str, int]:
    """A dead consumer's PEL of orders 900, 901, ... sleeping ``sleeps`` s each when handled,
    idle past the back-off ceiling of CLAIM_IDLE_MS=150; entry ID -> orderId."""
    await ensure_group(r, keys)
    orders = {await post(r, keys, 900 + i, sleep_s=sleep): 900 + i for i, sleep in enumerate(sleeps)}
    await r.xreadgroup(keys.group, "pod-gone", {keys.stream: ">"})
    await wait_all_idle(r, keys, list(orders)[-1], ceiling_ms(150))
    return orders


@pytest.mark.parametrize("redis_server", ["redis"], indirect=True)  # the pass's own scheduling: the same on every server
@pytest.mark.parametrize("path", ["back-off claim", "sweep"])
async def test_no_page_is_claimed_before_the_page_before_it_is_handled(r, names, path):
    """A claim counts a delivery of each entry (XCLAIM, XAUTOCLAIM). A page claimed ahead while
    a slow one runs would hold its entries one delivery further without any handler seeing them,
    and a pass killed then would have spent that delivery: an order one try from MAX_DELIVERIES
    would be dead-lettered untried. So whatever the pages before took (here fast, then slow), no
    entry is seen owned by the pass and not started for longer than the instant between its
    claim and its handler's first call."""
    keys = keys_for(names)
    orders = await _slow_and_fast_pel(r, keys, [0, 0, 0.6, 0, 0])
    rec = reclaimer_for(r, names, claim_idle_ms=150, reclaim_page_size=1, concurrency=1)
    if path == "sweep":
        for each in per_partition(rec):
            each.backoff_scan_rows = 0
    summary, waited, _ = await _watch_the_pass(r, keys, rec, orders)
    assert (summary.claimed, summary.processed) == (5, 5)
    assert all(seconds < 0.3 for seconds in waited.values()), waited


@pytest.mark.parametrize("redis_server", ["redis"], indirect=True)  # the pass's own scheduling: the same on every server
async def test_entries_handled_early_keep_their_lease_until_the_page_is_acked(r, names):
    """A page is acked in one XACK once its slowest entry is done; the entries handled before
    it stay the pass's, leases renewed, so that no consumer's claim pass takes them meanwhile and
    handles them a second time."""
    keys = keys_for(names)
    orders = await _slow_and_fast_pel(r, keys, [0, 0, 0.6])
    rec = reclaimer_for(r, names, claim_idle_ms=150, reclaim_page_size=3, concurrency=3)
    summary, _, handled = await _watch_the_pass(r, keys, rec, orders)
    assert (summary.claimed, summary.processed) == (3, 3)
    assert len(handled) >= 10, "no handled entry was seen waiting for the page's XACK"
    assert max(handled) < 270, sorted(handled)[-5:]


@pytest.mark.parametrize("path", ["back-off claim", "sweep"])
async def test_dead_letter_xdel_removes_what_the_reclaimer_dead_letters_from_the_stream(r, names, path):
    """DEAD_LETTER_XDEL=true holds for the reclaimer's three ways to dead-letter: an entry at
    MAX_DELIVERIES (step 1's claim_due, or step 2's sweep after XAUTOCLAIM counted one more) and
    a poison entry its runner quarantines. Good entries stay in the stream, the PEL empties."""
    keys = keys_for(names)
    ids = await dead_consumer_pel(r, keys, 3)
    poison = await r.xadd(keys.stream, {"data": b"\xff\xfe not utf-8"})
    await r.xreadgroup(keys.group, "pod-gone", {keys.stream: ">"})
    await r.xclaim(keys.stream, keys.group, "pod-gone", 0, [ids[1]], retrycount=2)
    await wait_all_idle(r, keys, poison, ceiling_ms(100))
    rec = reclaimer_for(r, names, claim_idle_ms=100, max_deliveries=2, dead_letter_xdel=True)
    if path == "sweep":
        for each in per_partition(rec):
            each.backoff_scan_rows = 0
    summary = await rec.run_once()
    # claim_due dead-letters an entry at the limit without claiming it; the sweep claimed it first.
    claimed = 3 if path == "back-off claim" else 4
    assert (summary.claimed, summary.processed, summary.dead_lettered) == (claimed, 2, 2)
    reasons = {f["source_id"]: f["reason"] for _, f in await r.xrange(keys.dlq)}
    assert reasons == {poison: "not_utf8", ids[1]: "max_deliveries"}
    assert [i for i, _ in await r.xrange(keys.stream)] == [ids[0], ids[2]]
    assert await pending_rows(r, keys) == {}


@pytest.mark.parametrize("redis_server", ["redis"], indirect=True)  # the pass's own scheduling: the same on every server
async def test_a_failed_page_ends_the_pass_with_its_own_error_after_the_previous_xack(r, names):
    """A page's XACK goes out while the next page is claimed and handled. When that next page
    fails, the XACK is let finish (the handled page is acked), the pages are closed, and the pass
    ends with the page's own error: here a transient ConnectionError, which `python -m
    reclaimer` retries."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from reclaimer.reclaim import Summary
    from streamcore.claiming import ClaimedEntry

    keys = keys_for(names)
    ids = await dead_consumer_pel(r, keys, 2)
    [rec] = [each for each in per_partition(reclaimer_for(r, names)) if each.keys.stream == keys.stream]
    closed = []

    async def pages():
        try:
            yield [ClaimedEntry(ids[0], {}, 1)], 0
            yield [ClaimedEntry(ids[1], {}, 1)], 0
        finally:
            closed.append(True)

    async def handle_page(work, s, held):
        if work[0].entry_id == ids[1]:
            raise RedisConnectionError("connection lost while handling a page")
        return [work[0].entry_id]

    rec._handle_page = handle_page
    held: set[str] = set()
    with pytest.raises(RedisConnectionError, match="connection lost"):
        await rec._handle_pages(pages(), Summary(), held)
    assert closed == [True]
    assert await pending_ids(r, keys) == [ids[1]]  # the first page was acked, the failed one stays pending
    assert held == {ids[1]}  # the pass's renewer keeps it until the pass ends
