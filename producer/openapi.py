"""The OpenAPI 3.1 document of the producer API (hand-written, served at ``/openapi.json``).

Kept next to the views on purpose: a test checks that every route is documented and that
every documented route exists.
"""

from __future__ import annotations

from typing import Any

from producer.settings import ProducerSettings
from producer.validation import MAX_NESTING, MAX_SAFE_INT

_ID_PATTERN = r"^\d{1,20}-\d{1,20}$"
_BOUND = (
    "Stream ID bound as Redis reads it: `-`, `+`, `<ms>-<seq>`, ms-only `<ms>` (completed with `-0` "
    "for a start and `-18446744073709551615` for an end), or `(` + an ID for an exclusive bound."
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _path(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


_UNAVAILABLE = _error("Redis is unavailable; nothing was changed (header `Retry-After`).")

_NOT_UTF8 = (
    "Text read from Redis that is not valid UTF-8 (written by another tool) is null here, with its exact "
    "bytes base64-encoded in the property of the same name plus `Base64`."
)
_GROUP_STATES = ["ok", "abandoned", "missing", "no-stream"]


def _text(description: str = "") -> dict[str, Any]:
    """A text property read from Redis: a string, or null when not UTF-8 (see :data:`_NOT_UTF8`)."""
    return {"type": ["string", "null"], "description": f"{description} {_NOT_UTF8}".strip()}


_BASE64 = {"type": "string", "contentEncoding": "base64", "description": "Only when the text property beside it is null: its bytes."}


def _with_base64(properties: dict[str, Any], *names: str) -> dict[str, Any]:
    """``properties`` plus a ``<name>Base64`` property for each of ``names``."""
    return {**properties, **{f"{n}Base64": _BASE64 for n in names}}


_RAW_FIELDS = {
    "type": "array",
    "description": "Every field of the entry in stream order, byte-exact (only when `order` is null).",
    "items": {"type": "object", "properties": _with_base64({"name": _text(), "value": _text()}, "name", "value")},
}


def _schemas(settings: ProducerSettings) -> dict[str, Any]:
    identifier = {
        "oneOf": [
            {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INT},
            {"type": "string", "minLength": 1, "maxLength": settings.max_id_length, "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"},
        ]
    }
    nullable_int = {"type": ["integer", "null"]}
    nullable_id = {"type": ["string", "null"]}
    return {
        "Order": {
            "type": "object",
            "description": (
                "An order. Extra fields (nested too) are kept exactly as sent. `true`/`false` and `2.0` are "
                "not integers; nothing is coerced. `1001` and `\"1001\"` identify the same order. Refused "
                f"with 400: arrays/objects nested more than {MAX_NESTING} levels inside the order, numbers that overflow "
                "to infinity (`1e400`), integers over 4300 digits, lone surrogate escapes (`\\ud800`)."
            ),
            "required": ["orderId", "product", "quantity", "userId"],
            "properties": {
                "orderId": identifier,
                "product": {"type": "string", "minLength": 1, "maxLength": settings.max_product_length},
                "quantity": {"type": "integer", "minimum": 1, "maximum": settings.max_quantity},
                "userId": identifier,
            },
            "additionalProperties": True,
        },
        "Accepted": {
            "type": "object",
            "required": ["id", "orderId"],
            "properties": {"id": {"type": "string", "pattern": _ID_PATTERN, "description": "Stream entry ID (XADD)."}, "orderId": identifier},
        },
        "Error": {
            "type": "object",
            "required": ["error", "fields"],
            "properties": {
                "error": {"type": "string"},
                "fields": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Reason per bad body field, query parameter or header (`<index>.<field>` in batches).",
                },
                "replicasConfirmed": {"type": "integer", "description": "503 of a WAIT shortfall: replicas that confirmed."},
                "replicasRequired": {"type": "integer", "description": "503 of a WAIT shortfall: REDIS_WAIT_REPLICAS."},
            },
        },
        "HistoryItem": {
            "type": "object",
            "required": ["id", "order"],
            "properties": {
                "id": {"type": "string"},
                "order": {"type": ["object", "null"], "description": "The order exactly as accepted; null when the entry holds no readable order."},
                "redrivenFrom": {"type": "string", "description": "Dead-letter entry ID this entry was re-driven from."},
                "error": {"type": "string", "description": "Only when `order` is null: why, naming the entry and the field."},
                "reason": {
                    "enum": ["not_utf8", "no_data", "not_json", "not_object", "too_deep"],
                    "description": "Only when `order` is null: a field name or value is not UTF-8, no `data` field, `data` not JSON, not a JSON object, or nested too deeply to return.",
                },
                "rawFields": _RAW_FIELDS,
            },
        },
        "History": {
            "type": "object",
            "required": ["orders", "count", "next", "before", "truncated"],
            "properties": {
                "orders": {"type": "array", "items": _ref("HistoryItem"), "description": "Oldest first."},
                "count": {"type": "integer"},
                "next": {**nullable_id, "description": "Exclusive `start` of the next page; null when the range is done."},
                "before": {**nullable_id, "description": "With `count`: exclusive `end` for the older entries that did not fit."},
                "truncated": {"type": "boolean", "description": "The byte or count cap cut this answer short."},
            },
        },
        "PendingEntry": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "consumer": _text(),
                "consumerBase64": _BASE64,
                "idleMs": {"type": "integer", "description": "Milliseconds since last delivered (XPENDING)."},
                "deliveries": {"type": "integer"},
                "gone": {"type": "boolean", "description": "The entry's data was trimmed or deleted while pending."},
            },
        },
        "Pending": {
            "type": "object",
            "properties": {
                "stream": {"type": "string"},
                "group": {"type": "string"},
                "exists": {"type": "boolean", "description": "False when the stream or group does not exist yet."},
                "count": {"type": "integer"},
                "lowest": nullable_id,
                "highest": nullable_id,
                "consumers": {
                    "type": "array",
                    "items": {"type": "object", "properties": _with_base64({"name": _text(), "pending": {"type": "integer"}}, "name")},
                },
                "entries": {"type": "array", "items": _ref("PendingEntry")},
                "next": {**nullable_id, "description": "Exclusive `start` of the next page when this one is full."},
            },
        },
        "Consumer": {
            "type": "object",
            "properties": {
                "name": _text(),
                "nameBase64": _BASE64,
                "pending": {"type": "integer"},
                "idleMs": {"type": "integer"},
                "inactiveMs": {**nullable_int, "description": "Null where the server does not report it (Redis < 7.2)."},
            },
        },
        "Group": {
            "type": "object",
            "properties": {
                "name": _text(),
                "nameBase64": _BASE64,
                "state": {
                    "enum": _GROUP_STATES[:2],
                    "description": "`abandoned`: pending entries and no consumer seen for ABANDONED_AFTER_MS; else `ok`.",
                },
                "consumerCount": {"type": "integer"},
                "pending": {"type": "integer"},
                "lag": {**nullable_int, "description": "Null means unknown, never 0."},
                "lastDeliveredId": {"type": "string"},
                "entriesRead": nullable_int,
                "undeliveredDeleted": {"type": "boolean", "description": "Entries were trimmed or deleted before this group read them."},
                "paused": {"type": "boolean", "description": "POST /groups/{group}/pause is in force: no consumer reads."},
                "oldestPendingId": {**nullable_id, "description": "The group's smallest pending entry ID (XPENDING summary); null with nothing pending."},
                "oldestPendingAgeMs": {**nullable_int, "description": "How long ago that entry was appended (now minus its ID's milliseconds)."},
                "consumers": {"type": "array", "items": _ref("Consumer")},
            },
        },
        "PauseState": {"type": "object", "properties": {"group": {"type": "string"}, "paused": {"type": "boolean"}}},
        "Audit": {
            "type": "object",
            "properties": {
                "stream": {"type": "string"},
                "entries": {"type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "string"}, "action": _text(), "target": _text(), "count": nullable_int, "atMs": nullable_int,
                    "actor": _text(), "remote": _text(), "userAgent": _text(), "auth": _text()}}},
            },
        },
        "StreamInfo": {
            "type": "object",
            "properties": {
                "stream": {"type": "string"},
                "exists": {"type": "boolean"},
                "length": {"type": "integer"},
                "firstEntry": {"oneOf": [_ref("HistoryItem"), {"type": "null"}]},
                "lastEntry": {"oneOf": [_ref("HistoryItem"), {"type": "null"}]},
                "lastGeneratedId": nullable_id,
                "maxDeletedEntryId": nullable_id,
                "entriesAdded": nullable_int,
                "recordedFirstEntryId": nullable_id,
                "lostEntries": {"type": "integer", "description": "Entries the reclaimer found trimmed or deleted before they were acknowledged."},
                "deadLetters": {"type": "object", "properties": {"stream": {"type": "string"}, "length": {"type": "integer"}}},
                "group": {"type": "string", "description": "The configured group (GROUP_NAME)."},
                "groupState": {
                    "enum": _GROUP_STATES,
                    "description": (
                        "State of the configured group: `ok`, `abandoned` (pending entries, no consumer seen for "
                        "ABANDONED_AFTER_MS), `missing` (the stream exists, the group does not: every entry waits), "
                        "`no-stream`. Also in the metric `orderstream_group_state{group,state}`."
                    ),
                },
                "groups": {"type": "array", "items": _ref("Group")},
            },
        },
        "OrderStatus": {
            "type": "object",
            "required": ["orderId", "id", "status"],
            "properties": {
                "orderId": {"type": "string"},
                "id": nullable_id,
                "status": {"enum": ["waiting", "pending", "processed", "dead_lettered", "acknowledged", "gone"]},
                "order": {"type": "object"},
                "pending": {
                    "type": "object",
                    "properties": _with_base64(
                        {"consumer": _text(), "deliveries": {"type": "integer"}, "idleMs": {"type": "integer"}}, "consumer"),
                },
                "processed": {
                    "type": "object",
                    "properties": _with_base64({"consumer": _text(), "entryId": _text(), "atMs": nullable_int}, "consumer", "entryId"),
                },
                "deadLetter": {
                    "type": "object",
                    "properties": _with_base64(
                        {
                            "dlqId": {"type": "string"},
                            "sourceId": _text("The source entry ID."),
                            "originalId": _text("Old name of `sourceId` (same value)."),
                            "reason": _text("Why it was dead-lettered (see `DeadLetter`)."),
                            "deliveries": nullable_int,
                            "error": _text(),
                            "consumer": _text(),
                            "deadLetteredMs": nullable_int,
                        },
                        "sourceId", "originalId", "reason", "error", "consumer",
                    ),
                },
            },
        },
        "DeadLetter": {
            "type": "object",
            "properties": _with_base64(
                {
                    "dlqId": {"type": "string"},
                    "sourceId": _text("The source entry ID (`source_id`; `original_id` in old dead letters)."),
                    "originalId": _text("Old name of `sourceId` (same value)."),
                    "sourceStream": _text(),
                    "group": _text(),
                    "reason": _text(
                        "Why it was dead-lettered: `not_utf8`, `no_data`, `not_json`, `not_object` (quarantined at once) "
                        "or `max_deliveries`; null in old dead letters."
                    ),
                    "orderId": _text("The `order_id` field."),
                    "order": {"type": ["object", "null"], "description": "Null when the original fields hold no readable order."},
                    "error": {"type": "string", "description": "Only when `order` is null: why, naming the field."},
                    "orderReason": {
                        "enum": ["not_utf8", "no_data", "not_json", "not_object", "too_deep"],
                        "description": "Only when `order` is null.",
                    },
                    "rawFields": _RAW_FIELDS,
                    "deliveries": nullable_int,
                    "lastError": _text(),
                    "consumer": _text(),
                    "owner": _text(),
                    "firstSeenMs": nullable_int,
                    "deadLetteredMs": nullable_int,
                },
                "sourceId", "originalId", "sourceStream", "group", "reason", "orderId", "lastError", "consumer", "owner",
            ),
        },
        "DeadLetters": {
            "type": "object",
            "properties": {
                "stream": {"type": "string"},
                "length": {"type": "integer"},
                "deadLetters": {"type": "array", "items": _ref("DeadLetter")},
                "count": {"type": "integer"},
                "next": nullable_id,
                "truncated": {"type": "boolean"},
            },
        },
        "Redriven": {
            "type": "object",
            "properties": {
                "dlqId": {"type": "string"},
                "id": {"type": "string", "description": "The new entry in the order stream."},
                "orderId": {"type": "string"},
                "replayed": {"type": "boolean", "description": "An earlier re-drive of this dead letter had appended it already."},
            },
        },
        "RedriveAll": {
            "type": "object",
            "properties": {
                "redriven": {"type": "integer"},
                "items": {"type": "array", "items": _ref("Redriven")},
                "skipped": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "dlqId": {"type": "string"},
                            "error": {"type": "string"},
                            "reason": {"enum": ["not_utf8", "no_data", "not_json", "not_object", "too_deep", "no_order_id", "unencodable"]},
                        },
                    },
                },
                "remaining": {"type": "integer"},
            },
        },
        "Probe": {
            "type": "object",
            "required": ["ok"],
            "properties": {"ok": {"type": "boolean"}, "reason": {"type": "string"}},
        },
    }


