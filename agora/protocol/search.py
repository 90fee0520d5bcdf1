"""``GET /api/v1/search``: the query string and the results, one tagged type per kind."""

from __future__ import annotations

import msgspec

from agora.protocol.accounts import UserOut
from agora.protocol.chat import MessageOut
from agora.protocol.common import Cursor, Limit
from agora.protocol.content import PostOut
from agora.search.backend import SearchType


class SearchIn(msgspec.Struct):
    #: The query (syntax in the README): at most 200 characters, checked by the parser.
    q: str
    type: SearchType = "posts"
    limit: Limit = 20
    cursor: Cursor | None = None


class UserResult(msgspec.Struct, tag="user", tag_field="type"):
    """A person whose username or display name matches (by prefix, or within a typo)."""

    user: UserOut


class PostResult(msgspec.Struct, tag="post", tag_field="type"):
    """A post the caller may see. `snippet` is HTML: the matching part of the text, escaped,
    with `<mark>` around the words that matched."""

    post: PostOut
    snippet: str


class MessageResult(msgspec.Struct, tag="message", tag_field="type"):
    """A message of a conversation the caller is a member of (`message.conversation_id` and
    `message.seq` place it), its sender, and a `snippet` as for posts."""

    message: MessageOut
    sender: UserOut
    snippet: str


SearchResult = UserResult | PostResult | MessageResult
