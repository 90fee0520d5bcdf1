"""Media URLs: plain for what is public, signed and expiring for the rest (see
:mod:`agora.services.media`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from typing import Literal

from agora.clock import Clock

Rendition = Literal["original", "small"]


class MediaUrls:
    """Plain and signed URLs of media, and the signatures' check."""

    def __init__(self, secret: str, ttl: float, clock: Clock) -> None:
        self._key = hmac.new(secret.encode(), b"agora media urls", hashlib.sha256).digest()
        self.ttl = max(ttl, 1.0)
        self.clock = clock

    @staticmethod
    def path(media_id: int, rendition: Rendition) -> str:
        return f"/media/{media_id}/{rendition}"

    def _sign(self, path: str, exp: int) -> str:
        mac = hmac.new(self._key, f"{path}:{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:18]).decode()

    def signed(self, media_id: int, rendition: Rendition) -> str:
        path = self.path(media_id, rendition)
        exp = int((math.floor(self.clock.time() / self.ttl) + 2) * self.ttl)
        return f"{path}?exp={exp}&sig={self._sign(path, exp)}"

    def url(self, media_id: int, rendition: Rendition, public: bool) -> str:
        return self.path(media_id, rendition) if public else self.signed(media_id, rendition)

    def check(self, path: str, exp: str | None, sig: str | None) -> bool | None:
        """True: a valid, unexpired signature; False: valid but expired; None: none or forged."""
        if exp is None or sig is None or not exp.isdigit() or len(exp) > 12:
            return None
        if not hmac.compare_digest(self._sign(path, int(exp)), sig):
            return None
        return int(exp) > self.clock.time()
