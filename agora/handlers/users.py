"""``/api/v1/users/*``: profiles."""

from __future__ import annotations

from typing import Any

from agora.protocol.accounts import MeOut, UpdateMeIn
from agora.protocol.social import RelationshipsOut, RelationshipsQuery, UserProfileOut
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


# Before /users/{id}, which would otherwise take "relationships" for an id.
@routes.get(
    "/users/relationships", query=RelationshipsQuery, response=RelationshipsOut, errors=(422,)
)
async def relationships(call: Call[None, RelationshipsQuery]) -> RelationshipsOut:
    """What each of up to 100 users is to the caller, in one call.

    `?ids=1,2,3`: each item is `{id, friends, incoming_request_id, outgoing_request_id,
    blocking}`, as `relationship` in `GET /users/{id}`, in the order asked (a repeated id once).
    Left out: the caller's own id, unknown ids and users hidden from the caller (suspended, or
    blocking the caller). Users the caller blocks are listed, with `blocking: true` and nothing
    else, as `GET /blocks` lists them. More than 100 ids, or anything but ids (digits) between
    the commas, is 422 `validation_error` naming `ids`; no ids, an empty list."""
    return await call.app[keys.SOCIAL].relationships(call.viewer.user_id, call.query.ids)


@routes.get("/users/{id}", response=UserProfileOut, auth="optional")
async def get_user(call: Call[None, Any]) -> UserProfileOut:
    """A user's public profile, with what they are to the caller.

    `relationship` is `{friends, incoming_request_id, outgoing_request_id, blocking}`:
    friends; the pending request they sent the caller (accept or decline it by this id); the
    pending request the caller sent them (cancel it); whether the caller blocks them. It is
    null (present, not absent) for anonymous callers and on the caller's own profile.
    A block hides the two users from each other both ways, so a user the caller blocks, or who
    blocks the caller, answers 404 like an unknown one: the caller's blocks are in `GET /blocks`
    and, with `blocking: true`, in `GET /users/relationships`."""
    return await call.app[keys.SOCIAL].profile(call.viewer_id, call.path_id("id", "user"))
