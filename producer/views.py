"""HTTP handlers of the producer API and the wrapper that maps their errors to JSON.

Every error answer is JSON: ``{"error": "<sentence>", "fields": {"<name>": "<reason>"}}``
(``fields`` names each bad body field, query parameter or header). Redis being unreachable or
failing gives 503 ``{"error": ...}``; nothing ever answers with a stack trace.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import AskError, ClusterError, RedisClusterException, RedisError, ResponseError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from producer import audit, deadletters, partitioned
from producer.appender import AppendCall, NotReplicated
from producer.backlog import read_backlog
from producer.appkeys import APPENDER, IN_FLIGHT, LIFECYCLE, LIMITS, METRICS, REDIS, REGISTRY, SETTINGS
from producer.encoding import order_fields
from producer.openapi import openapi_document
from producer.validation import (
    BodyError,
    OrderInvalid,
    canonical_hash,
    check_order_id_text,
    parse_json,
    validate_order,
)
from streamcore import decisions, ids
from streamcore.keys import Keys
from streamcore.streams import is_no_such_key
from streamcore.metrics import CONTENT_TYPE_LATEST, render

logger = logging.getLogger(__name__)

# All used with fullmatch and ASCII classes: ``$`` also matches before a final newline and ``\d``
# matches every Unicode digit ("5\n", "\u0665" passed and reached Redis, which refused them: 503).
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_FULL_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_UINT = re.compile(r"[0-9]{1,19}")
#: Request key: bytes of the in-flight budget this request holds (see ``_json_body``).
_RESERVED = web.RequestKey("reserved_bytes", int)
#: Least a POST is charged against IN_FLIGHT_MAX_BYTES, whatever its body size.
_MIN_CHARGE = 16 * 1024
#: Largest value Redis takes where it reads a signed 64-bit integer (XPENDING ... IDLE).
_INT64_MAX = 2**63 - 1
#: The 503 message: an append may or may not have happened when the connection broke mid-call.
UNAVAILABLE = "Redis is unavailable; retry later (with the same Idempotency-Key, a retry never appends twice)"
#: The 503 message when fewer than REDIS_WAIT_REPLICAS replicas confirmed the append.
NOT_REPLICATED = ("not enough Redis replicas confirmed the order; it may have been appended: retry with the "
                  "same Idempotency-Key (a retry never appends twice)")


class ApiError(Exception):
    """An error answer: ``status`` and ``{"error": message, "fields": fields}``."""

    def __init__(
        self,
        status: int,
        message: str,
        fields: dict[str, str] | None = None,
        *,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields or {}
        self.reason = reason
        self.headers = headers or {}

    def response(self) -> web.Response:
        """The JSON answer."""
        return web.json_response({"error": self.message, "fields": self.fields}, status=self.status, headers=self.headers)


#: The ``route`` label of answers no route of the API matched (404, 405).
UNMATCHED = "unmatched"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def require_admin(request: web.Request) -> bool:
    """Check the admin token of a mutating admin route; returns whether one was checked.

    With ADMIN_TOKEN set, the request must carry ``Authorization: Bearer <token>`` (compared in
    constant time); otherwise 401 with ``WWW-Authenticate: Bearer`` and a JSON body naming the
    header. With ADMIN_TOKEN unset every caller passes (False: nothing was checked).

    Raises:
        ApiError: 401, the token is missing or wrong.
    """
    expected = request.app[SETTINGS].admin_token
    if expected is None:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # aiohttp hands header bytes that are not UTF-8 over as lone surrogates: encoded back to
    # those bytes, such a token is simply wrong (a 401), never a UnicodeEncodeError (a 500).
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, expected.get_secret_value().encode()):
        raise ApiError(401, "admin token required", {"Authorization": "Bearer <ADMIN_TOKEN> is required for this route"},
                       headers={"WWW-Authenticate": 'Bearer realm="orderstream admin"'})
    return True


def api_handler(route: str, handler: Handler) -> Handler:
    """``handler`` wrapped so every error becomes a JSON answer and every answer is counted under
    ``route`` (the route template, e.g. ``/orders/{orderId}``, or :data:`UNMATCHED`).

    ``ApiError`` → its status; aiohttp's own HTTP errors (413 from ``client_max_size``) → the
    same status with a JSON body; Redis unreachable or timing out, or a Redis Cluster failing
    over or moving the slot → 503 with :data:`UNAVAILABLE` and ``Retry-After: 1``; an error reply from Redis (OOM, READONLY,
    WRONGTYPE) → 503 naming it; fewer replicas than REDIS_WAIT_REPLICAS confirmed
    (:class:`producer.appender.NotReplicated`) → 503 with ``replicasConfirmed``,
    ``replicasRequired`` and ``Retry-After: 1``; any other exception → 500 ``{"error": "internal error"}`` (logged
    with its trace, never sent). The in-flight bytes a request reserved (``_json_body``) are
    given back when it ends.

    Applied per route by :func:`producer.routes.setup_routes` instead of as an aiohttp
    middleware: a middleware puts two more coroutine layers (its own and aiohttp's
    ``_fix_request_current_app``) and a route lookup for the metric label on every request,
    which on the ingest path was a tenth of the producer's time per POST (bench/README.md). The
    404 and 405 answers come from a catch-all route wrapped the same way (see
    :mod:`producer.routes`).
    """
    metrics_key = METRICS
    in_flight_key = IN_FLIGHT

    async def handle(request: web.Request) -> web.StreamResponse:
        app = request.app
        started = time.perf_counter()
        try:
            try:
                response = await handler(request)
            finally:
                reserved = request.get(_RESERVED)
                if reserved:
                    app[in_flight_key].release(reserved)
        except ApiError as exc:
            if exc.reason:
                app[metrics_key].rejected.labels(exc.reason).inc()
            response = exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _http_error(app, exc)
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError, RedisClusterException, ClusterError,
                AskError, TryAgainError) as exc:
            # Redis Cluster in motion: no node answered or a slot not covered during a failover
            # (RedisClusterException, not a RedisError), CLUSTERDOWN or redirections that went on
            # too long (ClusterError), a slot half migrated (ASK, MOVED, TRYAGAIN).
            logger.warning("%s %s: Redis unavailable: %s", request.method, request.path, exc)
            response = web.json_response({"error": UNAVAILABLE, "fields": {}}, status=503)
            response.headers["Retry-After"] = "1"
        except NotReplicated as exc:
            logger.warning("%s %s: %s", request.method, request.path, exc)
            response = web.json_response({"error": NOT_REPLICATED, "fields": {}, "replicasConfirmed": exc.confirmed,
                                          "replicasRequired": exc.required}, status=503)
            response.headers["Retry-After"] = "1"
        except RedisError as exc:  # the server answered with an error (OOM, READONLY, WRONGTYPE, ...)
            logger.warning("%s %s: Redis refused: %s", request.method, request.path, exc)
            first_line = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            response = web.json_response({"error": f"Redis refused the request: {first_line}", "fields": {}}, status=503)
            response.headers["Retry-After"] = "1"
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s %s failed", request.method, request.path)
            response = web.json_response({"error": "internal error", "fields": {}}, status=500)
        app[metrics_key].observe_request(route, request.method, response.status, time.perf_counter() - started)
        return response

    handle.__name__ = getattr(handler, "__name__", "handle")
    handle.__doc__ = handler.__doc__
    return handle


def _http_error(app: web.Application, exc: web.HTTPException) -> web.Response:
    """aiohttp's HTTP error ``exc`` as our JSON answer (same status; ``Allow`` kept on a 405)."""
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        app[METRICS].rejected.labels("too_large").inc()
    # aiohttp's 413 text says both sizes; other texts just repeat the reason.
    message = exc.text if isinstance(exc, web.HTTPRequestEntityTooLarge) and exc.text else exc.reason
    response = web.json_response({"error": message, "fields": {}}, status=exc.status)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


