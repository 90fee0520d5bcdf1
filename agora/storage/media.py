"""Media's SQL: uploads, the stored objects they point at, attaching and collecting them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from agora.events.types import MediaDeleted, MediaStored
from agora.storage.db import Database, Record, Tx
from agora.storage.events import append

UPLOAD_COLUMNS = (
    "u.id, u.owner_id, u.content_type, u.original_key, u.size, u.width, u.height, u.small_key,"
    " u.small_type, u.small_width, u.small_height, u.blurhash, u.description, u.focus_x,"
    " u.focus_y, u.post_id, u.created_at"
)

# Objects first, in their own transaction, before their bytes are written: a row refreshed
# here is out of the collector's reach for the grace period; a row the collector holds (it
# deletes the bytes, then the row) makes this wait, then insert it afresh.
CLAIM_OBJECTS = """
INSERT INTO media.objects (key, size) SELECT * FROM unnest($1::text[], $2::int[])
ON CONFLICT (key) DO UPDATE SET created_at = now()
"""
INSERT_UPLOAD = f"""
INSERT INTO media.uploads AS u (owner_id, content_type, original_key, size, width, height,
    small_key, small_type, small_width, small_height, blurhash, description, focus_x, focus_y)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
RETURNING {UPLOAD_COLUMNS}
"""
# Serving: the upload, and what decides who may see it (its post, or its owner's avatar).
UPLOAD_ACCESS = f"""
SELECT {UPLOAD_COLUMNS}, p.author_id, p.visibility,
       (p.visibility = 'public' AND NOT p.held AND ow.status = 'active') AS public_post,
       (ow.avatar_media_id = u.id AND ow.status = 'active') AS avatar
FROM media.uploads u
JOIN accounts.users ow ON ow.id = u.owner_id
LEFT JOIN content.posts p ON p.id = u.post_id
WHERE u.id = $1
"""
UPLOADS_BY_IDS = f"SELECT {UPLOAD_COLUMNS} FROM media.uploads u WHERE u.id = ANY($1::bigint[])"
# Attaching (in the post's transaction): the author's own uploads attached to nothing (an
# avatar is not a post's: the post's deletion would take it).
ATTACH = """
UPDATE media.uploads u SET post_id = $1
WHERE u.id = ANY($2::bigint[]) AND u.owner_id = $3 AND u.post_id IS NULL
  AND NOT EXISTS (SELECT 1 FROM accounts.users a WHERE a.avatar_media_id = u.id)
RETURNING u.id
"""
# An avatar: the user's own upload, attached to no post.
OWN_UNATTACHED = """
SELECT EXISTS (SELECT 1 FROM media.uploads WHERE id = $1 AND owner_id = $2 AND post_id IS NULL)
"""
# A post's deletion takes its uploads (before the post, so that their events are written).
DELETE_FOR_POST = "DELETE FROM media.uploads WHERE post_id = $1 RETURNING id, owner_id"
# The media job: uploads attached to nothing (nor an avatar) for longer than the age, a batch at
# a time; then objects no upload uses, past the grace period, locked while their bytes go.
ORPHANS = """
DELETE FROM media.uploads u
WHERE u.id IN (
    SELECT o.id FROM media.uploads o
    WHERE o.post_id IS NULL AND o.created_at < now() - make_interval(secs => $1)
      AND NOT EXISTS (SELECT 1 FROM accounts.users a WHERE a.avatar_media_id = o.id)
    ORDER BY o.created_at LIMIT $2
    FOR UPDATE SKIP LOCKED)
RETURNING u.id, u.owner_id
"""
UNUSED_OBJECTS = """
SELECT b.key FROM media.objects b
WHERE b.created_at < now() - make_interval(secs => $1)
  AND NOT EXISTS (SELECT 1 FROM media.uploads u WHERE u.original_key = b.key)
  AND NOT EXISTS (SELECT 1 FROM media.uploads u WHERE u.small_key = b.key)
