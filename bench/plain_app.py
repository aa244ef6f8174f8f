"""Baseline for the ingest benchmark: a plain aiohttp POST /orders that parses JSON and answers
201 without any Redis call. Run as ``python bench/plain_app.py PORT [--uvloop]``: asyncio's own
loop, as a plain aiohttp app runs; ``--uvloop`` runs it on uvloop (the loop our producer uses),
for the bench's transparency row."""

from __future__ import annotations

import sys

from aiohttp import web


async def post_order(request: web.Request) -> web.Response:
    order = await request.json()
    return web.json_response({"id": "0-0", "orderId": order.get("orderId")}, status=201)


def main() -> None:
    loop = None
    if "--uvloop" in sys.argv[2:]:
        import uvloop

        loop = uvloop.new_event_loop()
    app = web.Application()
    app.router.add_post("/orders", post_order)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
