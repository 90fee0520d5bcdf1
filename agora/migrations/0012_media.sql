-- Media (issue 11): uploaded images and the stored objects they point at.

CREATE SCHEMA media;

-- The stored bytes, content-addressed: the key is the SHA-256 of the bytes plus an extension,
-- so identical bytes are one object however many uploads share them. An object no upload uses
-- any more is removed by the media job after a grace period (an upload in flight has stored
-- its objects before its row exists).
CREATE TABLE media.objects (
    key         text PRIMARY KEY CHECK (key ~ '^[0-9a-f]{64}\.(jpg|png|gif|webp)$'),
    size        integer NOT NULL CHECK (size >= 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE media.uploads (
    id            bigint PRIMARY KEY DEFAULT agora.next_id(),
    owner_id      bigint NOT NULL REFERENCES accounts.users (id) ON DELETE CASCADE,
    content_type  text NOT NULL
                  CHECK (content_type IN ('image/jpeg', 'image/png', 'image/gif', 'image/webp')),
    original_key  text NOT NULL REFERENCES media.objects (key),
    size          integer NOT NULL,
    width         integer NOT NULL,
    height        integer NOT NULL,
    small_key     text NOT NULL REFERENCES media.objects (key),
    small_type    text NOT NULL,
    small_width   integer NOT NULL,
    small_height  integer NOT NULL,
    blurhash      text NOT NULL,
    description   text NOT NULL DEFAULT '' CHECK (length(description) <= 1500),
    focus_x       real NOT NULL DEFAULT 0 CHECK (focus_x BETWEEN -1 AND 1),
    focus_y       real NOT NULL DEFAULT 0 CHECK (focus_y BETWEEN -1 AND 1),
    -- The post it is attached to (at most one); a post's deletion takes its media with it.
    post_id       bigint REFERENCES content.posts (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX uploads_post ON media.uploads (post_id) WHERE post_id IS NOT NULL;
-- The media job's scan: uploads attached to nothing, oldest first.
CREATE INDEX uploads_unattached ON media.uploads (created_at) WHERE post_id IS NULL;
CREATE INDEX uploads_owner ON media.uploads (owner_id);
-- The object collection's anti-joins.
CREATE INDEX uploads_original_key ON media.uploads (original_key);
CREATE INDEX uploads_small_key ON media.uploads (small_key);
CREATE INDEX objects_created ON media.objects (created_at);

-- An avatar is an upload its owner's profile points at (kept while it does).
CREATE INDEX users_avatar ON accounts.users (avatar_media_id) WHERE avatar_media_id IS NOT NULL;
