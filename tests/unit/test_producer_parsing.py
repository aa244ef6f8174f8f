"""producer.validation.parse_json reads with orjson first and the standard parser as referee
(issue 12): values and error messages are the standard parser's."""

from __future__ import annotations

import json

import pytest

from producer.validation import BodyError, parse_json


@pytest.mark.parametrize(
    "text",
    [
        '{"orderId": 1, "big": 123456789012345678901234567890}',  # beyond 64 bits: kept exact
        '{"n": 18446744073709551616, "m": -9223372036854775809}',
        '{"n": 1234567890123456789}',
        '{"f": 0.1, "g": 1e16, "h": -0.0, "i": 5e-324}',
        '{"s": "\\ud83d\\ude00 \\u00e9 \\u0000", "a": [1, {"b": null}], "a": true}',
    ],
)
def test_values_are_the_standard_parsers(text):
    got = parse_json(text.encode())
    assert got == json.loads(text)
    assert repr(got) == repr(json.loads(text))  # int stays int, float stays float, key order kept


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "body is empty; send a JSON object"),
        (b'{"a": NaN}', "body is not valid JSON: NaN is not allowed"),
        (b'{"a": 1e400}', "body is not acceptable JSON: the number 1e400 is out of range"),
        (b'{"a": "\\ud800"}', "body is not acceptable JSON: it holds a lone UTF-16 surrogate escape (\\uD800-\\uDFFF)"),
        (b'{"a": 1', "body is not valid JSON: Expecting ',' delimiter at line 1 column 8"),
        (b'\xff{}', "body is not UTF-8: invalid start byte at byte 0"),
    ],
)
def test_errors_are_worded_by_the_standard_parser(body, message):
    with pytest.raises(BodyError) as info:
        parse_json(body)
    assert str(info.value) == message
