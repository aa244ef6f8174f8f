"""Shapes of every request and response body of the producer API, and what each route takes and
answers: the source of the OpenAPI document (:mod:`producer.openapi`, served at ``/openapi.json``).

The models only *describe* the API. Nothing here validates a request: the hot path keeps its own
checks (:mod:`producer.validation`), and the answers are built by :mod:`producer.queries` and
:mod:`producer.views` as plain dicts whose keys these ``TypedDict`` s name. A test posts, reads
and re-drives through a live producer and checks every answer against the generated document
(and schemathesis generates requests from it: ``tests/integration/test_openapi_schemathesis.py``).

Values that depend on the settings (limits such as ``MAX_PRODUCT_LENGTH``) are written as an
``x-setting`` marker, ``{"<json-schema keyword>": "<ProducerSettings attribute>"}``, which the
generator replaces with the configured value; text (descriptions) may name settings as
``{attribute}`` format fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, WithJsonSchema
from typing_extensions import NotRequired, Required, TypedDict

from producer.validation import MAX_NESTING, MAX_SAFE_INT
from streamcore.groups import GroupState as StreamGroupState

#: Pattern of a full stream entry ID, ``<ms>-<seq>``.
ID_PATTERN = r"^\d{1,20}-\d{1,20}$"

NOT_UTF8 = (
    "Text read from Redis that is not valid UTF-8 (written by another tool) is null here, with its exact "
    "bytes base64-encoded in the property of the same name plus `Base64`."
)


def _text(description: str = "") -> Any:
    """A text property read from Redis: a string, or null when it is not UTF-8 (see :data:`NOT_UTF8`)."""
    return Annotated[str | None, Field(description=f"{description} {NOT_UTF8}".strip())]


def _describe(tp: Any, description: str) -> Any:
    """``tp`` with a description."""
    return Annotated[tp, Field(description=description)]


#: ``<name>Base64``: the exact bytes of the text property ``<name>`` when that one is null.
Base64 = Annotated[
    str,
    Field(
        description="Only when the text property beside it is null: its bytes.",
        json_schema_extra={"contentEncoding": "base64"},
    ),
]
Text = _text()
NullableInt = int | None
NullableId = str | None
#: Why an entry holds no readable order (:func:`producer.queries.order_item`).
OrderReason = Literal["not_utf8", "no_data", "not_json", "not_object", "too_deep"]
#: The configured group's state (:mod:`streamcore.groups`).
GroupState = StreamGroupState

#: An orderId or userId: a non-negative safe integer or a short identifier string. ``1001`` and
#: ``"1001"`` identify the same order.
Identifier = Annotated[
    int | str,
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INT},
                {
                    "type": "string",
                    "minLength": 1,
                    "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
                    "x-setting": {"maxLength": "max_id_length"},
                },
            ]
        }
    ),
]


# --------------------------------------------------------------------------------------------
# Request bodies


class Order(TypedDict):
    """An order. Extra fields (nested too) are kept exactly as sent. `true`/`false` and `2.0` are
    not integers; nothing is coerced. `1001` and `"1001"` identify the same order. Refused with
    400: arrays/objects nested more than {MAX_NESTING} levels inside the order, numbers that
    overflow to infinity (`1e400`), integers over 4300 digits, lone surrogate escapes (`\\ud800`).
    """

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]

    orderId: Identifier
    product: Annotated[str, Field(min_length=1, json_schema_extra={"x-setting": {"maxLength": "max_product_length"}})]
    quantity: Annotated[int, Field(ge=1, json_schema_extra={"x-setting": {"maximum": "max_quantity"}})]
    userId: Identifier


Order.__doc__ = (Order.__doc__ or "").replace("{MAX_NESTING}", str(MAX_NESTING))

#: POST /orders/batch: a JSON array of orders (all-or-nothing validation).
OrderBatch = Annotated[
    list[Order],
    Field(min_length=1, json_schema_extra={"x-setting": {"maxItems": "batch_max_items"}}),
]


# --------------------------------------------------------------------------------------------
# Response bodies


class Error(TypedDict):
    """Every error answer (400, 404, 405, 409, 413, 415, 422, 500, 503): a message and the reason
    per bad body field, query parameter or header."""

    error: str
    fields: _describe(
        dict[str, str],
        "Reason per bad body field, query parameter or header (`<index>.<field>` in batches); empty when "
        "the error is not about one field.",
    )
    replicasConfirmed: NotRequired[_describe(int, "503 of a WAIT shortfall (REDIS_WAIT_REPLICAS): replicas that "
                                                  "confirmed; the order may be in the stream: retry with the same "
                                                  "Idempotency-Key.")]
    replicasRequired: NotRequired[_describe(int, "503 of a WAIT shortfall: REDIS_WAIT_REPLICAS.")]


class Accepted(TypedDict):
    """One appended (or replayed) order."""

    id: Annotated[str, Field(pattern=ID_PATTERN, description="Stream entry ID (XADD).")]
    orderId: Identifier


class BatchAccepted(TypedDict):
    """POST /orders/batch: every order appended, in request order."""

    orders: list[Accepted]
    count: int


class RawField(TypedDict, total=False):
    """One field of a stream entry, byte-exact."""

    name: Text
    value: Text
    nameBase64: Base64
    valueBase64: Base64


RawFields = _describe(list[RawField], "Every field of the entry in stream order, byte-exact (only when `order` is null).")


class HistoryItem(TypedDict, total=False):
    """One stream entry as :func:`producer.queries.order_item` renders it."""

    id: Required[str]
    order: Required[
        _describe(dict[str, Any] | None, "The order exactly as accepted; null when the entry holds no readable order.")
    ]
    redrivenFrom: _describe(str, "Dead-letter entry ID this entry was re-driven from.")
    error: _describe(str, "Only when `order` is null: why, naming the entry and the field.")
    reason: _describe(
        OrderReason,
        "Only when `order` is null: a field name or value is not UTF-8, no `data` field, `data` not JSON, not a "
        "JSON object, or nested too deeply to return.",
    )
    rawFields: RawFields


class History(TypedDict):
    """GET /orders/history: one page (see :func:`producer.queries.history`)."""

    orders: _describe(list[HistoryItem], "Oldest first.")
    count: int
    next: _describe(NullableId, "Exclusive `start` of the next page; null when the range is done.")
    before: _describe(NullableId, "With `count`: exclusive `end` for the older entries that did not fit.")
    truncated: _describe(bool, "The byte or count cap cut this answer short.")


class PendingEntry(TypedDict, total=False):
    """One entry of the group's pending entries list (extended XPENDING)."""

    id: str
    consumer: Text
    consumerBase64: Base64
    idleMs: _describe(int, "Milliseconds since last delivered (XPENDING).")
    deliveries: int
    gone: _describe(bool, "The entry's data was trimmed or deleted while pending.")
    partition: _describe(int, "Its partition's index (STREAM_PARTITIONS > 1 or Redis Cluster: entry IDs of "
                              "different partitions are independent).")


