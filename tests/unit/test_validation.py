"""producer.validation: order rules, every bad field named, bodies parsed strictly (C25)."""

from __future__ import annotations

import pytest

from producer.validation import (
    MAX_SAFE_INT,
    BodyError,
    Limits,
    OrderInvalid,
    canonical_hash,
    check_order_id_text,
    parse_json,
    validate_order,
)

LIMITS = Limits(max_id_length=8, max_product_length=10, max_quantity=100)
GOOD = {"orderId": 1001, "product": "Laptop", "quantity": 2, "userId": 42}


def fields_of(data) -> dict[str, str]:
    with pytest.raises(OrderInvalid) as info:
        validate_order(data, LIMITS)
    return info.value.fields


def test_seed_order_is_returned_as_the_same_object():
    order = dict(GOOD)
    assert validate_order(order, LIMITS) is order


def test_extra_fields_nested_and_null_are_kept_in_order():
    order = {"note": None, **GOOD, "items": [{"sku": "a", "qty": 1, "meta": {"x": [1, None, True]}}]}
    out = validate_order(order, LIMITS)
    assert out == order
    assert list(out) == ["note", "orderId", "product", "quantity", "userId", "items"]


@pytest.mark.parametrize("value", [0, 7, MAX_SAFE_INT, "A-1", "o_1.2:x", "9"])
def test_identifier_accepts_ints_and_safe_strings(value):
    assert validate_order({**GOOD, "orderId": value, "userId": value}, LIMITS)["orderId"] == value


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (True, "integer or a string"),
        (False, "integer or a string"),
        (-1, "from 0 to"),
        (MAX_SAFE_INT + 1, "from 0 to"),
        (1.5, "integer or a string"),
        (1.0, "integer or a string"),
        ("", "1 to 8 characters"),
        ("has space", "1 to 8 characters"),
        ("toolong123", "1 to 8 characters"),
        ("-lead", "1 to 8 characters"),
        (None, "integer or a string"),
        ({"a": 1}, "integer or a string"),
    ],
)
def test_identifier_rejections_name_the_field(value, fragment):
    fields = fields_of({**GOOD, "orderId": value})
    assert list(fields) == ["orderId"]
    assert fragment in fields["orderId"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0, "must be an integer from 1 to 100"),
        (101, "must be an integer from 1 to 100"),
        (-3, "must be an integer from 1 to 100"),
        (True, "must be an integer"),
        (2.0, "must be an integer"),
        ("2", "must be an integer"),
        (None, "must be an integer"),
    ],
)
def test_quantity_bounds_and_types(value, reason):
    assert fields_of({**GOOD, "quantity": value}) == {"quantity": reason}


@pytest.mark.parametrize(
    ("value", "reason"),
    [("", "must not be empty"), ("   ", "must not be empty"), ("x" * 11, "must be at most 10 characters"), (5, "must be a string")],
)
def test_product_rules(value, reason):
    assert fields_of({**GOOD, "product": value}) == {"product": reason}


def test_every_bad_field_is_named_at_once():
    fields = fields_of({"orderId": True, "quantity": 0, "userId": "bad id"})
    assert sorted(fields) == ["orderId", "product", "quantity", "userId"]
    assert fields["product"] == "is required"


def test_missing_everything():
    assert fields_of({}) == {name: "is required" for name in ("orderId", "product", "quantity", "userId")}


@pytest.mark.parametrize(("data", "kind"), [([GOOD], "an array"), ("x", "a JSON str"), (3, "a JSON int"), (None, "a JSON NoneType")])
def test_non_objects_are_rejected_without_fields(data, kind):
    with pytest.raises(OrderInvalid) as info:
        validate_order(data, LIMITS)
    assert info.value.fields == {}
    assert info.value.message == f"an order must be a JSON object, not {kind}"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"orderId": 1, "product": "La', "not valid JSON"),
        (b"", "empty"),
        (b"   ", "empty"),
        (b'{"q": NaN}', "NaN is not allowed"),
        (b'{"q": Infinity}', "Infinity is not allowed"),
        (b'{"q": "\xff"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_parse_json_rejects_with_a_reason(body, fragment):
    with pytest.raises(BodyError) as info:
        parse_json(body)
    assert fragment in str(info.value)


def test_parse_json_keeps_values():
    assert parse_json(b'{"a": [1, null, {"b": 2.5}], "c": "\xc3\xa9"}') == {"a": [1, None, {"b": 2.5}], "c": "é"}


def test_canonical_hash_ignores_spacing_and_key_order_but_not_values():
    a = parse_json(b'{"orderId": 1, "product": "x", "n": {"b": 1, "a": 2}}')
    b = parse_json(b'{"n":{"a":2,"b":1},"product":"x","orderId":1}')
    assert canonical_hash(a) == canonical_hash(b)
    assert canonical_hash(a) != canonical_hash({**a, "orderId": 2})
    assert canonical_hash({"q": 1}) != canonical_hash({"q": True})


@pytest.mark.parametrize("text", ["1001", "A-1", "1234567890123456"])
def test_order_id_text_from_path(text):
    assert check_order_id_text(text, 8) == text


@pytest.mark.parametrize("text", ["", "a b", "x" * 9, "12345678901234567", "../etc"])
def test_order_id_text_rejections(text):
    with pytest.raises(OrderInvalid) as info:
        check_order_id_text(text, 8)
    assert list(info.value.fields) == ["orderId"]
