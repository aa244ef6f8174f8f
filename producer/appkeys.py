"""Every ``web.AppKey`` of the producer application, declared in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from producer.appender import Appender
from producer.metrics import ProducerMetrics
from producer.settings import ProducerSettings
from producer.validation import Limits
from streamcore.streams import Scripts


@dataclass
class Lifecycle:
    """Mutable process state: ``shutting_down`` turns True on SIGTERM (``on_shutdown``), which
    makes ``/readyz`` answer 503 while in-flight requests finish."""

    shutting_down: bool = False
    server: dict = field(default_factory=dict)


SETTINGS = web.AppKey("settings", ProducerSettings)
LIMITS = web.AppKey("limits", Limits)
METRICS = web.AppKey("metrics", ProducerMetrics)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
REDIS = web.AppKey("redis", aioredis.Redis)
SCRIPTS = web.AppKey("scripts", Scripts)
APPENDER = web.AppKey("appender", Appender)
REGISTRY = web.AppKey("registry", CollectorRegistry)
