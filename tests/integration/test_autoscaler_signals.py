"""Autoscaler signals against real servers (Redis 7.0 and Valkey): cases C04, C17-C20."""
from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from autoscaler.policy import History, PolicySpec, ScalingRules, decide
from autoscaler.signals import SignalReader

pytestmark = pytest.mark.timeout(30)


async def xadd_many(r, stream: str, n: int) -> list[str]:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {'data': f'{{"orderId": "o{i}"}}'})
    return await pipe.execute()


async def test_missing_stream_and_group_read_sensibly(r, names):
    """C11: before any order or group exists the reader answers, it does not fail."""
    reader = SignalReader(r, [(names.stream, names.group)])
    signals = await reader.read(live_consumers=set())
    assert signals.reachable and signals.backlog == 0 and signals.lag_exact
    assert signals.streams[0].lag_source == 'no-stream'

    await xadd_many(r, names.stream, 3)  # orders accepted before any consumer made the group
    signals = await reader.read(live_consumers=set())
    (s,) = signals.streams
    assert (s.stream_exists, s.group_exists, s.lag, s.lag_source, signals.backlog) == (True, False, 3, 'no-group', 3)


async def test_backlog_is_lag_plus_live_pending(r, names):
    await xadd_many(r, names.stream, 10)
    await r.xgroup_create(names.stream, names.group, '0')
    await r.xreadgroup(names.group, 'pod-a', {names.stream: '>'}, count=3)
    await r.xreadgroup(names.group, 'pod-b', {names.stream: '>'}, count=2)

    signals = await SignalReader(r, [(names.stream, names.group)]).read(live_consumers={'pod-a'})
    (s,) = signals.streams
    assert (s.lag, s.lag_source, s.lag_exact) == (5, 'xinfo', True)
    assert (s.pending, s.live_pending, s.dead_pending) == (5, 3, 2)
    assert signals.backlog == 5 + 3
    assert signals.dead_pending == 2
    assert {c.name: (c.pending, c.live) for c in s.consumers} == {'pod-a': (3, True), 'pod-b': (2, False)}

    # Without a live set (unknown), every pending entry is treated as live: the safe side.
    unknown = await SignalReader(r, [(names.stream, names.group)]).read(live_consumers=None)
    assert (unknown.backlog, unknown.dead_pending) == (10, 0)


async def test_c17_lag_after_xtrim_is_clamped_to_the_truth(r, names, redis_server):
    """C17: XADD 5, group at 0, read 1, XTRIM MAXLEN 1, read again.

    Redis 7.0 reports lag 4 after the trim (only 1 entry is left) and 3 after the second read
    (nothing is left); we must report 1 and then 0 on every server.
    """
    await xadd_many(r, names.stream, 5)
    await r.xgroup_create(names.stream, names.group, '0')
    await r.xreadgroup(names.group, 'pod-a', {names.stream: '>'}, count=1)
    await r.xtrim(names.stream, maxlen=1, approximate=False)
    reader = SignalReader(r, [(names.stream, names.group)])

    (s,) = (await reader.read(live_consumers={'pod-a'})).streams
    assert (s.length, s.lag, s.lag_exact) == (1, 1, True)
    assert s.reported_lag is None or s.reported_lag >= 1  # what the server said, for the record

    await r.xreadgroup(names.group, 'pod-a', {names.stream: '>'}, count=1)
    signals = await reader.read(live_consumers={'pod-a'})
    (s,) = signals.streams
    assert (s.lag, s.lag_exact, s.live_pending) == (0, True, 2)
    assert signals.backlog == 2
    if redis_server.kind == 'redis' and redis_server.version.startswith('7.0'):
        assert s.reported_lag == 3  # the server's wrong value, which we did not use


async def test_c17_null_lag_after_xdel_is_counted(r, names):
    ids = await xadd_many(r, names.stream, 5)
    await r.xgroup_create(names.stream, names.group, '0')
    await r.xreadgroup(names.group, 'pod-a', {names.stream: '>'}, count=1)
    await r.xdel(names.stream, ids[2])

    (s,) = (await SignalReader(r, [(names.stream, names.group)]).read({'pod-a'})).streams
    assert s.reported_lag is None  # the server says NULL...
    assert (s.lag, s.lag_exact, s.lag_source) == (3, True, 'xrange')  # ...we count 3 undelivered

    (s,) = (await SignalReader(r, [(names.stream, names.group)], lag_count_limit=2).read({'pod-a'})).streams
    assert (s.lag, s.lag_exact, s.lag_source) == (2, False, 'xrange-capped')  # a lower bound, flagged


