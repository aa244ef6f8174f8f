"""The chart's autoscaler RBAC is sufficient and minimal for what the operator really does.

A missing permission only shows on a real cluster (403), which CI does not run; an unused one is
privilege nobody asked for. So the real operator (``run_operator``, as deployed) runs against kmock
in both chart modes — ``--namespace NS`` with a Role, ``--all-namespaces`` with a ClusterRole (kopf
scanning on, as ``handlers.configure`` leaves it) — through a scenario that touches every API call
it makes: the chart's own StreamAutoscaler (so the Secret name and key are the chart's), a missing
target (404, kopf's retry bookkeeping on the object, a Warning Event), a scale-up (scale
subresource, status, Events on both objects), a scale-down, the deletion and the shutdown. Every
request the operator sent is taken from kmock's request log, mapped to an RBAC check by
:func:`access_of`, and compared with the rules the chart renders:

* sufficient: each check is allowed by a rule of the rendered Role/ClusterRole;
* minimal: each (apiGroup, resource, verb) a rule grants was used, or is in :data:`KEPT_ON_PURPOSE`
  with its reason.

kopf's own calls (kopf 1.x, ``kopf/_cogs/clients``): ``fetching``/``watching`` list then watch
the served resource (cluster-wide when ``clusterwide``) and, with scanning on, the CRDs;
``patching.patch_obj`` merge-patches the object (annotations) and its ``status`` subresource
separately and JSON-patches the object; ``events.post_event`` only POSTs Events; ``scanning``
reads discovery (``/version``, ``/api``, ``/apis``...). It never GETs one object, never PUTs, and in
clusterwide mode never lists or watches Namespaces (``observation.namespace_observer``); peering
(leases/kopfpeerings) is off in standalone mode.
"""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kopf
import pytest

from autoscaler.settings import AutoscalerSettings
from tests.chart.helpers import CHART_DIR, by_kind, render_objects
from tests.operator.conftest import NS, OperatorThread, eventually, use_kubeconfig
from tests.operator.test_autoscaler_operator import drain, fill

pytestmark = pytest.mark.timeout(60)

ROLE_NAME = 'orderstream-autoscaler'
MODES = {  # mode -> chart values (the chart's StreamAutoscaler on, to learn its Secret name and key)
    'namespaced': {'autoscaler': {'streamAutoscaler': {'enabled': True}}},
    'all-namespaces': {'autoscaler': {'watchAllNamespaces': True, 'streamAutoscaler': {'enabled': True}}},
}

# Granted (apiGroup, resource, verb) that no request of the scenario uses, kept on purpose, per
# mode, each with its reason. Empty: every permission the chart grants is exercised above. Not kept
# (removed from the chart because kopf 1.x and the operator never use them): get/update on
# streamautoscalers(/status) (kopf lists+watches and patches, never GETs one object or PUTs),
# list/watch on deployments (one GET per poll), get/update on deployments/scale (merge-patch only),
# watch on pods (one list per poll), patch on events (kopf only POSTs), and list/watch on
# namespaces in the ClusterRole (kopf skips namespace observation when clusterwide).
KEPT_ON_PURPOSE: dict[str, set[tuple[str, str, str]]] = {
    'namespaced': set(),
    'all-namespaces': set(),
}

# Discovery is not authorised by the Role: every authenticated user may read it (the default
# system:discovery and system:public-info-viewer ClusterRoles). These are the only non-resource
# URLs the operator may touch; anything else would need a nonResourceURLs rule.
DISCOVERY = re.compile(r'^/(version|api|api/v1|apis|apis/[^/]+/[^/]+)/?$')


@dataclasses.dataclass(frozen=True)
class Access:
    """What the API server's authoriser checks for one request (its RequestInfo)."""

    group: str  # '' for the core group
    resource: str  # 'deployments/scale' for a subresource
    verb: str
    namespace: str | None  # None: a cluster-scope request (a cluster-wide list/watch, a cluster resource)
    name: str | None


def access_of(method: str, path: str, query: dict[str, str]) -> Access | None:
    """Map one request to the RBAC check it needs, as kube-apiserver's RequestInfoFactory does.

    ``/api/v1/...`` is the core group ``''``, ``/apis/GROUP/VERSION/...`` the group. Then an optional
    ``namespaces/NS/`` prefix (``/api/v1/namespaces/NS`` alone is the Namespace object NS), the
    resource, an optional name and an optional subresource (checked as ``resource/subresource``).
    Verbs: GET of a collection -> ``list`` (``watch`` with ``?watch=true|1``), GET of an object ->
    ``get``, POST -> ``create``, PUT -> ``update``, PATCH -> ``patch``, DELETE -> ``delete``
    (``deletecollection`` without a name). Returns None for a discovery (non-resource) URL;
    raises ``ValueError`` for any other path.
    """
    if DISCOVERY.match(path):
        if method != 'GET':
            raise ValueError(f'{method} {path}: discovery is read-only')
        return None
    parts = [p for p in path.split('/') if p]
    if parts[:2] == ['api', 'v1']:
        group, rest = '', parts[2:]
    elif parts[:1] == ['apis'] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        raise ValueError(f'not a Kubernetes API path: {path}')
    namespace = None
    if len(rest) >= 3 and rest[0] == 'namespaces':
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        raise ValueError(f'unexpected resource path: {path}')
    resource, name = rest[0], rest[1] if len(rest) > 1 else None
    if len(rest) == 3:
        resource = f'{resource}/{rest[2]}'
    watch = query.get('watch', '').lower() in ('true', '1')
    verbs = {'GET': ('watch' if watch else 'list') if name is None else 'get',
             'POST': 'create', 'PUT': 'update', 'PATCH': 'patch',
             'DELETE': 'delete' if name is not None else 'deletecollection'}
    if method not in verbs:
        raise ValueError(f'unexpected method: {method} {path}')
    return Access(group, resource, verbs[method], namespace, name)