def openapi_document(settings: ProducerSettings) -> dict[str, Any]:
    """The OpenAPI 3.1 document, with the configured limits filled in."""
    bound_start = _query("start", _BOUND + " Default `-`.", {"type": "string"})
    bound_end = _query("end", _BOUND + " Default `+`.", {"type": "string"})
    page_limit = _query("limit", f"Page size, at most {settings.history_max_count}.", {"type": "integer", "minimum": 1})
    idem = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": (
            f"1-255 visible ASCII characters. A retry with the same key and body within "
            f"{settings.idempotency_ttl_seconds} s replays the first answer without appending; "
            "the same key with another body is 422."
        ),
        "schema": {"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$"},
    }
    replayed = {"Idempotent-Replayed": {"description": "`true` on a replayed answer.", "schema": {"type": "string"}}}
    location = {"Location": {"description": "`/orders/{orderId}`.", "schema": {"type": "string"}}}
    body_errors = {
        "400": _error("Not JSON, not an object, or invalid fields (every bad field named)."),
        "413": _error(f"Body larger than {settings.max_body_bytes} bytes."),
        "415": _error("Content-Type is not application/json."),
        "422": _error("The Idempotency-Key was already used with a different body."),
        "503": _error(
            "Redis is unavailable, or more than IN_FLIGHT_MAX_BYTES of request bodies are in flight; "
            "nothing was changed (header `Retry-After`). With REDIS_WAIT_REPLICAS set, a 503 carrying "
            "`replicasConfirmed` < `replicasRequired` means the order was appended on the primary but not "
            "confirmed by enough replicas: retry with the same Idempotency-Key."
        ),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "orderstream producer",
            "version": "0.1.0",
            "description": "Orders in, on a Redis stream processed by a consumer group. All errors are JSON `Error` objects.",
        },
        "paths": {
            "/orders": {
                "post": {
                    "summary": "Accept one order (XADD)",
                    "parameters": [idem],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Order")}}},
                    "responses": {"201": _json(_ref("Accepted"), "Appended (or replayed).", {**location, **replayed}), **body_errors},
                }
            },
            "/orders/batch": {
                "post": {
                    "summary": "Accept many orders; validation is all-or-nothing",
                    "parameters": [{**idem, "description": "Item i uses `<key>#<i>`."}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"type": "array", "items": _ref("Order"), "minItems": 1, "maxItems": settings.batch_max_items}}},
                    },
                    "responses": {
                        "201": _json(
                            {"type": "object", "properties": {"orders": {"type": "array", "items": _ref("Accepted")}, "count": {"type": "integer"}}},
                            "All appended, in request order.",
                            replayed,
                        ),
                        **body_errors,
                    },
                }
            },
            "/orders/history": {
                "get": {
                    "summary": "Replay retained orders, oldest first (XRANGE / XREVRANGE)",
                    "parameters": [
                        bound_start,
                        bound_end,
                        _query("count", f"The last N of the range (capped at {settings.history_max_count}); not with `limit`.", {"type": "integer", "minimum": 1}),
                        page_limit,
                    ],
                    "responses": {
                        "200": _json(_ref("History"), f"One page, at most {settings.history_max_bytes} bytes of orders (at least one entry)."),
                        "400": _error("Invalid `start`/`end`/`count`/`limit` (named in `fields`)."),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/orders/pending": {
                "get": {
                    "summary": "The group's pending entries (XPENDING summary + extended form)",
                    "parameters": [
                        _query("consumer", "Only this consumer's entries.", {"type": "string"}),
                        _query(
                            "minIdleMs", "Only entries idle at least this many milliseconds.",
                            {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                        ),
                        bound_start,
                        bound_end,
                        _query("limit", f"Page size (default 100, at most {settings.history_max_count}).", {"type": "integer", "minimum": 1}),
                    ],
                    "responses": {"200": _json(_ref("Pending"), "Summary and one page."), "400": _error("Invalid parameter."), "503": _UNAVAILABLE},
                }
            },
            "/orders/{orderId}": {
                "get": {
                    "summary": "Where one order stands",
                    "parameters": [_path("orderId", "The orderId as text.", {"type": "string"})],
                    "responses": {
                        "200": _json(_ref("OrderStatus"), "Known order."),
                        "400": _error("Malformed orderId."),
                        "404": _error("Nothing is known about this orderId."),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/stream/info": {
                "get": {
                    "summary": "Stream, groups, consumers and loss report (XINFO STREAM/GROUPS/CONSUMERS)",
                    "responses": {"200": _json(_ref("StreamInfo"), "Also 200 with `exists: false` before the stream exists."), "503": _UNAVAILABLE},
                }
            },
            "/dead-letters": {
                "get": {
                    "summary": "List dead letters, oldest first",
                    "parameters": [bound_start, bound_end, _query("limit", "Page size (default 100).", {"type": "integer", "minimum": 1})],
                    "responses": {"200": _json(_ref("DeadLetters"), "One page."), "400": _error("Invalid parameter."), "503": _UNAVAILABLE},
                }
            },
            "/dead-letters/{dlqId}/redrive": {
                "post": {
                    "summary": "Append one dead letter's order to the stream again, then delete the dead letter",
                    "parameters": [_path("dlqId", "Dead-letter entry ID.", {"type": "string", "pattern": _ID_PATTERN})],
                    "responses": {
                        "200": _json(_ref("Redriven"), "Re-driven (idempotent per dead letter)."),
                        "400": _error("Malformed dlqId."),
                        "404": _error("No such dead letter."),
                        "409": _error("The dead letter holds no order that can be appended again (a field that is not UTF-8, no "
                                      "`data`, not a JSON object with an orderId); it stays. The message names the dlqId."),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/dead-letters/redrive": {
                "post": {
                    "summary": "Re-drive the oldest dead letters",
                    "parameters": [_query("limit", f"At most this many (default and cap {settings.redrive_max}).", {"type": "integer", "minimum": 1, "maximum": settings.redrive_max})],
                    "responses": {"200": _json(_ref("RedriveAll"), "Counts and items."), "400": _error("Invalid limit."), "503": _UNAVAILABLE},
                }
            },
            "/dead-letters/{dlqId}": {
                "delete": {
                    "summary": "Delete one dead letter (the order is given up; recorded in the audit stream)",
                    "parameters": [_path("dlqId", "Dead-letter entry ID.", {"type": "string", "pattern": _ID_PATTERN})],
                    "responses": {
                        "200": _json({"type": "object", "properties": {"dlqId": {"type": "string"}, "deleted": {"type": "integer"}}},
                                     "Deleted."),
                        "400": _error("Malformed dlqId."),
                        "401": _error("ADMIN_TOKEN is set and the request has no valid 'Authorization: Bearer' token."),
                        "404": _error("No such dead letter."),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/groups/{group}/pause": {
                "post": {
                    "summary": "Pause a consumer group: its consumers issue no new read within BLOCK_MS/2 and claim nothing",
                    "parameters": [_path("group", "Consumer group of the stream.", {"type": "string"})],
                    "responses": {
                        "200": _json(_ref("PauseState"), "Paused."),
                        "401": _error("ADMIN_TOKEN is set and the request has no valid 'Authorization: Bearer' token."),
                        "404": _error("The stream has no such group."),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/groups/{group}/resume": {
                "post": {
                    "summary": "Resume a paused consumer group",
                    "parameters": [_path("group", "Consumer group of the stream.", {"type": "string"})],
                    "responses": {
                        "200": _json(_ref("PauseState"), "Resumed."),
                        "401": _error("ADMIN_TOKEN is set and the request has no valid 'Authorization: Bearer' token."),
                        "404": _error("The stream has no such group."),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/audit": {
                "get": {
                    "summary": "Admin mutations (re-drive, delete, pause, resume), newest first",
                    "parameters": [_query("limit", "At most this many (default 100, capped by HISTORY_MAX_COUNT).", {"type": "integer", "minimum": 1})],
                    "responses": {"200": _json(_ref("Audit"), "The newest entries of the audit stream."), "400": _error("Invalid limit."),
                                  "503": _UNAVAILABLE},
                }
            },
            "/autoscaler/decisions": {
                "get": {
                    "summary": "The autoscaler's scaling decisions about this stream, newest first",
                    "parameters": [_query("limit", "At most this many (default 20, capped by HISTORY_MAX_COUNT).", {"type": "integer", "minimum": 1})],
                    "responses": {"200": _json({"type": "object", "properties": {
                        "stream": {"type": "string"},
                        "decisions": {"type": "array", "items": {"type": "object", "properties": {
                            "id": {"type": "string"}, "autoscaler": _text(), "target": _text(), "current": {"type": ["integer", "null"]},
                            "desired": {"type": ["integer", "null"]}, "outcome": _text(), "reason": _text(), "message": _text(),
                            "backlog": {"type": ["integer", "null"]}, "atMs": {"type": ["integer", "null"]}}}}}}, "Decisions."),
                                  "400": _error("Invalid limit."), "503": _UNAVAILABLE},
                }
            },
            "/healthz": {"get": {"summary": "Liveness (no Redis call)", "responses": {"200": _json(_ref("Probe"), "Alive.")}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness: Redis answers PING and the process is not shutting down",
                    "responses": {"200": _json(_ref("Probe"), "Ready."), "503": _json(_ref("Probe"), "Not ready, with a reason.")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "Prometheus text format.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1.", "content": {"application/json": {"schema": {"type": "object"}}}}},
                }
            },
        },
        "components": {"schemas": _schemas(settings)},
    }
