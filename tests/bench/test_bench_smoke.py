"""The benchmark runs and writes every key (issue 12): ``bench/run.py --smoke``.

Tiny sizes, one repetition: this checks the harness (servers start, wrk and FastStream run, the
JSON has every ratio key with a number, the table prints), never the figures, which mean nothing
at this size and on a machine running the rest of the suite. ``make bench`` measures.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import TARGETS

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(600),
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk; .ci/run does)"),
]


def test_the_smoke_run_writes_every_key_and_the_table(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["ratios"]) == set(TARGETS) == {
        "consumer_vs_minimal_loop", "ingest_vs_plain_aiohttp", "consumer_vs_faststream_default",
        "consumer_vs_faststream_batch", "batch_ingest_orders_per_s", "reclaim_entries_per_s", "e2e_p50_ms",
        "e2e_p99_ms", "consumer_rss_mb"}
    for key, value in result["ratios"].items():
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    assert set(result["met"]) == set(TARGETS)
    raw = result["raw"]
    # The raw figures beside the ratios, each from a run that did its work.
    assert raw["consumers"]["faststream_default"][0]["version"] == result["versions"]["faststream"]
    assert all(run["errors"] == 0 for run in raw["ingest"]["ours"] + raw["batch_ingest"]), raw["ingest"]["ours"]
    assert raw["reclaim"][0]["processed"] == raw["reclaim"][0]["claimed"] > 0
    assert raw["e2e"]["orders"] > 0
    assert "| consumer, no-op handler (orders/s) |" in proc.stdout
    assert f"FastStream {result['versions']['faststream']} default" in proc.stdout


def test_the_http_path_probe_measures_both_sides():
    """``bench/http_path.py`` (CPU per POST /orders, aiohttp's protocol fed from memory): it runs,
    every answer is a 201 (the script fails otherwise), and it prints a figure for each side."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "http_path.py"), "--orders", "300", "--rounds", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.split("(lower is better):", 1)[1]
    assert "plain: CPU " in summary
    assert f"producer {ROOT}: CPU " in summary
