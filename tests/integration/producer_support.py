"""Fixtures for producer API tests: the app on this test's own names, served by aiohttp's TestServer.

Test modules import the fixtures they use (``from tests.integration.producer_support import api,
keys, make_api``) so pytest finds them.
"""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from producer.app import create_app
from producer.settings import ProducerSettings
from streamcore.keys import Keys
from tests.integration.consumer_support import keys_for


def make_settings(redis_url: str, names, **overrides) -> ProducerSettings:
    """Producer settings on the test's stream, group and DLQ names (and partitioned layout, on the
    ``cluster`` kind), plus ``overrides``."""
    return ProducerSettings(redis_url=redis_url, **{**names.settings(), **overrides})


@pytest.fixture
async def make_api(redis_url, names):
    """Factory: ``await make_api(**settings_overrides)`` → a started TestClient, closed after the test."""
    clients: list[TestClient] = []

    async def factory(**overrides) -> TestClient:
        client = TestClient(TestServer(create_app(make_settings(redis_url, names, **overrides), registry=CollectorRegistry())))
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
async def api(make_api) -> TestClient:
    """The API with default settings."""
    return await make_api()


@pytest.fixture
def keys(names) -> Keys:
    """Key names of this test's stream (its home partition's, on the ``cluster`` kind)."""
    return keys_for(names)
