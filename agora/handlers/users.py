"""``/api/v1/users/*``: profiles."""

from __future__ import annotations

from typing import Any

from agora.protocol.accounts import MeOut, UpdateMeIn, UserOut
from agora.server import keys
from agora.server.routing import Call, Routes

routes = Routes("users")


@routes.get("/users/me", response=MeOut)
async def get_me(call: Call[None, Any]) -> MeOut:
    """The caller's own account, with its private fields."""
    return await call.app[keys.ACCOUNTS].me(call.viewer)


@routes.patch("/users/me", body=UpdateMeIn, response=MeOut)
async def update_me(call: Call[UpdateMeIn, Any]) -> MeOut:
    """Change display name, bio or avatar; absent fields stay as they are."""
    return await call.app[keys.ACCOUNTS].update_me(call.viewer, call.body)


@routes.get("/users/{id}", response=UserOut, auth="optional")
async def get_user(call: Call[None, Any]) -> UserOut:
    """A user's public profile."""
    return await call.app[keys.ACCOUNTS].get_user(call.viewer_id, call.path_id("id", "user"))
