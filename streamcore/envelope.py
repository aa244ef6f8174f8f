"""The stream entry format of an order (the envelope) and its decoding.

One entry per order. Fields:

``data``
    the order as JSON exactly as accepted (key order and types kept, nested values allowed);
``order_id``
    the orderId as text, so tools can read it without parsing JSON;
``v``
    envelope schema version (``"1"``);
``idempotency_key``
    optional, the client's ``Idempotency-Key`` header;
``redriven_from``
    optional, the dead-letter entry ID this order was re-driven from.

A dead-letter entry carries ``original_id``, ``data``, ``order_id``, ``deliveries``, ``error``,
``consumer``, ``first_seen_ms``, ``dead_lettered_ms`` and ``source_stream``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = "1"


class EnvelopeError(ValueError):
    """An entry has no usable order: its ``data`` field is missing or not a JSON object."""


def dumps(order: dict[str, Any]) -> str:
    """Compact JSON of an order; keeps key order, ``ensure_ascii=False`` keeps text readable."""
    return json.dumps(order, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(order: dict[str, Any], *, idempotency_key: str | None = None, redriven_from: str | None = None) -> dict[str, str]:
    """Build the XADD field map of an order.

    Args:
        order: the validated order as a JSON object (``orderId`` required).
        idempotency_key: the client's ``Idempotency-Key`` header, if any.
        redriven_from: the dead-letter entry ID when re-driving.

    Returns:
        ``{field: value}`` with string values, ready for ``XADD``.
    """
    fields = {"data": dumps(order), "order_id": str(order["orderId"]), "v": SCHEMA_VERSION}
    if idempotency_key is not None:
        fields["idempotency_key"] = idempotency_key
    if redriven_from is not None:
        fields["redriven_from"] = redriven_from
    return fields


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded order entry.

    Attributes:
        entry_id: the stream entry ID (``ms-seq``) from XREADGROUP/XRANGE/XCLAIM.
        order: the order object exactly as accepted.
        fields: every raw field of the entry.
    """

    entry_id: str
    order: dict[str, Any]
    fields: dict[str, str] = field(repr=False)

    @property
    def order_id(self) -> str:
        """The orderId as text (``order_id`` field, else ``order["orderId"]``)."""
        return self.fields.get("order_id") or str(self.order.get("orderId"))


def decode(entry_id: str, fields: dict[str, str] | None) -> Envelope:
    """Decode a stream entry into an :class:`Envelope`.

    Raises:
        EnvelopeError: the entry's data is gone (``fields`` is None or empty) or is not a JSON object.
    """
    if not fields or "data" not in fields:
        raise EnvelopeError(f"entry {entry_id} has no data field")
    try:
        order = json.loads(fields["data"])
    except ValueError as exc:
        raise EnvelopeError(f"entry {entry_id} data is not JSON: {exc}") from exc
    if not isinstance(order, dict):
        raise EnvelopeError(f"entry {entry_id} data is not a JSON object")
    return Envelope(entry_id=entry_id, order=order, fields=dict(fields))
