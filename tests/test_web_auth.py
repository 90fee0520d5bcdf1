"""The web client's sign-in (handlers/auth.py ``/auth/web/*``) and its shell page
(handlers/web.py): the refresh token travels only in an HttpOnly cookie, rotates, and a reused
one revokes the login; cookie calls need the CSRF header; the page's CSP forbids inline script
and other hosts."""

from __future__ import annotations

import gzip
import ipaddress
import os
import re
from dataclasses import replace
from http.cookies import SimpleCookie
from pathlib import Path

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from agora.config import Config
from agora.handlers.web import STATIC, TEMPLATES, StaticFiles
from tests.conftest import AppFactory
from tests.support.api import PASSWORD, expect_error, unique

WEB = "/api/v1/auth/web"
CSRF = {"X-Agora-CSRF": "1"}


def cookies_of(resp: object) -> dict[str, dict[str, str]]:
    """Every Set-Cookie of a response: name -> {"value", and each attribute, lower case}."""
    out: dict[str, dict[str, str]] = {}
    for header in resp.headers.getall("Set-Cookie", []):  # type: ignore[attr-defined]
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        for name, morsel in jar.items():
            attrs = {k: str(v) for k, v in morsel.items() if v}
            flags = {part.strip().lower() for part in header.split(";")}
            attrs["httponly"] = str("httponly" in flags)
            out[name] = {"value": morsel.value, **attrs}
    return out


async def sign_up(client: TestClient) -> tuple[dict, str]:
    name = unique("web")
    resp = await client.post(
        f"{WEB}/register",
        json={"username": name, "email": f"{name}@example.test", "password": PASSWORD},
    )
    assert resp.status == 201, await resp.text()
    return await resp.json(), cookies_of(resp)["agora_refresh"]["value"]


async def refresh(client: TestClient, token: str | None, headers: dict = CSRF) -> ClientResponse:
    client.session.cookie_jar.clear()  # only the cookie this test names
    cookie = {"Cookie": f"agora_refresh={token}"} if token else {}
    return await client.post(f"{WEB}/refresh", headers={**headers, **cookie})


async def test_sign_up_puts_the_refresh_token_in_an_httponly_cookie_only(
    client: TestClient,
) -> None:
    name = unique("web")
    resp = await client.post(
        f"{WEB}/register",
        json={"username": name, "email": f"{name}@example.test", "password": PASSWORD},
    )
    assert resp.status == 201
    body = await resp.json()
    assert set(body) == {"user", "access_token", "expires_in", "token_type"}  # no refresh_token
    cookies = cookies_of(resp)
    refresh_cookie = cookies["agora_refresh"]
    assert refresh_cookie["httponly"] == "True"
    assert refresh_cookie["samesite"] == "Strict"
    assert refresh_cookie["path"] == WEB
    assert int(refresh_cookie["max-age"]) == 30 * 24 * 3600
    assert "secure" not in refresh_cookie  # plain http here; see the https test
    # The marker the page reads to know a session may be resumed holds no secret.
    marker = cookies["agora_session"]
    assert marker["value"] == "1" and marker["httponly"] == "False" and marker["path"] == "/"
    # The access token works for the API like any other.
    me = await client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.status == 200 and (await me.json())["username"] == name


async def test_sign_in_and_errors_keep_the_envelope(client: TestClient) -> None:
    body, _ = await sign_up(client)
    username = body["user"]["username"]
    ok = await client.post(f"{WEB}/login", json={"login": username, "password": PASSWORD})
    assert ok.status == 200 and "agora_refresh" in cookies_of(ok)
    bad = await client.post(f"{WEB}/login", json={"login": username, "password": "wrong-one"})
    await expect_error(bad, 401, "unauthorized")
    assert "agora_refresh" not in cookies_of(bad)
    invalid = await client.post(f"{WEB}/register", json={"username": "x"})
    detail = await expect_error(invalid, 422, "validation_error")
    assert set(detail["fields"]) >= {"username", "email", "password"}


async def test_refresh_rotates_the_cookie_and_a_reused_one_revokes_the_login(
    client: TestClient,
) -> None:
    _, first = await sign_up(client)
    resp = await refresh(client, first)
    assert resp.status == 200
    renewed = await resp.json()
    assert set(renewed) == {"user", "access_token", "expires_in", "token_type"}
    second = cookies_of(resp)["agora_refresh"]["value"]
    assert second != first
    # The spent cookie again: 401, cookies cleared, and the whole login revoked.
    reused = await refresh(client, first)
    await expect_error(reused, 401, "unauthorized")
    cleared = cookies_of(reused)
    assert cleared["agora_refresh"]["value"] == "" and cleared["agora_refresh"]["max-age"] == "0"
    assert cleared["agora_session"]["max-age"] == "0"
    await expect_error(await refresh(client, second), 401, "unauthorized")
    me = await client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {renewed['access_token']}"}
    )
    await expect_error(me, 401, "unauthorized")


async def test_cookie_calls_need_the_csrf_header(client: TestClient) -> None:
    _, token = await sign_up(client)
    for path in ("refresh", "logout"):
        client.session.cookie_jar.clear()
        resp = await client.post(f"{WEB}/{path}", headers={"Cookie": f"agora_refresh={token}"})
        error = await expect_error(resp, 401, "unauthorized")
        assert "X-Agora-CSRF" in error["message"]
    # Neither attempt spent the cookie or ended the login.
    assert (await refresh(client, token)).status == 200


