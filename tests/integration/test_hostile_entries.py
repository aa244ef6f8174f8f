"""Issue 9, items 1 and 2: entries written by other tools never take the fleet down — both servers.

* Item 1: an entry whose ``data`` value or a field name is not valid UTF-8 used to crash every
  consumer that read it (UnicodeDecodeError), and the timer task died silently with it. Now it is
  quarantined at once with ``reason=not_utf8``, the original bytes kept, and the good orders
  around it flow.
* Item 2: an entry with no ``data`` field, malformed JSON or JSON that is not an object goes to
  the dead-letter stream at once (delivery 1, not after MAX_DELIVERIES), byte-exact, with its
  reason, and is acknowledged in the same step.
* A background task that raises is logged with its traceback and restarted; one that keeps
  failing turns /healthz unhealthy.
"""

from __future__ import annotations

import logging


from consumer import worker as worker_module
from streamcore.streams import ensure_group
from tests.handlers import applied_key
from tests.integration.consumer_support import ConsumerProcess, keys_for, post, running, wait_for

#: Also against Redis over mutual TLS with the ACL user of streamcore.acl, and against a Redis Cluster
#: with 6 partitions (tests/conftest.py).
EXTRA_SERVER_KINDS = ("tls-acl", "cluster")

#: (kind, raw fields as written by another tool, expected reason)
POISON = [
    ("data value not UTF-8", {b"data": b'{"orderId": "caf\xe9", "product": "\xff\xfe"}', b"order_id": b"caf\xe9"},
     "not_utf8"),
    ("field name not UTF-8", {b"data": b'{"orderId": 91, "product": "x", "quantity": 1, "userId": 1}',
                              b"note\xc3\x28": b"v"}, "not_utf8"),
    ("no data field", {b"order_id": b"92", b"payload": b'{"orderId": 92}'}, "no_data"),
    ("malformed JSON", {b"data": b'{"orderId": 93, "product": ', b"order_id": b"93"}, "not_json"),
    ("JSON not an object", {b"data": b'[93, "not", "an", "order"]', b"order_id": b"94"}, "not_object"),
]


async def _inject(raw, keys) -> dict[str, tuple[dict[bytes, bytes], str]]:
    injected = {}
    for _kind, fields, reason in POISON:
        entry_id = (await raw.xadd(keys.stream, fields)).decode()
        injected[entry_id] = (fields, reason)
    return injected


async def _dlq_by_source(raw, keys) -> dict[str, dict[bytes, bytes]]:
    return {f[b"source_id"].decode(): f for _, f in await raw.xrange(keys.dlq)}


def _assert_quarantined(dlq: dict[str, dict[bytes, bytes]], injected, keys, deliveries: bytes = b"1") -> None:
    assert set(dlq) == set(injected)
    for entry_id, (fields, reason) in injected.items():
        dead = dlq[entry_id]
        for name, value in fields.items():
            assert dead[name] == value, f"{entry_id}: field {name!r} not byte-exact in the dead letter"
        assert dead[b"reason"] == reason.encode()
        assert dead[b"group"] == keys.group.encode()
        assert dead[b"source_stream"] == keys.stream.encode()
        assert dead[b"deliveries"] == deliveries, "poison must be dead-lettered at once, not after retries"


