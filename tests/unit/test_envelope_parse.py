"""The consumer's fast JSON path (orjson) gives the reference decoder's verdict and value.

``streamcore.envelope._parse`` tries orjson first and falls back to the strict stdlib decoder;
every order a handler sees must be the one the reference decoder would have produced (same
values and the same Python types), and every refusal must be the reference decoder's.
"""

from __future__ import annotations

import json
import math
import random

import pytest

from streamcore import envelope
from streamcore.envelope import EnvelopeError, decode

CORPUS = [
    '{"orderId":1,"product":"p","quantity":1,"userId":1}',
    '{"orderId":"A-1","nested":{"a":[1,2.5,-0.0,1e308,true,null]}}',
    '{"orderId":9223372036854775807}',            # largest int64: orjson keeps it an int
    '{"orderId":18446744073709551615}',           # largest uint64
    '{"orderId":18446744073709551616}',           # one more: orjson would give a float
    '{"orderId":-9223372036854775809}',
    '{"orderId":123456789012345678901234567890}',
    '{"orderId":1,"x":1e400}',                    # overflows to infinity: refused
    '{"orderId":1,"x":-1e400}',
    '{"orderId":1,"x":NaN}',
    '{"orderId":1,"x":Infinity}',
    '{"orderId":1,"x":"\\ud800"}',                # lone surrogate escape: refused
    '{"orderId":1,"x":"\\ud83d\\ude00"}',         # a pair: one emoji
    '{"orderId":1,"orderId":2}',                  # duplicate key: the last wins in both
    '{"orderId":1,"x":0.1,"y":5e-324,"z":1.7976931348623157e308}',
    '{"orderId":1,"x":"caf\\u00e9 \u00e9"}',
    '\ufeff{"orderId":1}',
    '{"orderId":1,}',
    '[1,2,3]',
    '"text"',
    '{"orderId": 1 } ',
    "[" * 1200 + "]" * 1200,
    "[" * 400 + "]" * 400,
    '{"orderId":1,"x":"00000000000000000000"}',   # 19+ digits inside a string: reference path, same value
]


def _outcome(parse, data: str):
    try:
        value = parse(data)
    except (ValueError, RecursionError) as exc:
        return ("refused", type(exc).__name__ == "RecursionError")
    return ("ok", json.dumps(value, sort_keys=False), _types(value))


def _types(value):
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value).__name__


@pytest.mark.parametrize("data", CORPUS, ids=range(len(CORPUS)))
def test_fast_parse_matches_the_reference_decoder(data):
    reference = _outcome(envelope._DECODER.decode, data)
    fast = _outcome(envelope._parse, data)
    assert fast[0] == reference[0], (data[:60], fast, reference)
    if reference[0] == "ok":
        assert fast == reference


def test_random_numbers_keep_their_value_and_type():
    rng = random.Random(12)
    for _ in range(3000):
        digits = rng.randint(1, 25)
        n = rng.randint(10 ** (digits - 1), 10 ** digits - 1) * rng.choice((1, -1))
        f = rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-300, 300)
        data = json.dumps({"orderId": n, "f": f})
        parsed = envelope._parse(data)
        assert parsed["orderId"] == n and type(parsed["orderId"]) is int
        fast = envelope.fast_loads(data.encode())  # the producer's path: the request body as bytes
        if fast is not envelope.NOT_FAST:
            assert fast["orderId"] == n and type(fast["orderId"]) is int
        assert parsed["f"] == f or (math.isinf(f) is False and parsed["f"] == json.loads(data)["f"])


def test_decode_refuses_what_the_reference_refuses_with_its_reason():
    with pytest.raises(EnvelopeError) as err:
        decode("1-1", {"data": '{"orderId":1,"x":1e400}'})
    assert err.value.reason == "not_json"
    with pytest.raises(EnvelopeError) as err:
        decode("1-1", {"data": '{"orderId":1,"x":"\\udc00"}'})
    assert err.value.reason == "not_json"
    order = decode("1-1", {"data": '{"orderId":18446744073709551616}'}).order
    assert order == {"orderId": 18446744073709551616} and type(order["orderId"]) is int


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_nineteen_digits_in_a_row_go_to_the_reference_decoder(as_bytes):
    """orjson would read an integer over 64 bits as a float: 19 ASCII digits in a row anywhere
    (a number, or inside a string) send the data to the reference decoder; 18, or a run broken
    by any other character, do not."""
    def fast(text: str):
        return envelope.fast_loads(text.encode() if as_bytes else text)

    assert fast('{"orderId":123456789012345678}') == {"orderId": 123456789012345678}
    assert fast('{"orderId":1234567890123456789}') is envelope.NOT_FAST
    assert fast('{"orderId":1,"x":"0000000000000000000"}') is envelope.NOT_FAST
    assert fast('{"orderId":1,"x":"000000000.0000000000","y":"café 0123456789"}') == {
        "orderId": 1, "x": "000000000.0000000000", "y": "café 0123456789"}
    assert fast('{"orderId":1,"x":"١٢٣٤٥٦٧٨٩٠'
                '١٢٣٤٥٦٧٨٩"}')["orderId"] == 1  # not ASCII digits


def test_text_with_lone_surrogates_goes_to_the_reference_decoder_without_an_error():
    """A value decoded with surrogateescape from bytes that were not UTF-8 holds lone
    surrogates: the digit scan must not fail on it, and orjson refuses it (the reference and
    decode() then judge it)."""
    assert envelope.fast_loads('{"orderId":1,"x":"\udcff"}') is envelope.NOT_FAST
    assert envelope.fast_loads('{"orderId":1234567890123456789,"x":"\udcff"}') is envelope.NOT_FAST
