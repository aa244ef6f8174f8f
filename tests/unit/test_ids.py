"""User-supplied stream IDs are validated before they reach Redis (case C23)."""

from __future__ import annotations

import pytest

from streamcore.ids import InvalidStreamId, compare, next_id, parse_id, validate_bound


@pytest.mark.parametrize("text", ["abc", "1-2-3", "-5", "1-18446744073709551616", "1700000000000-*", "", " 1", "1-", "(", "(-", "(+", "1.5"])
def test_bad_bounds_are_rejected_with_a_reason(text):
    with pytest.raises(InvalidStreamId) as exc:
        validate_bound(text, end=False)
    assert str(exc.value)


@pytest.mark.parametrize("text", ["-", "+", "0", "1700000000000", "1700000000000-5", "(1700000000000-5", "(5", "18446744073709551615-18446744073709551615"])
def test_good_bounds_pass_unchanged(text):
    assert validate_bound(text, end=True) == text


def test_exclusive_extremes_are_rejected():
    with pytest.raises(InvalidStreamId):
        validate_bound("(18446744073709551615-18446744073709551615", end=False)
    with pytest.raises(InvalidStreamId):
        validate_bound("(0-0", end=True)


def test_next_id_and_compare():
    assert next_id("5-1") == "5-2"
    assert next_id("5-18446744073709551615") == "6-0"
    assert parse_id("12") == (12, 0)
    assert compare("1-9", "2-0") == -1 and compare("3-0", "3-0") == 0 and compare("10-0", "9-99") == 1
