"""The one error type clients see.

Every failure a client can act on is an :class:`AppError` carrying an :class:`ErrorCode`; the HTTP
middleware turns it into the contract's envelope and the WebSocket session into an ``error`` frame.
Anything else that escapes is a bug and becomes ``internal_error`` (500) with the request id.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class ErrorCode(StrEnum):
    VALIDATION_ERROR = "validation_error"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"
    INTERNAL_ERROR = "internal_error"
    UNAVAILABLE = "unavailable"
    SEARCH_UNAVAILABLE = "search_unavailable"


DEFAULT_STATUS: Mapping[ErrorCode, int] = {
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.SEARCH_UNAVAILABLE: 503,
}


class AppError(Exception):
    """A failure with a stable machine-readable code and a message for a person."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        status: int | None = None,
        fields: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else DEFAULT_STATUS[code]
        self.fields = dict(fields) if fields else None
        self.headers = dict(headers) if headers else {}

    def __repr__(self) -> str:
        return f"AppError({self.code.value!r}, {self.message!r}, status={self.status})"


def not_found(what: str = "resource") -> AppError:
    """The answer for what does not exist *and* for what the caller may not see."""
    return AppError(ErrorCode.NOT_FOUND, f"{what} not found")


def forbidden(message: str = "you may not do this") -> AppError:
    return AppError(ErrorCode.FORBIDDEN, message)


def unauthorized(message: str = "authentication required") -> AppError:
    return AppError(
        ErrorCode.UNAUTHORIZED, message, headers={"WWW-Authenticate": 'Bearer realm="agora"'}
    )


def conflict(message: str) -> AppError:
    return AppError(ErrorCode.CONFLICT, message)


def invalid(fields: Mapping[str, str], message: str = "the request is not valid") -> AppError:
    return AppError(ErrorCode.VALIDATION_ERROR, message, fields=fields)


def rate_limited(retry_after: int, message: str = "too many requests") -> AppError:
    return AppError(
        ErrorCode.RATE_LIMITED, message, headers={"Retry-After": str(max(1, retry_after))}
    )
