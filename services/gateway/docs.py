"""The API reference page (/docs, Swagger UI) and the event contract (/asyncapi.yaml).

Every byte comes from installed packages: Swagger UI's assets from the
``swagger-ui-bundle-v2`` wheel, the AsyncAPI document from this package's data (a link to
proto-schemas/asyncapi.yaml in a checkout, a copy in a wheel). No CDN: clusters are often
offline.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web

from services.common.errors import Problem

# Only what the page loads; anything else under /docs/ is a 404.
ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}

# Relative URLs: the page works behind a path prefix too (docs/x from /docs is /docs/x).
PAGE = b"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>ampgate API reference</title>
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png">
  <link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      validatorUrl: null,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout",
    });
  </script>
</body>
</html>
"""


def _swagger_ui_dir():
    # Imported lazily: the package is needed only by the reference page.
    from swagger_ui_bundle import swagger_ui_path

    return swagger_ui_path


@cache
def _asset(name: str) -> bytes:
    return (_swagger_ui_dir() / name).read_bytes()


@cache
def asyncapi_document() -> bytes:
    return resources.files("services.gateway").joinpath("asyncapi.yaml").read_bytes()


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(body=PAGE, content_type="text/html", charset="utf-8")


async def docs_asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in ASSETS:
        raise Problem(404, "Not found", f"no asset {name!r} in the reference page")
    return web.Response(body=_asset(name), content_type=ASSETS[name],
                        headers={"Cache-Control": "public, max-age=86400"})


async def asyncapi_handler(request: web.Request) -> web.Response:
    return web.Response(body=asyncapi_document(), content_type="application/yaml",
                        charset="utf-8")


def add_docs_routes(app: web.Application) -> None:
    app.router.add_get("/docs", docs_page, name="docs")
    app.router.add_get("/docs/{asset}", docs_asset, name="docs_asset")
    app.router.add_get("/asyncapi.yaml", asyncapi_handler, name="asyncapi")