async def test_refresh_without_a_cookie_is_401_and_clears_the_marker(client: TestClient) -> None:
    resp = await refresh(client, None)
    await expect_error(resp, 401, "unauthorized")
    assert cookies_of(resp)["agora_session"]["max-age"] == "0"
    oversized = await refresh(client, "x" * 300)
    await expect_error(oversized, 401, "unauthorized")


async def test_sign_out_revokes_the_login_and_clears_the_cookies(client: TestClient) -> None:
    body, token = await sign_up(client)
    client.session.cookie_jar.clear()
    resp = await client.post(f"{WEB}/logout", headers={**CSRF, "Cookie": f"agora_refresh={token}"})
    assert resp.status == 204
    cleared = cookies_of(resp)
    assert cleared["agora_refresh"]["max-age"] == "0" and cleared["agora_session"]["max-age"] == "0"
    await expect_error(await refresh(client, token), 401, "unauthorized")
    me = await client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    await expect_error(me, 401, "unauthorized")
    # Signing out twice, or with no cookie, is fine (and still clears).
    client.session.cookie_jar.clear()
    again = await client.post(f"{WEB}/logout", headers=CSRF)
    assert again.status == 204 and cookies_of(again)["agora_session"]["max-age"] == "0"


async def test_the_cookie_is_secure_behind_a_trusted_https_proxy(
    client: TestClient, make_client: AppFactory, config: Config
) -> None:
    behind_proxy = await make_client(
        limits=replace(config.limits, trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    )

    async def register(via: TestClient) -> dict[str, dict[str, str]]:
        name = unique("web")
        payload = {"username": name, "email": f"{name}@example.test", "password": PASSWORD}
        resp = await via.post(
            f"{WEB}/register", json=payload, headers={"X-Forwarded-Proto": "https"}
        )
        assert resp.status == 201
        return cookies_of(resp)

    secure = await register(behind_proxy)
    assert "secure" in secure["agora_refresh"] and "secure" in secure["agora_session"]
    # From a peer that is not a trusted proxy the same header is not believed.
    assert "secure" not in (await register(client))["agora_refresh"]


async def test_the_shell_page_has_a_strict_policy(client: TestClient) -> None:
    resp = await client.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    policy = dict(
        part.strip().split(" ", 1)
        for part in resp.headers["Content-Security-Policy"].split(";")
        if " " in part.strip()
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["base-uri"] == "'none'"
    assert "unsafe" not in resp.headers["Content-Security-Policy"]
    html = await resp.text()
    assert '<script type="module" src="/static/app.js"></script>' in html
    # No inline script or style anywhere in the page: every <script> has a src.
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert "style=" not in html and "<style" not in html


async def test_static_modules_are_served_and_revalidated(client: TestClient) -> None:
    resp = await client.get("/static/app.js")
    assert resp.status == 200
    assert resp.content_type == "text/javascript"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert await resp.read() == (STATIC / "app.js").read_bytes()
    by_tag = await client.get("/static/app.js", headers={"If-None-Match": resp.headers["ETag"]})
    assert by_tag.status == 304 and by_tag.headers["ETag"] == resp.headers["ETag"]
    by_date = await client.get(
        "/static/app.js", headers={"If-Modified-Since": resp.headers["Last-Modified"]}
    )
    assert by_date.status == 304
    css = await client.get("/static/style.css")
    assert css.status == 200 and css.content_type == "text/css"
    for missing in ("/static/nope.js", "/static/../handlers/web.py", "/static/%2e%2e/app.js"):
        await expect_error(await client.get(missing), 404, "not_found")


async def test_static_files_are_compressed_for_who_asks(client: TestClient) -> None:
    plain = await client.get("/static/app.js", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    packed = await client.get(
        "/static/app.js", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert packed.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await packed.read()) == await plain.read()


async def test_an_edited_static_file_is_served_fresh(tmp_path: Path) -> None:
    """No build step, no restart: a file changed on disk is read again."""
    root = tmp_path / "static"
    root.mkdir()
    files = StaticFiles(root)
    (root / "a.js").write_text("export const a = 1;")
    first = files._load("a.js")
    assert first is not None and first.body == b"export const a = 1;"
    assert files._load("a.js") is first  # unchanged: from memory
    (root / "a.js").write_text("export const a = 22;")
    os.utime(root / "a.js", ns=(first.stamp[0] + 10**9, first.stamp[0] + 10**9))
    second = files._load("a.js")
    assert second is not None and second.body == b"export const a = 22;"
    assert second.etag != first.etag
    (tmp_path / "outside.js").write_text("secret")  # beside the root: never served
    assert files._load("../outside.js") is None and files._load("nope.js") is None


def test_the_client_fetches_nothing_from_another_host_and_uses_no_token_storage() -> None:
    """Static check of every file the client ships (the browser tests check it live)."""
    files = [TEMPLATES / "index.html", *sorted(Path(STATIC).rglob("*.*"))]
    assert len(files) > 5
    for path in files:
        if path.suffix not in (".js", ".css", ".html", ".svg"):
            continue
        # Comments may cite a page (blurhash.js cites its specification); code may not load one.
        text = re.sub(r"/\*.*?\*/|<!--.*?-->", "", path.read_text(), flags=re.S)
        text = re.sub(r"(?m)(^|\s)//.*$", "", text)
        for url in re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s\"')]*", text):
            assert url.startswith("http://www.w3.org/2000/svg"), f"{path.name}: {url}"
        assert "localStorage" not in text and "sessionStorage" not in text, path.name
        assert "innerHTML" not in text, f"{path.name}: build elements, never parse HTML"
        assert "eval(" not in text and "new Function" not in text, path.name
