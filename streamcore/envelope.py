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

A dead-letter entry carries the original entry's fields byte-exact (normally ``data``,
``order_id``, ``v``...), then ``source_id``, ``source_stream``, ``group``, ``reason``, ``error``,
``deliveries``, ``consumer``, ``owner``, ``first_seen_ms`` and ``dead_lettered_ms`` (see
:func:`streamcore.streams.dead_letter`). Older dead letters name the source entry
``original_id``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

SCHEMA_VERSION = "1"


class EnvelopeError(ValueError):
    """An entry has no usable order: a field name or value is not UTF-8, or ``data`` is missing,
    not JSON, or not a JSON object.

    Attributes:
        reason: a short machine-readable reason (one of :data:`POISON_REASONS`), recorded in the
            dead-letter entry's ``reason`` field and used as a metric label.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


#: Why an entry is poison (:attr:`EnvelopeError.reason`): it can never succeed, so it is
#: dead-lettered at once instead of after ``MAX_DELIVERIES`` failed deliveries.
POISON_REASONS = ("not_utf8", "no_data", "not_json", "not_object", "no_order_id")


#: A ``\uD800``-``\uDFFF`` escape: only then can parsed JSON text hold a lone surrogate (a cheap
#: pre-check before encoding the parsed order, as in :func:`producer.validation.parse_json`).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _NotJson(ValueError):
    """``data`` parses only with Python's lenient extensions (see :func:`decode`)."""


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not allowed in JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(f"the number {text[:40]} is out of range")
    return value


#: The strict reference decoder (``json.loads`` with hooks would build a new one per call).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)

#: 19 digits in a row: a number orjson might read as a float (it keeps integers up to 64 bits),
#: which would change the value; such data goes to the reference decoder.
#: Tested as a ``bytes.translate`` (ASCII digits to ``0``, every other byte to a space) and a
#: substring search, both at C speed; a regex (``[0-9]{19}``) tries a match at every position:
#: 13x slower on a 100-order POST /orders/batch body, 2x on a consumer's ``data`` field (issue 12).
_DIGITS_ONLY = bytes(0x30 if 0x30 <= c <= 0x39 else 0x20 for c in range(256))
_LONG_RUN = b"0" * 19

#: What :func:`fast_loads` returns when the reference decoder must decide.
NOT_FAST = object()


def fast_loads(data: str | bytes) -> Any:
    """orjson's parse of ``data`` when it is what the strict reference decoder gives, else
    :data:`NOT_FAST` (then parse with the reference decoder, which also words the error).

    orjson (about 5x faster than the standard parser here, bench/README.md) is stricter than
    the reference (no NaN or Infinity, no number that overflows, no lone surrogate, no invalid
    UTF-8, a depth limit), so its refusals are not verdicts; what it accepts equals the
    reference's result, except that an integer over 64 bits would become a float, so data with
    19 or more digits in a row is not given to it. Shared by the consumer (:func:`decode`) and
    the producer (:func:`producer.validation.parse_json`).
    """
    # Text is encoded first (ASCII digits stay themselves; "surrogatepass" takes the lone
    # surrogates a surrogateescape decode leaves, which orjson then refuses).
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    if _LONG_RUN not in raw.translate(_DIGITS_ONLY):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return NOT_FAST


def _parse(data: str) -> Any:
    """Parse ``data`` exactly as :data:`_DECODER` does, through :func:`fast_loads` when it can.

    Raises:
        ValueError (``json.JSONDecodeError``, ``_NotJson``) or RecursionError: as :data:`_DECODER`.
    """
    value = fast_loads(data)
    return _DECODER.decode(data) if value is NOT_FAST else value


def is_clean_text(value: str) -> bool:
    """True when ``value`` came from valid UTF-8.

    Our clients decode with ``surrogateescape`` (:mod:`streamcore.connection`), which turns each
    byte of invalid UTF-8 into a lone surrogate; a lone surrogate cannot be encoded as UTF-8, so
    ``value.encode()`` fails exactly for values that were not valid UTF-8 on the wire.
    """
    if value.isascii():  # O(1) in CPython (a flag of the string object): the common case
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


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


