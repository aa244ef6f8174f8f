"""Consumer and reclaimer settings: env names, defaults from docs/CONTRACT.md, validation (no I/O)."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from consumer.settings import ConsumerSettings
from reclaimer.reclaim import Summary
from reclaimer.settings import ReclaimerSettings
from streamcore.handling import load_handler


def test_consumer_defaults_match_the_contract(monkeypatch):
    for var in ("POD_NAME", "HEALTH_PORT", "HANDLER", "FAILURE_RATE", "CLAIM_IDLE_MS", "MAX_DELIVERIES", "BLOCK_MS",
                "READ_COUNT", "CONCURRENCY", "DRAIN_TIMEOUT_SECONDS"):
        monkeypatch.delenv(var, raising=False)
    s = ConsumerSettings()
    assert (s.health_port, s.handler, s.failure_rate, s.claim_idle_ms, s.max_deliveries, s.block_ms, s.read_count,
            s.concurrency, s.drain_timeout_seconds) == (8081, "consumer.handler:process_order", 0.0, 30000, 5, 5000,
                                                         100, 16, 20.0)
    assert s.consumer_name == socket.gethostname()


def test_consumer_reads_env(monkeypatch):
    monkeypatch.setenv("POD_NAME", "consumer-7f9c")
    monkeypatch.setenv("CLAIM_IDLE_MS", "1500")
    monkeypatch.setenv("FAILURE_RATE", "0.1")
    s = ConsumerSettings()
    assert (s.consumer_name, s.claim_idle_ms, s.failure_rate) == ("consumer-7f9c", 1500, 0.1)
    monkeypatch.setenv("FAILURE_RATE", "1.5")
    with pytest.raises(ValidationError):
        ConsumerSettings()


def test_reclaimer_defaults(monkeypatch):
    for var in ("CONSUMER_INACTIVE_TTL_MS", "RECLAIM_INTERVAL_SECONDS", "RECLAIMER_NAME"):
        monkeypatch.delenv(var, raising=False)
    s = ReclaimerSettings()
    assert (s.reclaimer_name, s.consumer_inactive_ttl_ms, s.reclaim_interval_seconds) == ("reclaimer", 3_600_000, 5.0)


def test_summary_line_format():
    line = Summary(claimed=3, processed=2, failed=1, dead_lettered=1, gone=2, consumers_removed=1, trimmed=10, lost=0).line()
    assert line == "reclaim: claimed=3 processed=2 failed=1 dead_lettered=1 gone=2 consumers_removed=1 trimmed=10 lost=0"


def test_load_handler():
    from consumer.handler import process_order
    assert load_handler("consumer.handler:process_order") is process_order
    with pytest.raises(ValueError, match="module:function"):
        load_handler("consumer.handler.process_order")
    with pytest.raises(AttributeError):
        load_handler("consumer.handler:nope")