# ---- request helpers -------------------------------------------------------------------------


def _bound(request: web.Request, name: str, *, end: bool, default: str) -> str:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        return ids.validate_bound(text, end=end)
    except ids.InvalidStreamId as exc:
        raise ApiError(400, f"invalid {name} parameter", {name: str(exc)}) from None


def _uint(request: web.Request, name: str, *, minimum: int = 0, maximum: int | None = None) -> int | None:
    text = request.query.get(name)
    if text is None:
        return None
    bound = f" from {minimum} to {maximum}" if maximum is not None else f" >= {minimum}"
    if not _UINT.fullmatch(text) or int(text) < minimum or (maximum is not None and int(text) > maximum):
        raise ApiError(400, f"invalid {name} parameter", {name: f"must be an integer{bound}"})
    return int(text)


async def _json_body(request: web.Request) -> Any:
    settings = request.app[SETTINGS]
    ctype = request.content_type
    if not (ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))):
        raise ApiError(
            415,
            f"Content-Type must be application/json, not {request.headers.get('Content-Type') or 'missing'}",
            {"Content-Type": "must be application/json"},
            reason="media_type",
        )
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise ApiError(
            413,
            f"body of {request.content_length} bytes is larger than the limit of {settings.max_body_bytes} bytes",
            reason="too_large",
        )
    # Reserve the body's bytes before reading it, so a slow or hung Redis cannot make requests
    # pile up without bound (each holds ~3x its body until Redis answers); released by the
    # middleware when the handler ends.
    # A request costs memory beyond its body (aiohttp buffers, objects): charge at least
    # _MIN_CHARGE, so many small requests are bounded too.
    size = max(_MIN_CHARGE, request.content_length if request.content_length is not None else settings.max_body_bytes)
    if not request.app[IN_FLIGHT].reserve(size):
        raise ApiError(
            503,
            "too many request bytes in flight (Redis is slow or the producer is overloaded); retry later",
            reason="overloaded",
            headers={"Retry-After": "1"},
        )
    request[_RESERVED] = size
    try:
        body = await request.read()  # raises HTTPRequestEntityTooLarge past client_max_size (chunked bodies)
    except web.RequestPayloadError as exc:
        # The body cannot be read as sent, e.g. ``Content-Encoding: gzip`` on a plain body: the
        # client's fault (it was a 500).
        raise ApiError(400, f"body cannot be read: {exc}", {"Content-Encoding": "does not match the body"}, reason="not_json") from None
    try:
        return parse_json(body)
    except BodyError as exc:
        raise ApiError(400, str(exc), reason="not_json") from None


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(
            400,
            "invalid Idempotency-Key header",
            {"Idempotency-Key": "must be 1 to 255 visible ASCII characters (no spaces)"},
            reason="invalid",
        )
    return key


