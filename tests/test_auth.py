"""Auth: registration, login, refresh rotation and reuse detection, logout, token checks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time

import asyncpg
import jwt
from aiohttp.test_utils import TestClient

from agora.clock import ManualClock
from agora.services.tokens import TokenIssuer
from tests.conftest import JWT_SECRET
from tests.support.api import PASSWORD, bearer, expect_error, register, unique


async def test_register_returns_user_and_tokens(client: TestClient) -> None:
    name = unique("Reg")
    resp = await client.post(
        "/api/v1/auth/register",
        json={
            "username": name,
            "email": f"{name}@example.test",
            "password": PASSWORD,
            "display_name": "Reg Ister",
        },
    )
    assert resp.status == 201
    body = await resp.json()
    assert set(body) >= {"user", "access_token", "refresh_token", "expires_in"}
    assert body["expires_in"] == 900
    user = body["user"]
    assert user["username"] == name and user["display_name"] == "Reg Ister"
    assert set(user) >= {"id", "username", "display_name", "bio", "avatar_url", "created_at"}
    assert isinstance(user["id"], str) and user["id"].isdigit()
    assert user["created_at"].endswith("Z")
    claims = jwt.decode(body["access_token"], JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == user["id"]
    assert {"sub", "sid", "jti", "exp", "iat"} <= set(claims)
    assert claims["exp"] - claims["iat"] == 15 * 60


async def test_stored_secrets_are_argon2id_hashes_and_token_digests(
    client: TestClient, database_url: str
) -> None:
    user = await register(client)
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval(
            "SELECT password_hash FROM accounts.users WHERE id = $1", int(user.id)
        )
        digests = await conn.fetch(
            "SELECT t.token_hash FROM accounts.refresh_tokens t"
            " JOIN accounts.login_sessions s ON s.id = t.session_id WHERE s.user_id = $1",
            int(user.id),
        )
    finally:
        await conn.close()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    # The refresh token itself is nowhere: only its SHA-256 digest.
    assert [bytes(r["token_hash"]) for r in digests] == [
        hashlib.sha256(user.refresh.encode()).digest()
    ]


async def test_usernames_and_emails_are_unique_ignoring_case(client: TestClient) -> None:
    name = unique("alice")
    first = await register(client, name)
    resp = await client.post(
        "/api/v1/auth/register",
        json={
            "username": name.upper(),
            "email": f"other-{name}@example.test",
            "password": PASSWORD,
        },
    )
    err = await expect_error(resp, 409, "conflict")
    assert "username" in err["fields"]
    resp = await client.post(
        "/api/v1/auth/register",
        json={
            "username": unique("bob"),
            "email": first.body["user"]["email"].upper(),
            "password": PASSWORD,
        },
    )
    err = await expect_error(resp, 409, "conflict")
    assert "email" in err["fields"]


async def test_login_by_username_or_email_any_case(client: TestClient) -> None:
    user = await register(client)
    for login in (user.username, user.username.upper(), f"{user.username}@EXAMPLE.test"):
        resp = await client.post("/api/v1/auth/login", json={"login": login, "password": PASSWORD})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["user"]["id"] == user.id


async def test_wrong_credentials_same_answer_whether_user_exists(client: TestClient) -> None:
    user = await register(client)
    wrong = await client.post(
        "/api/v1/auth/login", json={"login": user.username, "password": "nope-nope"}
    )
    missing = await client.post(
        "/api/v1/auth/login", json={"login": unique("ghost"), "password": "nope-nope"}
    )
    a = await expect_error(wrong, 401, "unauthorized")
    b = await expect_error(missing, 401, "unauthorized")
    assert a["message"] == b["message"]


async def test_refresh_rotates_and_old_token_stops_working(client: TestClient) -> None:
    user = await register(client)
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh})
    assert resp.status == 200
    pair = await resp.json()
    assert pair["refresh_token"] != user.refresh
    me = await client.get("/api/v1/users/me", headers=bearer(pair["access_token"]))
    assert me.status == 200
    # The rotated-out token is refused ...
    again = await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh})
    await expect_error(again, 401, "unauthorized")
    # ... and that reuse revoked the whole login: the newest refresh and access tokens too.
    newest = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
    )
    await expect_error(newest, 401, "unauthorized")
    me = await client.get("/api/v1/users/me", headers=bearer(pair["access_token"]))
    await expect_error(me, 401, "unauthorized")
    # Another login of the same user is untouched.
    other = await client.post(
        "/api/v1/auth/login", json={"login": user.username, "password": PASSWORD}
    )
    assert other.status == 200
    me = await client.get("/api/v1/users/me", headers=bearer((await other.json())["access_token"]))
    assert me.status == 200


async def test_concurrent_refresh_of_one_token_has_one_winner(client: TestClient) -> None:
    user = await register(client)
    answers = await asyncio.gather(
        *[
            client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh})
            for _ in range(5)
        ]
    )
    statuses = sorted(r.status for r in answers)
    assert statuses.count(200) == 1, statuses
    assert statuses.count(401) == 4


async def test_logout_revokes_refresh_and_access_tokens(client: TestClient) -> None:
    user = await register(client)
    assert (await client.get("/api/v1/users/me", headers=user.headers)).status == 200
    resp = await client.post("/api/v1/auth/logout", json={"refresh_token": user.refresh})
    assert resp.status == 204
    await expect_error(
        await client.get("/api/v1/users/me", headers=user.headers), 401, "unauthorized"
    )
    await expect_error(
        await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh}),
        401,
        "unauthorized",
    )
    # Logging out twice, or with an unknown token, is harmless.
    assert (
        await client.post("/api/v1/auth/logout", json={"refresh_token": user.refresh})
    ).status == 204
    assert (
        await client.post("/api/v1/auth/logout", json={"refresh_token": "nonsense"})
    ).status == 204


async def test_logout_is_seen_by_another_node(make_client) -> None:  # type: ignore[no-untyped-def]
    a = await make_client()
    b = await make_client(node_id="other-node")
    user = await register(a)
    assert (await b.get("/api/v1/users/me", headers=user.headers)).status == 200
    assert (await a.post("/api/v1/auth/logout", json={"refresh_token": user.refresh})).status == 204
    for _ in range(50):  # revocations travel through a Redis stream
        if (await b.get("/api/v1/users/me", headers=user.headers)).status == 401:
            break
        await asyncio.sleep(0.05)
    await expect_error(await b.get("/api/v1/users/me", headers=user.headers), 401, "unauthorized")


def _b64(obj: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


async def test_bad_access_tokens_are_refused(client: TestClient) -> None:
    user = await register(client)
    header, payload, signature = user.access.split(".")
    claims = jwt.decode(user.access, JWT_SECRET, algorithms=["HS256"])
    forged_claims = {**claims, "sub": "1"}
    bad_tokens = {
        "tampered payload": f"{header}.{_b64(forged_claims)}.{signature}",
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(forged_claims)}.",
        "other secret": jwt.encode(claims, "another-secret-" + "y" * 40, algorithm="HS256"),
        "other algorithm": jwt.encode(claims, JWT_SECRET, algorithm="HS512"),
        "missing sid": jwt.encode(
            {k: v for k, v in claims.items() if k != "sid"}, JWT_SECRET, algorithm="HS256"
        ),
        "garbage": "not-a-jwt",
    }
    for what, token in bad_tokens.items():
        resp = await client.get("/api/v1/users/me", headers=bearer(token))
        await expect_error(resp, 401, "unauthorized")
        assert "Bearer" in resp.headers.get("WWW-Authenticate", ""), what
    resp = await client.get("/api/v1/users/me", headers={"Authorization": "Basic abc"})
    await expect_error(resp, 401, "unauthorized")
    await expect_error(await client.get("/api/v1/users/me"), 401, "unauthorized")


async def test_expired_access_token_is_refused(client: TestClient) -> None:
    user = await register(client)
    claims = jwt.decode(user.access, JWT_SECRET, algorithms=["HS256"])
    clock = ManualClock(start=claims["iat"] - 3600)  # issued an hour ago, valid for 15 min
    expired = TokenIssuer(JWT_SECRET, 900, clock).issue_access(int(user.id), int(claims["sid"]))
    resp = await client.get("/api/v1/users/me", headers=bearer(expired))
    err = await expect_error(resp, 401, "unauthorized")
    assert "expired" in err["message"]


def test_verified_token_cache_still_checks_expiry() -> None:
    clock = ManualClock(start=time.time())  # pyjwt checks iat against the real clock
    issuer = TokenIssuer(JWT_SECRET, 900, clock)
    token = issuer.issue_access(1, 2)
    assert issuer.decode_access(token).user_id == 1
    assert issuer.decode_access(token).session_id == 2  # served from the cache
    clock.advance(900 + 10)
    try:
        issuer.decode_access(token)
    except Exception as exc:
        assert "expired" in str(exc)
    else:
        raise AssertionError("an expired token was accepted from the cache")
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    clock.advance(-20)
    try:
        issuer.decode_access(tampered)
    except Exception:
        pass
    else:
        raise AssertionError("a tampered token was accepted")
