"""The autoscaler operator against kmock (the Kubernetes API) and a real Redis/Valkey."""
from __future__ import annotations

import time

import pytest

from tests.operator.conftest import DEPLOYMENTS, NS, SAS, autoscaler_spec, eventually
from tests.servers import free_port

pytestmark = pytest.mark.timeout(60)


async def fill(r, stream: str, n: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {'data': f'{{"orderId": "o{i}"}}'})
    await pipe.execute()


async def drain(r, stream: str, group: str, consumer: str) -> float:
    """Read everything as ``consumer`` and acknowledge it in one XACK, as a consumer would.

    Returns the monotonic time just before that XACK: the backlog cannot be 0 any earlier.
    """
    ids = []
    while entries := await r.xreadgroup(group, consumer, {stream: '>'}, count=500):
        ids += [entry_id for entry_id, _ in entries[0][1]]
    ids += [p['message_id'] for p in await r.xpending_range(stream, group, min='-', max='+', count=10_000)]
    before = time.monotonic()
    await r.xack(stream, group, *set(ids))
    return before


def polls(cluster, deployment: str = 'consumer') -> int:
    """How many times the operator has read the Deployment (one GET per poll)."""
    path = f'/apis/apps/v1/namespaces/{NS}/deployments/{deployment}'
    return sum(1 for r in list(cluster.server) if r.method == 'GET' and r.url.path == path)


async def more_polls(cluster, n: int = 3, deployment: str = 'consumer') -> None:
    start = polls(cluster, deployment)
    await eventually(lambda: polls(cluster, deployment) >= start + n, 10, f'{n} more polls')


@pytest.fixture
async def redis_secret(cluster, redis_url) -> str:
    await cluster.create_secret('redis', redis_url)
    return 'redis'


async def test_scales_up_on_backlog_and_explains(cluster, operator, r, names, redis_secret):
    await r.xgroup_create(names.stream, names.group, '0', mkstream=True)
    await fill(r, names.stream, 500)
    await r.xreadgroup(names.group, 'consumer-0', {names.stream: '>'}, count=50)  # live pod, in flight
    await r.xreadgroup(names.group, 'consumer-gone', {names.stream: '>'}, count=30)  # its pod is gone
    await cluster.create_deployment('consumer', replicas=1)  # pod consumer-0

    await cluster.create_autoscaler('sas', autoscaler_spec(redis_secret, names.stream, names.group))

    # lag 420 + live pending 50 = 470 -> ceil(4.7) = 5; the dead consumer's 30 are not backlog.
    await eventually(lambda: cluster.scale_patches('consumer') == [5], 10, 'scale to 5')
    await eventually(lambda: cluster.status('sas').get('currentReplicas') == 5, 10, lambda: cluster.status('sas'))
    status = cluster.status('sas')
    assert (status['desiredReplicas'], status['recommendedReplicas'], status['reason']) == (5, 5, 'ScaleUp')
    assert status['observedGeneration'] == 1 and status['lastScaleTime']
    signals = status['signals']
    assert (signals['backlog'], signals['lag'], signals['livePending'], signals['deadPending']) == (470, 420, 50, 30)
    assert signals['redisReachable'] and signals['lagExact']
    assert {c['type']: c['status'] for c in status['conditions']} == {
        'Ready': 'True', 'Active': 'True', 'ScalingLimited': 'False', 'RedisReachable': 'True', 'LagExact': 'True',
        'GroupMissing': 'False', 'GroupAbandoned': 'False', 'GroupAhead': 'False'}
    assert cluster.replicas('consumer') == 5

    await eventually(lambda: len(cluster.events('Scaled')) == 2, 10, 'Events posted (asynchronously by kopf)')
    (on_autoscaler,) = cluster.events('Scaled', 'StreamAutoscaler')
    (on_deployment,) = cluster.events('Scaled', 'Deployment')
    assert 'from 1 to 5' in on_autoscaler['message'] and 'from 1 to 5' in on_deployment['message']
    assert on_deployment['involvedObject']['name'] == 'consumer'

    # Steady afterwards: the scale subresource is patched only when the count changes.
    await more_polls(cluster, 3)
    assert cluster.scale_patches('consumer') == [5]
    assert len(cluster.events('Scaled')) == 2
    assert operator.metrics.get_sample_value('orderstream_autoscaler_desired_replicas', {'autoscaler': f'{NS}/sas'}) == 5
    assert operator.metrics.get_sample_value('orderstream_autoscaler_backlog_entries', {'autoscaler': f'{NS}/sas'}) == 470


