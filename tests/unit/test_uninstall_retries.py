"""The uninstall hook retries an API server that is away or failing, and not one that refuses.

The calls go to a scripted stand-in for :class:`autoscaler.actuators.KubeApi` (the hook's own
retry logic is what is tested; the hook against a real API server is in the cluster tier).
"""

from __future__ import annotations

import logging

from autoscaler.actuators import KubeError
from autoscaler.uninstall import ATTEMPTS, delete_with_retries


class ScriptedApi:
    """Answers the hook's GET/DELETE calls; raises the scripted errors first, one per call."""

    def __init__(self, errors: list[KubeError]) -> None:
        self.errors = list(errors)
        self.items = [{"metadata": {"name": "orders"}}]
        self.calls: list[tuple[str, str]] = []

    async def request(self, method: str, path: str, params=None, **_):
        self.calls.append((method, path))
        if self.errors:
            raise self.errors.pop(0)
        if method == "DELETE":
            self.items = []
            return {}
        return {"items": list(self.items)}

    async def release_finalizers(self, *args, **kwargs):
        return []


async def test_unavailable_api_server_is_retried_until_it_answers(caplog):
    api = ScriptedApi([KubeError(0, "ClientConnectorError", "connection refused"), KubeError(503, "Unavailable", "x")])
    with caplog.at_level(logging.WARNING, logger="autoscaler.uninstall"):
        left = await delete_with_retries(api, "shop", "app.kubernetes.io/instance=rel", 5, "kopf", pause_s=0.01)
    assert left == []
    assert ("DELETE", "/apis/orderstream.dev/v1alpha1/namespaces/shop/streamautoscalers/orders") in api.calls
    assert [r.message.split(";")[0] for r in caplog.records] == [
        "API server unavailable (0 ClientConnectorError: connection refused)",
        "API server unavailable (503 Unavailable: x)"]


async def test_a_refusal_is_not_retried_and_a_lasting_outage_gives_up(caplog):
    api = ScriptedApi([KubeError(403, "Forbidden", "no")])
    assert await delete_with_retries(api, "shop", "sel", 5, "kopf", pause_s=0.01) is None
    assert len(api.calls) == 1
    api = ScriptedApi([KubeError(500, "InternalError", "down")] * (ATTEMPTS + 1))
    with caplog.at_level(logging.ERROR, logger="autoscaler.uninstall"):
        assert await delete_with_retries(api, "shop", "sel", 5, "kopf", pause_s=0.01) is None
    assert len(api.calls) == ATTEMPTS
    assert caplog.records[-1].message == "could not delete the StreamAutoscalers: 500 InternalError: down"
