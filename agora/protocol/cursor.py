"""Opaque pagination cursors: base64url of a small tagged JSON object.

The tag names the list a cursor belongs to, so a cursor from one list is refused by another;
anything that does not decode answers 400 naming the ``cursor`` parameter.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from agora.errors import AppError, ErrorCode

CURSOR_INT_MAX = 2**53  # storage/db.py MAX_ID + 1; as microseconds, the year 2255
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, Any])


def invalid_cursor() -> AppError:
    """The 400 for a cursor this list did not make, naming the ``cursor`` parameter (also for
    a list's own checks after :func:`decode_cursor`)."""
    return AppError(
        ErrorCode.VALIDATION_ERROR,
        "the cursor is not valid for this list",
        status=400,
        fields={"cursor": "invalid cursor; pass back a next_cursor value"},
    )


def encode_cursor(kind: str, **values: Any) -> str:
    raw = _encoder.encode({"k": kind, **values})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str | None, kind: str, **types: type) -> dict[str, Any] | None:
    """``decode_cursor(q.cursor, "feed", before=int)`` -> ``{"before": 123}`` or ``None``."""
    if cursor is None:
        return None
    try:
        data = _decoder.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError, RecursionError):
        raise invalid_cursor() from None
    if data.get("k") != kind:
        raise invalid_cursor()
    out: dict[str, Any] = {}
    for name, tp in types.items():
        value = data.get(name)
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, tp) or isinstance(value, bool):
            raise invalid_cursor()
        # What we encode is an id, a seq or microseconds since 1970, all in [0, 2**53]; a forged
        # value outside it would overflow a datetime or PostgreSQL's bigint (a 500), not page.
        if isinstance(value, int) and not 0 <= value <= CURSOR_INT_MAX:
            raise invalid_cursor()
        if isinstance(value, float) and not math.isfinite(value):
            raise invalid_cursor()
        out[name] = value
    return out


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def to_micros(at: datetime) -> int:
    """Exact integer microseconds (floats would round and make keyset cursors skip rows)."""
    return (at - _EPOCH) // _MICRO


def from_micros(micros: int) -> datetime:
    return _EPOCH + micros * _MICRO
