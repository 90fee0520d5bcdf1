"""THE visibility rule, written once.

Every read path (posts, comments, reactions, user post lists, the feed, friend lists, profiles,
and later search, notifications and chat) splices these predicates into its SQL. They are SQL
text rather than a stored function so that PostgreSQL plans them inline with the query: a stored
SQL function with sub-selects is not inlined and cost ~60 us per row on a feed page.

Arguments are SQL expressions: a typed parameter (``"$1::bigint"``) or a column (``"p.author_id"``).
A NULL viewer is an anonymous caller.
"""

from __future__ import annotations


def users_hidden(a: str, b: str) -> str:
    """True when ``a`` and ``b`` may not see each other: a block either way, or either of them
    is suspended."""
    return (
        f"(EXISTS (SELECT 1 FROM social.blocks"
        f" WHERE (blocker_id = {a} AND blocked_id = {b})"
        f"    OR (blocker_id = {b} AND blocked_id = {a}))"
        f" OR EXISTS (SELECT 1 FROM accounts.users WHERE id IN ({a}, {b}) AND status <> 'active'))"
    )


def can_see(viewer: str, author: str, visibility: str, held: str) -> str:
    """True when ``viewer`` may see content by ``author`` posted with ``visibility``:

    - authors always see their own;
    - ``held`` (by the word filter, until a moderator publishes it): nobody else;
    - ``private``: nobody else;
    - anonymous callers: ``public`` posts of active users;
    - nobody sees across a block (either way) or a suspended author;
    - ``public``: everyone else; ``friends``: the author's friends.
    """
    return f"""(CASE
        WHEN {viewer} = {author} THEN true
        WHEN {held} THEN false
        WHEN {visibility} = 'private' THEN false
        WHEN {viewer} IS NULL THEN {visibility} = 'public'
            AND EXISTS (SELECT 1 FROM accounts.users WHERE id = {author} AND status = 'active')
        WHEN {users_hidden(viewer, author)} THEN false
        WHEN {visibility} = 'public' THEN true
        ELSE EXISTS (SELECT 1 FROM social.friendships
                     WHERE user_id = {viewer} AND friend_id = {author})
    END)"""


def post_visible(viewer: str, post: str = "p") -> str:
    """:func:`can_see` for a row of ``content.posts`` aliased ``post``."""
    return can_see(viewer, f"{post}.author_id", f"{post}.visibility", f"{post}.held")


def comment_visible(viewer: str, comment: str = "c") -> str:
    """True when ``viewer`` may see a comment (``content.comments`` aliased ``comment``) on a
    post they may see: its author always; nobody else while it is held, across a block, or
    when its author is suspended."""
    author = f"{comment}.author_id"
    return (
        f"(coalesce({viewer} = {author}, false)"
        f" OR (NOT {comment}.held AND NOT {users_hidden(viewer, author)}))"
    )


def message_shown(message: str = "m") -> str:
    """True when a chat message (``chat.messages`` aliased ``message``) shows its text to the
    conversation's members: not removed by a moderator, its sender not suspended. Otherwise
    history and sync return it as a tombstone (same id and seq, empty text, ``removed``), so
    the seqs stay gapless and clients' sync still works."""
    return (
        f"({message}.removed_at IS NULL AND NOT EXISTS (SELECT 1 FROM accounts.users"
        f" WHERE id = {message}.sender_id AND status <> 'active'))"
    )