class PendingConsumer(TypedDict, total=False):
    """A consumer with pending entries (XPENDING summary)."""

    name: Text
    nameBase64: Base64
    pending: int


class Pending(TypedDict, total=False):
    """GET /orders/pending: summary and one page (see :func:`producer.queries.pending`)."""

    stream: str
    group: str
    exists: _describe(bool, "False when the stream or group does not exist yet.")
    count: int
    lowest: NullableId
    highest: NullableId
    consumers: list[PendingConsumer]
    entries: list[PendingEntry]
    next: _describe(NullableId, "Exclusive `start` of the next page when this one is full.")


class Consumer(TypedDict, total=False):
    """A consumer of a group (XINFO CONSUMERS)."""

    name: Text
    nameBase64: Base64
    pending: int
    idleMs: int
    inactiveMs: _describe(NullableInt, "Null where the server does not report it (Redis < 7.2).")


class Group(TypedDict, total=False):
    """A consumer group of the stream (XINFO GROUPS)."""

    name: Text
    nameBase64: Base64
    state: _describe(
        Literal["ok", "ahead", "abandoned"],
        "`ahead`: its lastDeliveredId is past the stream's lastGeneratedId and the clock (moved there by XGROUP "
        "SETID): new entries get smaller IDs and are not delivered to it until its ID is set back; `abandoned`: pending entries and no consumer "
        "seen for ABANDONED_AFTER_MS; else `ok`.",
    )
    consumerCount: int
    pending: int
    lag: _describe(NullableInt, "Null means unknown, never 0.")
    lastDeliveredId: str
    entriesRead: NullableInt
    undeliveredDeleted: _describe(bool, "Entries were trimmed or deleted before this group read them.")
    paused: _describe(bool, "POST /groups/{group}/pause is in force: no consumer reads.")
    oldestPendingId: _describe(NullableId, "The group's smallest pending entry ID (XPENDING summary); null with nothing pending.")
    oldestPendingAgeMs: _describe(NullableInt, "How long ago that entry was appended (now minus its ID's milliseconds).")
    consumers: list[Consumer]