def _validate(data: Any, request: web.Request) -> dict[str, Any]:
    try:
        return validate_order(data, request.app[LIMITS])
    except OrderInvalid as exc:
        raise ApiError(400, exc.message, exc.fields, reason="invalid") from None


def _accepted(entry_id: str, order: dict[str, Any]) -> dict[str, Any]:
    return {"id": entry_id, "orderId": order["orderId"]}


#: The Content-Type ``web.json_response`` sets, kept for the answers built from bytes below.
_JSON_CONTENT_TYPE = "application/json; charset=utf-8"


def _created(answer: dict[str, Any], headers: dict[str, str]) -> web.Response:
    """201 with ``answer`` as JSON, for the ingest routes.

    orjson encodes it (several times faster than ``json.dumps`` and an aiohttp text body): the
    answers here hold only entry IDs, validated orderIds (integers up to 2**53 - 1 or ASCII
    text) and counts, which it encodes as the standard encoder does, apart from spacing.

    Args:
        answer: the JSON object to send.
        headers: extra headers (changed: Content-Type is added).
    """
    headers["Content-Type"] = _JSON_CONTENT_TYPE
    return web.Response(body=orjson.dumps(answer), status=201, headers=headers)


# ---- orders --------------------------------------------------------------------------------------


async def post_order(request: web.Request) -> web.Response:
    """POST /orders → 201 ``{"id": "<entry id>", "orderId": <as sent>}`` with ``Location``.

    With ``Idempotency-Key``: a retry with the same body replays the first answer (201, header
    ``Idempotent-Replayed: true``) without appending; a different body under the same key is
    422. Errors: 400 (bad JSON or fields), 413, 415, 503 (Redis).
    """
    data = await _json_body(request)
    order = _validate(data, request)
    key = _idempotency_key(request)
    body_hash = canonical_hash(order) if key is not None else ""
    metrics = request.app[METRICS]
    try:
        result = await request.app[APPENDER].append(
            order_fields(order, idempotency_key=key), str(order["orderId"]), idempotency_key=key, body_hash=body_hash
        )
    except RedisError:
        metrics.append_failed.inc()
        raise
    headers = {"Location": f"/orders/{quote(str(order['orderId']), safe='')}"}
    if not result.created:
        if not result.same_body:
            raise ApiError(
                422,
                "this Idempotency-Key was already used with a different body",
                {"Idempotency-Key": f"already used for entry {result.entry_id} with another body"},
                reason="idempotency_conflict",
            )
        metrics.replayed.inc()
        headers["Idempotent-Replayed"] = "true"
    else:
        metrics.accepted.inc()
    return _created(_accepted(result.entry_id, order), headers)


