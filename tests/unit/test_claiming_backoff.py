"""Back-off arithmetic of streamcore.claiming and streamcore.pacing (no I/O)."""

from __future__ import annotations

import logging

import pytest

from streamcore.claiming import CAP_FACTOR, DELETE_RESULTS, backoff_ms, ceiling_ms
from streamcore.pacing import Backoff, RateLimitedLog


@pytest.mark.parametrize(("deliveries", "expected"), [(0, 200), (1, 200), (2, 400), (3, 800), (4, 1600), (5, 3200),
                                                      (6, 3200), (50, 3200)])
def test_backoff_doubles_per_delivery_up_to_the_cap(deliveries, expected):
    assert backoff_ms(deliveries, 200, rand=lambda: 0.5) == expected


def test_backoff_jitter_is_plus_minus_ten_percent():
    assert backoff_ms(1, 1000, rand=lambda: 0.0) == 900
    assert backoff_ms(1, 1000, rand=lambda: 0.999999) == 1099
    assert backoff_ms(3, 1000, rand=lambda: 0.0) == 3600


def test_ceiling_covers_every_backoff():
    base = 30_000
    worst = max(backoff_ms(d, base, rand=lambda: 0.999999) for d in range(1, 40))
    assert ceiling_ms(base) > worst
    assert ceiling_ms(base) == int(base * CAP_FACTOR * 1.1) + 1


def test_pacing_backoff_caps_and_resets():
    b = Backoff(0.1, 1.0, jitter=0.0)
    assert [b.next_delay() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next_delay() == 0.1


def test_rate_limited_log_suppresses_repeats(caplog):
    log = RateLimitedLog(logging.getLogger("t"), interval_s=3600)
    with caplog.at_level(logging.ERROR):
        assert log.log(logging.ERROR, "boom %s", 1) is True
        assert [log.log(logging.ERROR, "boom %s", 2) for _ in range(50)] == [False] * 50
    assert caplog.text.count("boom") == 1
    assert log.suppressed == 50


def test_delete_results_name_every_script_code():
    assert set(DELETE_RESULTS.values()) == {"deleted", "not_found", "self", "heartbeat", "pending", "active"}
