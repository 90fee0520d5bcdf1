"""What the browser tests take as given, done through the REST API beside the browser: people
registered or logged in as a script would, friendships made without clicking."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import requests

PASSWORD = "correct horse battery"


@dataclass
class User:
    username: str
    display_name: str
    id: str = ""
    token: str = ""


def person(name: str) -> User:
    """A new person called ``name`` (their username: the first name and a random suffix)."""
    return User(f"{name.split()[0].lower()}_{secrets.token_hex(3)}", name)


def rest(base: str, method: str, path: str, user: User | None = None, **body: Any) -> Any:
    headers = {"Authorization": f"Bearer {user.token}"} if user else {}
    response = requests.request(
        method, f"{base}/api/v1{path}", json=body or None, headers=headers, timeout=10
    )
    assert response.ok, response.text
    return response.json() if response.content else {}


def register(base: str, user: User) -> User:
    out = rest(
        base,
        "POST",
        "/auth/register",
        username=user.username,
        email=f"{user.username}@example.org",
        password=PASSWORD,
        display_name=user.display_name,
    )
    user.id, user.token = out["user"]["id"], out["access_token"]
    return user


def log_in(base: str, user: User) -> User:
    """The user's id and a Bearer token, as a script gets them."""
    out = rest(base, "POST", "/auth/login", login=user.username, password=PASSWORD)
    user.id, user.token = out["user"]["id"], out["access_token"]
    return user


def befriend(base: str, one: User, other: User) -> None:
    request = rest(base, "POST", "/friends/requests", one, user_id=other.id)
    rest(base, "POST", f"/friends/requests/{request['id']}/accept", other)
