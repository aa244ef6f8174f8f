"""The generated OpenAPI document (producer/openapi.py from producer/models.py) and /docs."""

from __future__ import annotations

import asyncio
import re
import shutil

import pytest
from jsonschema import Draft202012Validator

from producer.models import OPERATIONS
from producer.routes import PAGES, ROUTES
from tests.integration.producer_support import api, keys, make_api  # noqa: F401 - fixtures


async def test_document_covers_exactly_the_routes(api):
    resp = await api.get("/openapi.json")
    assert (resp.status, resp.content_type) == (200, "application/json")
    doc = await resp.json()
    assert doc["openapi"] == "3.1.0"
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    assert documented == {(method, path) for method, path, _ in ROUTES}
    assert not {path for _, path, _ in PAGES} & set(doc["paths"])  # the console and /docs are pages
    assert set(OPERATIONS) == {(method, path) for method, path, _ in ROUTES}
    for method, path, handler in ROUTES:
        op = doc["paths"][path][method.lower()]
        assert op["summary"] == OPERATIONS[(method, path)].summary
        # The description is the view's docstring, with reST literals turned into Markdown.
        assert op["description"].startswith(handler.__doc__.split("\n")[0].replace("``", "`")[:20]), path
        assert "``" not in op["description"]
        assert op["responses"], (method, path)
    # Every path parameter of a template is declared.
    for path, item in doc["paths"].items():
        for op in item.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), path


async def test_every_schema_is_valid_json_schema_and_every_ref_resolves(api):
    doc = await (await api.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    for name, schema in schemas.items():
        Draft202012Validator.check_schema(schema)
        assert schema.get("description"), name
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', str(doc).replace("'", '"')))
    assert refs and refs <= set(schemas)
    assert "x-setting" not in str(doc)
    error = schemas["Error"]
    assert (error["required"], error["properties"]["fields"]["additionalProperties"]) == (["error", "fields"], {"type": "string"})


async def test_limits_come_from_the_settings(make_api):
    api = await make_api(max_product_length=7, max_id_length=9, max_quantity=11, batch_max_items=3, max_body_bytes=4096,
                         redrive_max=5, history_max_count=13)
    doc = await (await api.get("/openapi.json")).json()
    order = doc["components"]["schemas"]["Order"]
    assert order["properties"]["product"]["maxLength"] == 7
    assert order["properties"]["quantity"]["maximum"] == 11
    assert order["properties"]["orderId"]["oneOf"][1]["maxLength"] == 9
    assert order["additionalProperties"] is True
    batch = doc["paths"]["/orders/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert (batch["maxItems"], batch["minItems"], batch["items"]) == (3, 1, {"$ref": "#/components/schemas/Order"})
    assert doc["paths"]["/orders"]["post"]["responses"]["413"]["description"] == "Body larger than 4096 bytes."
    [limit] = doc["paths"]["/dead-letters/redrive"]["post"]["parameters"]
    assert (limit["schema"]["maximum"], limit["description"]) == (5, "At most this many (default and cap 5).")
    params = {p["name"]: p for p in doc["paths"]["/orders/history"]["get"]["parameters"]}
    assert params["limit"]["description"] == "Page size (larger is clamped to 13)."
    pending = {p["name"]: p for p in doc["paths"]["/orders/pending"]["get"]["parameters"]}
    assert pending["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 13}
    headers = doc["paths"]["/orders"]["post"]["responses"]["201"]["headers"]
    assert headers["Location"]["description"] == "`/orders/{orderId}`."


async def test_admin_routes_document_the_token_and_their_401_matches(make_api):
    api = await make_api(admin_token="s3cret")
    doc = await (await api.get("/openapi.json")).json()
    admin = {(m.upper(), p) for p, item in doc["paths"].items() for m, op in item.items() if "security" in op}
    assert admin == {("POST", "/dead-letters/redrive"), ("POST", "/dead-letters/{dlqId}/redrive"),
                     ("DELETE", "/dead-letters/{dlqId}"), ("POST", "/groups/{group}/pause"), ("POST", "/groups/{group}/resume")}
    assert doc["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"
    error = {"$ref": "#/components/schemas/Error", "components": doc["components"]}
    for method, path in sorted(admin):
        assert doc["paths"][path][method.lower()]["responses"]["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}
        resp = await api.request(method, path.replace("{dlqId}", "1-0").replace("{group}", "g"))
        body = await resp.json()
        assert (resp.status, list(body["fields"])) == (401, ["Authorization"]), path
        assert list(Draft202012Validator(error).iter_errors(body)) == []


async def test_docs_page_and_its_assets_are_served_by_the_app(api):
    resp = await api.get("/docs")
    assert (resp.status, resp.content_type) == (200, "text/html")
    page = await resp.text()
    assert re.findall(r"https?://", page) == []  # nothing from a CDN or any other host
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert "docs/swagger-ui-bundle.js" in assets and "docs/swagger-ui.css" in assets
    assert '"openapi.json"' in page
    types = {}
    for asset in assets:
        assert not asset.startswith(("/", "//")) and ":" not in asset, asset
        resp = await api.get("/" + asset)
        body = await resp.read()
        assert (resp.status, len(body) > 100) == (200, True), asset
        types[asset] = resp.content_type
    assert types["docs/swagger-ui-bundle.js"] in ("application/javascript", "text/javascript")
    assert types["docs/swagger-ui-standalone-preset.js"] in ("application/javascript", "text/javascript")
    assert types["docs/swagger-ui.css"] == "text/css"
    assert types["docs/favicon-32x32.png"] == "image/png"


async def test_pages_with_a_trailing_slash_redirect_to_the_page(api):
    for path in ("/docs/", "/ui/"):
        resp = await api.get(path, allow_redirects=False)
        assert (resp.status, resp.headers["Location"]) == (308, path.rstrip("/")), path
        followed = await api.get(path)
        assert (followed.status, followed.content_type, str(followed.url.path)) == (200, "text/html", path.rstrip("/"))


async def test_docs_assets_outside_the_dist_folder_are_json_404(api):
    for path in ("/docs/nope.js", "/docs/..%2Fpyproject.toml", "/docs/index.j2", "/docs/swagger-ui.js.map", "/docs/%2E%2E"):
        resp = await api.get(path)
        assert (resp.status, resp.content_type) == (404, "application/json"), path
        assert (await resp.json())["error"] == "Not Found"
    resp = await api.post("/docs")
    assert (resp.status, resp.headers["Allow"]) == (405, "GET,HEAD")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium to render the page")
async def test_docs_page_renders_every_operation_in_a_headless_browser(api, tmp_path):
    """Swagger UI 4 refuses a 3.1 document ("Unable to render this definition"); the page hands it
    the document as 3.0.3, and every operation shows up."""
    proc = await asyncio.create_subprocess_exec(
        shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
        "--virtual-time-budget=15000", "--dump-dom", str(api.make_url("/docs")),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        dom = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert "Unable to render" not in dom
    shown = set(re.findall(r'data-path="([^"]+)"[^>]*>', dom))
    assert shown == {path for _, path, _ in ROUTES}
    assert len(re.findall(r'opblock-summary-method">(GET|POST|DELETE)', dom)) == len(ROUTES)
    assert "errors-wrapper" not in dom
