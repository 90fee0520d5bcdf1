"""Bad input of every kind answers the contract's envelope; request ids on every response."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient

from agora.server.app import create_app
from tests.support.api import expect_error


async def test_validation_names_every_bad_field(client: TestClient) -> None:
    resp = await client.post(
        "/api/v1/auth/register",
        json={"username": "a b", "email": "not-an-email", "password": "short", "display_name": 3},
    )
    err = await expect_error(resp, 422, "validation_error")
    assert set(err["fields"]) == {"username", "email", "password", "display_name"}
    assert all(isinstance(m, str) and m for m in err["fields"].values())
    assert "at least 8" in err["fields"]["password"]


async def test_missing_fields_are_each_named(client: TestClient) -> None:
    resp = await client.post("/api/v1/auth/register", json={"username": "okname"})
    err = await expect_error(resp, 422, "validation_error")
    assert set(err["fields"]) == {"email", "password"}
    assert err["fields"]["email"] == "this field is required"


async def test_non_object_bodies(client: TestClient) -> None:
    for raw in (b"[]", b"12", b'"text"', b"null"):
        resp = await client.post(
            "/api/v1/auth/login", data=raw, headers={"Content-Type": "application/json"}
        )
        err = await expect_error(resp, 422, "validation_error")
        assert "$" in err["fields"]


async def test_malformed_json_is_400(client: TestClient) -> None:
    for raw in (b"{", b"{'a': 1}", b"", b"\xff\xfe"):
        resp = await client.post(
            "/api/v1/auth/login", data=raw, headers={"Content-Type": "application/json"}
        )
        await expect_error(resp, 400, "validation_error")


async def test_non_json_content_type_is_415(client: TestClient) -> None:
    resp = await client.post(
        "/api/v1/auth/login",
        data="login=a&password=b",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    await expect_error(resp, 415, "unsupported_media_type")


async def test_body_over_one_mebibyte_is_413(client: TestClient) -> None:
    big = b'{"login": "' + b"a" * (1024 * 1024) + b'", "password": "x"}'
    resp = await client.post(
        "/api/v1/auth/login", data=big, headers={"Content-Type": "application/json"}
    )
    await expect_error(resp, 413, "payload_too_large")


async def test_unknown_routes_and_wrong_methods(client: TestClient) -> None:
    for path in ("/nope", "/api/v1/nope", "/api/v2/users/me"):
        await expect_error(await client.get(path), 404, "not_found")
    resp = await client.delete("/api/v1/auth/login")
    await expect_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]


async def test_request_id_on_every_response(client: TestClient) -> None:
    ok = await client.get("/healthz")
    assert len(ok.headers["X-Request-ID"]) >= 16
    bad = await client.get("/nope")
    assert bad.headers["X-Request-ID"] != ok.headers["X-Request-ID"]
    mine = await client.get("/healthz", headers={"X-Request-ID": "trace-abc_123"})
    assert mine.headers["X-Request-ID"] == "trace-abc_123"
    hostile = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert hostile.headers["X-Request-ID"] != "bad id\twith spaces"


async def test_unexpected_exceptions_become_internal_error(make_client, config) -> None:  # type: ignore[no-untyped-def]
    app = create_app(config)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret detail: password=hunter2")

    app.router.add_get("/boom", boom)
    client = await make_client(app)
    resp = await client.get("/boom")
    err = await expect_error(resp, 500, "internal_error")
    text = str(err)
    assert "hunter2" not in text and "Traceback" not in text
    assert resp.headers["X-Request-ID"] in err["message"]


async def test_request_id_on_static_files_and_websocket_upgrades(client: TestClient) -> None:
    from tests.support.api import register

    static = await client.get("/api/static/docs.js")
    assert static.status == 200 and static.headers.get("X-Request-ID")
    user = await register(client)
    ws = await client.ws_connect(f"/ws?token={user.access}")
    assert ws._response.headers.get("X-Request-ID")  # the 101 answer names its request too
    await ws.close()