def allowed(access: Access, role: dict[str, Any]) -> bool:
    """Whether ``role`` (a rendered Role or ClusterRole) grants ``access``.

    A Role grants only requests into its own namespace; a ClusterRole (bound by a
    ClusterRoleBinding) any namespace and cluster scope. ``resourceNames`` admit only requests
    naming one of them (so never a create, list or watch of the whole collection).
    """
    if role['kind'] == 'Role' and access.namespace != role['metadata']['namespace']:
        return False
    for rule in role.get('rules') or ():
        if (({access.group, '*'} & set(rule.get('apiGroups') or ()))
                and ({access.resource, '*'} & set(rule.get('resources') or ()))
                and ({access.verb, '*'} & set(rule.get('verbs') or ()))
                and (not rule.get('resourceNames') or access.name in rule['resourceNames'])):
            return True
    return False


def granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """Every (apiGroup, resource, verb) a rule entry of ``role`` grants."""
    return {(group, resource, verb) for rule in role['rules'] for group in rule['apiGroups']
            for resource in rule['resources'] for verb in rule['verbs']}


def test_access_mapping() -> None:
    """The mapper itself, on the shapes of path the operator and kopf use."""
    sas = '/apis/orderstream.dev/v1alpha1'
    assert access_of('GET', f'{sas}/streamautoscalers', {}) == Access('orderstream.dev', 'streamautoscalers', 'list', None, None)
    assert access_of('GET', f'{sas}/namespaces/a/streamautoscalers', {'watch': 'true'}).verb == 'watch'
    assert access_of('PATCH', f'{sas}/namespaces/a/streamautoscalers/x/status', {}) == Access(
        'orderstream.dev', 'streamautoscalers/status', 'patch', 'a', 'x')
    assert access_of('GET', '/apis/apps/v1/namespaces/a/deployments/d', {}) == Access('apps', 'deployments', 'get', 'a', 'd')
    assert access_of('PUT', '/apis/apps/v1/namespaces/a/deployments/d/scale', {}).resource == 'deployments/scale'
    assert access_of('POST', '/api/v1/namespaces/a/events', {}) == Access('', 'events', 'create', 'a', None)
    assert access_of('GET', '/api/v1/namespaces', {'watch': '1'}) == Access('', 'namespaces', 'watch', None, None)
    assert access_of('GET', '/api/v1/namespaces/a', {}) == Access('', 'namespaces', 'get', None, 'a')
    assert access_of('DELETE', '/api/v1/namespaces/a/pods', {}).verb == 'deletecollection'
    for path in ('/version', '/api', '/api/v1', '/apis', '/apis/apps/v1'):
        assert access_of('GET', path, {}) is None
    with pytest.raises(ValueError):
        access_of('POST', '/apis', {})
    role = {'kind': 'Role', 'metadata': {'namespace': 'a'}, 'rules': [
        {'apiGroups': [''], 'resources': ['secrets'], 'verbs': ['get'], 'resourceNames': ['s']}]}
    assert allowed(Access('', 'secrets', 'get', 'a', 's'), role)
    assert not allowed(Access('', 'secrets', 'get', 'a', 't'), role)
    assert not allowed(Access('', 'secrets', 'get', 'b', 's'), role)  # a Role stays in its namespace
    assert not allowed(Access('', 'secrets', 'list', 'a', None), role)
    assert allowed(Access('', 'secrets', 'get', 'b', 's'), {**role, 'kind': 'ClusterRole'})


@pytest.fixture(scope='module')
def chart():
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def rendered(chart: Any, mode: str) -> dict[str, Any]:
    """The chart rendered into the operator's namespace: its Role/ClusterRole and StreamAutoscaler."""
    objects = render_objects(chart, MODES[mode], namespace=NS)
    kind = 'ClusterRole' if mode == 'all-namespaces' else 'Role'
    (role,) = [o for o in by_kind(objects, kind) if o['metadata']['name'] == ROLE_NAME]
    # The Role does not depend on the StreamAutoscaler being rendered: this is the defaults' Role.
    plain = {k: v for k, v in MODES[mode]['autoscaler'].items() if k != 'streamAutoscaler'}
    assert role in by_kind(render_objects(chart, {'autoscaler': plain} if plain else {}, namespace=NS), kind)
    (sas,) = by_kind(objects, 'StreamAutoscaler')
    return {'role': role, 'sas': sas}