async def test_scales_down_after_draining_respecting_the_window(cluster, operator, r, names, redis_secret):
    await r.xgroup_create(names.stream, names.group, '0', mkstream=True)
    await fill(r, names.stream, 400)
    await cluster.create_deployment('consumer', replicas=4)
    window = 2.0
    await cluster.create_autoscaler('sas', autoscaler_spec(
        redis_secret, names.stream, names.group,
        behavior={'scaleDown': {'stabilizationWindowSeconds': window}}))
    await eventually(lambda: cluster.status('sas').get('reason') == 'Steady', 10, 'steady at 4')
    assert cluster.scale_patches('consumer') == []

    drained = await drain(r, names.stream, names.group, 'consumer-0')
    await eventually(lambda: cluster.scale_patches('consumer') == [0], 10, 'scale to 0')
    # Not before the window has seen only zeros. The window counts samples, so the last non-zero
    # one may precede the drain by one poll gap: 0.1 s normally, more on a loaded machine; half
    # the window is a bound that still fails if the window were ignored (that scales in ~0.1 s).
    assert time.monotonic() - drained >= window / 2

    history = cluster.server.objects[SAS, NS, 'sas'].history
    held = [v for v in history if v and 'ScaleDownStabilization' in ((v.get('status') or {}).get('limitedBy') or '')]
    assert held, 'the stabilization window was never reported as the limit'
    await eventually(lambda: cluster.condition('sas', 'Active').get('status') == 'False')
    assert await r.xlen(names.stream) == 400  # scaled to zero on lag + pending, not on XLEN (C19)


async def test_c20_one_order_wakes_from_zero_within_two_polls(cluster, operator, r, names, redis_secret):
    await r.xgroup_create(names.stream, names.group, '$', mkstream=True)
    await cluster.create_deployment('consumer', replicas=0)
    await cluster.create_autoscaler('sas', autoscaler_spec(redis_secret, names.stream, names.group))
    await eventually(lambda: cluster.condition('sas', 'Active').get('status') == 'False', 10)

    await r.xadd(names.stream, {'data': '{"orderId": "the-only-one"}'})
    mark = len(list(cluster.server))
    await eventually(lambda: cluster.scale_patches('consumer') == [1], 10, 'woken by one order')
    # Polls (Deployment reads) between the order and the scale request, in the API's own order.
    requests = list(cluster.server)[mark:]
    scale_at = next(i for i, q in enumerate(requests) if q.method == 'PATCH' and q.url.path.endswith('/scale'))
    reads = [q for q in requests[:scale_at] if q.method == 'GET' and q.url.path.endswith('/deployments/consumer')]
    assert len(reads) <= 2
    await eventually(lambda: cluster.condition('sas', 'Active').get('status') == 'True', 10)


async def test_target_missing_sets_condition_and_retries(cluster, operator, r, names, redis_secret):
    await r.xgroup_create(names.stream, names.group, '0', mkstream=True)
    await fill(r, names.stream, 300)
    await cluster.create_autoscaler('sas', autoscaler_spec(redis_secret, names.stream, names.group))

    await eventually(lambda: cluster.condition('sas', 'Ready').get('reason') == 'TargetNotFound', 10)
    await eventually(lambda: cluster.events('TargetNotFound'), 10)
    await more_polls(cluster, 3)  # kopf retries the timer; the Warning is posted once
    (warning,) = cluster.events('TargetNotFound', 'StreamAutoscaler')
    assert warning['type'] == 'Warning' and 'consumer' in warning['message']
    assert cluster.condition('sas', 'Ready')['status'] == 'False'
    assert not cluster.events('Logging'), "kopf's log lines are not posted as Events"

    await cluster.create_deployment('consumer', replicas=1)
    await eventually(lambda: cluster.scale_patches('consumer') == [3], 10, 'scale to 3 once the target exists')
    await eventually(lambda: cluster.condition('sas', 'Ready').get('status') == 'True')


