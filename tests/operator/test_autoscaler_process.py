"""``python -m autoscaler --namespace NS`` as a process: liveness, metrics, and a real scale."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.monitoring import dashboard_metric_names, families
from tests.operator.conftest import NS, autoscaler_spec, eventually
from tests.servers import free_port

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[2]


async def http_get(url: str) -> tuple[int, str]:
    try:
        async with aiohttp.ClientSession(headers={'Connection': 'close'}) as session:
            async with session.get(url) as resp:
                return resp.status, await resp.text()
    except aiohttp.ClientError:
        return 0, ''


async def test_entry_point_serves_probes_and_scales(kube, cluster, tmp_path, r, names, redis_url):
    kubeconfig = tmp_path / 'kubeconfig'
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: k, cluster: {{server: '{str(kube.url).rstrip('/')}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\ncurrent-context: c\n")
    health, metrics = free_port(), free_port()
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), HEALTH_PORT=str(health), METRICS_PORT=str(metrics),
               AUTOSCALER_TICK_SECONDS='0.1', PYTHONPATH=str(REPO))
    await r.xgroup_create(names.stream, names.group, '0', mkstream=True)
    for i in range(250):
        await r.xadd(names.stream, {'data': f'{{"orderId": "p{i}"}}'})
    await cluster.create_secret('redis', redis_url)
    await cluster.create_deployment('consumer', replicas=1)
    await cluster.create_autoscaler('sas', autoscaler_spec('redis', names.stream, names.group))

    proc = await asyncio.create_subprocess_exec(
        sys.executable, '-m', 'autoscaler', '--namespace', NS, cwd=str(REPO), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await eventually(lambda: cluster.scale_patches('consumer') == [3], 30, 'scaled by the process')
        status, _ = await eventually(lambda: _ok(f'http://127.0.0.1:{health}/healthz'), 10, 'kopf liveness')
        text = await eventually(lambda: _metric(f'http://127.0.0.1:{metrics}/metrics'), 10, 'metrics')
        assert f'orderstream_autoscaler_desired_replicas{{autoscaler="{NS}/sas"}} 3.0' in text
        # The decision is kept beside the stream, for the producer's console.
        [(_, decision)] = await r.xrange(f'{names.stream}:autoscaler')
        assert {k: decision[k] for k in ('autoscaler', 'target', 'current', 'desired', 'outcome', 'backlog')} == {
            'autoscaler': f'{NS}/sas', 'target': 'consumer', 'current': '1', 'desired': '3', 'outcome': 'scaled',
            'backlog': '250'}
        # The dashboard's autoscaler panels name only metrics this live operator exports.
        used = {n for n in dashboard_metric_names() if n.startswith('orderstream_autoscaler_')}
        assert used and sorted(used - families(text)) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        stderr = (await proc.stderr.read()).decode() if proc.stderr else ''
    assert code == 0, stderr[-3000:]


async def _ok(url: str):
    status, text = await http_get(url)
    return (status, text) if status == 200 else None


async def _metric(url: str):
    status, text = await http_get(url)
    return text if status == 200 and 'orderstream_autoscaler_desired_replicas{' in text else None
