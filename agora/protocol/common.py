"""Types shared by every part of the API: errors, pages, ids."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

import msgspec

T = TypeVar("T")


def whole(body: str) -> str:
    """A pattern the *whole* string must match. msgspec matches with Python's ``re.search``,
    where ``$`` also matches before a final newline (``"bob\\n"`` would pass ``^[a-z]+$``);
    ``(?!\\n)`` closes that, and means the same in the JSON Schema (ECMA) regex of the docs."""
    return f"^(?:{body})$(?!\\n)"


# Ids are below 2**53 (storage/db.py MAX_ID: exact in a JavaScript number), so at most 16 digits;
# a longer string names nothing and never reaches PostgreSQL's bigint.
Id = Annotated[
    str,
    msgspec.Meta(
        pattern=whole("[0-9]{1,16}"), description="an object id (a string of 1-16 digits)"
    ),
]
Limit = Annotated[int, msgspec.Meta(ge=1, le=100, description="Page size, 1-100 (default 20).")]
Cursor = Annotated[
    str, msgspec.Meta(max_length=512, description="Opaque cursor from `next_cursor`.")
]


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    fields: dict[str, str] | None = None


class ErrorBody(msgspec.Struct):
    """The envelope of every 4xx/5xx answer."""

    error: ErrorDetail


class Page(msgspec.Struct, Generic[T]):
    """A page of a list; pass `next_cursor` back as `?cursor=` for the next one (null: the end)."""

    items: list[T]
    next_cursor: str | None


class PageQuery(msgspec.Struct):
    limit: Limit = 20
    cursor: Cursor | None = None
