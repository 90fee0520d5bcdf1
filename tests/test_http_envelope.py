"""Bad input of every kind answers the contract's envelope; request ids on every response."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.test_utils import TestClient

from agora.protocol.cursor import encode_cursor
from agora.server.app import create_app
from tests.support.api import PASSWORD, expect_error, register


async def test_validation_names_every_bad_field(client: TestClient) -> None:
    resp = await client.post(
        "/api/v1/auth/register",
        json={"username": "a b", "email": "not-an-email", "password": "short", "display_name": 3},
    )
    err = await expect_error(resp, 422, "validation_error")
    assert set(err["fields"]) == {"username", "email", "password", "display_name"}
    assert all(isinstance(m, str) and m for m in err["fields"].values())
    assert "at least 8" in err["fields"]["password"]


async def test_ids_past_the_id_space_are_invalid_not_internal_errors(client: TestClient) -> None:
    user = await register(client)
    too_long = "9706473985176953699"  # fits no id (ids are below 2**53), overflows a bigint
    for path, body, bad in (
        ("/api/v1/conversations", {"member_ids": ["7", too_long, 8]}, ["[1]", "[2]"]),
        ("/api/v1/friends/requests", {"user_id": too_long}, [""]),
        ("/api/v1/blocks", {"user_id": "99999999999999999999"}, [""]),
    ):
        resp = await client.post(path, json=body, headers=user.headers)
        err = await expect_error(resp, 422, "validation_error")
        field = next(iter(body))
        assert sorted(err["fields"]) == [field + b for b in bad], err  # each bad item named
        assert all("1-16 digits" in m or "string" in m for m in err["fields"].values()), err
    resp = await client.get(f"/api/v1/users/{too_long}", headers=user.headers)
    await expect_error(resp, 404, "not_found")


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
    # The last two have a wrong type before the syntax error (schemathesis found them as 500s).
    for raw in (b"{", b"{'a': 1}", b"", b"\xff\xfe", b'{"login": 5} x', b"[] []"):
        resp = await client.post(
            "/api/v1/auth/login", data=raw, headers={"Content-Type": "application/json"}
        )
        await expect_error(resp, 400, "validation_error")


async def test_a_trailing_newline_does_not_pass_a_pattern(client: TestClient) -> None:
    # Python's `$` matches before a final newline: "bob\n" passed ^[A-Za-z0-9_]+$ and was stored.
    resp = await client.post(
        "/api/v1/auth/register",
        json={"username": "newline_bob\n", "email": "nb@example.test\n", "password": PASSWORD},
    )
    err = await expect_error(resp, 422, "validation_error")
    assert set(err["fields"]) == {"username", "email"}, err
    user = await register(client)
    for body, field in (
        ({"user_id": user.id + "\n"}, "user_id"),
        ({"member_ids": [user.id + "\n"]}, "member_ids[0]"),
    ):
        path = "/api/v1/blocks" if "user_id" in body else "/api/v1/conversations"
        resp = await client.post(path, json=body, headers=user.headers)
        err = await expect_error(resp, 422, "validation_error")
        assert list(err["fields"]) == [field], err
    resp = await client.get(f"/api/v1/users/{user.id}%0A", headers=user.headers)
    await expect_error(resp, 404, "not_found")


async def test_forged_cursors_are_400_not_overflows(client: TestClient) -> None:
    user = await register(client)
    for path, cursor in (
        ("/api/v1/feed", encode_cursor("feed", before=2**64)),  # past PostgreSQL's bigint
        ("/api/v1/friends", encode_cursor("friends", at=10**18, id=1)),  # past datetime's range
        ("/api/v1/conversations", encode_cursor("conversations", at=-(10**17), id=1)),
        ("/api/v1/feed?rank=top", encode_cursor("top", asof=1, score=1e308 * 10, id=1)),
    ):
        sep = "&" if "?" in path else "?"
        resp = await client.get(f"{path}{sep}cursor={cursor}", headers=user.headers)
        err = await expect_error(resp, 400, "validation_error")
        assert "cursor" in err["fields"], err


async def test_json_nested_absurdly_deep_is_400(client: TestClient) -> None:
    user = await register(client)
    deep = "[" * 100_000 + "]" * 100_000  # 200 KB: msgspec gives up with a RecursionError
    for raw in (
        f'{{"text": {deep}, "visibility": "public"}}',  # in a field, of the wrong type
        f'{{"text": "ok", "visibility": "public", "extra": {deep}}}',  # in an unknown field
        f'{{"text": "a\\u0000", "visibility": "public", "extra": {deep}}}',  # and a NUL
        deep,
    ):
        resp = await client.post(
            "/api/v1/posts",
            data=raw.encode(),
            headers={**user.headers, "Content-Type": "application/json"},
        )
        err = await expect_error(resp, 400, "validation_error")
        assert err["fields"] == {"$": "nested too deeply"}, err


async def test_nul_characters_are_refused_not_stored(client: TestClient) -> None:
    # PostgreSQL text cannot hold NUL; schemathesis found them as 500s.
    user = await register(client)
    for body, fields, nul in (
        ({"text": "a\u0000b", "visibility": "public"}, {"text"}, "text"),
        ({"text": "ok", "visibility": "public", "extra\u0000": 1}, {"extra\u0000"}, "extra\u0000"),
        ({"text": 5, "visibility": "public", "tags": ["x\u0000"]}, {"text", "tags"}, "tags"),
    ):
        resp = await client.post(
            "/api/v1/posts",
            data=json.dumps(body, ensure_ascii=True).encode(),
            headers={**user.headers, "Content-Type": "application/json"},
        )
        err = await expect_error(resp, 422, "validation_error")
        assert set(err["fields"]) == fields, err
        assert "NUL" in err["fields"][nul], err
    resp = await client.post(
        "/api/v1/auth/login", json={"login": "someone\u0000", "password": "whatever1"}
    )
    await expect_error(resp, 422, "validation_error")
    resp = await client.get(f"/api/v1/users/{user.id}/posts", headers=user.headers)
    assert (await resp.json())["items"] == []


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
