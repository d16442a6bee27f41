"""A local webhook endpoint for the workers benchmark: answers 204 to every POST and
counts deliveries (and distinct webhook-ids) for GET /count. It also checks order: per
endpoint path and per subject (passport id), the `data.passport.performance.cycles` of
each delivery (the bench's version counter) must not go back; a repeat of the last one
(a retry) counts as a duplicate, an older one as out of order. One process, 127.0.0.1.

    python bench/webhook_receiver.py --port 9100
"""

from __future__ import annotations

import argparse
import time

import orjson
from aiohttp import web


def create_app() -> web.Application:
    state = {"received": 0, "first_at": None, "last_at": None, "out_of_order": 0,
             "duplicates": 0, "unordered_bodies": 0, "order_checked": 0}
    ids: set[str] = set()
    last: dict[tuple[str, str], int] = {}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = orjson.loads(body)
            key = (request.path, str(event["subject"]))
            seq = int(event["data"]["passport"]["performance"]["cycles"])
        except (ValueError, KeyError, TypeError):
            state["unordered_bodies"] += 1
        else:
            before = last.get(key)
            state["order_checked"] += before is not None
            if before is not None and seq < before:
                state["out_of_order"] += 1
            elif before is not None and seq == before:
                state["duplicates"] += 1
            else:
                last[key] = seq
        now = time.time()
        state["received"] += 1
        state["first_at"] = state["first_at"] or now
        state["last_at"] = now
        ids.add(request.headers.get("webhook-id", ""))
        return web.Response(status=204)

    async def count(request: web.Request) -> web.Response:
        return web.json_response({**state, "distinct_ids": len(ids)})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/hook/{endpoint}", hook)
    app.router.add_get("/count", count)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