async def test_c18_null_lag_stays_unknown_and_holds(r, names):
    """C18: with counting disabled a NULL lag is None (unknown), never 0, and the policy holds."""
    ids = await xadd_many(r, names.stream, 5)
    await r.xgroup_create(names.stream, names.group, '0')
    await r.xreadgroup(names.group, 'pod-a', {names.stream: '>'}, count=1)
    await r.xdel(names.stream, ids[3])

    signals = await SignalReader(r, [(names.stream, names.group)], lag_count_limit=0).read({'pod-a'})
    assert signals.reachable
    assert signals.lag is None and signals.backlog is None and not signals.lag_exact
    rules = PolicySpec(min_replicas=0, max_replicas=10, scale_down=ScalingRules(0))
    decision = decide(signals, 4, rules, History(), 0.0)
    assert (decision.desired, decision.reason) == (4, 'Hold')


async def test_c19_scale_on_lag_not_on_xlen(r, names):
    """C19: 1000 orders, one slow worker: scale up on backlog; back to zero when the group has
    processed everything although XLEN stays 1000."""
    await r.xgroup_create(names.stream, names.group, '0', mkstream=True)
    await xadd_many(r, names.stream, 1000)
    reader = SignalReader(r, [(names.stream, names.group)])
    rules = PolicySpec(min_replicas=0, max_replicas=20, target_backlog_per_replica=100,
                       scale_down=ScalingRules(0))

    await r.xreadgroup(names.group, 'pod-a', {names.stream: '>'}, count=1)  # one at a time
    signals = await reader.read({'pod-a'})
    assert (signals.lag, signals.live_pending, signals.backlog) == (999, 1, 1000)
    assert decide(signals, 1, rules, History(), 0.0).desired == 10

    # Drain: read and ack everything.
    while entries := await r.xreadgroup(names.group, 'pod-a', {names.stream: '>'}, count=200):
        await r.xack(names.stream, names.group, *[i for i, _ in entries[0][1]])
    pending = await r.xpending(names.stream, names.group)
    await r.xack(names.stream, names.group, pending['min']) if pending['pending'] else None

    signals = await reader.read({'pod-a'})
    assert await r.xlen(names.stream) == 1000
    assert (signals.lag, signals.live_pending, signals.backlog) == (0, 0, 0)
    assert decide(signals, 10, rules, History(), 0.0).desired == 0


async def test_c20_one_order_wakes_from_zero(r, names):
    """C20: replicas 0, group exists, exactly 1 order -> backlog 1 -> 0 -> 1 on that poll."""
    await r.xgroup_create(names.stream, names.group, '$', mkstream=True)
    reader = SignalReader(r, [(names.stream, names.group)])
    rules = PolicySpec(min_replicas=0, max_replicas=5, activation_backlog=1)
    assert decide(await reader.read(set()), 0, rules, History(), 0.0).desired == 0
    await r.xadd(names.stream, {'data': '{"orderId": "only"}'})
    signals = await reader.read(set())
    assert signals.backlog == 1
    decision = decide(signals, 0, rules, History(), 1.0)
    assert (decision.desired, decision.active) == (1, True)


