"""Access tokens (HS256 JWTs) and refresh tokens (opaque, stored hashed)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import jwt

from agora.clock import Clock

ALGORITHM = "HS256"
ISSUER = "agora"
_REQUIRED = ["exp", "iat", "sub", "sid", "jti"]


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: int
    session_id: int
    jti: str
    expires_at: int


class InvalidToken(Exception):
    pass


class TokenIssuer:
    """Signs and checks access tokens. The algorithm is pinned on decode: ``alg: none`` and any
    other algorithm are refused, whatever the token's header says."""

    def __init__(self, secret: str, access_ttl: int, clock: Clock) -> None:
        self._secret = secret
        self.access_ttl = access_ttl
        self._clock = clock

    def issue_access(self, user_id: int, session_id: int) -> str:
        now = int(self._clock.time())
        payload = {
            "iss": ISSUER,
            "sub": str(user_id),
            "sid": str(session_id),
            "jti": secrets.token_hex(16),
            "iat": now,
            "exp": now + self.access_ttl,
        }
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM)

    def decode_access(self, token: str) -> Claims:
        try:
            payload = jwt.decode(
                token, self._secret, algorithms=[ALGORITHM], issuer=ISSUER,
                options={"require": _REQUIRED + ["iss"]}, leeway=5,
            )
            return Claims(int(payload["sub"]), int(payload["sid"]), str(payload["jti"]),
                          int(payload["exp"]))
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise InvalidToken(str(exc)) from None


def new_refresh_token() -> tuple[str, bytes]:
    """A fresh refresh token and the hash under which it is stored (the token itself never is).

    256 random bits: a plain SHA-256 is enough, no slow hash needed (GitHub stores its tokens the
    same way)."""
    token = secrets.token_urlsafe(32)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