async def post_orders_batch(request: web.Request) -> web.Response:
    """POST /orders/batch with a JSON array of orders → 201 ``{"orders": [{"id", "orderId"}...],
    "count": n}`` in request order. Validation is all-or-nothing: one bad order → 400 with
    ``fields`` keyed ``"<index>.<field>"`` and nothing appended. The appends share pipelines but
    are not one transaction: on 503 some may have been appended, so retry with an
    ``Idempotency-Key`` (item ``i`` uses ``<key>#<i>``)."""
    settings = request.app[SETTINGS]
    data = await _json_body(request)
    if not isinstance(data, list):
        raise ApiError(400, "a batch must be a JSON array of orders", reason="invalid")
    if not data or len(data) > settings.batch_max_items:
        raise ApiError(400, f"a batch holds 1 to {settings.batch_max_items} orders, not {len(data)}", reason="invalid")
    bad: dict[str, str] = {}
    limits = request.app[LIMITS]
    for index, item in enumerate(data):
        try:
            validate_order(item, limits)
        except OrderInvalid as exc:
            if not exc.fields:
                bad[str(index)] = exc.message
            for name, reason in exc.fields.items():
                bad[f"{index}.{name}"] = reason
    if bad:
        raise ApiError(400, f"invalid orders in the batch: {len({k.split('.')[0] for k in bad})}", bad, reason="invalid")
    key = _idempotency_key(request)
    appender = request.app[APPENDER]
    metrics = request.app[METRICS]
    # Under a key every item records the hash of the whole batch, and item 0 goes first: a
    # different batch under the same key stops at item 0 (422) before anything is appended.
    batch_hash = canonical_hash(data) if key is not None else ""

    def call(index: int, order: dict[str, Any]) -> AppendCall:
        item_key = f"{key}#{index}" if key is not None else None
        return AppendCall(order_fields(order, idempotency_key=item_key), str(order["orderId"]), item_key, batch_hash)

    def conflict() -> ApiError:
        return ApiError(
            422,
            "this Idempotency-Key was already used with a different batch",
            {"Idempotency-Key": "already used with another batch"},
            reason="idempotency_conflict",
        )

    try:
        if key is not None:
            [head] = await appender.append_many([call(0, data[0])])
            if isinstance(head, Exception):
                raise head
            if not head.same_body:
                raise conflict()
            rest = await appender.append_many([call(i, o) for i, o in enumerate(data) if i > 0])
            outcomes = [head, *rest]
        else:
            outcomes = await appender.append_many([call(i, o) for i, o in enumerate(data)])
    except RedisError:
        metrics.append_failed.inc()
        raise
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            metrics.append_failed.inc()
            raise outcome
    if not all(o.same_body for o in outcomes):
        raise conflict()
    created = sum(1 for o in outcomes if o.created)
    metrics.accepted.inc(created)
    headers = {"Idempotent-Replayed": "true"} if key is not None and created == 0 else {}
    return _created({"orders": [_accepted(o.entry_id, d) for o, d in zip(outcomes, data, strict=True)], "count": len(data)}, headers)