class DeadLetterStream(TypedDict, total=False):
    """The dead-letter stream's name and length (XLEN)."""

    stream: str
    length: int


class StreamInfo(TypedDict, total=False):
    """GET /stream/info (see :func:`producer.queries.stream_info`)."""

    stream: str
    exists: bool
    length: int
    firstEntry: HistoryItem | None
    lastEntry: HistoryItem | None
    lastGeneratedId: NullableId
    maxDeletedEntryId: NullableId
    entriesAdded: NullableInt
    recordedFirstEntryId: NullableId
    lostEntries: _describe(int, "Entries the reclaimer found trimmed or deleted before they were acknowledged.")
    failedDeliveries: _describe(int, "Handler failures so far (deliveries that failed and were retried or "
                                     "dead-lettered), counted in Redis by the consumers and the reclaimer.")
    deadLetters: DeadLetterStream
    group: _describe(str, "The configured group (GROUP_NAME).")
    groupState: _describe(
        GroupState,
        "State of the configured group: `ok`, `ahead` (its last-delivered-id is past the stream's "
        "last-generated-id and the clock: new entries wait until its ID is set back), `abandoned` (pending entries, no consumer seen for "
        "ABANDONED_AFTER_MS), `missing` (the stream exists, the group does not: every entry waits), "
        "`no-stream`. Also in the metric `orderstream_group_state{group,state}`.",
    )
    groups: list[Group]
    partitions: _describe(
        list[dict[str, Any]],
        "STREAM_PARTITIONS > 1 or Redis Cluster: each partition's own answer (this shape, plus `partition`, its "
        "index), in index order; the fields above are their sums and merges.",
    )


class PendingDetail(TypedDict, total=False):
    """OrderStatus `pending`: delivered, not acknowledged."""

    consumer: Text
    consumerBase64: Base64
    deliveries: int
    idleMs: int


class ProcessedDetail(TypedDict, total=False):
    """OrderStatus `processed`: the consumer's processed marker."""

    consumer: Text
    entryId: Text
    atMs: NullableInt
    consumerBase64: Base64
    entryIdBase64: Base64


class DeadLetterDetail(TypedDict, total=False):
    """OrderStatus `deadLetter`: the dead letter that holds the order."""

    dlqId: str
    sourceId: _text("The source entry ID.")
    originalId: _text("Old name of `sourceId` (same value).")
    reason: _text("Why it was dead-lettered (see `DeadLetter`).")
    deliveries: NullableInt
    error: Text
    consumer: Text
    deadLetteredMs: NullableInt
    sourceIdBase64: Base64
    originalIdBase64: Base64
    reasonBase64: Base64
    errorBase64: Base64
    consumerBase64: Base64


class OrderStatus(TypedDict, total=False):
    """GET /orders/{orderId}: where one order stands (see :func:`producer.queries.order_status`)."""

    orderId: Required[str]
    id: Required[NullableId]
    status: Required[_describe(
        Literal["waiting", "pending", "processed", "dead_lettered", "stranded", "acknowledged", "gone"],
        "`stranded`: not pending and not processed while the group is `ahead` (GET /stream/info): it will not "
        "be delivered until the group's ID is set back below it.",
    )]
    order: dict[str, Any]
    pending: PendingDetail
    processed: ProcessedDetail
    deadLetter: DeadLetterDetail


class DeadLetter(TypedDict, total=False):
    """One dead letter (see :func:`producer.queries.dead_letter_item`)."""

    dlqId: str
    sourceId: _text("The source entry ID (`source_id`; `original_id` in old dead letters).")
    originalId: _text("Old name of `sourceId` (same value).")
    sourceStream: Text
    group: Text
    reason: _text(
        "Why it was dead-lettered: `not_utf8`, `no_data`, `not_json`, `not_object` (quarantined at once) "
        "or `max_deliveries`; null in old dead letters."
    )
    orderId: _text("The `order_id` field.")
    order: _describe(dict[str, Any] | None, "Null when the original fields hold no readable order.")
    error: _describe(str, "Only when `order` is null: why, naming the field.")
    orderReason: _describe(OrderReason, "Only when `order` is null.")
    rawFields: RawFields
    deliveries: NullableInt
    lastError: Text
    consumer: Text
    owner: Text
    firstSeenMs: NullableInt
    deadLetteredMs: NullableInt
    sourceIdBase64: Base64
    originalIdBase64: Base64
    sourceStreamBase64: Base64
    groupBase64: Base64
    reasonBase64: Base64
    orderIdBase64: Base64
    lastErrorBase64: Base64
    consumerBase64: Base64
    ownerBase64: Base64
    partition: _describe(int, "Its partition's index (STREAM_PARTITIONS > 1 or Redis Cluster).")


