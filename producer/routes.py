"""URL table of the producer API.

Each route's handler is wrapped by :func:`producer.views.api_handler` (JSON errors, request
metrics under the route template). Requests no route takes reach one catch-all route, registered
last, which asks a second router holding the same table (and nothing else) why: aiohttp's own
answer, 404 or 405 with ``Allow`` listing every method the path takes, given as JSON. The API
thus answers unmatched requests exactly as aiohttp's router does, without a middleware on every
request (see :func:`producer.views.api_handler`).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_urldispatcher import MatchInfoError

from producer import docs, views

#: ``(method, path template, handler)`` of every route. ``GET`` routes also take ``HEAD``.
ROUTES: tuple[tuple[str, str, views.Handler], ...] = (
    ("POST", "/orders", views.post_order),
    ("POST", "/orders/batch", views.post_orders_batch),
    ("GET", "/orders/history", views.get_history),
    ("GET", "/orders/pending", views.get_pending),
    ("GET", "/orders/{orderId}", views.get_order),
    ("GET", "/stream/info", views.get_stream_info),
    ("GET", "/dead-letters", views.get_dead_letters),
    ("POST", "/dead-letters/redrive", views.post_redrive_all),
    ("POST", "/dead-letters/{dlqId}/redrive", views.post_redrive_one),
    ("DELETE", "/dead-letters/{dlqId}", views.delete_dead_letter),
    ("POST", "/groups/{group}/pause", views.post_pause),
    ("POST", "/groups/{group}/resume", views.post_resume),
    ("GET", "/audit", views.get_audit),
    ("GET", "/autoscaler/decisions", views.get_autoscaler_decisions),
    ("GET", "/healthz", views.healthz),
    ("GET", "/readyz", views.readyz),
    ("GET", "/metrics", views.metrics),
    ("GET", "/openapi.json", views.openapi),
)


#: Routes that are not part of the JSON API (left out of the OpenAPI document): the web console
#: and the document in Swagger UI.
PAGES: tuple[tuple[str, str, views.Handler], ...] = (
    ("GET", "/ui", views.ui_page),
    ("GET", "/ui/", views.without_slash),
    ("GET", "/ui/{asset}", views.ui_asset),
    ("GET", "/docs", docs.page),
    ("GET", "/docs/", views.without_slash),
    ("GET", "/docs/{asset}", docs.asset),
)


def _add(router: web.UrlDispatcher, method: str, path: str, handler: views.Handler) -> None:
    if method == "GET":
        router.add_get(path, handler)  # and HEAD, as aiohttp does by default
    else:
        router.add_route(method, path, handler)


def setup_routes(app: web.Application) -> None:
    """Register every route of :data:`ROUTES` on ``app`` (wrapped), then the catch-all."""
    table = web.UrlDispatcher()
    for method, path, handler in (*ROUTES, *PAGES):
        _add(app.router, method, path, views.api_handler(path, handler))
        _add(table, method, path, handler)

    async def unmatched(request: web.Request) -> web.StreamResponse:
        match = await table.resolve(request)
        if isinstance(match, MatchInfoError):
            raise match.http_exception
        # Unreachable: a request the table matches was matched by the app's router first.
        raise web.HTTPNotFound()

    app.router.add_route("*", "/{path:.*}", views.api_handler(views.UNMATCHED, unmatched))