ORDER BY b.created_at LIMIT $2
FOR UPDATE SKIP LOCKED
"""
DELETE_OBJECTS = "DELETE FROM media.objects WHERE key = ANY($1::text[])"


@dataclass(frozen=True, slots=True)
class Upload:
    id: int
    owner_id: int
    content_type: str
    original_key: str
    size: int
    width: int
    height: int
    small_key: str
    small_type: str
    small_width: int
    small_height: int
    blurhash: str
    description: str
    focus_x: float
    focus_y: float
    post_id: int | None
    created_at: datetime

    @classmethod
    def of(cls, row: Record) -> Upload:
        return cls(*(row[k] for k in cls.__slots__))


@dataclass(frozen=True, slots=True)
class Access:
    """An upload and who may fetch it without a signature (everyone: a public post's media of
    an active author, or an active user's avatar)."""

    upload: Upload
    public: bool


@dataclass(frozen=True, slots=True)
class NewUpload:
    owner_id: int
    content_type: str
    original_key: str
    size: int
    width: int
    height: int
    small_key: str
    small_type: str
    small_size: int
    small_width: int
    small_height: int
    blurhash: str
    description: str
    focus_x: float
    focus_y: float


class MediaStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim_objects(self, objects: dict[str, int]) -> None:
        async with self.db.transaction("media_claim_objects") as tx:
            await tx.execute(
                "media_claim_objects", CLAIM_OBJECTS, list(objects), list(objects.values())
            )

    async def insert(self, new: NewUpload) -> Upload:
        async with self.db.transaction("media_insert") as tx:
            row = await tx.fetchrow(
                "media_insert_upload",
                INSERT_UPLOAD,
                new.owner_id,
                new.content_type,
                new.original_key,
                new.size,
                new.width,
                new.height,
                new.small_key,
                new.small_type,
                new.small_width,
                new.small_height,
                new.blurhash,
                new.description,
                new.focus_x,
                new.focus_y,
            )
            assert row is not None
            upload = Upload.of(row)
            await append(
                tx,
                MediaStored(
                    media_id=upload.id,
                    owner_id=upload.owner_id,
                    content_type=upload.content_type,
                    size=upload.size,
                    width=upload.width,
                    height=upload.height,
                ),
                new.owner_id,
            )
        return upload

    async def access(self, media_id: int) -> Access | None:
        row = await self.db.fetchrow("media_access", UPLOAD_ACCESS, media_id)
        if row is None:
            return None
        return Access(Upload.of(row), bool(row["public_post"] or row["avatar"]))

    async def by_ids(self, ids: list[int]) -> dict[int, Upload]:
        rows = await self.db.fetch("media_by_ids", UPLOADS_BY_IDS, ids)
        return {r["id"]: Upload.of(r) for r in rows}

    async def own_unattached(self, media_id: int, owner_id: int) -> bool:
        return bool(await self.db.fetchval("media_own", OWN_UNATTACHED, media_id, owner_id))

    async def purge_orphans(self, age: float, batch: int) -> int:
        async with self.db.transaction("media_purge_orphans") as tx:
            rows = await tx.fetch("media_orphans", ORPHANS, age, batch)
            for r in rows:
                await append(tx, MediaDeleted(media_id=r["id"], owner_id=r["owner_id"]), None)
        return len(rows)

    async def unused_objects(self, tx: Tx, grace: float, batch: int) -> list[str]:
        rows = await tx.fetch("media_unused_objects", UNUSED_OBJECTS, grace, batch)
        return [r["key"] for r in rows]

    async def delete_objects(self, tx: Tx, keys: list[str]) -> None:
        await tx.execute("media_delete_objects", DELETE_OBJECTS, keys)


async def attach(tx: Tx, post_id: int, author_id: int, media_ids: list[int]) -> list[int]:
    """Attach the author's unattached uploads to the post (in the post's transaction); the ids
    that were."""
    rows = await tx.fetch("media_attach", ATTACH, post_id, media_ids, author_id)
    return [r["id"] for r in rows]


async def delete_for_post(tx: Tx, post_id: int, actor_id: int) -> None:
    """A post's uploads go with it, each with its media.deleted event."""
    for r in await tx.fetch("media_delete_for_post", DELETE_FOR_POST, post_id):
        await append(tx, MediaDeleted(media_id=r["id"], owner_id=r["owner_id"]), actor_id)