async def test_item1_item2_poison_entries_are_quarantined_at_once_and_good_orders_flow(r, raw, redis_url, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    before = [await post(r, keys, i) for i in range(5)]
    injected = await _inject(raw, keys)
    after = [await post(r, keys, 100 + i) for i in range(5)]
    # claim_idle_ms 2 s, not 200 ms: over TLS an entry waiting for a new pooled connection (handshake
    # and AUTH on a busy machine) can sit idle past 200 ms and be claimed by the other worker, an
    # at-least-once redelivery that would count a second delivery without any retry.
    async with running(redis_url, names, "pod-a", "pod-b", max_deliveries=5, claim_idle_ms=2000) as workers:
        await wait_for(lambda: _all_applied(r, keys, [*range(5), *range(100, 105)]), timeout=15,
                       what="every good order applied")
        await wait_for(lambda: _dlq_len(r, keys, len(POISON)), timeout=15, what="every poison entry quarantined")
        await wait_for(lambda: _no_pending(r, keys), what="everything acknowledged")
        for w in workers:
            assert not w.task.done(), "a worker stopped"
            assert w.home.supervisor.failures == {"timer": 0, "acks": 0}, "a background task died"
            assert w.worker.live()[0] is True
    assert len(before) == len(after) == 5
    _assert_quarantined(await _dlq_by_source(raw, keys), injected, keys)
    # The source entries stay readable in the stream by default (DEAD_LETTER_XDEL=false).
    assert await raw.xlen(keys.stream) == 10 + len(POISON)
    poison = sum(w.worker.metrics.poison.labels("consumer", reason)._value.get()
                 for w in workers for reason in ("not_utf8", "no_data", "not_json", "not_object"))
    assert poison == len(POISON)


async def test_item1_a_consumer_process_reading_non_utf8_keeps_running(r, raw, redis_url, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    proc = ConsumerProcess(redis_url, names, "pod-x")
    try:
        injected = await _inject(raw, keys)
        await post(r, keys, 7)
        await wait_for(lambda: r.get(applied_key(keys.stream, 7)), timeout=20, what="the good order applied")
        await wait_for(lambda: _dlq_len(r, keys, len(POISON)), timeout=15, what="poison quarantined")
        await post(r, keys, 8)
        await wait_for(lambda: r.get(applied_key(keys.stream, 8)), timeout=10, what="an order after the poison")
        assert proc.proc.poll() is None, proc.output()
        log = proc.output()
        assert "Traceback" not in log, log
        for entry_id in injected:
            assert log.count(f"entry {entry_id} is poison") == 1, log  # logged once, with its ID
    finally:
        proc.close()
    _assert_quarantined(await _dlq_by_source(raw, keys), injected, keys)


async def test_item2_dead_letter_xdel_policy_deletes_the_source_in_the_same_step(r, raw, redis_url, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    injected = await _inject(raw, keys)
    good = await post(r, keys, 5)
    async with running(redis_url, names, "pod-a", dead_letter_xdel=True):
        await wait_for(lambda: _dlq_len(r, keys, len(POISON)), timeout=15, what="poison quarantined")
        await wait_for(lambda: _no_pending(r, keys), what="everything acknowledged")
    assert [i for i, _ in await r.xrange(keys.stream)] == [good]
    _assert_quarantined(await _dlq_by_source(raw, keys), injected, keys)


async def test_a_background_task_that_raises_is_logged_restarted_and_reported(r, redis_url, names, monkeypatch, caplog):
    keys = keys_for(names)
    calls = {"n": 0}
    real = worker_module.claim_due

    async def flaky_claim_due(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ValueError("a bug in the claim pass")
        return await real(*args, **kwargs)

    monkeypatch.setattr(worker_module, "claim_due", flaky_claim_due)
    caplog.set_level(logging.ERROR, logger="streamcore.lifecycle")
    async with running(redis_url, names, "pod-a", claim_interval_ms=50) as (w,):
        await wait_for(lambda: _calls_at_least(calls, 4), timeout=10, what="the timer restarted and claiming again")
        await r.delete(keys.heartbeat("pod-a"))
        await wait_for(lambda: r.exists(keys.heartbeat("pod-a")), timeout=5, what="the restarted timer's heartbeat")
        await post(r, keys, 1)
        await wait_for(lambda: r.get(applied_key(keys.stream, 1)), timeout=10, what="processing goes on")
        assert w.worker.metrics.task_restarts.labels("consumer", "timer")._value.get() == 2
        assert w.worker.live()[0] is True
    failures = [rec for rec in caplog.records if "background task timer failed" in rec.getMessage()]
    assert len(failures) == 2 and all(rec.exc_info for rec in failures), "logged with its traceback"


async def test_a_background_task_that_keeps_failing_makes_healthz_unhealthy(redis_url, names, monkeypatch):
    async def broken(*args, **kwargs):
        raise ValueError("always broken")

    monkeypatch.setattr(worker_module, "claim_due", broken)
    async with running(redis_url, names, "pod-a", claim_interval_ms=50) as (w,):
        await wait_for(lambda: _not_live(w.home), timeout=10, what="liveness failing")
        ok, details = w.home.live()
        assert ok is False and w.worker.live()[0] is False  # the process's /healthz (all partitions) too
        assert details["tasks_failing"]["timer"]["last_error"] == "ValueError: always broken"


async def _calls_at_least(calls, n):
    return calls["n"] >= n


async def _not_live(worker):
    return not worker.live()[0]


async def _all_applied(r, keys, order_ids):
    return all([await r.get(applied_key(keys.stream, i)) == "1" for i in order_ids])


async def _dlq_len(r, keys, n):
    return await r.xlen(keys.dlq) >= n


async def _no_pending(r, keys):
    return (await r.xpending(keys.stream, keys.group))["pending"] == 0
