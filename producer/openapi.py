"""The OpenAPI 3.1 document of the producer API, generated from the code (served at ``/openapi.json``).

Paths and methods come from :data:`producer.routes.ROUTES`; what each route takes and answers
(parameters, request body, statuses, headers) from :data:`producer.models.OPERATIONS`; body
schemas from the models of :mod:`producer.models` (pydantic's JSON schema of each ``TypedDict``);
each operation's description from its view's docstring. Settings-dependent values (limits) are
filled in per app: ``x-setting`` markers in schemas and ``{attribute}`` fields in the texts of
parameters and answers.
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema

from producer import models
from producer.settings import ProducerSettings

_REF = "#/components/schemas/{model}"
_ERROR_DESCRIPTION = (
    "Orders in, on a Redis stream processed by a consumer group. All errors are JSON `Error` objects "
    "(`fields` names each bad body field, query parameter or header), including 404 for an unknown path "
    "and 405 (header `Allow`) for a method a path does not take. Generated from producer/models.py."
)


_ADMIN_401 = models.Answer("ADMIN_TOKEN is set and the request has no valid `Authorization: Bearer` token (header `WWW-Authenticate`).")


class _Schema(GenerateJsonSchema):
    """pydantic's JSON schema without a title on every property (the property name says it)."""

    def field_title_should_be_set(self, schema: Any) -> bool:  # noqa: D102 - pydantic hook
        return False


def _text_body(kind: str) -> dict[str, Any]:
    if kind == "any":
        return {"*/*": {"schema": {}}}
    return {kind: {"schema": {"type": "string"}}}


@functools.lru_cache(maxsize=1)
def _template() -> dict[str, Any]:
    """The document with ``x-setting`` markers and ``{attribute}`` texts still in (settings-free)."""
    from producer.routes import ROUTES  # producer.routes → views → this module

    adapters: list[tuple[Any, str, TypeAdapter[Any]]] = []
    keys: dict[int, Any] = {}

    def key(tp: Any) -> Any:
        """A key for ``tp``'s schema in the generated mapping (one adapter per distinct type)."""
        if id(tp) not in keys:
            keys[id(tp)] = (len(keys), "validation")
            adapters.append((len(adapters), "validation", TypeAdapter(tp)))
        return id(tp)

    wanted: list[tuple[str, str, models.Operation]] = []
    for method, path, _handler in ROUTES:
        op = models.OPERATIONS[(method, path)]
        wanted.append((method, path, op))
        if op.body is not None:
            key(op.body)
        for answer in op.answers.values():
            if answer.body is not None and not isinstance(answer.body, str):
                key(answer.body)
    mapping, definitions = TypeAdapter.json_schemas(adapters, ref_template=_REF, schema_generator=_Schema)
    by_type = {tid: mapping[(index, "validation")] for index, tid in enumerate(keys)}

    handlers = {(m, p): h for m, p, h in ROUTES}
    paths: dict[str, dict[str, Any]] = {}
    for method, path, op in wanted:
        operation: dict[str, Any] = {"summary": op.summary}
        doc = inspect.getdoc(handlers[(method, path)])
        if doc:
            operation["description"] = re.sub(r"``(.+?)``", r"`\1`", re.sub(r":\w+:`~?([^`]+)`", r"`\1`", doc), flags=re.DOTALL)
        if op.params:
            operation["parameters"] = [
                {"name": p.name, "in": p.where, "required": p.required, "description": p.description, "schema": p.schema}
                for p in op.params
            ]
        if op.admin:
            operation["security"] = [{}, {"adminToken": []}]  # no token needed unless ADMIN_TOKEN is set
        if op.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": by_type[id(op.body)]}}}
        responses: dict[str, Any] = {}
        answers = {**op.answers, **({401: _ADMIN_401} if op.admin else {})}
        for status, answer in sorted(answers.items()):
            response: dict[str, Any] = {"description": answer.description}
            if isinstance(answer.body, str):
                response["content"] = _text_body(answer.body)
            elif answer.body is not None:
                response["content"] = {"application/json": {"schema": by_type[id(answer.body)]}}
            if answer.headers:
                response["headers"] = {n: {"description": d, "schema": {"type": "string"}} for n, d in answer.headers.items()}
            responses[str(status)] = response
        operation["responses"] = responses
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "orderstream producer", "version": "0.1.0", "description": _ERROR_DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", definitions),
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "ADMIN_TOKEN: when set, the mutating admin routes need `Authorization: Bearer <ADMIN_TOKEN>`.",
                }
            },
        },
    }


def _fill(node: Any, settings: ProducerSettings, *, texts: bool) -> Any:
    """``node`` with ``x-setting`` markers replaced by the settings' values and, when ``texts``,
    ``{attribute}`` fields in ``description`` strings formatted."""
    if isinstance(node, list):
        return [_fill(item, settings, texts=texts) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for name, value in node.items():
        if name == "x-setting":
            out.update({keyword: getattr(settings, attribute) for keyword, attribute in value.items()})
        elif name == "description" and texts and isinstance(value, str):
            out[name] = value.format_map(_SettingsView(settings))
        elif name in ("parameters", "responses") and isinstance(value, (list, dict)):
            out[name] = _fill(value, settings, texts=True)
        elif name in ("content", "schema"):
            out[name] = _fill(value, settings, texts=False)
        else:
            out[name] = _fill(value, settings, texts=texts)
    return out


class _SettingsView(dict):  # type: ignore[type-arg]
    """``str.format_map`` mapping that reads attributes of the settings."""

    def __init__(self, settings: ProducerSettings) -> None:
        super().__init__()
        self._settings = settings

    def __missing__(self, name: str) -> Any:
        return getattr(self._settings, name)


def openapi_document(settings: ProducerSettings) -> dict[str, Any]:
    """The OpenAPI 3.1 document with the configured limits filled in (a fresh dict per call).

    Raises:
        KeyError: a route of :data:`producer.routes.ROUTES` has no entry in
            :data:`producer.models.OPERATIONS` (caught by the tests, never at run time).
    """
    return _fill(copy.deepcopy(_template()), settings, texts=False)