def _name(settings: Any, name: str) -> str:
    """The stream (or dead-letter stream) name a merged answer shows: ``name`` with several
    partitions, "" with one (then the answer is :mod:`producer.queries`' own, its key name)."""
    return name if settings.stream_partitions > 1 else ""


async def get_history(request: web.Request) -> web.Response:
    """GET /orders/history?start&end&count&limit → see :func:`producer.queries.history`."""
    settings = request.app[SETTINGS]
    start = _bound(request, "start", end=False, default="-")
    end = _bound(request, "end", end=True, default="+")
    count = _uint(request, "count", minimum=1)
    limit = _uint(request, "limit", minimum=1)
    if count is not None and limit is not None:
        raise ApiError(400, "use count (the last N) or limit (a page from start), not both", {"count": "not with limit", "limit": "not with count"})
    cap = settings.history_max_count
    answer = await partitioned.history(
        request.app[REDIS],
        settings.partitions,
        start=start,
        end=end,
        count=min(count, cap) if count is not None else None,
        limit=min(limit or cap, cap),
        max_bytes=settings.history_max_bytes,
    )
    if count is not None and count > cap and answer["count"] == cap and not answer["truncated"]:
        # The count cap cut the answer: say so and where the older entries end.
        answer["truncated"] = True
        answer["before"] = "(" + answer["orders"][0]["id"]
    return web.json_response(answer)


async def get_pending(request: web.Request) -> web.Response:
    """GET /orders/pending?consumer&minIdleMs&start&end&limit → see :func:`producer.queries.pending`."""
    settings = request.app[SETTINGS]
    consumer = request.query.get("consumer")
    if consumer is not None and not 1 <= len(consumer) <= 256:
        raise ApiError(400, "invalid consumer parameter", {"consumer": "must be 1 to 256 characters"})
    answer = await partitioned.pending(
        request.app[REDIS],
        settings.partitions,
        stream_name=_name(settings, settings.stream_name),
        consumer=consumer,
        min_idle_ms=_uint(request, "minIdleMs", maximum=_INT64_MAX),
        start=_bound(request, "start", end=False, default="-"),
        end=_bound(request, "end", end=True, default="+"),
        limit=_uint(request, "limit", minimum=1, maximum=settings.history_max_count) or 100,
    )
    return web.json_response(answer)


async def get_stream_info(request: web.Request) -> web.Response:
    """GET /stream/info → see :func:`producer.queries.stream_info`; also refreshes the
    ``orderstream_group_state`` gauge with the states it shows."""
    settings = request.app[SETTINGS]
    answer, health = await partitioned.stream_info(request.app[REDIS], settings.partitions,
                                                   abandoned_after_ms=settings.abandoned_after_ms,
                                                   stream_name=_name(settings, settings.stream_name),
                                                   dlq_name=_name(settings, settings.dlq_stream))
    request.app[METRICS].show_group_states(health.groups)
    return web.json_response(answer)


async def get_order(request: web.Request) -> web.Response:
    """GET /orders/{orderId} → see :func:`producer.queries.order_status`; 404 when unknown."""
    settings = request.app[SETTINGS]
    try:
        order_id = check_order_id_text(request.match_info["orderId"], settings.max_id_length)
    except OrderInvalid as exc:
        raise ApiError(400, exc.message, exc.fields) from None
    answer = await partitioned.order_status(request.app[REDIS], settings.partitions, order_id)
    if answer is None:
        raise ApiError(404, f"order {order_id} is not known", {"orderId": "not found"})
    return web.json_response(answer)


# ---- dead letters --------------------------------------------------------------------------------


