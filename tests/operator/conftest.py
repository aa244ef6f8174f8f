"""Fixtures for the operator tier: kmock as the Kubernetes API, the real operator in a task.

kmock 0.8 quirks handled here (DESIGN.md §8): a subclass fills ``resourceVersion``, ``uid``,
``creationTimestamp`` and ``generation`` as an API server would; uids are unique; test-side
calls send ``Connection: close``; kopf runs with ``scanning.disabled`` and
``process.ultimate_exiting_timeout = None``.
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import gc
import itertools
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jsonpatch
import kmock
import kopf
import pytest
from kmock import action
from prometheus_client import CollectorRegistry

from autoscaler.handlers import run_operator
from autoscaler.settings import AutoscalerSettings

NS = 'shop'
SAS = 'orderstream.dev/v1alpha1/streamautoscalers'
DEPLOYMENTS = 'apps/v1/deployments'
CLOSE = {'Connection': 'close'}
_versions = itertools.count(1)


class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator plus the metadata a real API server maintains."""

    async def _handle(self, request: kmock.Request):  # type: ignore[override]
        data = request.data
        if request.resource is not None and isinstance(data, dict):
            meta = data.setdefault('metadata', {})
            if request.action == action.CREATE:
                if not meta.get('name') and meta.get('generateName'):
                    meta['name'] = meta['generateName'] + uuid.uuid4().hex[:8]
                meta.setdefault('uid', str(uuid.uuid4()))
                meta.setdefault('creationTimestamp', datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ'))
                meta['generation'] = 1
                meta['resourceVersion'] = str(next(_versions))
            elif request.action == action.UPDATE:
                meta['resourceVersion'] = str(next(_versions))
                if 'spec' in data and request.subresource is None:
                    try:
                        current = self.objects[request.resource, request.namespace, request.name]
                        meta['generation'] = int(current.get('metadata', {}).get('generation', 1)) + 1
                    except (KeyError, ValueError):
                        pass
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as e:
            # A real API server answers a failed JSON-patch `test` (a stale resourceVersion) with
            # 422; kmock 0.8 lets it out as a 500, which kopf retries with the same stale patch.
            raise kmock.KubernetesError(status=422, reason='Invalid', message=str(e)) from None


@pytest.fixture
async def kube():
    """The emulated API server with our CRD and the built-in resources the operator uses."""
    async with ApiServer() as server, kmock.Server(server):
        server.resources[SAS] = kmock.ResourceInfo(
            kind='StreamAutoscaler', singular='streamautoscaler', shortnames={'sas'}, namespaced=True,
            subresources={'status'}, verbs={'get', 'list', 'watch', 'patch', 'create', 'delete'})
        server.resources[DEPLOYMENTS] = kmock.ResourceInfo(kind='Deployment', singular='deployment', namespaced=True,
                                                           subresources={'scale', 'status'})
        for plural, kind in (('pods', 'Pod'), ('secrets', 'Secret'), ('events', 'Event')):
            server.resources[f'v1/{plural}'] = kmock.ResourceInfo(kind=kind, singular=kind.lower(), namespaced=True)
        # kopf waits for these two to be discoverable even with scanning disabled.
        server.resources['v1/namespaces'] = kmock.ResourceInfo(kind='Namespace', singular='namespace', namespaced=False)
        server.resources['apiextensions.k8s.io/v1/customresourcedefinitions'] = kmock.ResourceInfo(
            kind='CustomResourceDefinition', singular='customresourcedefinition', namespaced=False)
        yield server


class Cluster:
    """Test-side helpers over the emulated API (every call with ``Connection: close``)."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server

    async def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        async with self.server.request(method, path, json=body, headers=CLOSE) as resp:
            data = await resp.json(content_type=None)
            assert resp.status < 400, (method, path, resp.status, data)
            return data

    async def create_deployment(self, name: str, replicas: int, pods: int | None = None) -> None:
        labels = {'app': name}
        await self.call('POST', f'/apis/apps/v1/namespaces/{NS}/deployments', {
            'apiVersion': 'apps/v1', 'kind': 'Deployment',
            'metadata': {'name': name, 'namespace': NS},
            'spec': {'replicas': replicas, 'selector': {'matchLabels': labels}},
        })
        for i in range(replicas if pods is None else pods):
            await self.create_pod(f'{name}-{i}', labels)

    async def create_pod(self, name: str, labels: dict[str, str]) -> None:
        await self.call('POST', f'/api/v1/namespaces/{NS}/pods', {
            'apiVersion': 'v1', 'kind': 'Pod', 'metadata': {'name': name, 'namespace': NS, 'labels': labels}})

    async def create_secret(self, name: str, url: str) -> None:
        await self.call('POST', f'/api/v1/namespaces/{NS}/secrets', {
            'apiVersion': 'v1', 'kind': 'Secret', 'metadata': {'name': name, 'namespace': NS},
            'data': {'url': base64.b64encode(url.encode()).decode()}})

    async def create_autoscaler(self, name: str, spec: dict[str, Any]) -> None:
        await self.call('POST', f'/apis/orderstream.dev/v1alpha1/namespaces/{NS}/streamautoscalers', {
            'apiVersion': 'orderstream.dev/v1alpha1', 'kind': 'StreamAutoscaler',
            'metadata': {'name': name, 'namespace': NS}, 'spec': spec})

    async def patch_autoscaler(self, name: str, spec: dict[str, Any]) -> None:
        await self.call('PATCH', f'/apis/orderstream.dev/v1alpha1/namespaces/{NS}/streamautoscalers/{name}',
                        {'spec': spec})

    async def delete_autoscaler(self, name: str) -> None:
        await self.call('DELETE', f'/apis/orderstream.dev/v1alpha1/namespaces/{NS}/streamautoscalers/{name}')

    async def scale_manually(self, deployment: str, replicas: int) -> None:
        """What ``kubectl scale`` does: patch the scale subresource."""
        await self.call('PATCH', f'/apis/apps/v1/namespaces/{NS}/deployments/{deployment}/scale',
                        {'spec': {'replicas': replicas}})

    def autoscaler(self, name: str) -> dict[str, Any] | None:
        try:
            obj = self.server.objects[SAS, NS, name]
        except KeyError:
            return None
        return None if obj.deleted else obj.raw

    def status(self, name: str) -> dict[str, Any]:
        return (self.autoscaler(name) or {}).get('status') or {}

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get('conditions') or () if c['type'] == kind), {})

    def replicas(self, deployment: str) -> int:
        return self.server.objects[DEPLOYMENTS, NS, deployment].raw['spec']['replicas']

    def scale_patches(self, deployment: str) -> list[int]:
        """The replica counts the operator (not the test) patched, in order."""
        path = f'/apis/apps/v1/namespaces/{NS}/deployments/{deployment}/scale'
        return [r.data['spec']['replicas'] for r in list(self.server)
                if r.method == 'PATCH' and r.url.path == path and 'Connection' not in r.headers]

    def events(self, reason: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Events posted by the operator, optionally by reason and involved object's kind."""
        found = []
        for r in list(self.server):
            if r.method == 'POST' and r.url.path == f'/api/v1/namespaces/{NS}/events' and isinstance(r.data, dict):
                involved = r.data.get('involvedObject') or {}
                if (reason is None or r.data.get('reason') == reason) and (kind is None or involved.get('kind') == kind):
                    found.append(r.data)
        return found


@pytest.fixture
def cluster(kube: ApiServer) -> Cluster:
    return Cluster(kube)


async def eventually(check: Callable[[], Any], timeout: float = 10.0, what: Any = '') -> Any:
    """Poll ``check`` (sync or async) every 20 ms until it returns a truthy value; the deadline fails.

    ``what`` describes the expectation; a callable is called at the deadline (e.g. to show a status).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f'not true within {timeout}s: {(what() if callable(what) else what) or check}')
        await asyncio.sleep(0.02)


class OperatorThread:
    """The real operator (``run_operator``) in its own thread and event loop.

    kopf cancels every task created in its loop after it started when it stops, which would
    include pytest-asyncio's fixture finalizers; a separate loop keeps them apart. ``stop`` and
    ``ready`` are thread-safe flags (kopf accepts ``threading.Event``).
    """

    def __init__(self, settings: AutoscalerSettings, kopf_settings: kopf.OperatorSettings) -> None:
        self.settings = settings
        self.kopf_settings = kopf_settings
        self.metrics = CollectorRegistry()
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name='operator', daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(run_operator(self.settings, kopf_settings=self.kopf_settings, stop_flag=self.stop,
                                     ready_flag=self.ready, metrics_registry=self.metrics))
        except BaseException as e:  # reported by the fixture's teardown
            self.error = e

    async def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        started = await asyncio.get_running_loop().run_in_executor(None, self.ready.wait, timeout)
        assert started and self.error is None, f'the operator did not start: {self.error!r}'

    async def join(self, timeout: float = 20.0) -> None:
        self.stop.set()
        await asyncio.get_running_loop().run_in_executor(None, self.thread.join, timeout)
        assert not self.thread.is_alive(), 'the operator did not stop'
        if self.error is not None:
            raise self.error


def use_kubeconfig(kube: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write a kubeconfig pointing at kmock (namespace ``NS``) and point ``KUBECONFIG`` at it."""
    kubeconfig = tmp_path / 'kubeconfig'
    kubeconfig.write_text(f"""
apiVersion: v1
kind: Config
clusters: [{{name: kmock, cluster: {{server: '{str(kube.url).rstrip('/')}'}}}}]
users: [{{name: tester, user: {{token: test-token}}}}]
contexts: [{{name: test, context: {{cluster: kmock, user: tester, namespace: {NS}}}}}]
current-context: test
""")
    monkeypatch.setenv('KUBECONFIG', str(kubeconfig))
    return kubeconfig


@pytest.fixture
async def operator(kube: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The operator, logged in through a kubeconfig that points at kmock; stopped after the test."""
    use_kubeconfig(kube, tmp_path, monkeypatch)
    settings = AutoscalerSettings(namespaces=(NS,), health_port=0, metrics_port=0, autoscaler_tick_seconds=0.05)
    kopf_settings = kopf.OperatorSettings()
    kopf_settings.scanning.disabled = True
    kopf_settings.process.ultimate_exiting_timeout = None
    runner = OperatorThread(settings, kopf_settings)
    await runner.start()
    yield runner
    await runner.join()
    gc.collect()  # anything the operator's loop left unclosed is reported against this test


def autoscaler_spec(redis_secret: str, stream: str, group: str, **overrides: Any) -> dict[str, Any]:
    """A StreamAutoscaler spec for tests: fast polls, small windows."""
    spec: dict[str, Any] = {
        'scaleTargetRef': {'name': 'consumer'},
        'redis': {'urlSecretRef': {'name': redis_secret, 'key': 'url'}},
        'streams': [{'stream': stream, 'group': group}],
        'minReplicas': 0,
        'maxReplicas': 10,
        'targetBacklogPerReplica': 100,
        'pollIntervalSeconds': 0.1,
        'behavior': {'scaleDown': {'stabilizationWindowSeconds': 0}},
    }
    spec.update(overrides)
    return spec
