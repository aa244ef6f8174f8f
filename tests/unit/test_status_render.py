"""``orderstream status``'s pieces that need no producer: durations for people."""

from __future__ import annotations

import pytest

from streamcore.status import duration


@pytest.mark.parametrize(("ms", "text"), [
    (None, "-"), (0, "0ms"), (999, "999ms"), (1000, "1.0s"), (4_250, "4.2s"), (59_999, "60.0s"), (60_000, "1m00s"),
    (185_000, "3m05s"), (3_600_000, "1h00m"), (7_800_000, "2h10m"), (86_400_000, "1d0h"), (273_600_000, "3d4h"),
])
def test_duration(ms, text):
    assert duration(ms) == text


def test_control_characters_from_redis_are_shown_not_sent_to_the_terminal():
    from streamcore.status import render

    info = {"stream": "orders", "exists": True, "length": 1, "lastGeneratedId": "1-0", "lostEntries": 0,
            "deadLetters": {"stream": "orders:dlq", "length": 1}, "group": "g", "groupState": "ok",
            "groups": [{"name": "g", "state": "ok", "paused": True, "lag": 0, "pending": 1, "oldestPendingAgeMs": 5,
                        "consumerCount": 1,
                        "consumers": [{"name": "evil\x1b[2J\x1b]0;pwned\x07", "pending": 1, "idleMs": 1}]}]}
    dead = {"stream": "orders:dlq", "length": 1, "deadLetters": [
        {"dlqId": "2-0", "orderId": "o\r1", "reason": "max_deliveries\x1b[41m", "deliveries": 5, "lastError": "x\x1b[1A"}]}
    text = render(info, dead)
    assert not any(c in text for c in "\x1b\x07\r")
    assert "evil\\x1b[2J\\x1b]0;pwned\\x07" in text and "o\\x0d1" in text and "max_deliveries\\x1b[41m" in text
    assert text.splitlines()[6].split()[:2] == ["g", "paused"]  # the group's row says it is paused