async def test_c04_liveness_never_from_idle(r, names, redis_server):
    """C04: a quiet but live consumer (huge idle) still counts as live; a consumer whose pod is
    gone is dead however fresh; and reading the signals never refreshes a dead consumer."""
    await xadd_many(r, names.stream, 4)
    await r.xgroup_create(names.stream, names.group, '0')
    await r.xreadgroup(names.group, 'pod-quiet', {names.stream: '>'}, count=2)
    await r.xreadgroup(names.group, 'pod-gone', {names.stream: '>'}, count=2)
    reader = SignalReader(r, [(names.stream, names.group)])

    first = {c.name: c for c in (await reader.read({'pod-quiet'})).streams[0].consumers}
    await asyncio.sleep(0.05)  # let idle time grow by a measurable amount (not a synchronisation)
    signals = await reader.read({'pod-quiet'})
    second = {c.name: c for c in signals.streams[0].consumers}
    assert second['pod-quiet'].live and not second['pod-gone'].live
    assert (signals.live_pending, signals.dead_pending) == (2, 2)
    # Our reads are XINFO/XPENDING only: the dead consumer's idle time keeps growing.
    assert second['pod-gone'].idle_ms >= first['pod-gone'].idle_ms + 40
    if redis_server.kind == 'valkey' or not redis_server.version.startswith('7.0'):
        assert second['pod-gone'].inactive_ms is not None
    else:
        assert second['pod-gone'].inactive_ms is None  # Redis 7.0 has no `inactive`


async def test_rates_from_deltas(r, names):
    await r.xgroup_create(names.stream, names.group, '0', mkstream=True)
    clock = iter([100.0, 102.0]).__next__
    reader = SignalReader(r, [(names.stream, names.group)], clock=clock)
    first = await reader.read(set())
    assert first.arrival_rate is None and first.delivery_rate is None
    await xadd_many(r, names.stream, 10)
    await r.xreadgroup(names.group, 'pod-a', {names.stream: '>'}, count=4)
    second = await reader.read({'pod-a'})
    assert (second.arrival_rate, second.delivery_rate) == (5.0, 2.0)


async def test_several_streams_sum_or_max(r, names):
    other = names.stream + ':b'
    for stream, n in ((names.stream, 30), (other, 50)):
        await r.xgroup_create(stream, names.group, '0', mkstream=True)
        await xadd_many(r, stream, n)
    pairs = [(names.stream, names.group), (other, names.group)]
    assert (await SignalReader(r, pairs, combine='sum').read(set())).backlog == 80
    assert (await SignalReader(r, pairs, combine='max').read(set())).backlog == 50
    await r.delete(other)


async def test_unreachable_redis_is_reported_not_raised():
    import redis.asyncio as aioredis

    from tests.servers import free_port
    client = aioredis.Redis.from_url(f'redis://127.0.0.1:{free_port()}/0', socket_connect_timeout=1)
    try:
        signals = await SignalReader(client, [('s', 'g')]).read(set())
    finally:
        await client.aclose()
    assert not signals.reachable and signals.backlog is None and 'unreachable' in signals.error
    assert decide(signals, 3, PolicySpec(min_replicas=0, scale_down=ScalingRules(0)), History(), 0.0).desired == 3


@pytest.mark.parametrize('kind', ['string', 'hash'])
async def test_a_stream_key_of_the_wrong_type_leaves_the_other_streams_scaling(r, names, kind):
    """Issue 9 item 6: WRONGTYPE on one configured stream used to blind the whole reading
    (reachable=False, "Redis error: WRONGTYPE"), so nothing scaled. Now only that stream is
    unreadable; Redis is reachable, the other streams are read, and the policy scales up on
    them (never down while one is unknown)."""
    broken = names.stream + ':broken'
    if kind == 'string':
        await r.set(broken, 'not a stream')
    else:
        await r.hset(broken, 'field', 'value')
    await r.xgroup_create(names.stream, names.group, '0', mkstream=True)
    await xadd_many(r, names.stream, 450)
    reader = SignalReader(r, [(broken, names.group), (names.stream, names.group)])

    signals = await reader.read(set())
    assert signals.reachable, signals.error
    bad, good = signals.streams
    assert (bad.lag_source, bad.lag, bad.backlog) == ('error', None, None)
    assert bad.error.startswith('WRONGTYPE') and broken in signals.error
    assert (good.error, good.lag, good.backlog) == (None, 450, 450)
    assert signals.unreadable == (bad,)
    assert signals.backlog is None and signals.backlog_floor == 450
    rules = PolicySpec(min_replicas=0, max_replicas=10, target_backlog_per_replica=100, scale_down=ScalingRules(0))
    assert decide(signals, 1, rules, History(), 0.0).desired == 5   # up on the readable stream
    assert decide(signals, 8, rules, History(), 0.0).desired == 8   # never down on a lower bound

    # Fixed (the key deleted): read again on the next poll, nothing to remember.
    await r.delete(broken)
    signals = await reader.read(set())
    assert signals.error is None and signals.unreadable == () and signals.backlog == 450