class DeadLetters(TypedDict, total=False):
    """GET /dead-letters: one page (see :func:`producer.queries.dead_letters`)."""

    stream: str
    length: int
    deadLetters: list[DeadLetter]
    count: int
    next: NullableId
    truncated: bool


class Redriven(TypedDict, total=False):
    """One re-driven dead letter."""

    dlqId: str
    id: _describe(str, "The new entry in the order stream.")
    orderId: str
    replayed: _describe(bool, "An earlier re-drive of this dead letter had appended it already.")


class Skipped(TypedDict, total=False):
    """A dead letter the bulk re-drive left in place."""

    dlqId: str
    error: str
    reason: Literal["not_utf8", "no_data", "not_json", "not_object", "too_deep", "no_order_id", "unencodable"]


class RedriveAll(TypedDict, total=False):
    """POST /dead-letters/redrive: counts and items."""

    redriven: int
    items: list[Redriven]
    skipped: list[Skipped]
    remaining: int


class DeadLetterDeleted(TypedDict):
    """DELETE /dead-letters/{dlqId}: the dead letter is gone (XDEL)."""

    dlqId: str
    deleted: _describe(int, "Entries deleted (1).")


class PauseState(TypedDict):
    """POST /groups/{group}/pause and /resume: the group's state after the call."""

    group: str
    paused: bool


class AuditEntry(TypedDict, total=False):
    """One admin mutation (see :func:`producer.audit.read`)."""

    id: str
    action: _text("`redrive`, `redrive_all`, `delete_dead_letter`, `pause` or `resume`.")
    target: _text("The dlqId or group acted on (`*` for all).")
    count: _describe(NullableInt, "How many items the action touched.")
    atMs: _describe(NullableInt, "When, Unix milliseconds.")
    actor: Text
    remote: _text("The client's address.")
    userAgent: Text
    auth: _text("How the request was authorised (token checked or not).")
    actionBase64: Base64
    targetBase64: Base64
    actorBase64: Base64
    remoteBase64: Base64
    userAgentBase64: Base64
    authBase64: Base64


class Audit(TypedDict, total=False):
    """GET /audit: the newest entries of the audit stream, newest first."""

    stream: str
    entries: list[AuditEntry]


class Decision(TypedDict, total=False):
    """One scaling decision of the autoscaler (see :func:`streamcore.decisions.read`); fields another
    writer left malformed are null."""

    id: str
    autoscaler: str | None
    target: str | None
    current: _describe(NullableInt, "Replicas before.")
    desired: _describe(NullableInt, "Replicas decided.")
    outcome: str | None
    reason: str | None
    message: str | None
    backlog: _describe(NullableInt, "The backlog the decision was made from; null when unknown.")
    atMs: _describe(NullableInt, "When, Unix milliseconds.")


class Decisions(TypedDict, total=False):
    """GET /autoscaler/decisions: newest first; empty when no operator scales on this stream."""

    stream: str
    decisions: list[Decision]


class Probe(TypedDict):
    """GET /healthz and /readyz."""

    ok: bool
    reason: NotRequired[str]


# --------------------------------------------------------------------------------------------
# What each route takes and answers


@dataclass(frozen=True)
class Param:
    """A query, path or header parameter: ``schema`` is a JSON schema (with ``x-setting``
    markers allowed); ``description`` may name settings as ``{attribute}``."""

    name: str
    where: Literal["query", "path", "header"]
    description: str
    schema: dict[str, Any]
    required: bool = False


@dataclass(frozen=True)
class Answer:
    """One status of an operation: ``body`` is a model (JSON), ``"text/plain"``/``"text/html"``/
    ``"any"`` for other content, or None for no body; ``headers`` maps names to descriptions."""

    description: str
    body: Any = Error
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    """What one route of :data:`producer.routes.ROUTES` takes and answers."""

    summary: str
    answers: dict[int, Answer]  # status → answer
    params: tuple[Param, ...] = ()
    body: Any = None
    #: A mutating admin route: with ADMIN_TOKEN set it takes ``Authorization: Bearer <token>``
    #: and answers 401 without it (:func:`producer.views.require_admin`); the generator adds both.
    admin: bool = False


