"""Coalescing of concurrent appends into Redis pipelines (DESIGN §9).

One ``await`` per request costs ~150–250 µs of Python per Redis call; batching the append
scripts of concurrent requests into one pipeline recovers most of the HTTP rate. Requests
enqueue ``(call, future)`` pairs; one task drains the queue in batches of at most ``max_batch``
and sends each batch as one non-transactional pipeline of ``EVALSHA`` calls of the atomic append
script (:mod:`streamcore.streams`). Each request gets its own reply or its own error back: one
failing script does not fail the others, a lost connection fails the whole batch (and, since a
pipeline is not a transaction, some of its appends may have happened: clients retry with their
``Idempotency-Key``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from streamcore.keys import Keys
from streamcore.streams import ORDER_INDEX_TTL_S, AppendResult, Scripts, append_call, append_result

logger = logging.getLogger(__name__)


class Unencodable(ValueError):
    """An append holds text that cannot be encoded as UTF-8 (a lone surrogate); nothing was sent."""


@dataclass(slots=True)
class _Pending:
    keys: list[bytes]
    args: list
    body_hash: str
    future: asyncio.Future


class Appender:
    """Batches append-script calls of concurrent callers into pipelines.

    Args:
        r: the client (the appender does not own it).
        keys: key names of the stream.
        scripts: the registered scripts of ``r``.
        max_batch: most appends per pipeline.
        idempotency_ttl_s: TTL of idempotency records, seconds.
        order_index_ttl_s: TTL of the orderId → entry ID index, seconds.
        on_batch: called with the size of every batch sent (a metric).
    """

    def __init__(
        self,
        r: aioredis.Redis,
        keys: Keys,
        scripts: Scripts,
        *,
        max_batch: int = 128,
        idempotency_ttl_s: int = 86400,
        order_index_ttl_s: int = ORDER_INDEX_TTL_S,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._r = r
        self._keys = keys
        self._scripts = scripts
        self._max_batch = max_batch
        self._ttl = idempotency_ttl_s
        self._index_ttl = order_index_ttl_s
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._batch: list[_Pending] = []

    def start(self) -> None:
        """Start the flushing task (call from a running loop)."""
        self._task = asyncio.create_task(self._run(), name="producer-appender")

    async def append(
        self,
        fields: dict[str, str],
        order_id: str,
        *,
        idempotency_key: str | None = None,
        body_hash: str = "",
    ) -> AppendResult:
        """Append one order (XADD via the append script) in the next pipeline.

        Args:
            fields: from :func:`streamcore.envelope.encode`.
            order_id: the orderId as text.
            idempotency_key: replay key (see :func:`streamcore.streams.append_order`).
            body_hash: canonical body digest compared on replay.

        Returns:
            The script's outcome (new entry, or the replayed one).

        Raises:
            Unencodable: a key or value is not encodable as UTF-8 (only this call fails).
            redis.exceptions.RedisError: this append (or its whole pipeline) failed.
        """
        if self._closing or self._task is None:
            raise RedisConnectionError("the appender is not running")
        script_keys, script_args = append_call(
            self._keys, fields, order_id, idempotency_key=idempotency_key, body_hash=body_hash, idempotency_ttl_s=self._ttl,
            order_index_ttl_s=self._index_ttl,
        )
        # Encode here, per caller: redis-py encodes a pipeline as a whole when it is sent, so one
        # value it cannot encode (a lone surrogate) failed every append batched with it. Bytes
        # are sent as they are, so this costs no second encoding.
        try:
            script_keys = [k.encode() for k in script_keys]
            script_args = [a.encode() if isinstance(a, str) else a for a in script_args]
        except UnicodeEncodeError as exc:
            raise Unencodable(f"this order cannot be sent to Redis: {exc.reason} at position {exc.start}") from None
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(script_keys, script_args, body_hash, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                self._batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
                await self._flush(self._batch)
                self._batch = []
            if self._closing:
                return

    async def _flush(self, batch: list[_Pending]) -> None:
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for attempt in (1, 2):
            try:
                async with self._r.pipeline(transaction=False) as pipe:
                    for item in batch:
                        await self._scripts.append(keys=item.keys, args=item.args, client=pipe)
                    replies = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # the whole pipeline failed (connection lost, timeout)
                logger.warning("append pipeline of %d failed: %s", len(batch), exc)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return
            again: list[_Pending] = []
            for item, reply in zip(batch, replies, strict=True):
                if item.future.done():  # the caller was cancelled
                    continue
                if isinstance(reply, NoScriptError) and attempt == 1:
                    # The script cache was flushed between redis-py's SCRIPT EXISTS and our
                    # EVALSHA: the script did not run, so sending it again cannot append twice.
                    again.append(item)
                elif isinstance(reply, Exception):
                    item.future.set_exception(reply)
                else:
                    item.future.set_result(append_result(reply, item.body_hash))
            if not again:
                return
            logger.warning("script cache flushed under an append pipeline; resending %d appends", len(again))
            batch = again

    async def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (within ``timeout_s`` seconds), then stop; later calls raise.

        Callers still waiting after the deadline get ``redis.exceptions.ConnectionError``.
        """
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
        for item in [*self._batch, *self._queue]:
            if not item.future.done():
                item.future.set_exception(RedisConnectionError("the producer is shutting down"))
        self._queue.clear()
