"""Helm's pre-delete hook: delete a release's StreamAutoscalers while their operator still runs.

``python -m autoscaler.uninstall --namespace NS --selector app.kubernetes.io/instance=REL``

kopf puts its finalizer on every StreamAutoscaler (its poll is a kopf timer), and only a running
operator takes it off. ``helm uninstall`` deletes the operator's Deployment, its Role and the
StreamAutoscalers at the same moment, so the operator is gone (or can no longer call the API)
before it can release them: the StreamAutoscaler hangs in Terminating and the uninstall with it.
This hook runs first, in a Job of the chart (``templates/autoscaler/uninstall-hook.yaml``):

1. ``DELETE`` every StreamAutoscaler of the release (``labelSelector``) in the namespace;
2. wait until the operator has released them and they are gone (``--timeout`` s, 60);
3. past that (no operator running), remove kopf's finalizer itself
   (:meth:`autoscaler.actuators.KubeApi.release_finalizers`) so that nothing is left behind.

Credentials are the Job's ServiceAccount token (``kopf.login_with_service_account``). An
unreachable or failing API server (no answer, 429, 5xx) is retried :data:`ATTEMPTS` times. Exit 0
when none is left, 1 otherwise, with one log line naming the error (Helm then reports the hook as
failed and stops the uninstall).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

import aiohttp
import kopf

from autoscaler.actuators import KubeApi, KubeError
from autoscaler.handlers import GROUP, PLURAL, VERSION

logger = logging.getLogger("autoscaler.uninstall")

API = f"/apis/{GROUP}/{VERSION}"

#: Tries of the whole delete-and-wait when the API server is unreachable, throttles (429) or
#: fails (5xx), 2 s, 4 s apart; then the Job fails (Helm reports the hook) and its backoffLimit
#: gives it one more pod.
ATTEMPTS = 3


async def delete_and_wait(api: KubeApi, namespace: str, selector: str, timeout_s: float,
                          finalizer: str) -> list[str]:
    """Delete the StreamAutoscalers matching ``selector`` in ``namespace`` and wait for them to go.

    Returns the names still present at the end (empty on success). Raises :class:`KubeError`
    when the API server refuses the list or a delete (other than 404).
    """
    path = f"{API}/namespaces/{namespace}/{PLURAL}"

    async def names() -> list[str]:
        items = (await api.request("GET", path, params={"labelSelector": selector})).get("items") or ()
        return sorted(item["metadata"]["name"] for item in items)

    for name in await names():
        try:
            await api.request("DELETE", f"{path}/{name}")
            logger.info("deleted StreamAutoscaler %s/%s", namespace, name)
        except KubeError as e:
            if e.status != 404:
                raise
    deadline = time.monotonic() + timeout_s
    while (left := await names()) and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
    if left:
        released = await api.release_finalizers(API, PLURAL, namespace, finalizer, selector)
        logger.warning("no operator released %s within %gs; removed its finalizer from %s", ", ".join(left),
                       timeout_s, ", ".join(released) or "none")
        await asyncio.sleep(1.0)
        left = await names()
    return left


async def delete_with_retries(api: KubeApi, namespace: str, selector: str, timeout_s: float, finalizer: str, *,
                              pause_s: float = 2.0) -> list[str] | None:
    """:func:`delete_and_wait`, tried again (``pause_s``, then twice that, apart) when the API
    server gave no answer, throttled (429) or failed (5xx), at most :data:`ATTEMPTS` times.

    Returns what :func:`delete_and_wait` returns, or None after a refusal (4xx other than 404 and
    429) or the last failed try, each logged on one line.
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await delete_and_wait(api, namespace, selector, timeout_s, finalizer)
        except (KubeError, aiohttp.ClientError, OSError, TimeoutError) as e:
            transient = not isinstance(e, KubeError) or e.status in (0, 429) or e.status >= 500
            text = str(e) if isinstance(e, KubeError) else f"{type(e).__name__}: {e}"
            if not transient or attempt == ATTEMPTS:
                logger.error("could not delete the StreamAutoscalers: %s", text)
                return None
            logger.warning("API server unavailable (%s); retrying in %g s (attempt %d of %d)", text,
                           pause_s * attempt, attempt, ATTEMPTS)
            await asyncio.sleep(pause_s * attempt)
    return None


async def main_async(args: argparse.Namespace) -> int:
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings)
    if info is None:
        logger.error("no in-cluster ServiceAccount credentials (this runs as a Helm hook Job)")
        return 1
    api = KubeApi()
    await api.connect(info)
    try:
        left = await delete_with_retries(api, args.namespace, args.selector, args.timeout,
                                         settings.persistence.finalizer)
    finally:
        await api.close()
    if left is None:
        return 1
    if left:
        logger.error("StreamAutoscalers still present: %s", ", ".join(left))
        return 1
    logger.info("no StreamAutoscaler of %s is left in %s", args.selector, args.namespace)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoscaler.uninstall", description=__doc__.split("\n")[0])
    parser.add_argument("--namespace", required=True, help="the release's namespace")
    parser.add_argument("--selector", required=True, help="label selector of the release's StreamAutoscalers")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the operator (60)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