async def get_dead_letters(request: web.Request) -> web.Response:
    """GET /dead-letters?start&end&limit → see :func:`producer.queries.dead_letters`."""
    settings = request.app[SETTINGS]
    cap = settings.history_max_count
    answer = await partitioned.dead_letters(
        request.app[REDIS],
        settings.partitions,
        dlq_name=_name(settings, settings.dlq_stream),
        start=_bound(request, "start", end=False, default="-"),
        end=_bound(request, "end", end=True, default="+"),
        limit=min(_uint(request, "limit", minimum=1) or 100, cap),
        max_bytes=settings.history_max_bytes,
    )
    return web.json_response(answer)


async def post_redrive_one(request: web.Request) -> web.Response:
    """POST /dead-letters/{dlqId}/redrive → 200 ``{"dlqId", "id", "orderId", "replayed"}``;
    404 unknown dlqId; 409 naming the dlqId when it holds no order that can be appended again
    (:class:`producer.deadletters.DeadLetterUnreadable`: e.g. a field that is not UTF-8), which
    leaves it in the dead-letter stream."""
    checked = require_admin(request)
    dlq_id = _dlq_id(request)
    settings = request.app[SETTINGS]
    try:
        done = await deadletters.redrive_one(request.app[REDIS], settings.partitions, request.app[APPENDER], dlq_id)
    except deadletters.DeadLetterUnreadable as exc:
        raise ApiError(409, str(exc), {"dlqId": f"holds no order that can be re-driven ({exc.reason}); it stays in place"}) from None
    if done is None:
        raise ApiError(404, f"dead letter {dlq_id} is not in {settings.dlq_stream}", {"dlqId": "not found"})
    if not done.replayed:
        request.app[METRICS].accepted.inc()
    await audit.record(request.app[REDIS], settings.keys, request, action="redrive", target=dlq_id, count=1,
                       token_checked=checked)
    return web.json_response(done.as_json())


def _dlq_id(request: web.Request) -> str:
    """The ``{dlqId}`` of the path, a full entry ID; 400 naming it otherwise."""
    dlq_id = request.match_info["dlqId"]
    try:
        if not _FULL_ID.fullmatch(dlq_id):
            raise ids.InvalidStreamId(f"{dlq_id!r} is not a full entry ID <ms>-<seq>")
        ids.parse_id(dlq_id)
    except ids.InvalidStreamId as exc:
        raise ApiError(400, "invalid dlqId", {"dlqId": str(exc)}) from None
    # Canonical spelling (no leading zeros): the re-drive's idempotency key is built from it, so
    # "0X-0" and "X-00" re-drive the same dead letter once, as "X-0" does.
    return ids.format_id(*ids.parse_id(dlq_id))


async def delete_dead_letter(request: web.Request) -> web.Response:
    """DELETE /dead-letters/{dlqId} → 200 ``{"dlqId", "deleted": 1}`` (``XDEL`` from the
    dead-letter stream; the order is given up, the audit stream records it); 404 unknown dlqId."""
    checked = require_admin(request)
    dlq_id = _dlq_id(request)
    settings = request.app[SETTINGS]
    deleted = 0
    for part in settings.partitions:  # the first partition's dead-letter stream that holds it
        deleted = int(await request.app[REDIS].xdel(part.dlq, dlq_id))
        if deleted:
            break
    if not deleted:
        raise ApiError(404, f"dead letter {dlq_id} is not in {settings.dlq_stream}", {"dlqId": "not found"})
    await audit.record(request.app[REDIS], settings.keys, request, action="delete_dead_letter", target=dlq_id,
                       count=deleted, token_checked=checked)
    return web.json_response({"dlqId": dlq_id, "deleted": deleted})


async def _group_of(request: web.Request) -> str:
    """The ``{group}`` of the path, which must be a consumer group of the stream (404 otherwise)."""
    group = request.match_info["group"]
    settings = request.app[SETTINGS]
    try:
        groups = await request.app[REDIS].xinfo_groups(settings.keys.stream)
    except ResponseError as exc:
        if not is_no_such_key(exc):
            raise
        groups = []
    if group not in {g["name"] for g in groups}:
        raise ApiError(404, f"{settings.stream_name} has no consumer group {group!r}", {"group": "not found"})
    return group