async def test_redis_unreachable_holds_with_condition_and_event(cluster, operator, names):
    await cluster.create_secret('redis', f'redis://127.0.0.1:{free_port()}/0')
    await cluster.create_deployment('consumer', replicas=3)
    await cluster.create_autoscaler('sas', autoscaler_spec('redis', names.stream, names.group))

    await eventually(lambda: cluster.condition('sas', 'RedisReachable').get('status') == 'False', 10)
    await eventually(lambda: cluster.events('RedisUnreachable'), 10)
    await more_polls(cluster, 3)
    status = cluster.status('sas')
    assert (status['desiredReplicas'], status['reason']) == (3, 'Hold')
    assert 'backlog' not in status['signals']  # unknown: absent (merge-patched away), never 0
    assert cluster.condition('sas', 'Ready')['status'] == 'False'
    assert cluster.condition('sas', 'LagExact')['status'] == 'Unknown'
    assert 'RedisUnreachable' in status['limitedBy']
    assert cluster.scale_patches('consumer') == []  # never scales in blind (min is 0 here)
    (warning,) = cluster.events('RedisUnreachable', 'StreamAutoscaler')
    assert warning['type'] == 'Warning' and 'holding 3 replicas' in warning['message']


async def test_paused_lets_a_manual_scale_stick(cluster, operator, r, names, redis_secret):
    await r.xgroup_create(names.stream, names.group, '0', mkstream=True)
    await fill(r, names.stream, 1000)
    await cluster.create_deployment('consumer', replicas=2)
    await cluster.create_autoscaler('sas', autoscaler_spec(redis_secret, names.stream, names.group, paused=True))

    await eventually(lambda: cluster.status('sas').get('reason') == 'Paused', 10)
    assert cluster.status('sas')['desiredReplicas'] == 10  # reported, not applied
    await cluster.scale_manually('consumer', 7)  # kubectl scale --replicas=7
    await eventually(lambda: cluster.status('sas').get('currentReplicas') == 7, 10)
    await more_polls(cluster, 3)
    assert cluster.replicas('consumer') == 7
    assert cluster.scale_patches('consumer') == []
    await eventually(lambda: cluster.events('Paused'), 10)
    assert len(cluster.events('Paused')) == 1

    await cluster.patch_autoscaler('sas', {'paused': False})
    await eventually(lambda: cluster.scale_patches('consumer') == [10], 10, 'resumes scaling')
    await eventually(lambda: cluster.status('sas').get('observedGeneration') == 2, 10, lambda: cluster.status('sas'))


async def test_dry_run_reports_without_patching(cluster, operator, r, names, redis_secret):
    await r.xgroup_create(names.stream, names.group, '0', mkstream=True)
    await fill(r, names.stream, 500)
    await cluster.create_deployment('consumer', replicas=1)
    await cluster.create_autoscaler('sas', autoscaler_spec(redis_secret, names.stream, names.group, dryRun=True))

    await eventually(lambda: cluster.status('sas').get('reason') == 'DryRun', 10)
    await eventually(lambda: cluster.events('DryRun'), 10)
    await more_polls(cluster, 3)
    status = cluster.status('sas')
    assert (status['desiredReplicas'], status['currentReplicas']) == (5, 1)
    assert 'lastScaleTime' not in status
    assert cluster.scale_patches('consumer') == [] and cluster.replicas('consumer') == 1
    (event,) = cluster.events('DryRun')
    assert 'would scale consumer from 1 to 5' in event['message']


