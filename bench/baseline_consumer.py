"""Baseline for the consumer benchmark: the minimal redis-py loop (XREADGROUP COUNT 100, no-op
handling, one pipelined XACK per batch). Run as
``python bench/baseline_consumer.py REDIS_URL STREAM GROUP CONSUMER``; exits when a read returns nothing."""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aioredis


async def main(url: str, stream: str, group: str, consumer: str) -> None:
    r = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        while True:
            reply = await r.xreadgroup(group, consumer, {stream: ">"}, count=100, block=1000)
            if not reply:
                return
            ids = [entry_id for entry_id, _ in reply[0][1]]
            async with r.pipeline(transaction=False) as pipe:
                pipe.xack(stream, group, *ids)
                await pipe.execute()
    finally:
        await r.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
