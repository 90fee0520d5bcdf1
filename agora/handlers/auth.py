"""``/api/v1/auth/*``: register, login, refresh, logout."""

from __future__ import annotations

from typing import Any

from agora.protocol.accounts import AuthOut, LoginIn, RefreshIn, RegisterIn
from agora.server import keys
from agora.server.clientip import client_address
from agora.server.routing import Call, Routes

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