async def test_any_error_reply_of_one_stream_is_isolated(r, names):
    """The whole kind of fault, not only WRONGTYPE: an ACL user that may not read one of the
    streams (NOPERM) still scales on the others."""
    user = f'scaler-{names.group}'
    secret = f'pw-{names.group}'
    denied = names.stream + ':denied'
    await r.xgroup_create(names.stream, names.group, '0', mkstream=True)
    await xadd_many(r, names.stream, 30)
    await xadd_many(r, denied, 5)
    await r.execute_command('ACL', 'SETUSER', user, 'on', f'>{secret}', f'~{names.stream}', '+@all')
    url = r.connection_pool.connection_kwargs
    client = aioredis.Redis(host=url['host'], port=url['port'], username=user, password=secret,
                            decode_responses=True)
    try:
        signals = await SignalReader(client, [(denied, names.group), (names.stream, names.group)]).read(set())
    finally:
        await client.aclose()
        await r.execute_command('ACL', 'DELUSER', user)
        await r.delete(denied)
    assert signals.reachable
    bad, good = signals.streams
    assert bad.error.startswith('NoPermissionError: ') and bad.lag_source == 'error'
    assert good.backlog == 30 and signals.backlog_floor == 30


async def test_a_missing_group_counts_the_whole_stream_and_wakes_from_zero(r, names):
    """Issue 9 item 8: orders accepted before any consumer (or the producer) created the group
    are backlog: lag = the stream's length, so a workload at 0 replicas is woken on the first poll."""
    await xadd_many(r, names.stream, 250)
    await r.xgroup_create(names.stream, 'someone-else', '$')  # another group does not count
    signals = await SignalReader(r, [(names.stream, names.group)]).read(set())
    (s,) = signals.streams
    assert (s.stream_exists, s.group_exists, s.length) == (True, False, await r.xlen(names.stream))
    assert (s.lag, s.lag_source, s.lag_exact, signals.backlog) == (250, 'no-group', True, 250)
    rules = PolicySpec(min_replicas=0, max_replicas=10, target_backlog_per_replica=100)
    decision = decide(signals, 0, rules, History(), 0.0)
    assert (decision.desired, decision.reason, decision.active) == (3, 'ScaleUp', True)


async def test_group_states_match_streamcore_groups(r, names):
    """Issue 9 item 7: each stream's group is judged by streamcore.groups (as /stream/info does):
    no-stream, missing, ok, and abandoned once its pending entries have had no consumer seen for
    ``abandoned_after_ms``; a consumer seen again makes it ok."""
    reader = SignalReader(r, [(names.stream, names.group)], abandoned_after_ms=300)
    assert (await reader.read(set())).streams[0].group_state == 'no-stream'
    await xadd_many(r, names.stream, 10)
    assert (await reader.read(set())).streams[0].group_state == 'missing'

    await r.xgroup_create(names.stream, names.group, '0')
    await r.xreadgroup(names.group, 'pod-gone', {names.stream: '>'}, count=4)
    (s,) = (await reader.read(set())).streams
    assert (s.group_state, s.pending) == ('ok', 4)  # its consumer was seen just now

    deadline = asyncio.get_running_loop().time() + 10
    while (s := (await reader.read(set())).streams[0]).group_state != 'abandoned':
        assert asyncio.get_running_loop().time() < deadline, s
        await asyncio.sleep(0.05)
    assert s.least_quiet_ms >= 300 and s.pending == 4

    await r.xreadgroup(names.group, 'pod-new', {names.stream: '>'}, count=1)  # someone reads again
    assert (await reader.read(set())).streams[0].group_state == 'ok'

    # Nothing pending: quiet consumers are not an abandoned group.
    other = names.stream + ':idle'
    await r.xgroup_create(other, names.group, '0', mkstream=True)
    await r.xreadgroup(names.group, 'pod-quiet', {other: '>'}, count=1)
    (s,) = (await SignalReader(r, [(other, names.group)], abandoned_after_ms=1).read(set())).streams
    assert (s.group_state, s.pending) == ('ok', 0)
