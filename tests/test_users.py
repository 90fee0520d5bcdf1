"""Users: own profile, public profiles, updates."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.support.api import expect_error, register


async def test_me_and_public_profile(client: TestClient) -> None:
    user = await register(client, display_name="Dee")
    me = await (await client.get("/api/v1/users/me", headers=user.headers)).json()
    assert me["id"] == user.id and me["email"].endswith("@example.test") and me["role"] == "user"
    public = await client.get(f"/api/v1/users/{user.id}")
    assert public.status == 200
    body = await public.json()
    assert body["display_name"] == "Dee"
    assert "email" not in body and "password_hash" not in body
    assert set(body) >= {"id", "username", "display_name", "bio", "avatar_url", "created_at"}


async def test_unknown_or_malformed_user_ids_are_404(client: TestClient) -> None:
    for path in ("/api/v1/users/123", "/api/v1/users/abc", "/api/v1/users/99999999999999999999"):
        await expect_error(await client.get(path), 404, "not_found")


async def test_patch_me_changes_only_given_fields(client: TestClient) -> None:
    user = await register(client, display_name="Before")
    resp = await client.patch("/api/v1/users/me", headers=user.headers, json={"bio": "hello"})
    assert resp.status == 200
    body = await resp.json()
    assert body["bio"] == "hello" and body["display_name"] == "Before"
    resp = await client.patch(
        "/api/v1/users/me", headers=user.headers, json={"display_name": "After", "bio": 7}
    )
    err = await expect_error(resp, 422, "validation_error")
    assert set(err["fields"]) == {"bio"}
    resp = await client.patch(
        "/api/v1/users/me", headers=user.headers, json={"display_name": "x" * 101}
    )
    await expect_error(resp, 422, "validation_error")
    resp = await client.patch(
        "/api/v1/users/me", headers=user.headers, json={"avatar_media_id": "42"}
    )
    err = await expect_error(resp, 422, "validation_error")
    assert "avatar_media_id" in err["fields"]