async def test_created_while_running_is_picked_up_and_deleting_stops_scaling(cluster, operator, r, names, redis_secret):
    await r.xgroup_create(names.stream, names.group, '0', mkstream=True)
    await fill(r, names.stream, 200)
    await cluster.create_deployment('consumer', replicas=1)
    await cluster.create_deployment('other', replicas=1)

    await cluster.create_autoscaler('sas', autoscaler_spec(redis_secret, names.stream, names.group))
    await eventually(lambda: cluster.scale_patches('consumer') == [2], 10, 'picked up')

    await cluster.delete_autoscaler('sas')
    await eventually(lambda: cluster.autoscaler('sas') is None, 10, 'deleted (finalizer released)')
    assert operator.metrics.get_sample_value('orderstream_autoscaler_desired_replicas', {'autoscaler': f'{NS}/sas'}) is None

    # A canary autoscaler on another Deployment proves the operator keeps polling meanwhile.
    await fill(r, names.stream, 800)
    canary = autoscaler_spec(redis_secret, names.stream + ':none', names.group, scaleTargetRef={'name': 'other'},
                             minReplicas=1)
    await cluster.create_autoscaler('canary', canary)
    await eventually(lambda: cluster.status('canary').get('reason') == 'Steady', 10)
    await more_polls(cluster, 5, deployment='other')
    assert cluster.scale_patches('consumer') == [2]
    assert cluster.replicas('consumer') == 2


async def test_invalid_spec_is_reported(cluster, operator, names, redis_secret):
    await cluster.create_deployment('consumer', replicas=1)
    spec = autoscaler_spec(redis_secret, names.stream, names.group, minReplicas=5, maxReplicas=2)
    await cluster.create_autoscaler('sas', spec)
    await eventually(lambda: cluster.condition('sas', 'Ready').get('reason') == 'InvalidSpec', 10)
    assert 'maxReplicas' in cluster.condition('sas', 'Ready')['message']
    await eventually(lambda: len(cluster.events('InvalidSpec')) == 1, 10, 'one InvalidSpec event')
    assert cluster.scale_patches('consumer') == []
    assert cluster.server.objects[DEPLOYMENTS, NS, 'consumer'].raw['spec']['replicas'] == 1


async def test_missing_redis_secret_holds(cluster, operator, names):
    await cluster.create_deployment('consumer', replicas=2)
    await cluster.create_autoscaler('sas', autoscaler_spec('no-such-secret', names.stream, names.group))
    await eventually(lambda: cluster.condition('sas', 'Ready').get('reason') == 'RedisSecretUnavailable', 10)
    await eventually(lambda: cluster.events('RedisSecretUnavailable'), 10)
    await more_polls(cluster, 3)
    assert (cluster.status('sas')['desiredReplicas'], cluster.status('sas')['currentReplicas']) == (2, 2)
    assert len(cluster.events('RedisSecretUnavailable')) == 1
    assert cluster.scale_patches('consumer') == []


