"""How text read from Redis is shown in JSON answers when it may not be UTF-8.

Redis stores bytes, and other tools can write entry field names and values, consumer names and
group names that are not valid UTF-8. Our clients decode replies with ``surrogateescape``
(:mod:`streamcore.connection`), so such a value arrives as a ``str`` holding lone surrogates.
A lone surrogate is not text: ``json.dumps`` would send it as a ``\\udcff`` escape that strict
JSON parsers refuse and lenient ones turn into garbage. So every such value follows one rule:

    a value that is not valid UTF-8 is shown as ``null`` under its usual key, and its exact
    bytes, base64-encoded (RFC 4648, with padding), under the same key plus ``Base64``
    (``"consumer": null, "consumerBase64": "cG9kLf8="``).

Valid UTF-8 is shown as the text it is, with no ``...Base64`` key. Whether a value was valid
UTF-8 is judged by :func:`streamcore.envelope.is_clean_text`, the same judge the consumers use.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from streamcore.connection import ENCODING_ERRORS
from streamcore.envelope import is_clean_text

#: Suffix of the key that carries the base64 of a value that is not UTF-8.
BASE64_SUFFIX = "Base64"


def raw_bytes(value: str) -> bytes:
    """The bytes Redis holds for ``value`` (as decoded by our clients with ``surrogateescape``)."""
    return value.encode("utf-8", ENCODING_ERRORS)


def put_text(target: dict[str, Any], key: str, value: str | None) -> None:
    """Set ``target[key]`` to ``value`` when it is text (or None); otherwise to None, with
    ``target[key + "Base64"]`` holding the base64 of its bytes (see the module docstring)."""
    if value is None or is_clean_text(value):
        target[key] = value
    else:
        target[key] = None
        target[key + BASE64_SUFFIX] = base64.b64encode(raw_bytes(value)).decode("ascii")


def text_fields(**values: str | None) -> dict[str, Any]:
    """``{key: value}`` for each keyword, each set with :func:`put_text`."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        put_text(out, key, value)
    return out


def raw_fields(fields: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every field of an entry, in stream order, as ``{"name", "value"}`` (each with its
    ``...Base64`` twin when not UTF-8): how an unreadable entry is shown, so nothing is hidden."""
    return [text_fields(name=name, value=value) for name, value in fields.items()]


def readable(value: str) -> str:
    """``value`` as text that is always valid UTF-8: invalid bytes become ``\\xNN`` escapes.

    For messages and metric labels, where a key pair would not fit (a Prometheus label value must
    be UTF-8, and one that is not would fail the whole ``/metrics`` page)."""
    if is_clean_text(value):
        return value
    return raw_bytes(value).decode("utf-8", "backslashreplace")
