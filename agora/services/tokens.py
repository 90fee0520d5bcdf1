"""Access tokens (HS256 JWTs) and refresh tokens (opaque, stored hashed)."""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from dataclasses import dataclass

import jwt

from agora.clock import Clock

ALGORITHM = "HS256"
LEEWAY = 5  # seconds of clock skew tolerated on exp/iat
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
    other algorithm are refused, whatever the token's header says.

    Verified tokens are remembered (bounded, keyed by the whole token, signature included) so a
    client's repeated calls skip the HMAC and JSON work; expiry is still checked on every use.
    """

    CACHE_SIZE = 10_000

    def __init__(self, secret: str, access_ttl: int, clock: Clock) -> None:
        self._secret = secret
        self.access_ttl = access_ttl
        self._clock = clock
        self._verified: OrderedDict[str, Claims] = OrderedDict()

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
        claims = self._verified.get(token)
        if claims is not None:
            if claims.expires_at + LEEWAY >= self._clock.time():
                self._verified.move_to_end(token)
                return claims
            del self._verified[token]
            raise InvalidToken("Signature has expired")
        claims = self._decode(token)
        self._verified[token] = claims
        if len(self._verified) > self.CACHE_SIZE:
            self._verified.popitem(last=False)
        return claims

    def _decode(self, token: str) -> Claims:
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": [*_REQUIRED, "iss"]},
                leeway=LEEWAY,
            )
            return Claims(
                int(payload["sub"]), int(payload["sid"]), str(payload["jti"]), int(payload["exp"])
            )
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