async def test_a_stream_of_the_wrong_type_is_reported_and_the_rest_keeps_scaling(cluster, operator, r, names, redis_secret):
    """Issue 9 item 6. ``mixed`` reads a good stream and a key that is a string (WRONGTYPE);
    ``other`` is a second StreamAutoscaler on its own Deployment. The broken stream gets
    Ready=False (StreamUnreadable) and one Warning, RedisReachable stays True, the good stream
    still scales ``consumer`` up, ``other`` is untouched; deleting the key heals it."""
    broken = names.stream + ':broken'
    other_stream = names.stream + ':other'
    await r.set(broken, 'not a stream')
    for stream, n in ((names.stream, 300), (other_stream, 400)):
        await r.xgroup_create(stream, names.group, '0', mkstream=True)
        await fill(r, stream, n)
    await cluster.create_deployment('consumer', replicas=1)
    await cluster.create_deployment('other', replicas=1)
    await cluster.create_autoscaler('mixed', autoscaler_spec(
        redis_secret, names.stream, names.group,
        streams=[{'stream': broken, 'group': names.group}, {'stream': names.stream, 'group': names.group}]))
    await cluster.create_autoscaler('other', autoscaler_spec(redis_secret, other_stream, names.group,
                                                             scaleTargetRef={'name': 'other'}))

    await eventually(lambda: cluster.scale_patches('consumer') == [3], 10, lambda: cluster.status('mixed'))
    await eventually(lambda: cluster.scale_patches('other') == [4], 10, lambda: cluster.status('other'))
    await eventually(lambda: cluster.events('StreamUnreadable'), 10, 'a Warning for the broken stream')
    await more_polls(cluster, 5)
    ready = cluster.condition('mixed', 'Ready')
    assert (ready['status'], ready['reason']) == ('False', 'StreamUnreadable')
    assert broken in ready['message'] and 'WRONGTYPE' in ready['message']
    assert cluster.condition('mixed', 'RedisReachable')['status'] == 'True'
    status = cluster.status('mixed')
    assert (status['desiredReplicas'], status['currentReplicas']) == (3, 3)
    assert 'BacklogUnknown' in status['limitedBy']
    assert 'backlog' not in status['signals']  # unknown as a whole: absent, never a made-up number
    bad, good = status['signals']['streams']
    assert (bad['stream'], bad['lagSource']) == (broken, 'error') and bad['error'].startswith('WRONGTYPE')
    assert good['lag'] == 300
    (warning,) = cluster.events('StreamUnreadable')  # one per incident, not one per poll
    assert warning['type'] == 'Warning' and warning['involvedObject']['name'] == 'mixed'
    assert broken in warning['message']
    assert not cluster.events('RedisUnreachable')
    assert cluster.condition('other', 'Ready')['status'] == 'True'

    await r.delete(broken)
    await eventually(lambda: cluster.condition('mixed', 'Ready').get('status') == 'True', 10, lambda: cluster.status('mixed'))
    assert cluster.status('mixed')['signals']['backlog'] == 300


async def test_a_stream_without_its_group_scales_up_from_zero(cluster, operator, r, names, redis_secret):
    """Issue 9 item 8: no group yet (no consumer ever ran), 250 orders waiting, 0 replicas:
    lag = XLEN, so the operator scales up before any consumer created the group."""
    await fill(r, names.stream, 250)
    await cluster.create_deployment('consumer', replicas=0)
    await cluster.create_autoscaler('sas', autoscaler_spec(redis_secret, names.stream, names.group))
    await eventually(lambda: cluster.scale_patches('consumer') == [3], 10, lambda: cluster.status('sas'))
    await eventually(lambda: cluster.status('sas').get('currentReplicas') == 3, 10, lambda: cluster.status('sas'))
    (stream,) = cluster.status('sas')['signals']['streams']
    assert (stream['lag'], stream['lagSource'], stream['length']) == (250, 'no-group', 250)


