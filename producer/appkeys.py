"""Every ``web.AppKey`` of the producer application, declared in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from producer.appender import RoutedAppender
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


@dataclass
class InFlight:
    """Request-body bytes admitted and not yet finished (see ``IN_FLIGHT_MAX_BYTES``).

    Attributes:
        limit: the budget, bytes.
        used: bytes reserved by requests still being handled.
    """

    limit: int
    used: int = 0

    def reserve(self, size: int) -> bool:
        """Take ``size`` bytes of the budget; False (nothing taken) when they do not fit. One
        request always fits when nothing else is in flight, so no allowed body is starved."""
        if self.used and self.used + size > self.limit:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        """Give back what :meth:`reserve` took."""
        self.used -= size


SETTINGS = web.AppKey("settings", ProducerSettings)
LIMITS = web.AppKey("limits", Limits)
METRICS = web.AppKey("metrics", ProducerMetrics)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
REDIS = web.AppKey("redis", aioredis.Redis)
SCRIPTS = web.AppKey("scripts", Scripts)
APPENDER = web.AppKey("appender", RoutedAppender)
REGISTRY = web.AppKey("registry", CollectorRegistry)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
