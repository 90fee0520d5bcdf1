"""``/api/v1/auth/*``: register, login, refresh, logout.

``/api/v1/auth/web/*`` are the same four for a browser (the web client at ``/``): the refresh
token never reaches the page. It travels in an HttpOnly, ``SameSite=Strict`` cookie scoped to
``/api/v1/auth/web`` (``Secure`` over HTTPS), so script injected into the page cannot read it;
the page keeps only the short-lived access token, in memory. The cookie-driven calls (refresh,
logout) also demand an ``X-Agora-CSRF`` header, which no cross-site form can send and no other
origin may send without a preflight this node refuses."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from agora.errors import AppError, unauthorized
from agora.protocol.accounts import AuthOut, LoginIn, RefreshIn, RegisterIn, WebAuthOut
from agora.server import keys
from agora.server.clientip import client_address, is_https
from agora.server.middleware import error_response
from agora.server.routing import RATE_HEADERS, Call, Routes, json_response

routes = Routes("auth")


@routes.post(
    "/auth/register",
    body=RegisterIn,
    response=AuthOut,
    status=201,
    auth="none",
    errors=(409, 503),
    limits=("register",),
)
async def register(call: Call[RegisterIn, Any]) -> AuthOut:
    """Create an account and sign in.

    Usernames and emails are unique ignoring case (409 `conflict` otherwise)."""
    return await call.app[keys.ACCOUNTS].register(call.body, call.user_agent)


@routes.post(
    "/auth/login",
    body=LoginIn,
    response=AuthOut,
    auth="none",
    errors=(401, 403, 503),
    limits=("login",),
)
async def login(call: Call[LoginIn, Any]) -> AuthOut:
    """Sign in with username or email and password.

    Wrong credentials answer 401 with the same message whether the account exists or not.
    429 after 25 attempts from one address in 5 minutes, 10 failures for one account from one
    address in 15 minutes, or 25 sign-ins to one account in 5 minutes; 503 when too many
    sign-ins are being checked at once."""
    return await call.app[keys.ACCOUNTS].login(
        call.body.login, call.body.password, call.user_agent, client_address(call.request)
    )


@routes.post("/auth/refresh", body=RefreshIn, response=AuthOut, auth="none", errors=(401,))
async def refresh(call: Call[RefreshIn, Any]) -> AuthOut:
    """Trade a refresh token for a new pair; the old refresh token stops working.

    Presenting an already used refresh token answers 401 and revokes the whole login."""
    return await call.app[keys.ACCOUNTS].refresh(call.body.refresh_token)


@routes.post("/auth/logout", body=RefreshIn, status=204, auth="none")
async def logout(call: Call[RefreshIn, Any]) -> None:
    """Revoke the login of this refresh token; its access tokens stop working on every node."""
    await call.app[keys.ACCOUNTS].logout(call.body.refresh_token)


# -- the browser's variant: the refresh token in an HttpOnly cookie ------------------------------

COOKIE = "agora_refresh"
COOKIE_PATH = "/api/v1/auth/web"
CSRF_HEADER = "X-Agora-CSRF"
# A marker the page can read (it holds no secret), like GitHub's `logged_in`: the client tries a
# refresh at start only when it is there, so a visitor who never signed in sees no 401.
MARKER = "agora_session"


def _without_cookies(response: web.Response) -> web.Response:
    """``response``, telling the browser to forget the session's cookies."""
    response.headers.add(
        "Set-Cookie", f"{COOKIE}=; Max-Age=0; Path={COOKIE_PATH}; HttpOnly; SameSite=Strict"
    )
    response.headers.add("Set-Cookie", f"{MARKER}=; Max-Age=0; Path=/; SameSite=Strict")
    return response


def _web_session(call: Call[Any, Any], out: AuthOut, status: int = 200) -> web.Response:
    """The pair as a browser gets it: the access token in the body, the refresh token in the
    cookie (lasting as long as the token does)."""
    body = WebAuthOut(user=out.user, access_token=out.access_token, expires_in=out.expires_in)
    response = json_response(body, status, call.request.get(RATE_HEADERS))
    max_age, secure = call.app[keys.ACCOUNTS].refresh_ttl, is_https(call.request)
    response.set_cookie(
        COOKIE,
        out.refresh_token,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=secure,
    )
    response.set_cookie(MARKER, "1", max_age=max_age, path="/", samesite="Strict", secure=secure)
    return response


def _cookie_token(call: Call[Any, Any]) -> str | None:
    if not call.request.headers.get(CSRF_HEADER):
        raise unauthorized(f"send the {CSRF_HEADER} header with cookie-authenticated calls")
    token = call.request.cookies.get(COOKIE)
    return token if token and len(token) <= 256 else None


@routes.post(
    "/auth/web/register",
    body=RegisterIn,
    response=WebAuthOut,
    status=201,
    auth="none",
    errors=(409, 503),
    limits=("register",),
)
async def web_register(call: Call[RegisterIn, Any]) -> web.Response:
    """Create an account and sign in a browser (refresh token set as an HttpOnly cookie)."""
    return _web_session(call, await register(call), 201)


@routes.post(
    "/auth/web/login",
    body=LoginIn,
    response=WebAuthOut,
    auth="none",
    errors=(401, 403, 503),
    limits=("login",),
)
async def web_login(call: Call[LoginIn, Any]) -> web.Response:
    """Sign in a browser: as `POST /auth/login`, with the refresh token in an HttpOnly cookie."""
    return _web_session(call, await login(call))


@routes.post("/auth/web/refresh", response=WebAuthOut, auth="none", errors=(401,))
async def web_refresh(call: Call[None, Any]) -> web.Response:
    """Trade the refresh cookie for a new access token and a rotated cookie.

    Needs the `X-Agora-CSRF` header. No cookie, or a spent one, answers 401 and clears it; a
    reused cookie revokes the login, as `POST /auth/refresh` does."""
    token = _cookie_token(call)
    try:
        if token is None:
            raise unauthorized("not signed in")
        out = await call.app[keys.ACCOUNTS].refresh(token)
    except AppError as error:
        return _without_cookies(error_response(error))  # a spent cookie is of no more use
    return _web_session(call, out)


@routes.post("/auth/web/logout", status=204, auth="none", errors=(401,))
async def web_logout(call: Call[None, Any]) -> web.Response:
    """Sign a browser out: revoke the cookie's login and clear the cookie (needs
    `X-Agora-CSRF`)."""
    token = _cookie_token(call)
    if token is not None:
        await call.app[keys.ACCOUNTS].logout(token)
    return _without_cookies(web.Response(status=204))
