"""A FastStream Redis-stream consumer for the consumer benchmark (run under the FastStream venv
that ``bench/peers.py`` builds; it imports nothing from this project).

Usage::

    python faststream_consumer.py --redis-url URL --stream S --group G --consumer C \\
        [--batch --batch-size N] [--access-log]

A ``FastStream`` app with one ``RedisBroker`` and one subscriber on
``StreamSub(S, group=G, consumer=C)``: without ``--batch`` in FastStream's defaults for a
consumer-group stream subscriber (no ``max_records``, so XREADGROUP has no COUNT; ``BLOCK 100``;
one handler call and one XACK per entry, ack policy ``REJECT_ON_ERROR``); with ``--batch``,
``batch=True, max_records=N`` (one handler call and one XACK per read of up to N entries).
The handler does nothing but count the entries it receives and the body types it sees. The
only setting changed from FastStream's defaults, unless ``--access-log``: the broker's
per-message access log goes to DEBUG (dropped) instead of INFO. The event loop is asyncio's
default, as FastStream uses by default.

Prints to stdout one JSON line when the broker has started::

    {"event": "ready", "faststream": "0.7.8", "redis_py": "...", "settings": "<one line>"}

and one when it stopped (SIGTERM or SIGINT, handled by FastStream's app)::

    {"event": "stopped", "received": <entries handled>, "bodies": {"dict": n, ...}}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections import Counter
from importlib.metadata import version
from typing import Any

from faststream import FastStream
from faststream.redis import RedisBroker, StreamSub


def _describe(stream: StreamSub, ack_policy: Any, access_log: bool) -> str:
    count = stream.max_records if stream.max_records is not None else "none (no COUNT)"
    policy = getattr(ack_policy, "name", ack_policy)
    return (f"StreamSub(group, consumer), batch={stream.batch}, max_records/COUNT={count}, "
            f"polling_interval/BLOCK={stream.polling_interval} ms, last_id={stream.last_id}, no_ack={stream.no_ack}, "
            f"ack_policy={policy}, max_workers=1, access_log={'INFO (default)' if access_log else 'DEBUG (dropped)'}, "
            f"asyncio loop")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--batch", action="store_true")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)

    broker_kwargs: dict[str, Any] = {} if args.access_log else {"log_level": logging.DEBUG}
    broker = RedisBroker(args.redis_url, **broker_kwargs)
    if args.batch:
        stream = StreamSub(args.stream, group=args.group, consumer=args.consumer, batch=True, max_records=args.batch_size)
    else:
        stream = StreamSub(args.stream, group=args.group, consumer=args.consumer)
    received = 0
    bodies: Counter[str] = Counter()

    subscriber = broker.subscriber(stream=stream)
    if args.batch:
        @subscriber
        async def handle_batch(body) -> None:  # noqa: ANN001 - untyped: FastStream's decoder decides
            nonlocal received
            received += len(body)
            bodies[f"list[{type(body[0]).__name__}]" if body else "list[]"] += 1
    else:
        @subscriber
        async def handle(body) -> None:  # noqa: ANN001
            nonlocal received
            received += 1
            bodies[type(body).__name__] += 1

    app = FastStream(broker)

    @app.after_startup
    async def ready() -> None:
        ack_policy = getattr(subscriber, "ack_policy", "?")  # the policy the subscriber resolved
        print(json.dumps({"event": "ready", "faststream": version("faststream"), "redis_py": version("redis"),
                          "settings": _describe(stream, ack_policy, args.access_log)}), flush=True)

    @app.after_shutdown
    async def stopped() -> None:
        print(json.dumps({"event": "stopped", "received": received, "bodies": dict(bodies)}), flush=True)

    asyncio.run(app.run())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
