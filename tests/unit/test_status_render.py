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