async def post_pause(request: web.Request) -> web.Response:
    """POST /groups/{group}/pause → 200 ``{"group", "paused": true}``: ``SET`` the group's paused
    key. Its consumers issue no new read within BLOCK_MS/2 (what a read in flight delivers is
    still handled) and claim nothing, the reclaimer claims nothing for it, until resumed; no
    process restarts. 404 when the stream has no such group."""
    checked = require_admin(request)
    group = await _group_of(request)
    settings = request.app[SETTINGS]
    keys = settings.keys
    for part in settings.partitions:  # every partition's workers read their own partition's key
        await request.app[REDIS].set(part.paused(group), str(int(time.time() * 1000)))
    await audit.record(request.app[REDIS], keys, request, action="pause", target=group, count=0, token_checked=checked)
    return web.json_response({"group": group, "paused": True})


async def post_resume(request: web.Request) -> web.Response:
    """POST /groups/{group}/resume → 200 ``{"group", "paused": false}``: ``DEL`` the paused key;
    consumers read again within BLOCK_MS/2. 404 when the stream has no such group."""
    checked = require_admin(request)
    group = await _group_of(request)
    settings = request.app[SETTINGS]
    keys = settings.keys
    for part in settings.partitions:
        await request.app[REDIS].delete(part.paused(group))
    await audit.record(request.app[REDIS], keys, request, action="resume", target=group, count=0, token_checked=checked)
    return web.json_response({"group": group, "paused": False})


async def get_autoscaler_decisions(request: web.Request) -> web.Response:
    """GET /autoscaler/decisions?limit → ``{"stream", "decisions": [...]}``: what the autoscaler
    decided about this stream and when, newest first (``limit`` ≤ HISTORY_MAX_COUNT, default 20;
    see :func:`streamcore.decisions.read`). Empty when no operator scales on this stream."""
    settings = request.app[SETTINGS]
    limit = min(_uint(request, "limit", minimum=1) or 20, settings.history_max_count)
    # The operator writes under STREAM_NAME itself (it sums a stream's partitions), not a partition's name.
    keys = Keys(stream=settings.stream_name, group=settings.group_name, dlq=settings.dlq_stream)
    found = await decisions.read(request.app[REDIS], keys, limit)
    return web.json_response({"stream": keys.autoscaler_decisions, "decisions": found})


async def get_audit(request: web.Request) -> web.Response:
    """GET /audit?limit → the newest ``limit`` (≤ HISTORY_MAX_COUNT, default 100) admin
    mutations, newest first (see :func:`producer.audit.read`)."""
    settings = request.app[SETTINGS]
    limit = min(_uint(request, "limit", minimum=1) or 100, settings.history_max_count)
    return web.json_response(await audit.read(request.app[REDIS], settings.keys, limit))


async def post_redrive_all(request: web.Request) -> web.Response:
    """POST /dead-letters/redrive?limit → 200 ``{"redriven", "items", "skipped", "remaining"}``
    (at most ``limit`` ≤ REDRIVE_MAX dead letters, oldest first)."""
    checked = require_admin(request)
    settings = request.app[SETTINGS]
    limit = _uint(request, "limit", minimum=1, maximum=settings.redrive_max) or settings.redrive_max
    answer = await deadletters.redrive_many(request.app[REDIS], settings.partitions, request.app[APPENDER], limit=limit)
    request.app[METRICS].accepted.inc(sum(1 for i in answer["items"] if not i["replayed"]))
    await audit.record(request.app[REDIS], settings.keys, request, action="redrive_all", target="*",
                       count=answer["redriven"], token_checked=checked)
    return web.json_response(answer)


