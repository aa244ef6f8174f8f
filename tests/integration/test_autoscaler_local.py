"""Local end-to-end: ``python -m autoscaler --local`` scales real ``python -m consumer`` processes.

One consumer, a burst of 2000 orders: more consumers within a few polls, the backlog drains,
the consumers go back to one, and every order is processed exactly once. The consumers run a
slowed-down default handler (``slow_process_order`` below, 10 ms per order, 2 at a time) so the burst lasts
long enough to need more than one consumer.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from autoscaler.actuators import ConsumerProcesses
from streamcore.envelope import encode
from streamcore.keys import Keys

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
ORDERS = 2000
POLL_S = 0.3


async def slow_process_order(order, ctx) -> None:
    """The default handler after 10 ms of pretend work (``HANDLER`` for the consumers here)."""
    from consumer.handler import process_order

    await asyncio.sleep(0.01)
    await process_order(order, ctx)


class Autoscaler:
    """The local autoscaler as a child process; its (and its consumers') output is collected."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, '-m', 'autoscaler', '--local', cwd=str(REPO), env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        self._pump = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc and self.proc.stdout
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors='replace').rstrip())

    def scalings(self) -> list[tuple[int, int]]:
        """(before, after) of every 'scaling consumers A -> B' decision logged so far."""
        found = []
        for line in list(self.lines):
            if m := re.search(r'scaling consumers (\d+) -> (\d+)', line):
                found.append((int(m[1]), int(m[2])))
        return found

    async def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise
        if self._pump is not None:
            await self._pump
        return code


async def wait_until(check, timeout: float, what: str, autoscaler: Autoscaler):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            tail = '\n'.join(autoscaler.lines[-40:])
            raise AssertionError(f'{what}: not within {timeout}s; last output:\n{tail}')
        await asyncio.sleep(0.05)


@pytest.fixture
async def autoscaler(redis_url, names):
    env = dict(os.environ)
    env.update(names.env())
    env.update({
        'REDIS_URL': redis_url,
        'PYTHONPATH': str(REPO),
        'LOCAL_MIN_CONSUMERS': '1',
        'LOCAL_MAX_CONSUMERS': '4',
        'TARGET_BACKLOG_PER_REPLICA': '200',
        'LOCAL_POLL_INTERVAL_SECONDS': str(POLL_S),
        'LOCAL_SCALE_DOWN_WINDOW_SECONDS': '2',
        'LOCAL_GRACE_SECONDS': '15',
        'LOCAL_CONSUMER_HEALTH_PORT': '0',
        'HEALTH_PORT': '0',  # consumers: no probe server (ports would clash between children)
        'METRICS_PORT': '0',
        'HANDLER': 'tests.integration.test_autoscaler_local:slow_process_order',
        'CONCURRENCY': '2',  # one consumer: ~200 orders/s, so the burst needs more of them
        'BLOCK_MS': '500',
        'FAILURE_RATE': '0',
        'LOG_LEVEL': 'INFO',
    })
    process = Autoscaler(env)
    await process.start()
    yield process
    if process.proc is not None and process.proc.returncode is None:
        await process.stop()


async def test_burst_scales_up_drains_and_scales_down(autoscaler, r, names):
    keys = Keys(names.stream, names.group, names.dlq)

    # The one consumer is up when it has made the group.
    async def group_exists() -> bool:
        try:
            return any(g['name'] == names.group for g in await r.xinfo_groups(names.stream))
        except Exception:
            return False
    await wait_until(group_exists, 30, 'consumer-1 created the group', autoscaler)
    assert autoscaler.scalings() == []

    pipe = r.pipeline(transaction=False)
    for i in range(ORDERS):
        pipe.xadd(names.stream, encode({'orderId': f'burst-{i}', 'product': 'widget', 'quantity': 1}))
    await pipe.execute()
    burst_at = time.monotonic()

    # Scale-up within a few polls of the burst (the first poll that sees it asks for more).
    await wait_until(lambda: any(after > before for before, after in autoscaler.scalings()), 10 * POLL_S + 5,
                     'scale up after the burst', autoscaler)
    assert time.monotonic() - burst_at < 10 * POLL_S + 5
    assert autoscaler.scalings()[0][0] == 1

    # Drained: nothing undelivered, nothing pending.
    async def drained() -> bool:
        (group,) = [g for g in await r.xinfo_groups(names.stream) if g['name'] == names.group]
        return group['pending'] == 0 and group['lag'] == 0
    await wait_until(drained, 60, 'the backlog drains', autoscaler)

    # Back down to the minimum once the scale-down window has seen only zeros.
    await wait_until(lambda: autoscaler.scalings() and autoscaler.scalings()[-1][1] == 1, 30,
                     'scale back down to 1', autoscaler)
    peak = max(after for _, after in autoscaler.scalings())
    assert 2 <= peak <= 4

    # Every order processed exactly once: one marker per orderId, never a second application.
    pipe = r.pipeline(transaction=False)
    for i in range(ORDERS):
        pipe.hget(keys.processed(f'burst-{i}'), 'consumer')
    owners = await pipe.execute()
    assert all(owners), f'{owners.count(None)} orders were never processed'
    assert len(set(owners)) >= 2, 'the added consumers took part'
    assert set(owners) <= {f'consumer-{n}' for n in range(1, 5)}
    assert not [line for line in autoscaler.lines if 'was already processed' in line]

    # SIGTERM stops the children cleanly, then the autoscaler exits 0.
    assert await autoscaler.stop() == 0
    started = [line for line in autoscaler.lines if re.search(r'consumer-\d+\s*\| started \(pid', line)]
    stopped = [line for line in autoscaler.lines if re.search(r'consumer-\d+\s*\| stopped \(exit 0\)', line)]
    assert len(started) == len(stopped) >= peak, '\n'.join(autoscaler.lines[-30:])