@pytest.fixture
async def operator_in_mode(kube, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The operator as the chart runs it in ``mode`` (conftest's ``operator`` is namespaced only).

    Yields the runner, not started; the test starts it and stops it (to record the shutdown too).
    """
    use_kubeconfig(kube, tmp_path, monkeypatch)
    clusterwide = mode == 'all-namespaces'
    settings = AutoscalerSettings(namespaces=() if clusterwide else (NS,), all_namespaces=clusterwide,
                                  health_port=0, metrics_port=0, autoscaler_tick_seconds=0.05)
    kopf_settings = kopf.OperatorSettings()  # scanning: as handlers.configure sets it for the mode
    kopf_settings.process.ultimate_exiting_timeout = None
    runner = OperatorThread(settings, kopf_settings)
    yield runner
    if runner.thread.is_alive():
        await runner.join()
    gc.collect()


@pytest.mark.parametrize('redis_server', ['redis'], indirect=True)  # RBAC does not depend on the server
async def test_chart_rbac_is_sufficient_and_minimal(cluster, operator_in_mode, rendered, mode, r, names, redis_url):
    role, sas = rendered['role'], rendered['sas']
    secret_ref, target = sas['spec']['redis']['urlSecretRef'], sas['spec']['scaleTargetRef']['name']
    await cluster.call('POST', f'/api/v1/namespaces/{NS}/secrets', {
        'apiVersion': 'v1', 'kind': 'Secret', 'metadata': {'name': secret_ref['name'], 'namespace': NS},
        'stringData': {secret_ref['key']: redis_url}})
    await r.xgroup_create(names.stream, names.group, '0', mkstream=True)
    await fill(r, names.stream, 500)
    spec = {**sas['spec'], 'streams': [{'stream': names.stream, 'group': names.group}], 'minReplicas': 0,
            'maxReplicas': 10, 'targetBacklogPerReplica': 100, 'pollIntervalSeconds': 0.1,
            'behavior': {'scaleDown': {'stabilizationWindowSeconds': 0}}}
    name = sas['metadata']['name']

    await operator_in_mode.start()
    await cluster.create_autoscaler(name, spec)
    # The target is missing: a 404, a Warning Event and kopf's retry bookkeeping (annotations).
    await eventually(lambda: cluster.events('TargetNotFound'), 10, 'TargetNotFound')
    await cluster.create_deployment(target, replicas=1)
    # Scale up (scale subresource, status, Events on the StreamAutoscaler and the Deployment).
    await eventually(lambda: cluster.scale_patches(target) == [5], 10, 'scale to 5')
    await eventually(lambda: len(cluster.events('Scaled')) == 2, 10, 'Scaled events')
    # Scale down once drained.
    await drain(r, names.stream, names.group, f'{target}-0')
    await eventually(lambda: cluster.scale_patches(target) == [5, 0], 10, 'scale to 0')
    await eventually(lambda: cluster.status(name).get('currentReplicas') == 0, 10, lambda: cluster.status(name))
    await cluster.delete_autoscaler(name)
    await eventually(lambda: cluster.autoscaler(name) is None, 10, 'deleted')
    await asyncio.sleep(0.2)
    await operator_in_mode.join()

    # The operator's requests (the test's own carry `Connection: close`).
    requests = [q for q in list(cluster.server) if 'Connection' not in q.headers]
    accesses: dict[Access, int] = {}
    discovery: set[str] = set()
    for q in requests:
        access = access_of(q.method, q.url.path, dict(q.url.query))
        if access is None:
            discovery.add(q.url.path)
        else:
            accesses[access] = accesses.get(access, 0) + 1
    table = '\n'.join(f'{n:4d}  {a.verb:<8} {a.group or "core"}/{a.resource}  ns={a.namespace} name={a.name}'
                      for a, n in sorted(accesses.items(), key=lambda kv: (kv[0].group, kv[0].resource, kv[0].verb)))
    print(f'\n{mode}: {len(requests)} requests\n{table}\ndiscovery (no RBAC rule needed): {sorted(discovery)}')

    # Sufficient: each request is allowed by the rendered rules.
    denied = [a for a in accesses if not allowed(a, role)]
    assert not denied, f'the chart {role["kind"]} would answer 403 to: {denied}\n{table}'
    # The scenario reached every kind of call (else "minimal" below would prove little).
    used = {(a.group, a.resource, a.verb) for a in accesses}
    assert {('', 'secrets', 'get'), ('apps', 'deployments/scale', 'patch'), ('', 'events', 'create'),
            ('orderstream.dev', 'streamautoscalers/status', 'patch')} <= used
    # The Secret read is by name: resourceNames could pin it if the chart knew every name.
    assert {a.name for a in accesses if a.resource == 'secrets'} == {secret_ref['name']}
    # Minimal: whatever is granted and unused is kept on purpose, with a reason.
    assert granted(role) - used == KEPT_ON_PURPOSE[mode], f'granted but unused:\n{table}'
