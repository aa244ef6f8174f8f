"""The ID after another, at the largest ID (issue 9 item 5): nothing comes after it."""

from __future__ import annotations

import pytest

from streamcore.ids import MAX_ID, InvalidStreamId, next_id, successor


def test_successor_is_the_next_id_and_none_after_the_largest():
    assert successor("5-1") == "5-2"
    assert successor("5-18446744073709551615") == "6-0"
    assert successor("18446744073709551615-18446744073709551614") == MAX_ID
    assert successor(MAX_ID) is None


def test_next_id_still_refuses_the_largest_id_from_users():
    with pytest.raises(InvalidStreamId):
        next_id(MAX_ID)
