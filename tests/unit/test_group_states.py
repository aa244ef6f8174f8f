"""streamcore.groups: the judgement /stream/info, the metrics, the autoscaler and the reclaimer share."""

from __future__ import annotations

import pytest

from streamcore.groups import AHEAD_MARGIN_MS, classify_group, is_ahead
from streamcore.ids import MAX_ID

NOW = 1_700_000_000_000  # ms: the judge's clock in these cases
FUTURE = NOW + AHEAD_MARGIN_MS + 1


@pytest.mark.parametrize(("delivered", "generated", "expected"), [
    (MAX_ID, f"{NOW - 5}-0", True),                 # XGROUP SETID to the largest ID
    (f"{FUTURE}-0", f"{NOW - 5}-0", True),          # SETID an hour ahead: XADD * gets smaller IDs till then
    (f"{NOW + AHEAD_MARGIN_MS}-0", f"{NOW - 5}-0", False),  # within the clock margin: not judged
    (f"{NOW - 5}-1", f"{NOW - 5}-0", False),        # last entry + 1: the next XADD * is above it
    (f"{NOW}-0", f"{NOW - 5000}-0", False),         # SETID to "now", skipping the backlog
    (f"{NOW - 3}-0", f"{NOW - 9}-0", False),        # XINFO STREAM read before an entry was appended
                                                    # and delivered, then XINFO GROUPS: a healthy group
    ("1-0", "0-0", False),                          # XGROUP CREATE ... 1-0 MKSTREAM
    (f"{NOW - 5}-0", "1-0", False),                 # XSETID lowered an emptied stream's last ID
    (f"{FUTURE}-0", f"{FUTURE}-0", False),          # explicit future IDs appended and read: in step
    (f"{FUTURE}-0", f"{FUTURE}-3", False),
    ("0-0", "0-0", False),                          # MKSTREAM, group at 0, nothing appended yet
    (None, f"{NOW}-5", False),                      # unknown: nothing to judge by
    (MAX_ID, None, False),
    ("not-an-id", f"{NOW}-5", False),
])
def test_a_group_is_ahead_only_past_the_last_entry_and_the_clock(delivered, generated, expected):
    assert is_ahead(delivered, generated, now_ms=NOW) is expected


def test_without_a_clock_given_the_hosts_is_used():
    assert is_ahead(MAX_ID, "5-0") is True
    assert is_ahead("6-0", "5-0") is False


def test_ahead_comes_after_missing_and_before_abandoned():
    ahead = {"last_delivered_id": MAX_ID, "last_generated_id": "5-0"}
    assert classify_group(stream_exists=True, group_exists=True, pending=3, consumer_quiet_ms=[None],
                          abandoned_after_ms=10, **ahead) == "ahead"
    assert classify_group(stream_exists=True, group_exists=True, pending=3, consumer_quiet_ms=[None],
                          abandoned_after_ms=10, last_delivered_id="5-0", last_generated_id="5-0") == "abandoned"
    assert classify_group(stream_exists=True, group_exists=False, pending=0, consumer_quiet_ms=[], **ahead) == "missing"
    assert classify_group(stream_exists=False, group_exists=False, pending=0, consumer_quiet_ms=[], **ahead) == "no-stream"
    assert classify_group(stream_exists=True, group_exists=True, pending=0, consumer_quiet_ms=[]) == "ok"
    assert classify_group(stream_exists=True, group_exists=True, pending=0, consumer_quiet_ms=[],
                          last_delivered_id=f"{FUTURE}-0", last_generated_id=f"{NOW}-0", now_ms=NOW) == "ahead"
