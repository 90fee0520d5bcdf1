"""Registration, login, token refresh and rotation, logout, profiles, roles."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from agora.clock import Clock
from agora.config import RateLimitConfig
from agora.errors import AppError, ErrorCode, invalid, not_found, unauthorized
from agora.protocol.accounts import AuthOut, MeOut, RegisterIn, UpdateMeIn
from agora.services.invalidation import Invalidator
from agora.services.passwords import Passwords
from agora.services.presenters import me_out
from agora.services.ratelimit import Hit, Limiter
from agora.services.revocations import Revocations
from agora.services.tokens import InvalidToken, TokenIssuer, hash_refresh_token, new_refresh_token
from agora.storage.accounts import AccountStore, DuplicateUser, Refresh, UserRecord
from agora.storage.media import MediaStore

log = logging.getLogger(__name__)

ROLES = ("user", "moderator", "admin")
BAD_CREDENTIALS = "wrong login or password"


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is calling: the user and the login session (``sid``) behind the access token."""

    user_id: int
    session_id: int


class AccountService:
    def __init__(
        self,
        store: AccountStore,
        passwords: Passwords,
        tokens: TokenIssuer,
        revocations: Revocations,
        limiter: Limiter,
        limits: RateLimitConfig,
        clock: Clock,
        refresh_ttl: int,
    ) -> None:
        self.store = store
        self.passwords = passwords
        self.tokens = tokens
        self.revocations = revocations
        self.limiter = limiter
        self.limits = limits
        self.clock = clock
        self.refresh_ttl = refresh_ttl
        self.invalidator: Invalidator | None = None
        self.media: MediaStore | None = None  # avatars are the user's own uploads
        # Moderation (services/moderation.py, wired by the app): the node's set of suspended
        # accounts (checked by authenticate without I/O), the lifting of a suspension whose end
        # has passed (at login and refresh) and the message a suspended account gets.
        self.suspended: Container[int] = frozenset()
        self.suspension_over: Callable[[int], Awaitable[bool]] | None = None
        self.suspension_message: Callable[[int], Awaitable[str]] | None = None

    # -- authentication of calls -------------------------------------------------------------

    def authenticate(self, access_token: str) -> Viewer:
        """Check an access token: signature, algorithm, expiry, required claims, revocation."""
        try:
            claims = self.tokens.decode_access(access_token)
        except InvalidToken:
            raise unauthorized("the access token is invalid or expired") from None
        if self.revocations.is_revoked(claims.session_id):
            raise unauthorized("this login has been signed out")
        if claims.user_id in self.suspended:
            raise AppError(ErrorCode.FORBIDDEN, "this account is suspended")
        return Viewer(claims.user_id, claims.session_id)

    # -- sign-up, sign-in, tokens -------------------------------------------------------------

    async def register(self, body: RegisterIn, user_agent: str = "") -> AuthOut:
        user = await create_user(
            self.store, self.passwords, body.username, body.email, body.password, body.display_name
        )
        log.info("registered user %s", user.id)
        return await self._open_session(user, user_agent)

    async def login(
        self, login: str, password: str, user_agent: str = "", address: str = "unknown"
    ) -> AuthOut:
        """Sign in. Failures are counted per account *and* address (``login_failures``): a
        stranger guessing passwords spends only their own address's budget and cannot lock the
        owner out; the owner's success clears theirs. Successful sign-ins of one account are
        limited too (``login_account``); attempts per address, by the endpoint (``login``)."""
        user = await self.store.find_by_login(login)
        account = str(user.id) if user is not None else login.lower()[:320]
        failures = Hit(self.limits["login_failures"], f"{account}|{address}")
        await self.limiter.check([Hit(failures.rule, failures.subject, look=True)])
        if not await self.passwords.verify(user.password_hash if user else None, password):
            await self.limiter.take([failures])
            raise unauthorized(BAD_CREDENTIALS)
        assert user is not None
        if user.status != "active":
            await self._refuse_suspended(user.id)
        await self.limiter.check([Hit(self.limits["login_account"], account)])
        if self.passwords.needs_rehash(user.password_hash):
            await self.store.update_password_hash(user.id, await self.passwords.hash(password))
        await self.limiter.clear(failures.rule, failures.subject)
        return await self._open_session(user, user_agent)

    async def refresh(self, refresh_token: str) -> AuthOut:
        new_token, new_hash = new_refresh_token()
        result = await self.store.rotate_refresh(
            hash_refresh_token(refresh_token), new_hash, self._refresh_expiry()
        )
        if result.outcome is Refresh.REUSED:
            assert result.session_id is not None
            log.warning("refresh token reused; revoked login session %s", result.session_id)
            await self.revocations.revoke([result.session_id])
            raise unauthorized("this refresh token was already used; the login is revoked")
        if result.outcome is Refresh.SUSPENDED:
            assert result.user_id is not None
            await self._refuse_suspended(result.user_id)
            raise unauthorized("the suspension has ended; log in again")
        if result.outcome is not Refresh.ROTATED:
            raise unauthorized("the refresh token is invalid, expired or revoked")
        assert result.session_id is not None and result.user_id is not None
        user = await self.store.get_user(result.user_id)
        assert user is not None
        return self._auth_out(user, result.session_id, new_token)

    async def _refuse_suspended(self, user_id: int) -> None:
        """403 for a suspended account, unless its suspension's end has passed (then it is
        lifted now and this returns)."""
        if self.suspension_over is not None and await self.suspension_over(user_id):
            return
        message = "this account is suspended"
        if self.suspension_message is not None:
            message = await self.suspension_message(user_id)
        raise AppError(ErrorCode.FORBIDDEN, message)

    async def logout(self, refresh_token: str) -> None:
        """Revoke the login the token belongs to. Unknown tokens are accepted silently, so
        logout is idempotent and reveals nothing (RFC 7009 does the same)."""
        session_id = await self.store.session_of_token(hash_refresh_token(refresh_token))
        if session_id is None:
            return
        await self.store.revoke_session(session_id, "logout")
        await self.revocations.revoke([session_id])

    async def revoke_all(self, user_id: int, reason: str) -> list[int]:
        session_ids = await self.store.revoke_user_sessions(user_id, reason)
        if session_ids:
            await self.revocations.revoke(session_ids)
        return session_ids

    async def _open_session(self, user: UserRecord, user_agent: str) -> AuthOut:
        token, token_hash = new_refresh_token()
        session_id = await self.store.open_session(
            user.id, token_hash, self._refresh_expiry(), user_agent
        )
        return self._auth_out(user, session_id, token)

    def _auth_out(self, user: UserRecord, session_id: int, refresh_token: str) -> AuthOut:
        return AuthOut(
            user=me_out(user),
            access_token=self.tokens.issue_access(user.id, session_id),
            refresh_token=refresh_token,
            expires_in=self.tokens.access_ttl,
        )

    def _refresh_expiry(self) -> datetime:
        return self.clock.now() + timedelta(seconds=self.refresh_ttl)

    # -- profiles -----------------------------------------------------------------------------

    async def me(self, viewer: Viewer) -> MeOut:
        user = await self.store.get_user(viewer.user_id)
        if user is None:
            raise unauthorized("this account no longer exists")
        return me_out(user)

    async def update_me(self, viewer: Viewer, body: UpdateMeIn) -> MeOut:
        changes = {
            f: getattr(body, f)
            for f in body.__struct_fields__
            if getattr(body, f) is not msgspec.UNSET
        }
        avatar = changes.get("avatar_media_id")
        if avatar is not None and (
            self.media is None or not await self.media.own_unattached(int(avatar), viewer.user_id)
        ):
            raise invalid({"avatar_media_id": "no such media: one of your uploads, not in a post"})
        if avatar is not None:
            changes["avatar_media_id"] = int(avatar)
        user = await self.store.update_profile(viewer.user_id, changes)
        if user is None:
            raise unauthorized("this account no longer exists")
        if self.invalidator is not None:
            self.invalidator.authors([user.id])  # their posts show the old profile
        return me_out(user)

    async def set_role(self, username: str, role: str) -> UserRecord:
        return await set_role(self.store, username, role)


async def create_user(
    store: AccountStore,
    passwords: Passwords,
    username: str,
    email: str,
    password: str,
    display_name: str | None = None,
    role: str = "user",
) -> UserRecord:
    """Create an account (also used by ``agora admin create-user``, which has no Redis)."""
    if role not in ROLES:
        raise invalid({"role": f"must be one of {', '.join(ROLES)}"})
    password_hash = await passwords.hash(password)
    try:
        return await store.create_user(
            username, email, password_hash, display_name or username, role
        )
    except DuplicateUser as dup:
        raise AppError(
            ErrorCode.CONFLICT,
            f"this {dup.field} is already taken",
            fields={dup.field: "already taken"},
        ) from None


async def set_role(store: AccountStore, username: str, role: str) -> UserRecord:
    if role not in ROLES:
        raise invalid({"role": f"must be one of {', '.join(ROLES)}"})
    user = await store.set_role(username, role)
    if user is None:
        raise not_found("user")
    return user