@dataclass(slots=True)
class Envelope:
    """A decoded order entry (read-only by contract; not frozen, because one is built per
    delivery on the consumer's hot path and a frozen dataclass builds at a third of the speed).

    Attributes:
        entry_id: the stream entry ID (``ms-seq``) from XREADGROUP/XRANGE/XCLAIM.
        order: the order object exactly as accepted.
        fields: every raw field of the entry (the client's reply dict, not copied: treat it as read-only).
    """

    entry_id: str
    order: dict[str, Any]
    fields: dict[str, str] = field(repr=False)

    @property
    def order_id(self) -> str:
        """The orderId as text (``order_id`` field, else ``order["orderId"]``)."""
        return self.fields.get("order_id") or str(self.order.get("orderId"))


def decode(entry_id: str, fields: dict[str, str] | None) -> Envelope:
    """Decode a stream entry into an :class:`Envelope`: the one place that judges an entry.

    Args:
        entry_id: the entry ID.
        fields: the entry's fields as the client decoded them (``surrogateescape``: a value that
            was not UTF-8 holds lone surrogates); None or empty when the data is gone.

    Raises:
        EnvelopeError: with ``reason`` ``not_utf8`` (a field name or value is not valid UTF-8),
            ``no_data`` (no ``data`` field, including a body-less entry), ``not_json`` (``data``
            does not parse, nests deeper than the parser allows, or is JSON only to Python's
            lenient parser: ``NaN``/``Infinity``, a number that overflows to infinity, a lone UTF-16
            surrogate escape — no JSON answer or Redis key could carry such an order, and the
            producer refuses such a body), ``not_object`` (``data`` is JSON but not an object) or
            ``no_order_id`` (the object's ``orderId`` is missing, null, a boolean, an empty string
            or not an integer or string).
    """
    if not fields or "data" not in fields:
        if fields and not all(is_clean_text(k) for k in fields):
            raise EnvelopeError(f"entry {entry_id} has a field name that is not valid UTF-8", "not_utf8")
        raise EnvelopeError(f"entry {entry_id} has no data field", "no_data")
    if not ("".join(fields).isascii() and "".join(fields.values()).isascii()):  # else the field-by-field check
        for name, value in fields.items():
            if not (is_clean_text(name) and is_clean_text(value)):
                raise EnvelopeError(f"entry {entry_id} field {name!r} is not valid UTF-8", "not_utf8")
    data = fields["data"]
    try:
        order = _parse(data)
    except RecursionError:
        raise EnvelopeError(f"entry {entry_id} data is nested too deeply to parse", "not_json") from None
    except ValueError as exc:
        raise EnvelopeError(f"entry {entry_id} data is not JSON: {exc}", "not_json") from exc
    if "\\u" in data and _SURROGATE_ESCAPE.search(data):
        # A paired escape (an emoji) was combined by the parser; a lone one stays a surrogate,
        # which cannot be encoded: every Redis call naming the orderId failed, dead-lettering too.
        try:
            json.dumps(order, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise EnvelopeError(f"entry {entry_id} data is not JSON text: it holds a lone UTF-16 surrogate escape "
                                "(\\uD800-\\uDFFF)", "not_json") from None
    if not isinstance(order, dict):
        raise EnvelopeError(f"entry {entry_id} data is not a JSON object", "not_object")
    order_id = order.get("orderId")
    if isinstance(order_id, bool) or not isinstance(order_id, (int, str)) or order_id == "":
        # The orderId names the processed marker: without one, every such entry would share the
        # marker "None" and all but the first would be acked as already processed, unapplied.
        raise EnvelopeError(f"entry {entry_id} data has no usable orderId (an integer or a non-empty string; "
                            f"got {type(order_id).__name__})", "no_order_id")
    return Envelope(entry_id, order, fields)
