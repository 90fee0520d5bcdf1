"""Who may moderate and administer: the one place roles are checked.

``user`` < ``moderator`` < ``admin``. Moderators work the report queue, remove content and
suspend accounts; admins do all that and also read the analytics and change roles.
"""

from __future__ import annotations

from agora.errors import forbidden
from agora.storage.accounts import AccountStore, UserRecord

MODERATING_ROLES = ("moderator", "admin")
ADMIN_ROLES = ("admin",)


async def require_role(
    accounts: AccountStore, user_id: int, roles: tuple[str, ...] = MODERATING_ROLES
) -> UserRecord:
    """The caller's account when it holds one of ``roles`` (and is active); 403 otherwise."""
    user = await accounts.get_user(user_id)
    if user is None or user.status != "active" or user.role not in roles:
        raise forbidden(f"this needs the role {' or '.join(roles)}")
    return user


async def has_role(
    accounts: AccountStore, user_id: int, roles: tuple[str, ...] = MODERATING_ROLES
) -> bool:
    user = await accounts.get_user(user_id)
    return user is not None and user.status == "active" and user.role in roles
