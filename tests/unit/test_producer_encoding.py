"""producer.encoding.order_fields gives exactly streamcore.envelope.encode's fields (issue 12)."""

from __future__ import annotations

import random

import pytest

from producer.encoding import order_fields
from streamcore import envelope

VALUES = [
    0, 1, -1, 2**53 - 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30,
    True, False, None, "", "a", "Item-1", 'quo"te', "back\\slash", "\n\t\r\b\f", "\x00\x1f\x7f", "é", "日本", "\u2028\u2029", "😀",
    1.0, 0.1, 1e16, 1e-7, -0.0, 2.5, [], [1, 2.5], {"a": None}, {"nested": {"x": [1, "y"]}},
]


def random_order(rng: random.Random) -> dict:
    order = {"orderId": rng.choice([7, "A-1", 2**53 - 1]), "product": rng.choice(["Laptop", "日本", 'a"b']), "quantity": 3, "userId": 42}
    for i in range(rng.randint(0, 4)):
        order[rng.choice(["note", "price", f"x{i}", "é"])] = rng.choice(VALUES)
    return order


@pytest.mark.parametrize("key", [None, "retry-1"])
def test_same_fields_as_the_envelope_encoder(key):
    rng = random.Random(12)
    for _ in range(3000):
        order = random_order(rng)
        expected = envelope.encode(order, idempotency_key=key)
        got = order_fields(order, idempotency_key=key)
        assert got == expected, order
        assert list(got) == list(expected)


@pytest.mark.parametrize("value", VALUES)
def test_every_kind_of_value(value):
    order = {"orderId": 1, "product": "p", "quantity": 1, "userId": 1, "extra": value}
    assert order_fields(order) == envelope.encode(order)
