"""streamcore.groups: the judgement /stream/info, the metrics and the autoscaler share."""

from __future__ import annotations

import pytest

from streamcore.groups import classify_group, is_ahead
from streamcore.ids import MAX_ID


@pytest.mark.parametrize(("delivered", "generated", "expected"), [
    (MAX_ID, "1700000000000-0", True),       # XGROUP SETID to the largest ID
    ("1700000000001-0", "1700000000000-5", True),
    ("1700000000000-6", "1700000000000-5", True),  # the sequence counts
    ("1700000000000-5", "1700000000000-5", False),  # read up to the last entry: in step
    ("0-0", "0-0", False),                   # MKSTREAM, group at 0, nothing appended yet
    ("0-0", "1700000000000-5", False),
    (None, "1700000000000-5", False),        # unknown: nothing to judge by
    ("1700000000000-5", None, False),
    ("not-an-id", "1700000000000-5", False),
])
def test_a_group_is_ahead_only_past_the_last_generated_id(delivered, generated, expected):
    assert is_ahead(delivered, generated) is expected


def test_ahead_comes_after_missing_and_before_abandoned():
    ahead = {"last_delivered_id": MAX_ID, "last_generated_id": "5-0"}
    assert classify_group(stream_exists=True, group_exists=True, pending=3, consumer_quiet_ms=[None],
                          abandoned_after_ms=10, **ahead) == "ahead"
    assert classify_group(stream_exists=True, group_exists=True, pending=3, consumer_quiet_ms=[None],
                          abandoned_after_ms=10, last_delivered_id="5-0", last_generated_id="5-0") == "abandoned"
    assert classify_group(stream_exists=True, group_exists=False, pending=0, consumer_quiet_ms=[], **ahead) == "missing"
    assert classify_group(stream_exists=False, group_exists=False, pending=0, consumer_quiet_ms=[], **ahead) == "no-stream"
    assert classify_group(stream_exists=True, group_exists=True, pending=0, consumer_quiet_ms=[]) == "ok"