async def test_missing_and_abandoned_groups_are_conditions_and_metrics(cluster, operator, r, names, redis_secret):
    """Issue 9 item 7: GroupMissing while the stream has no group; GroupAbandoned (with one
    Warning) while the group holds pending entries and no consumer was seen for
    groupAbandonedAfterSeconds; both False again once that is over; counted per state in
    orderstream_autoscaler_groups."""
    def groups(state: str) -> float | None:
        return operator.metrics.get_sample_value('orderstream_autoscaler_groups',
                                                 {'autoscaler': f'{NS}/sas', 'state': state})

    await fill(r, names.stream, 20)
    await cluster.create_deployment('consumer', replicas=1)
    await cluster.create_autoscaler('sas', autoscaler_spec(redis_secret, names.stream, names.group,
                                                           minReplicas=1, groupAbandonedAfterSeconds=0.5))
    await eventually(lambda: cluster.condition('sas', 'GroupMissing').get('status') == 'True', 10,
                     lambda: cluster.status('sas'))
    message = cluster.condition('sas', 'GroupMissing')['message']
    assert names.stream in message and names.group in message and '20 entries' in message
    assert groups('missing') == 1 and groups('ok') == 0
    assert cluster.status('sas')['signals']['streams'][0]['groupState'] == 'missing'

    # The group appears; a consumer whose pod is gone took 5 entries and is never seen again.
    await r.xgroup_create(names.stream, names.group, '0')
    await r.xreadgroup(names.group, 'consumer-gone', {names.stream: '>'}, count=5)
    await eventually(lambda: cluster.condition('sas', 'GroupMissing').get('status') == 'False', 10)
    assert cluster.condition('sas', 'GroupMissing')['reason'] == 'GroupsPresent'
    await eventually(lambda: cluster.condition('sas', 'GroupAbandoned').get('status') == 'True', 10,
                     lambda: cluster.status('sas'))
    abandoned = cluster.condition('sas', 'GroupAbandoned')
    assert abandoned['reason'] == 'GroupAbandoned' and '5 pending entries' in abandoned['message']
    assert groups('abandoned') == 1 and groups('missing') == 0
    await eventually(lambda: cluster.events('GroupAbandoned'), 10, 'a Warning')
    await more_polls(cluster, 3)
    (warning,) = cluster.events('GroupAbandoned')
    assert warning['type'] == 'Warning' and names.group in warning['message']

    # A consumer claims and finishes the abandoned entries: nothing waits for a reader any more.
    _, claimed, *_ = await r.xautoclaim(names.stream, names.group, 'consumer-0', min_idle_time=0, count=100)
    await r.xack(names.stream, names.group, *[entry_id for entry_id, _ in claimed])
    await eventually(lambda: cluster.condition('sas', 'GroupAbandoned').get('status') == 'False', 10,
                     lambda: cluster.status('sas'))
    assert cluster.condition('sas', 'GroupAbandoned')['reason'] == 'GroupsRead'
    assert groups('ok') == 1 and groups('abandoned') == 0


async def test_a_group_moved_past_the_last_entry_is_a_condition_an_event_and_a_metric(cluster, operator, r, names,
                                                                                       redis_secret):
    """Breaker finding: XGROUP SETID to the largest ID leaves every order appended afterwards
    unread, while the lag reads 0. GroupAhead turns True (one Warning) with the ID named, the
    metric counts the pair as ``ahead``, and both clear once the group is moved back."""
    def groups(state: str) -> float | None:
        return operator.metrics.get_sample_value('orderstream_autoscaler_groups',
                                                 {'autoscaler': f'{NS}/sas', 'state': state})

    await fill(r, names.stream, 5)
    await r.xgroup_create(names.stream, names.group, '$')
    await cluster.create_deployment('consumer', replicas=1)
    await cluster.create_autoscaler('sas', autoscaler_spec(redis_secret, names.stream, names.group, minReplicas=1))
    await eventually(lambda: cluster.condition('sas', 'GroupAhead').get('status') == 'False', 10,
                     lambda: cluster.status('sas'))
    assert cluster.condition('sas', 'GroupAhead')['reason'] == 'GroupsInStep' and groups('ok') == 1

    largest = '18446744073709551615-18446744073709551615'
    await r.xgroup_setid(names.stream, names.group, largest)
    await fill(r, names.stream, 7)
    await eventually(lambda: cluster.condition('sas', 'GroupAhead').get('status') == 'True', 10,
                     lambda: cluster.status('sas'))
    ahead = cluster.condition('sas', 'GroupAhead')
    assert ahead['reason'] == 'GroupAhead' and names.group in ahead['message'] and largest in ahead['message']
    assert groups('ahead') == 1 and groups('ok') == 0
    assert cluster.status('sas')['signals']['streams'][0]['groupState'] == 'ahead'
    await eventually(lambda: cluster.events('GroupAhead'), 10, 'a Warning')
    await more_polls(cluster, 3)
    (warning,) = cluster.events('GroupAhead')
    assert warning['type'] == 'Warning' and largest in warning['message']

    await r.xgroup_setid(names.stream, names.group, '0')
    await eventually(lambda: cluster.condition('sas', 'GroupAhead').get('status') == 'False', 10,
                     lambda: cluster.status('sas'))
    assert groups('ahead') == 0 and groups('ok') == 1
