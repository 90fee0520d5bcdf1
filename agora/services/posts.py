"""Posts, comments and reactions: who may write, edit and delete what.

Reads go through the stores' visibility-filtered queries; a post the caller may not see is
answered exactly like one that does not exist (404), on every path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec

from agora.errors import forbidden, invalid, not_found
from agora.media.urls import MediaUrls
from agora.protocol.common import Page
from agora.protocol.content import CommentOut, CreateCommentIn, CreatePostIn, PostOut, UpdatePostIn
from agora.protocol.cursor import decode_cursor, encode_cursor
from agora.services.audit import AuditLog
from agora.services.feed import FeedService
from agora.services.pages import make_page
from agora.services.presenters import comment_out, post_out
from agora.services.roles import has_role
from agora.services.wordfilter import WordFilter
from agora.storage.accounts import AccountStore
from agora.storage.content import CommentStore, MediaNotAttachable, PostStore, Refused
from agora.storage.db import MAX_ID


class PostService:
    def __init__(
        self,
        posts: PostStore,
        comments: CommentStore,
        accounts: AccountStore,
        feed: FeedService,
        urls: MediaUrls,
        on_created: Callable[[PostOut, list[int]], Awaitable[None]] | None = None,
        word_filter: WordFilter | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.urls = urls
        self.posts = posts
        self.comments = comments
        self.accounts = accounts
        self.feed = feed
        self.on_created = on_created  # pushes `post` frames to online friends
        self.word_filter = word_filter or WordFilter()  # matches are held for review
        self.audit = audit  # a moderator deleting someone else's post or comment is audited

    async def _is_moderator(self, user_id: int) -> bool:
        return await has_role(self.accounts, user_id)

    # -- posts ---------------------------------------------------------------------------------

    async def create(self, author: int, body: CreatePostIn) -> PostOut:
        media_ids = [int(m) for m in dict.fromkeys(body.media_ids)]
        held = self.word_filter.matches(body.text)
        if not media_ids and not held:  # the usual post: one statement, no read after it
            row, friends = await self.posts.create_plain(author, body.text, body.visibility)
            post = post_out(row, self.urls)
            audience = await self.feed.post_created(author, row.id, body.visibility, friends)
            if self.on_created is not None:  # live frames to the fan-out's audience
                await self.on_created(post, [u for u in audience if u != author])
            return post
        try:
            post_id = await self.posts.create(
                author, body.text, body.visibility, media_ids, held=held
            )
        except MediaNotAttachable:
            raise invalid(
                {"media_ids": "no such media: up to 4 of your own uploads, not in another post"}
            ) from None
        if held:  # its author alone sees it until a moderator publishes it: no fan-out yet
            return await self.get(author, post_id)
        # The fan-out (friend list, then the feeds in Redis) and the read of the new post do not
        # wait for each other.
        audience, post = await asyncio.gather(
            self.feed.post_created(author, post_id, body.visibility), self.get(author, post_id)
        )
        if self.on_created is not None:  # the same audience: one friend list read, not two
            await self.on_created(post, [u for u in audience if u != author])
        return post

    async def get(self, viewer: int | None, post_id: int) -> PostOut:
        row = await self.posts.get(viewer, post_id)
        if row is None:
            raise not_found("post")
        return post_out(row, self.urls)

    async def update(self, viewer: int, post_id: int, body: UpdatePostIn) -> PostOut:
        access = await self.posts.access(viewer, post_id)
        if access is None or not access.visible:
            raise not_found("post")
        if access.author_id != viewer:
            raise forbidden("only the author can edit a post")
        text = None if body.text is msgspec.UNSET else body.text
        visibility = None if body.visibility is msgspec.UNSET else body.visibility
        hold_it = text is not None and self.word_filter.matches(text)  # held again for review
        edit = await self.posts.update(post_id, text, visibility, viewer, hold_it)
        if edit is not None and edit.visibility != edit.old_visibility:
            await self.feed.visibility_changed(
                viewer, post_id, edit.old_visibility, edit.visibility
            )
        else:
            await self.feed.post_changed(post_id)
        return await self.get(viewer, post_id)

    async def delete(self, viewer: int, post_id: int) -> None:
        access = await self.posts.access(viewer, post_id)
        if access is None:
            raise not_found("post")
        moderated = access.author_id != viewer
        if moderated and not await self._is_moderator(viewer):
            if not access.visible:
                raise not_found("post")
            raise forbidden("only the author or a moderator can delete a post")
        copy = await self.audit.subject("post", post_id) if moderated and self.audit else None
        if await self.posts.delete(post_id, viewer):
            await self.feed.post_removed(access.author_id, post_id, access.visibility)
            if copy is not None and self.audit is not None:
                await self.audit.moderated(
                    await self.accounts.get_user(viewer), "post.delete", copy
                )

    async def publish_held_post(self, post_id: int, actor: int, edited: bool = False) -> bool:
        """A moderator lets a post the word filter held go out: fanned out as a new post (one
        held by an edit is simply shown again: its feeds already hold it)."""
        published = await self.posts.publish(post_id, actor, announce=not edited)
        if published is None:
            return False
        author, visibility = published
        if edited:
            await self.feed.post_changed(post_id)
            return True
        audience = await self.feed.post_created(author, post_id, visibility)
        if self.on_created is not None:
            post = await self.get(author, post_id)
            await self.on_created(post, [u for u in audience if u != author])
        return True

    async def publish_held_comment(self, comment_id: int, actor: int) -> bool:
        post_id = await self.comments.publish(comment_id, actor)
        if post_id is None:
            return False
        await self.feed.post_changed(post_id)
        return True

    async def by_user(
        self, viewer: int | None, user_id: int, cursor: str | None, limit: int
    ) -> Page[PostOut]:
        if viewer != user_id and await self.accounts.get_visible_user(viewer, user_id) is None:
            raise not_found("user")
        c = decode_cursor(cursor, "user-posts", before=int)
        rows = await self.posts.by_author(
            viewer, user_id, c["before"] if c else MAX_ID + 1, limit + 1
        )
        return make_page(
            rows,
            limit,
            lambda p: post_out(p, self.urls),
            lambda p: encode_cursor("user-posts", before=p.id),
        )

    # -- reactions -------------------------------------------------------------------------------

    async def react(self, viewer: int, post_id: int, kind: str) -> PostOut:
        if not await self.posts.react(viewer, post_id, kind):
            raise not_found("post")
        await self.feed.post_changed(post_id)
        return await self.get(viewer, post_id)

    async def unreact(self, viewer: int, post_id: int) -> None:
        if not await self.posts.unreact(viewer, post_id):
            raise not_found("post")
        await self.feed.post_changed(post_id)

    # -- comments --------------------------------------------------------------------------------

    async def add_comment(self, viewer: int, post_id: int, body: CreateCommentIn) -> CommentOut:
        parent_id = int(body.parent_id) if body.parent_id is not None else None
        if not self.word_filter.matches(body.text):  # the usual comment: one statement
            created = await self.comments.create_visible(viewer, post_id, parent_id, body.text)
            if created is Refused.NO_PARENT:
                raise invalid({"parent_id": "no such comment on this post"})
            if isinstance(created, Refused):
                raise not_found("post")
            await self.feed.post_changed(post_id)
            return comment_out(created)
        # Held for review: written with its report in one transaction, seen by its author only.
        access = await self.posts.access(viewer, post_id)
        if access is None or not access.visible:
            raise not_found("post")
        if parent_id is not None and await self.comments.post_of(parent_id) != post_id:
            raise invalid({"parent_id": "no such comment on this post"})
        comment_id = await self.comments.create(post_id, viewer, parent_id, body.text, held=True)
        if comment_id is None:
            raise not_found("post")
        comment = await self.comments.get(comment_id)
        assert comment is not None
        return comment_out(comment)

    async def list_comments(
        self, viewer: int | None, post_id: int, cursor: str | None, limit: int
    ) -> Page[CommentOut]:
        access = await self.posts.access(viewer, post_id)
        if access is None or not access.visible:
            raise not_found("post")
        c = decode_cursor(cursor, "comments", after=int)
        rows = await self.comments.list(viewer, post_id, c["after"] if c else 0, limit + 1)
        return make_page(rows, limit, comment_out, lambda r: encode_cursor("comments", after=r.id))

    async def delete_comment(self, viewer: int, comment_id: int) -> None:
        """The comment's author, the post's author, or a moderator."""
        access = await self.comments.access(viewer, comment_id)
        if access is None:
            raise not_found("comment")
        allowed = viewer in (access.author_id, access.post_author_id)
        if not allowed and not await self._is_moderator(viewer):
            if not (access.post_visible and access.comment_visible):
                raise not_found("comment")
            raise forbidden(
                "only the comment's author, the post's author or a moderator can delete a comment"
            )
        copy = (
            await self.audit.subject("comment", comment_id)
            if not allowed and self.audit is not None
            else None
        )
        post_id = await self.comments.delete(comment_id, viewer)
        if post_id is not None:
            await self.feed.post_changed(post_id)
            if copy is not None and self.audit is not None:
                await self.audit.moderated(
                    await self.accounts.get_user(viewer), "comment.delete", copy
                )
