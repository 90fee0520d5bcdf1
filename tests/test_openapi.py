"""The OpenAPI document is generated from the request types and the docs page is self-contained."""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.test_utils import TestClient

from agora.server import keys


async def test_openapi_lists_every_endpoint_with_its_types(client: TestClient) -> None:
    resp = await client.get("/api/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    app: web.Application = client.server.app  # type: ignore[assignment]
    for ep in app[keys.ENDPOINTS]:
        assert ep.method.lower() in doc["paths"][ep.path], ep.path
    register = doc["paths"]["/api/v1/auth/register"]["post"]
    schema_name = register["requestBody"]["content"]["application/json"]["schema"]["$ref"].split(
        "/"
    )[-1]
    schema = doc["components"]["schemas"][schema_name]
    assert set(schema["required"]) == {"username", "email", "password"}
    assert schema["properties"]["username"]["maxLength"] == 30
    assert schema["properties"]["password"]["minLength"] == 8
    assert "201" in register["responses"] and "422" in register["responses"]
    # Every error an endpoint answers is documented (schemathesis found these missing).
    paths = doc["paths"]
    assert "409" in register["responses"]
    for path in ("/api/v1/auth/login", "/api/v1/auth/refresh"):
        assert "401" in paths[path]["post"]["responses"], path
    for path in ("/api/v1/friends/requests", "/api/v1/blocks", "/api/v1/conversations"):
        assert "404" in paths[path]["post"]["responses"], path
    me = doc["paths"]["/api/v1/users/me"]["get"]
    assert me["security"] == [{"bearer": []}]
    assert doc["components"]["schemas"]["ErrorBody"]


async def test_docs_page_fetches_nothing_from_outside(client: TestClient) -> None:
    resp = await client.get("/api/docs")
    assert resp.status == 200
    html = await resp.text()
    assert "/api/openapi.json" in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/") for a in assets), assets
    for asset in assets:
        body = await (await client.get(asset)).text()
        assert (await client.get(asset)).status == 200
        assert not re.search(r"https?://", body), asset
