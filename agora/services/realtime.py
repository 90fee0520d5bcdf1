"""What the node pushes to users on its own initiative: presence and new posts (notifications
are pushed by their event consumer, agora/services/notifications.py).

Everything goes through :meth:`Router.deliver`, the same path as chat messages, so it reaches
each recipient's every session on whichever node it is, and nobody who is offline costs more
than a Redis lookup.
"""

from __future__ import annotations

import logging
from typing import Literal

from agora.cluster.router import Router
from agora.protocol.content import PostOut
from agora.protocol.frames import PostFrame, PresenceFrame, encode
from agora.storage.social import SocialStore
from agora.tasks import Background

log = logging.getLogger(__name__)


class Realtime:
    def __init__(self, social: SocialStore) -> None:
        self.social = social
        self.router: Router | None = None  # wired by the app (the router needs presence first)
        # A new post's frames go out after the author has their answer: finding which friends
        # are online (and where) took one or two more turns of a busy event loop, and the post
        # was the slowest request of bench mixed.
        self.pushes = Background("post-frames")

    async def _deliver(self, users: list[int], frame: bytes) -> None:
        if self.router is None or not users:
            return
        try:
            await self.router.deliver(users, [frame])
        except Exception:
            log.warning("realtime delivery failed", exc_info=True)

    async def presence_changed(self, user_id: int, status: Literal["online", "offline"]) -> None:
        friends = await self.social.friend_ids(user_id)
        await self._deliver(friends, encode(PresenceFrame(user_id=str(user_id), status=status)))

    async def friends_online(self, user_id: int) -> list[bytes]:
        """A ``presence`` "online" frame for each friend of ``user_id`` who has a session now:
        what a new session is told after ``ready``, since it heard none of their changes (Matrix
        and XMPP servers send the same snapshot on connect). Offline is the default state."""
        if self.router is None:
            return []
        friends = await self.social.friend_ids(user_id)
        online = await self.router.presence.nodes_of(friends)
        return [encode(PresenceFrame(user_id=str(f), status="online")) for f in sorted(online)]

    async def post_created(self, post: PostOut, readers: list[int]) -> None:
        """A new post goes to the online ones among ``readers``: the author's friends, or nobody
        for a private post (the feed fan-out computed them; a friendship excludes a block).
        Returns once the push is started, not delivered."""
        await self.pushes.run(self._deliver(readers, encode(PostFrame(post=post))))

    async def stop(self) -> None:
        await self.pushes.stop()
