"""``/docs``: the OpenAPI document in Swagger UI, served by the producer itself (no CDN).

The Swagger UI files come from the ``swagger-ui-bundle`` package (its ``dist`` folder); the
page at ``/docs`` loads them from ``/docs/<file>`` and the document from ``/openapi.json``, all
by relative URLs, so it also works behind a path prefix.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

#: The Swagger UI dist folder shipped by ``swagger-ui-bundle``.
ASSETS = Path(swagger_ui_path)
#: File names served under ``/docs/`` (read once: nothing else on disk is reachable).
_FILES = frozenset(p.name for p in ASSETS.iterdir() if p.is_file() and not p.name.endswith((".j2", ".map")))

#: The page: Swagger UI pointed at this app's ``/openapi.json``. Relative URLs: from ``/docs``
#: ``docs/x`` is ``/docs/x`` and ``openapi.json`` is ``/openapi.json``.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="UTF-8">
  <title>orderstream producer API</title>
  <link rel="stylesheet" type="text/css" href="docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js" charset="UTF-8"></script>
  <script src="docs/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: new URL("openapi.json", window.location.href).href,
      dom_id: "#swagger-ui",
      deepLinking: true,
      validatorUrl: null,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout"
    });
  </script>
</body>
</html>
"""


async def page(request: web.Request) -> web.Response:
    """GET /docs → 200 text/html: Swagger UI showing ``/openapi.json`` (assets from ``/docs/``)."""
    return web.Response(text=PAGE, content_type="text/html")


async def asset(request: web.Request) -> web.FileResponse:
    """GET /docs/{asset} → 200 with the Swagger UI file and its content type; 404 (JSON) for any
    name that is not a file of the dist folder (no path traversal: names are matched exactly)."""
    name = request.match_info["asset"]
    if name not in _FILES:
        raise web.HTTPNotFound()
    content_type, _ = mimetypes.guess_type(name)
    return web.FileResponse(
        ASSETS / name,
        headers={"Content-Type": content_type or "application/octet-stream", "Cache-Control": "public, max-age=86400"},
    )
