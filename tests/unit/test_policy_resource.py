"""Parsing a StreamAutoscaler spec, the Redis URL options and status conditions (no I/O)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autoscaler.reconcile import AutoscalerSpec, conditions, redis_url
from streamcore.groups import ABANDONED_AFTER_MS

CRD = Path(__file__).resolve().parents[2] / 'charts/orderstream/crds/streamautoscalers.orderstream.dev.yaml'

MINIMAL = {
    'scaleTargetRef': {'name': 'consumer'},
    'redis': {'urlSecretRef': {'name': 'redis'}},
    'streams': [{'stream': 'orders', 'group': 'order-processors'}],
    'maxReplicas': 8,
}


def test_minimal_spec_gets_the_crd_defaults():
    spec = AutoscalerSpec.from_spec(MINIMAL)
    assert (spec.target.name, spec.redis.secret_name, spec.redis.secret_key) == ('consumer', 'redis', 'url')
    assert spec.abandoned_after_ms == ABANDONED_AFTER_MS
    assert AutoscalerSpec.from_spec({**MINIMAL, 'groupAbandonedAfterSeconds': 1.5}).abandoned_after_ms == 1500
    assert (spec.combine, spec.poll_interval_s, spec.lag_count_limit, spec.paused, spec.dry_run) == ('sum', 15.0, 10_000, False, False)
    assert (spec.rules.min_replicas, spec.rules.max_replicas, spec.rules.activation_backlog) == (1, 8, 1)
    assert (spec.rules.scale_up.stabilization_window_seconds, spec.rules.scale_down.stabilization_window_seconds) == (0, 300)


@pytest.mark.parametrize(('change', 'message'), [
    ({'scaleTargetRef': {}}, 'scaleTargetRef.name'),
    ({'scaleTargetRef': {'name': 'x', 'kind': 'StatefulSet'}}, 'Deployment'),
    ({'redis': {}}, 'urlSecretRef'),
    ({'streams': []}, 'streams'),
    ({'streams': [{'stream': 'orders'}]}, 'streams'),
    ({'combine': 'avg'}, 'combine'),
    ({'pollIntervalSeconds': 0}, 'pollIntervalSeconds'),
    ({'maxReplicas': 0}, 'maxReplicas'),
    ({'groupAbandonedAfterSeconds': 0}, 'groupAbandonedAfterSeconds'),
])
def test_invalid_specs_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        AutoscalerSpec.from_spec({**MINIMAL, **change})


@pytest.mark.parametrize(('url', 'tls', 'username', 'expected'), [
    ('redis://h:6379/0', False, None, 'redis://h:6379/0'),
    ('redis://h:6379/0', True, None, 'rediss://h:6379/0'),
    ('rediss://h:6379/0', True, None, 'rediss://h:6379/0'),
    ('redis://:s3cret@h:6379/0', False, 'scaler', 'redis://scaler:s3cret@h:6379/0'),
    ('redis://old:p%40ss@h/1', True, 'new user', 'rediss://new%20user:p%40ss@h/1'),
    ('redis://h/0', False, 'scaler', 'redis://scaler@h/0'),
])
def test_redis_url_options(url, tls, username, expected):
    assert redis_url(url, tls=tls, username=username) == expected


def test_conditions_keep_transition_times_unless_the_status_changes():
    before = [
        {'type': 'Ready', 'status': 'True', 'reason': 'Polling', 'message': '', 'lastTransitionTime': 'T0'},
        {'type': 'Active', 'status': 'False', 'reason': 'x', 'message': '', 'lastTransitionTime': 'T0'},
    ]
    after = conditions(before, Ready=('True', 'Polling', 'still fine'), Active=('True', 'Backlog', 'busy'))
    by_type = {c['type']: c for c in after}
    assert by_type['Ready']['lastTransitionTime'] == 'T0' and by_type['Ready']['message'] == 'still fine'
    assert by_type['Active']['lastTransitionTime'] != 'T0' and by_type['Active']['status'] == 'True'
    # Types not given keep their previous entry.
    assert conditions(before, Ready=('False', 'RedisUnreachable', 'down'))[1] == before[1]


def test_the_crd_declares_the_optional_abandoned_threshold_with_the_shared_default():
    """groupAbandonedAfterSeconds is optional (no new required field) and its CRD default is
    streamcore.groups.ABANDONED_AFTER_MS, the threshold of the producer's /stream/info."""
    schema = yaml.safe_load(CRD.read_text())['spec']['versions'][0]['schema']['openAPIV3Schema']['properties']['spec']
    field = schema['properties']['groupAbandonedAfterSeconds']
    assert 'groupAbandonedAfterSeconds' not in schema['required']
    assert field['default'] * 1000 == ABANDONED_AFTER_MS