_BOUND = (
    "Stream ID bound as Redis reads it: `-`, `+`, `<ms>-<seq>`, ms-only `<ms>` (completed with `-0` "
    "for a start and `-18446744073709551615` for an end), or `(` + an ID for an exclusive bound."
)
_START = Param("start", "query", _BOUND + " Default `-`.", {"type": "string"})
_END = Param("end", "query", _BOUND + " Default `+`.", {"type": "string"})
_IDEM = (
    "1-255 visible ASCII characters. A retry with the same key and body within {idempotency_ttl_seconds} s "
    "replays the first answer without appending; the same key with another body is 422."
)
_IDEM_SCHEMA = {"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$"}
_REPLAYED = {"Idempotent-Replayed": "`true` on a replayed answer."}
_UNAVAILABLE = Answer("Redis is unavailable; nothing was changed (header `Retry-After`).")
_BODY_ERRORS = {
    400: Answer("Not JSON, not an object, or invalid fields (every bad field named)."),
    413: Answer("Body larger than {max_body_bytes} bytes."),
    415: Answer("Content-Type is not application/json."),
    422: Answer("The Idempotency-Key was already used with a different body."),
    503: Answer(
        "Redis is unavailable, or more than IN_FLIGHT_MAX_BYTES of request bodies are in flight; "
        "nothing was changed (header `Retry-After`)."
    ),
}
#: Count or page size clamped to the cap by the view; more than 19 digits is refused (400).
_DLQ_ID = Param("dlqId", "path", "Dead-letter entry ID.", {"type": "string", "pattern": ID_PATTERN}, required=True)
_GROUP = Param("group", "path", "Consumer group of the stream.", {"type": "string"}, required=True)
_PAGE_MAX = {"type": "integer", "minimum": 1, "maximum": 10**19 - 1}
#: Page size refused (400) above HISTORY_MAX_COUNT.
_PAGE_CAPPED = {"type": "integer", "minimum": 1, "x-setting": {"maximum": "history_max_count"}}

