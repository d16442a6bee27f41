"""The floor the gateway is measured against: one aiohttp process, one handler,
answering the same bytes for any /v1/passports/{id}. No middleware, no auth, no cache,
no logging: what aiohttp itself costs per request on this machine.

    python bench/bare_server.py --port 9000 --body body.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aiohttp import web


def create_app(body: bytes, content_type: str) -> web.Application:
    async def passport(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/v1/passports/{passport_id}", passport)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True, help="file with the response bytes")
    parser.add_argument("--content-type", default="application/json")
    args = parser.parse_args()
    app = create_app(args.body.read_bytes(), args.content_type)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
