"""``/docs``: the OpenAPI document in Swagger UI, served by the producer itself (no CDN).

The Swagger UI files come from the ``swagger-ui-bundle`` package (its ``dist`` folder); the
page at ``/docs`` loads them from ``/docs/<file>`` and the document from ``/openapi.json``, all
by relative URLs, so it also works behind a path prefix. swagger-ui-bundle ships Swagger UI
4.15, which renders only OpenAPI 3.0 documents: the page fetches the 3.1 document and hands it
to Swagger UI as 3.0.3 (``null`` in a type list becomes ``nullable``); ``/openapi.json`` itself
stays 3.1.
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
    // Swagger UI 4 (what swagger-ui-bundle ships) renders only "3.0.x" documents: show the 3.1
    // document as 3.0.3, with `null` in a type list or an anyOf/oneOf branch as `nullable`.
    function as30(node) {
      if (Array.isArray(node)) return node.map(as30);
      if (node === null || typeof node !== "object") return node;
      const out = {};
      for (const [key, value] of Object.entries(node)) out[key] = as30(value);
      if (Array.isArray(out.type) && out.type.includes("null")) {
        const rest = out.type.filter((t) => t !== "null");
        out.type = rest.length === 1 ? rest[0] : undefined;
        out.nullable = true;
        if (out.type === undefined) delete out.type;
      }
      for (const key of ["anyOf", "oneOf"]) {
        if (Array.isArray(out[key]) && out[key].some((s) => s && s.type === "null")) {
          const rest = out[key].filter((s) => !(s && s.type === "null"));
          out.nullable = true;
          if (rest.length === 1) { delete out[key]; Object.assign(out, rest[0].$ref ? {allOf: [rest[0]]} : rest[0]); }
          else out[key] = rest;
        }
      }
      return out;
    }
    fetch(new URL("openapi.json", window.location.href)).then((r) => r.json()).then((doc) => {
      const spec = as30(doc);
      spec.openapi = "3.0.3";
      window.ui = SwaggerUIBundle({
        spec: spec,
        dom_id: "#swagger-ui",
        deepLinking: true,
        validatorUrl: null,
        presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
        layout: "StandaloneLayout"
      });
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
    # The dist folder's own index.html is Swagger's demo page (it loads petstore.swagger.io):
    # never served; /docs is ours.
    if name not in _FILES or name == "index.html":
        raise web.HTTPNotFound()
    content_type, _ = mimetypes.guess_type(name)
    return web.FileResponse(
        ASSETS / name,
        headers={"Content-Type": content_type or "application/octet-stream", "Cache-Control": "public, max-age=86400"},
    )