#: ``(method, path template)`` → what the route takes and answers. Every route of
#: :data:`producer.routes.ROUTES` has one (a test checks both ways); the pages of
#: :data:`producer.routes.PAGES` (the console, /docs) are not part of the JSON API.
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/orders"): Operation(
        "Accept one order (XADD)",
        params=(Param("Idempotency-Key", "header", _IDEM, _IDEM_SCHEMA),),
        body=Order,
        answers={
            201: Answer(
                "Appended (or replayed).", Accepted, {"Location": "`/orders/{{orderId}}`.", **_REPLAYED}
            ),
            **_BODY_ERRORS,
        },
    ),
    ("POST", "/orders/batch"): Operation(
        "Accept many orders; validation is all-or-nothing",
        params=(Param("Idempotency-Key", "header", _IDEM + " Item i uses `<key>#<i>`.", _IDEM_SCHEMA),),
        body=OrderBatch,
        answers={201: Answer("All appended, in request order.", BatchAccepted, _REPLAYED), **_BODY_ERRORS},
    ),
    ("GET", "/orders/history"): Operation(
        "Replay retained orders, oldest first (XRANGE / XREVRANGE)",
        params=(
            _START,
            _END,
            Param("count", "query", "The last N of the range (capped at {history_max_count}); not with `limit`.", _PAGE_MAX),
            Param("limit", "query", "Page size (larger is clamped to {history_max_count}).", _PAGE_MAX),
        ),
        answers={
            200: Answer("One page, at most {history_max_bytes} bytes of orders (at least one entry).", History),
            400: Answer("Invalid `start`/`end`/`count`/`limit` (named in `fields`)."),
            503: _UNAVAILABLE,
        },
    ),
    ("GET", "/orders/pending"): Operation(
        "The group's pending entries (XPENDING summary + extended form)",
        params=(
            Param("consumer", "query", "Only this consumer's entries.", {"type": "string", "minLength": 1, "maxLength": 256}),
            Param(
                "minIdleMs", "query", "Only entries idle at least this many milliseconds.",
                {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
            ),
            _START,
            _END,
            Param("limit", "query", "Page size (default 100, at most {history_max_count}).", _PAGE_CAPPED),
        ),
        answers={200: Answer("Summary and one page.", Pending), 400: Answer("Invalid parameter."), 503: _UNAVAILABLE},
    ),
    ("GET", "/orders/{orderId}"): Operation(
        "Where one order stands",
        params=(Param("orderId", "path", "The orderId as text.", {"type": "string"}, required=True),),
        answers={
            200: Answer("Known order.", OrderStatus),
            400: Answer("Malformed orderId."),
            404: Answer("Nothing is known about this orderId."),
            503: _UNAVAILABLE,
        },
    ),
    ("GET", "/stream/info"): Operation(
        "Stream, groups, consumers and loss report (XINFO STREAM/GROUPS/CONSUMERS)",
        answers={200: Answer("Also 200 with `exists: false` before the stream exists.", StreamInfo), 503: _UNAVAILABLE},
    ),
    ("GET", "/dead-letters"): Operation(
        "List dead letters, oldest first",
        params=(_START, _END, Param("limit", "query", "Page size (default 100; larger is clamped to {history_max_count}).", _PAGE_MAX)),
        answers={200: Answer("One page.", DeadLetters), 400: Answer("Invalid parameter."), 503: _UNAVAILABLE},
    ),
    ("POST", "/dead-letters/redrive"): Operation(
        "Re-drive the oldest dead letters",
        admin=True,
        params=(
            Param(
                "limit", "query", "At most this many (default and cap {redrive_max}).",
                {"type": "integer", "minimum": 1, "x-setting": {"maximum": "redrive_max"}},
            ),
        ),
        answers={200: Answer("Counts and items.", RedriveAll), 400: Answer("Invalid limit."), 503: _UNAVAILABLE},
    ),
    ("POST", "/dead-letters/{dlqId}/redrive"): Operation(
        "Append one dead letter's order to the stream again, then delete the dead letter",
        admin=True,
        params=(_DLQ_ID,),
        answers={
            200: Answer("Re-driven (idempotent per dead letter).", Redriven),
            400: Answer("Malformed dlqId."),
            404: Answer("No such dead letter."),
            409: Answer(
                "The dead letter holds no order that can be appended again (a field that is not UTF-8, no "
                "`data`, not a JSON object with an orderId); it stays. The message names the dlqId."
            ),
            503: _UNAVAILABLE,
        },
    ),
    ("DELETE", "/dead-letters/{dlqId}"): Operation(
        "Delete one dead letter (the order is given up; recorded in the audit stream)",
        admin=True,
        params=(_DLQ_ID,),
        answers={
            200: Answer("Deleted.", DeadLetterDeleted),
            400: Answer("Malformed dlqId."),
            404: Answer("No such dead letter."),
            503: _UNAVAILABLE,
        },
    ),
    ("POST", "/groups/{group}/pause"): Operation(
        "Pause a consumer group: its consumers issue no new read within BLOCK_MS/2 and claim nothing",
        admin=True,
        params=(_GROUP,),
        answers={200: Answer("Paused.", PauseState), 404: Answer("The stream has no such group."), 503: _UNAVAILABLE},
    ),
    ("POST", "/groups/{group}/resume"): Operation(
        "Resume a paused consumer group",
        admin=True,
        params=(_GROUP,),
        answers={200: Answer("Resumed.", PauseState), 404: Answer("The stream has no such group."), 503: _UNAVAILABLE},
    ),
    ("GET", "/audit"): Operation(
        "Admin mutations (re-drive, delete, pause, resume), newest first",
        params=(Param("limit", "query", "At most this many (default 100; larger is clamped to {history_max_count}).", _PAGE_MAX),),
        answers={200: Answer("The newest entries of the audit stream.", Audit), 400: Answer("Invalid limit."), 503: _UNAVAILABLE},
    ),
    ("GET", "/autoscaler/decisions"): Operation(
        "The autoscaler's scaling decisions about this stream, newest first",
        params=(Param("limit", "query", "At most this many (default 20; larger is clamped to {history_max_count}).", _PAGE_MAX),),
        answers={200: Answer("Decisions.", Decisions), 400: Answer("Invalid limit."), 503: _UNAVAILABLE},
    ),
    ("GET", "/healthz"): Operation("Liveness (no Redis call)", answers={200: Answer("Alive.", Probe)}),
    ("GET", "/readyz"): Operation(
        "Readiness: Redis answers PING and the process is not shutting down",
        answers={200: Answer("Ready.", Probe), 503: Answer("Not ready, with a reason.", Probe)},
    ),
    ("GET", "/metrics"): Operation("Prometheus metrics", answers={200: Answer("Prometheus text format.", "text/plain")}),
    ("GET", "/openapi.json"): Operation(
        "This document", answers={200: Answer("OpenAPI 3.1, generated from producer/models.py; browsable at `/docs`.", dict[str, Any])}
    ),
}
