"""Security headers on every response, CORS for the allowed origins only, and no secret in any
log line (issue 12, point 7)."""

from __future__ import annotations

import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agora.config import Config
from agora.server.app import create_app
from agora.server.run import SERVER_OPTIONS
from tests.conftest import JWT_SECRET, AppFactory
from tests.support.api import PASSWORD, register
from tests.support.ws import WsClient

ALWAYS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@pytest.mark.parametrize(
    ("path", "status", "csp"),
    [
        ("/api/v1/users/me", 401, "default-src 'none'; frame-ancestors 'none'"),  # an error
        ("/api/v1/nothing-here", 404, "default-src 'none'; frame-ancestors 'none'"),
        ("/healthz", 200, "default-src 'none'; frame-ancestors 'none'"),
        ("/api/openapi.json", 200, "default-src 'none'; frame-ancestors 'none'"),
        ("/api/docs", 200, None),  # the page keeps its own policy, or gets frame-ancestors
    ],
)
async def test_security_headers_on_every_response(
    client: TestClient, path: str, status: int, csp: str | None
) -> None:
    resp = await client.get(path)
    assert resp.status == status
    for name, value in ALWAYS.items():
        assert resp.headers[name] == value, name
    policy = resp.headers["Content-Security-Policy"]
    assert policy == csp if csp else "frame-ancestors 'none'" in policy
    assert "Strict-Transport-Security" not in resp.headers
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_hsts_when_configured(make_client: AppFactory) -> None:
    client = await make_client(hsts_seconds=31536000)
    resp = await client.get("/healthz")
    assert resp.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


async def test_cors_for_the_allowed_origins_only(make_client: AppFactory) -> None:
    client = await make_client(cors_origins=("https://app.example.com",))
    a = await register(client)
    allowed = {"Origin": "https://app.example.com"}
    resp = await client.get("/api/v1/users/me", headers={**a.headers, **allowed})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Origin" in resp.headers.getall("Vary")
    assert "Retry-After" in resp.headers["Access-Control-Expose-Headers"]
    preflight = await client.options(
        "/api/v1/posts",
        headers={
            **allowed,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    # Another origin: no CORS headers on answers, its preflight refused in the envelope.
    other = {"Origin": "https://evil.example.net"}
    resp = await client.get("/api/v1/users/me", headers={**a.headers, **other})
    assert "Access-Control-Allow-Origin" not in resp.headers
    preflight = await client.options(
        "/api/v1/posts", headers={**other, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 403
    assert (await preflight.json())["error"]["code"] == "forbidden"


async def test_no_cors_unless_configured(client: TestClient) -> None:
    preflight = await client.options(
        "/api/v1/posts",
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 403


async def test_no_token_password_or_secret_in_any_log_line(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    """Everything a node logs at DEBUG (its server built as `agora serve` builds it) while
    accounts register, log in (also wrongly), refresh, open a WebSocket with the token in its
    URL and log out."""
    server = TestServer(create_app(config))
    await server.start_server(**SERVER_OPTIONS)
    client = TestClient(server)
    await client.start_server()
    try:
        await _exercise(client, config, caplog)
    finally:
        await client.close()


async def _exercise(client: TestClient, config: Config, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    a = await register(client)
    secrets_seen = {a.access, a.refresh, PASSWORD, JWT_SECRET}
    resp = await client.post("/api/v1/auth/login", json={"login": a.username, "password": PASSWORD})
    body = await resp.json()
    secrets_seen |= {body["access_token"], body["refresh_token"]}
    await client.post(
        "/api/v1/auth/login", json={"login": a.username, "password": "wrong-" + PASSWORD}
    )
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": body["refresh_token"]})
    fresh = await resp.json()
    secrets_seen |= {fresh["access_token"], fresh["refresh_token"]}
    ws = await WsClient.connect(client, fresh["access_token"])
    await ws.send({"type": "ping"})
    await ws.expect("pong")
    await client.get("/ws?token=not-a-valid-token")
    await client.post(
        "/api/v1/auth/logout", headers={"Authorization": f"Bearer {fresh['access_token']}"}
    )
    assert config.auth.jwt_secret
    secrets_seen.add(config.auth.jwt_secret)
    logged = [r.getMessage() + " " + repr(r.__dict__) for r in caplog.records]
    assert logged, "nothing was logged: the test would prove nothing"
    for line in logged:
        for secret in secrets_seen:
            assert secret not in line, f"a secret in a log line: {line[:200]}"
        assert "not-a-valid-token" not in line
