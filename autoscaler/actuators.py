"""Actuators: what turns a decision into replicas.

* :class:`KubeApi` — a small Kubernetes API client over aiohttp, authenticated with the
  :class:`kopf.ConnectionInfo` that kopf's login (service account or kubeconfig) produced, so the
  operator and this client use the same credentials. It reads the target Deployment, patches its
  ``scale`` subresource, lists the pods that are the live consumers, and reads Secret keys.
* :class:`LocalProcessActuator` — the same job for the local stack: keeps ``consumer-1`` ...
  ``consumer-N`` running through two callables; :class:`ConsumerProcesses` provides callables
  that run ``python -m consumer`` children with prefixed output.
"""
from __future__ import annotations

import asyncio
import base64
import ctypes
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import kopf

logger = logging.getLogger(__name__)


class KubeError(Exception):
    """A failed Kubernetes API call. ``status``: HTTP status (0: no answer); ``reason``."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class KubeNotFound(KubeError):
    """HTTP 404: the object (or its resource) does not exist."""


class KubeApi:
    """Minimal Kubernetes API client (aiohttp); one per operator, owned by kopf's memo.

    :meth:`connect` is called by the operator's login handler with kopf's connection info;
    :meth:`close` in the cleanup handler. Every call raises :class:`KubeNotFound` on 404 and
    :class:`KubeError` on other failures (status 0 when the server did not answer).
    """

    def __init__(self, timeout_s: float = 10.0) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._server: str = ''
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._relogin: Callable[[], kopf.ConnectionInfo | None] | None = None
        self._closed = False

    async def connect(self, info: kopf.ConnectionInfo,
                      relogin: Callable[[], kopf.ConnectionInfo | None] | None = None) -> None:
        """(Re)build the HTTP session from kopf's credentials (token, basic auth, client certs, CA).

        ``relogin``: called once when the server answers 401, to read fresh credentials.
        Ignored once :meth:`close` was called (kopf may log in again while stopping).
        """
        if self._closed:
            return
        self._relogin = relogin or self._relogin
        ssl: Any = None
        if info.server.startswith('https'):
            ssl = False if info.insecure else info.as_ssl_context()
        session = aiohttp.ClientSession(
            headers=info.as_http_headers() | {'User-Agent': f'orderstream-autoscaler kopf/{kopf.__version__}'},
            connector=aiohttp.TCPConnector(ssl=ssl, limit=20),
            timeout=self._timeout,
        )
        old, self._session, self._server = self._session, session, info.server.rstrip('/')
        if old is not None:
            await old.close()

    async def close(self) -> None:
        """Close the HTTP session for good."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, *, body: Any = None,
                      params: Mapping[str, str] | None = None, content_type: str | None = None) -> dict[str, Any]:
        """Send one request to ``path`` (``/apis/...``) and return the JSON answer.

        On 401 the credentials are re-read once (``relogin``) and the request is repeated.
        """
        try:
            return await self._request(method, path, body=body, params=params, content_type=content_type)
        except KubeError as e:
            fresh = self._relogin() if e.status == 401 and self._relogin is not None else None
            if fresh is None:
                raise
            await self.connect(fresh)
            return await self._request(method, path, body=body, params=params, content_type=content_type)

    async def _request(self, method: str, path: str, *, body: Any, params: Mapping[str, str] | None,
                       content_type: str | None) -> dict[str, Any]:
        if self._session is None:
            raise KubeError(0, 'NotConnected', 'no credentials yet (the operator has not logged in)')
        headers = {'Content-Type': content_type} if content_type else {}
        try:
            async with self._session.request(method, self._server + path, json=body, params=params,
                                             headers=headers) as resp:
                data = await resp.json(content_type=None) if resp.content_length != 0 else {}
                if resp.status == 404:
                    raise KubeNotFound(404, (data or {}).get('reason', 'NotFound'), (data or {}).get('message', path))
                if resp.status >= 400:
                    raise KubeError(resp.status, (data or {}).get('reason', resp.reason or ''),
                                    (data or {}).get('message', path))
                return data or {}
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise KubeError(0, type(e).__name__, str(e) or 'no answer from the API server') from e

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        """``GET /apis/apps/v1/namespaces/NS/deployments/NAME``: the Deployment object."""
        return await self.request('GET', f'/apis/apps/v1/namespaces/{namespace}/deployments/{name}')

    async def patch_scale(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        """Merge-patch ``spec.replicas`` of the Deployment's ``scale`` subresource; returns the Scale."""
        return await self.request(
            'PATCH', f'/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale',
            body={'spec': {'replicas': replicas}}, content_type='application/merge-patch+json')

    async def list_pod_names(self, namespace: str, match_labels: Mapping[str, str]) -> set[str]:
        """Names of the pods matching ``match_labels`` (the Deployment's selector) in ``namespace``.

        Pods being deleted still count: they are draining and own their in-flight entries.
        """
        selector = ','.join(f'{k}={v}' for k, v in sorted(match_labels.items()))
        data = await self.request('GET', f'/api/v1/namespaces/{namespace}/pods',
                                  params={'labelSelector': selector} if selector else None)
        names = set()
        for pod in data.get('items') or ():
            labels = (pod.get('metadata') or {}).get('labels') or {}
            if all(labels.get(k) == v for k, v in match_labels.items()):  # in case the server ignored it
                names.add(pod['metadata']['name'])
        return names

    async def release_finalizers(self, api_path: str, plural: str, namespace: str | None, finalizer: str,
                                 selector: str = '') -> list[str]:
        """Remove ``finalizer`` from every object of ``plural`` under ``api_path`` (e.g.
        ``/apis/orderstream.dev/v1alpha1``, ``streamautoscalers``) in ``namespace`` (None: every
        namespace) that carries it and matches the label ``selector`` (empty: every object).

        One JSON patch per object, ``test`` then ``remove`` of that list item, so an object whose
        finalizers changed meanwhile is left alone (422) rather than losing another's finalizer.
        Returns ``namespace/name`` of each object released; raises :class:`KubeError` when the
        list fails, and skips objects whose patch fails (gone, or changed).
        """
        listing = f'{api_path}/namespaces/{namespace}/{plural}' if namespace else f'{api_path}/{plural}'
        released = []
        params = {'labelSelector': selector} if selector else None
        for item in (await self.request('GET', listing, params=params)).get('items') or ():
            meta = item.get('metadata') or {}
            finalizers = meta.get('finalizers') or []
            if finalizer not in finalizers:
                continue
            index = finalizers.index(finalizer)
            ops = [{'op': 'test', 'path': f'/metadata/finalizers/{index}', 'value': finalizer},
                   {'op': 'remove', 'path': f'/metadata/finalizers/{index}'}]
            try:
                await self.request('PATCH', f"{api_path}/namespaces/{meta['namespace']}/{plural}/{meta['name']}",
                                   body=ops, content_type='application/json-patch+json')
            except KubeError:
                continue
            released.append(f"{meta['namespace']}/{meta['name']}")
        return released

    async def read_secret_value(self, namespace: str, name: str, key: str) -> str:
        """The decoded value of ``data[key]`` of Secret ``name``. Raises ``KeyError`` if absent."""
        secret = await self.request('GET', f'/api/v1/namespaces/{namespace}/secrets/{name}')
        if key in (secret.get('stringData') or {}):
            return str(secret['stringData'][key])
        return base64.b64decode((secret.get('data') or {})[key]).decode()


def _die_with_parent() -> None:
    """In the child, before exec (Linux): get SIGTERM when the autoscaler dies, even by SIGKILL,
    so no consumer outlives it (children run in their own session, out of the terminal's reach)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


StartFn = Callable[[str], Awaitable[None]]
StopFn = Callable[[str], Awaitable[None]]


class LocalProcessActuator:
    """Keeps ``<prefix>-1`` ... ``<prefix>-N`` consumers running, N given by :meth:`scale`.

    ``start_consumer(name)`` starts one consumer named ``name``; ``stop_consumer(name)`` stops it
    and returns once it has drained (or was killed). Scaling up adds the lowest free numbers;
    scaling down stops the highest numbers first (so names are reused and a consumer that comes
    back under an old name drains its own pending entries first, case C06).
    """

    def __init__(self, start_consumer: StartFn, stop_consumer: StopFn, *, prefix: str = 'consumer') -> None:
        self._start = start_consumer
        self._stop = stop_consumer
        self.prefix = prefix
        self.names: list[str] = []
        self._stopping: set[asyncio.Task[None]] = set()
        self._draining: set[str] = set()

    @property
    def replicas(self) -> int:
        """Consumers started and not asked to stop (draining ones are not counted)."""
        return len(self.names)

    async def scale(self, replicas: int) -> None:
        """Start or stop consumers until ``replicas`` are running.

        Starts are awaited; stops run in the background (each drains for up to its grace
        period) so polling goes on meanwhile. :meth:`close` waits for them.
        """
        while len(self.names) < replicas:
            taken = set(self.names) | self._draining  # a draining name is reused only once it is gone
            number = next(i for i in range(1, len(taken) + 2) if f'{self.prefix}-{i}' not in taken)
            await self._start(f'{self.prefix}-{number}')
            self.names.append(f'{self.prefix}-{number}')
            self.names.sort(key=lambda n: int(n.rsplit('-', 1)[1]))
        victims, self.names = self.names[replicas:], self.names[:replicas]
        for name in reversed(victims):
            self._draining.add(name)
            task = asyncio.create_task(self._drain(name), name=f'stop-{name}')
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def _drain(self, name: str) -> None:
        try:
            await self._stop(name)
        finally:
            self._draining.discard(name)

    async def close(self) -> None:
        """Stop every consumer and wait until all have drained (or were killed)."""
        await self.scale(0)
        while self._stopping:
            await asyncio.gather(*list(self._stopping), return_exceptions=True)


class OutputRelay:
    """Writes lines through ``write`` on a worker thread, in order, so that a slow reader of our
    output never blocks the event loop.

    ``write(line)`` may block (``sys.stdout`` is a pipe to whoever runs us: the local runner, a
    test, a terminal). Called from the event loop, a full pipe froze the whole local autoscaler:
    no poll for seconds while the reader was starved, and the children, whose own pipes we no
    longer drained, stalled in their logging. Here only :meth:`put` waits, and only once
    ``max_lines`` lines are queued (back-pressure on the children's output, as a container
    runtime applies), while polling goes on.
    """

    def __init__(self, write: Callable[[str], None], *, max_lines: int = 1000, batch: int = 200) -> None:
        self._write = write
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(max_lines)
        self._batch = batch
        self._task: asyncio.Task[None] | None = None

    async def put(self, line: str) -> None:
        """Queue ``line`` for writing; waits only while ``max_lines`` are already queued."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name='output-relay')
        await self._queue.put(line)

    def _write_all(self, lines: list[str]) -> None:
        for line in lines:
            self._write(line)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            lines = [line for line in batch if line is not None]
            if lines:
                await asyncio.to_thread(self._write_all, lines)
            if None in batch:
                return

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, then stop; stops waiting after ``timeout_s`` seconds (a reader
        that never reads again must not keep the shutdown waiting here)."""
        if self._task is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self._queue.put(None)
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()


class ConsumerProcesses:
    """Start/stop callables for :class:`LocalProcessActuator` that run consumer processes.

    ``command``: argv of one consumer (e.g. ``[python, -m, consumer]``); ``env``: passed through
    with ``POD_NAME`` set to the consumer's name and, if ``health_port_base`` > 0, ``HEALTH_PORT``
    = base + number - 1. Output lines are prefixed ``<name> |`` and written by ``write``
    (default: our stdout) through an :class:`OutputRelay`, off the event loop. A consumer that
    exits on its own is restarted under the same name (after 1 s, doubling up to 30 s), as a
    Deployment would. Stopping sends SIGTERM, waits ``grace_s`` seconds for the drain, then
    SIGKILL. :meth:`aclose` writes the remaining output.
    """

    def __init__(self, command: Sequence[str], env: Mapping[str, str], *, health_port_base: int = 0,
                 grace_s: float = 25.0, write: Callable[[str], None] | None = None) -> None:
        self.command = list(command)
        self.env = dict(env)
        self.health_port_base = health_port_base
        self.grace_s = grace_s
        self._output = OutputRelay(write or self._stdout)
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping: set[str] = set()

    @staticmethod
    def _stdout(line: str) -> None:
        sys.stdout.write(line + '\n')
        sys.stdout.flush()

    async def _write(self, line: str) -> None:
        await self._output.put(line)

    async def aclose(self) -> None:
        """Write the output still queued (call after every consumer was stopped)."""
        await self._output.aclose()

    def live_names(self) -> set[str]:
        """Names of consumers whose process is running now (draining ones included)."""
        return {name for name, proc in self._procs.items() if proc.returncode is None}

    async def start(self, name: str) -> None:
        """Start consumer ``name`` and supervise it until :meth:`stop`."""
        self._stopping.discard(name)
        await self._spawn(name)
        self._tasks[name] = asyncio.create_task(self._supervise(name), name=f'supervise-{name}')

    async def stop(self, name: str) -> None:
        """SIGTERM consumer ``name``, wait ``grace_s`` seconds for it to drain, then SIGKILL."""
        self._stopping.add(name)
        proc = self._procs.get(name)
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.grace_s)
            except asyncio.TimeoutError:
                await self._write(f'{name:<12}| did not stop in {self.grace_s:.0f}s; killing')
                proc.kill()
                await proc.wait()
        task = self._tasks.pop(name, None)
        if task is not None:
            await task
        self._procs.pop(name, None)

    async def _spawn(self, name: str) -> None:
        env = dict(self.env, POD_NAME=name, PYTHONUNBUFFERED='1')
        if self.health_port_base > 0:
            env['HEALTH_PORT'] = str(self.health_port_base + int(name.rsplit('-', 1)[1]) - 1)
        self._procs[name] = await asyncio.create_subprocess_exec(
            *self.command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C on the terminal reaches us only; we stop children in order
            preexec_fn=_die_with_parent if sys.platform.startswith('linux') else None,
        )
        await self._write(f'{name:<12}| started (pid {self._procs[name].pid})')

    async def _supervise(self, name: str) -> None:
        delay = 1.0
        while True:
            proc = self._procs[name]
            assert proc.stdout is not None
            started = time.monotonic()
            async for raw in proc.stdout:
                await self._write(f'{name:<12}| {raw.decode(errors="replace").rstrip()}')
            code = await proc.wait()
            if name in self._stopping:
                await self._write(f'{name:<12}| stopped (exit {code})')
                return
            delay = 1.0 if time.monotonic() - started > 30 else delay
            await self._write(f'{name:<12}| exited with {code}; restarting in {delay:.0f}s under the same name')
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            if name in self._stopping:
                return
            await self._spawn(name)