async def test_a_reader_that_stops_reading_never_stalls_the_event_loop():
    """Issue 9 item 10: the children's output used to be written to our stdout from the event
    loop. When whoever reads that pipe (the test, the local runner, a terminal) falls behind on
    a loaded machine, the write blocks, and with it every poll: a poll after the gap then saw a
    window with one sample. Now a blocked writer holds up only the output, in order."""
    gate = threading.Event()    # the reader is back
    reached = threading.Event()  # the first line reached the writer
    timed_out = threading.Event()  # the writer gave up waiting: nobody released it in time
    written: list[str] = []
    release_at = time.monotonic() + 30  # bounds the test if the gate is never opened

    def write(line: str) -> None:
        reached.set()
        if not gate.wait(max(0.0, release_at - time.monotonic())):  # a stuck reader, until released below
            timed_out.set()
        written.append(line)

    script = 'import time\nfor i in range(50): print("line", i, flush=True)\ntime.sleep(60)'
    processes = ConsumerProcesses([sys.executable, '-c', script], dict(os.environ), grace_s=10, write=write)
    started = time.monotonic()
    try:
        await processes.start('consumer-1')
        while not reached.is_set():  # the "started" line is with the (stuck) writer now
            assert time.monotonic() < release_at, 'nothing was written'
            await asyncio.sleep(0.01)
        for _ in range(5):
            await asyncio.sleep(0.01)  # the loop keeps turning while the writer is stuck
        # Only the writer may wait for the reader: had the loop waited with it, the writer would
        # have given up (timed out) before the loop got here to release it.
        assert not timed_out.is_set(), f'the event loop was blocked for {time.monotonic() - started:.1f}s by a stuck writer'
    finally:
        gate.set()
        await processes.stop('consumer-1')
    await processes.aclose()
    assert written[0].startswith('consumer-1  | started (pid')
    assert [line.split('| ')[1] for line in written[1:51]] == [f'line {i}' for i in range(50)]
    assert written[-1].startswith('consumer-1  | stopped (exit')


async def test_local_mode_holds_and_says_so_once_while_the_stream_key_has_the_wrong_type(redis_url, r, names, caplog):
    """Issue 9 item 6 in the local mode: a stream key that is a string holds the consumers (never
    fewer), logs the fault once (not every poll) and once more when the key reads again."""
    from autoscaler.local import run_local
    from autoscaler.settings import AutoscalerSettings

    await r.set(names.stream, 'not a stream')
    settings = AutoscalerSettings(
        redis_url=redis_url, stream_name=names.stream, group_name=names.group, local=True,
        local_min_consumers=1, local_max_consumers=2, local_poll_interval_seconds=0.05,
        local_scale_down_window_seconds=0, local_grace_seconds=5, metrics_port=0, local_consumer_health_port=0,
        consumer_command=f'{sys.executable} -c "import time; time.sleep(60)"')
    stop = asyncio.Event()
    lines: list[str] = []
    caplog.set_level('INFO', logger='autoscaler.local')
    task = asyncio.create_task(run_local(settings, stop=stop, write=lines.append))

    def logged(text: str) -> list[str]:
        return [rec.getMessage() for rec in caplog.records if text in rec.getMessage()]

    async def until(check, what: str) -> None:
        deadline = time.monotonic() + 15
        while not check():
            assert time.monotonic() < deadline and not task.done(), what
            await asyncio.sleep(0.02)

    try:
        await until(lambda: logged('WRONGTYPE'), 'the fault is logged')
        # Let it poll a few more times (each poll sends three XINFO commands) before healing.
        xinfo = (await r.info('commandstats')).get('cmdstat_xinfo|stream', {}).get('calls', 0)
        deadline = time.monotonic() + 15
        while (await r.info('commandstats')).get('cmdstat_xinfo|stream', {}).get('calls', 0) < xinfo + 5:
            assert time.monotonic() < deadline and not task.done(), 'it keeps polling'
            await asyncio.sleep(0.02)
        await r.delete(names.stream)
        await until(lambda: logged('again'), 'the recovery is logged')
        (fault,) = logged('WRONGTYPE')  # once, although it lasted many polls
        assert names.stream in fault and 'holding 1 consumers' in fault
        assert not [line for line in lines if 'stopped' in line]  # the consumer was held
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
