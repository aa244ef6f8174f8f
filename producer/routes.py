"""URL table of the producer API."""

from __future__ import annotations

from aiohttp import web

from producer import views


def setup_routes(app: web.Application) -> None:
    """Register every route of the API on ``app``."""
    app.router.add_post("/orders", views.post_order)
    app.router.add_post("/orders/batch", views.post_orders_batch)
    app.router.add_get("/orders/history", views.get_history)
    app.router.add_get("/orders/pending", views.get_pending)
    app.router.add_get("/orders/{orderId}", views.get_order)
    app.router.add_get("/stream/info", views.get_stream_info)
    app.router.add_get("/dead-letters", views.get_dead_letters)
    app.router.add_post("/dead-letters/redrive", views.post_redrive_all)
    app.router.add_post("/dead-letters/{dlqId}/redrive", views.post_redrive_one)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/metrics", views.metrics)
    app.router.add_get("/openapi.json", views.openapi)
