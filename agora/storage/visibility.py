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


def can_see(viewer: str, author: str, visibility: str) -> str:
    """True when ``viewer`` may see content by ``author`` posted with ``visibility``:

    - authors always see their own;
    - ``private``: nobody else;
    - anonymous callers: ``public`` posts of active users;
    - nobody sees across a block (either way) or a suspended author;
    - ``public``: everyone else; ``friends``: the author's friends.
    """
    return f"""(CASE
        WHEN {viewer} = {author} THEN true
        WHEN {visibility} = 'private' THEN false
        WHEN {viewer} IS NULL THEN {visibility} = 'public'
            AND EXISTS (SELECT 1 FROM accounts.users WHERE id = {author} AND status = 'active')
        WHEN {users_hidden(viewer, author)} THEN false
        WHEN {visibility} = 'public' THEN true
        ELSE EXISTS (SELECT 1 FROM social.friendships
                     WHERE user_id = {viewer} AND friend_id = {author})
    END)"""