# ---- operations ----------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz → 200 ``{"ok": true}`` while the process serves requests (no Redis call)."""
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz → 200 ``{"ok": true}`` when Redis answers PING within 2 s; 503 ``{"ok": false,
    "reason"}`` when it does not or while shutting down."""
    if request.app[LIFECYCLE].shutting_down:
        return web.json_response({"ok": False, "reason": "shutting down"}, status=503)
    try:
        async with asyncio.timeout(2.0):
            await request.app[REDIS].ping()
    except TimeoutError as exc:  # our 2 s deadline: a TimeoutError without a message (a hung server)
        reason = str(exc) or "no answer to PING within 2 s"
        return web.json_response({"ok": False, "reason": f"Redis unreachable: {reason}"}, status=503)
    except (RedisError, OSError) as exc:
        return web.json_response({"ok": False, "reason": f"Redis unreachable: {exc}"}, status=503)
    return web.json_response({"ok": True})


#: Longest a /metrics scrape waits for the group states (s): a slow Redis must not hang the scrape.
GROUP_STATE_TIMEOUT_S = 2.0


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics → Prometheus text format of the app's registry.

    The ``orderstream_group_state`` gauge (:func:`producer.queries.group_health`) and the backlog
    gauges (:func:`producer.backlog.read_backlog`: lag, pending, consumers, oldest pending age,
    dead letters, the reclaimer's last pass) are read first, within
    :data:`GROUP_STATE_TIMEOUT_S` together; when Redis cannot tell, their series are left out
    rather than shown stale, and the rest of the page is served as usual.
    """
    settings = request.app[SETTINGS]
    metrics = request.app[METRICS]
    try:
        async with asyncio.timeout(GROUP_STATE_TIMEOUT_S):
            health = await partitioned.group_health(request.app[REDIS], settings.partitions,
                                                    abandoned_after_ms=settings.abandoned_after_ms)
            now = time.time()
            backlog = await read_backlog(request.app[REDIS], settings.partitions, stream=settings.stream_name,
                                         dlq=settings.dlq_stream)
    except (RedisError, OSError, TimeoutError) as exc:
        logger.debug("group states unknown for /metrics: %s", exc)
        metrics.show_group_states(None)
        metrics.show_backlog(None, 0.0)
    else:
        metrics.show_group_states(health.groups)
        metrics.show_backlog(backlog, now)
    response = web.Response(body=render(request.app[REGISTRY]))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json → the OpenAPI 3.1 document of this API."""
    return web.json_response(openapi_document(request.app[SETTINGS]))


# ---- the web console -----------------------------------------------------------------------------

#: The console's files (producer/ui/), served from memory: name → (content type, bytes).
_UI_DIR = Path(__file__).parent / "ui"
_UI_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
_UI_FILES: dict[str, tuple[str, bytes]] = {
    p.name: (_UI_TYPES[p.suffix], p.read_bytes()) for p in sorted(_UI_DIR.iterdir()) if p.suffix in _UI_TYPES
}
#: What the console's page may load: only the app itself (no CDN; works without internet).
_UI_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _ui_file(name: str) -> web.Response:
    kind, body = _UI_FILES[name]
    return web.Response(body=body, content_type=kind, charset="utf-8", headers=_UI_HEADERS)


async def ui_page(request: web.Request) -> web.Response:
    """GET /ui → the web console (producer/ui/index.html): groups, consumers, dead letters, live
    rates, order search and the admin actions, all from this API; no token to read, the admin
    token (typed in the page) for actions."""
    return _ui_file("index.html")


async def without_slash(request: web.Request) -> web.Response:
    """GET /ui/ and /docs/ → 308 to the same page without the trailing slash (its assets are
    linked relative to that address)."""
    raise web.HTTPPermanentRedirect(request.path.rstrip("/"))


async def ui_asset(request: web.Request) -> web.Response:
    """GET /ui/{asset} → the console's script or style sheet; 404 for anything else."""
    name = request.match_info["asset"]
    if name not in _UI_FILES or name == "index.html":
        raise ApiError(404, f"no console file {name!r}", {"asset": "not found"})
    return _ui_file(name)
