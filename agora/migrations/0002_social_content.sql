-- The social graph (friend requests, friendships, blocks), posts, comments and reactions.

CREATE SCHEMA social;

CREATE TABLE social.friend_requests (
    id            bigint PRIMARY KEY DEFAULT agora.next_id(),
    from_user_id  bigint NOT NULL REFERENCES accounts.users (id) ON DELETE CASCADE,
    to_user_id    bigint NOT NULL REFERENCES accounts.users (id) ON DELETE CASCADE,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'accepted', 'declined', 'cancelled')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (from_user_id <> to_user_id)
);
-- At most one pending request per pair, whichever way it points.
CREATE UNIQUE INDEX friend_requests_one_pending ON social.friend_requests
    (least(from_user_id, to_user_id), greatest(from_user_id, to_user_id)) WHERE status = 'pending';
CREATE INDEX friend_requests_incoming ON social.friend_requests (to_user_id, id DESC)
    WHERE status = 'pending';
CREATE INDEX friend_requests_outgoing ON social.friend_requests (from_user_id, id DESC)
    WHERE status = 'pending';

-- Stored in both directions: "friends of X" and "are X and Y friends" are one index lookup each.
CREATE TABLE social.friendships (
    user_id     bigint NOT NULL REFERENCES accounts.users (id) ON DELETE CASCADE,
    friend_id   bigint NOT NULL REFERENCES accounts.users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, friend_id),
    CHECK (user_id <> friend_id)
);
CREATE INDEX friendships_recent ON social.friendships (user_id, created_at DESC, friend_id DESC);
-- For ON DELETE CASCADE from accounts.users (the PK covers the user_id side).
CREATE INDEX friendships_friend ON social.friendships (friend_id);

CREATE TABLE social.blocks (
    blocker_id  bigint NOT NULL REFERENCES accounts.users (id) ON DELETE CASCADE,
    blocked_id  bigint NOT NULL REFERENCES accounts.users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (blocker_id, blocked_id),
    CHECK (blocker_id <> blocked_id)
);
CREATE INDEX blocks_blocked ON social.blocks (blocked_id, blocker_id);

-- The visibility rule itself lives in agora/storage/visibility.py as SQL predicates spliced into
-- every query (a stored function with sub-selects is not inlined by the planner).

CREATE SCHEMA content;

CREATE TABLE content.posts (
    id          bigint PRIMARY KEY DEFAULT agora.next_id(),
    author_id   bigint NOT NULL REFERENCES accounts.users (id) ON DELETE CASCADE,
    text        text NOT NULL,
    visibility  text NOT NULL CHECK (visibility IN ('public', 'friends', 'private')),
    media_ids   bigint[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- A user's posts newest first, and the per-author step of the feed, without touching the heap
-- for the visibility filter.
CREATE INDEX posts_author ON content.posts (author_id, id DESC) INCLUDE (visibility);

-- Counters kept exact by triggers (row lock per post), apart from the posts row so that
-- reacting never contends with editing.
CREATE TABLE content.post_stats (
    post_id        bigint PRIMARY KEY REFERENCES content.posts (id) ON DELETE CASCADE,
    comment_count  integer NOT NULL DEFAULT 0,
    like_count     integer NOT NULL DEFAULT 0,
    love_count     integer NOT NULL DEFAULT 0,
    haha_count     integer NOT NULL DEFAULT 0,
    wow_count      integer NOT NULL DEFAULT 0,
    sad_count      integer NOT NULL DEFAULT 0,
    angry_count    integer NOT NULL DEFAULT 0
);

CREATE TABLE content.comments (
    id          bigint PRIMARY KEY DEFAULT agora.next_id(),
    post_id     bigint NOT NULL REFERENCES content.posts (id) ON DELETE CASCADE,
    author_id   bigint NOT NULL REFERENCES accounts.users (id) ON DELETE CASCADE,
    parent_id   bigint REFERENCES content.comments (id) ON DELETE CASCADE,
    text        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX comments_post ON content.comments (post_id, id);
CREATE INDEX comments_parent ON content.comments (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX comments_author ON content.comments (author_id);

CREATE TABLE content.reactions (
    post_id     bigint NOT NULL REFERENCES content.posts (id) ON DELETE CASCADE,
    user_id     bigint NOT NULL REFERENCES accounts.users (id) ON DELETE CASCADE,
    type        text NOT NULL CHECK (type IN ('like', 'love', 'haha', 'wow', 'sad', 'angry')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (post_id, user_id)
);
CREATE INDEX reactions_user ON content.reactions (user_id);

CREATE FUNCTION content.create_post_stats() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO content.post_stats (post_id) VALUES (NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER posts_stats AFTER INSERT ON content.posts
    FOR EACH ROW EXECUTE FUNCTION content.create_post_stats();

CREATE FUNCTION content.count_comments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE content.post_stats SET comment_count = comment_count + 1 WHERE post_id = NEW.post_id;
    ELSE
        UPDATE content.post_stats SET comment_count = comment_count - 1 WHERE post_id = OLD.post_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER comments_count AFTER INSERT OR DELETE ON content.comments
    FOR EACH ROW EXECUTE FUNCTION content.count_comments();

CREATE FUNCTION content.bump_reaction(post bigint, kind text, delta integer) RETURNS void
LANGUAGE sql AS $$
    UPDATE content.post_stats SET
        like_count  = like_count  + CASE WHEN kind = 'like'  THEN delta ELSE 0 END,
        love_count  = love_count  + CASE WHEN kind = 'love'  THEN delta ELSE 0 END,
        haha_count  = haha_count  + CASE WHEN kind = 'haha'  THEN delta ELSE 0 END,
        wow_count   = wow_count   + CASE WHEN kind = 'wow'   THEN delta ELSE 0 END,
        sad_count   = sad_count   + CASE WHEN kind = 'sad'   THEN delta ELSE 0 END,
        angry_count = angry_count + CASE WHEN kind = 'angry' THEN delta ELSE 0 END
    WHERE post_id = post
$$;

-- Triggers see the real old and new rows, so counts stay exact whatever races the writers run.
CREATE FUNCTION content.count_reactions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM content.bump_reaction(NEW.post_id, NEW.type, 1);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM content.bump_reaction(OLD.post_id, OLD.type, -1);
    ELSIF OLD.type <> NEW.type THEN
        PERFORM content.bump_reaction(OLD.post_id, OLD.type, -1);
        PERFORM content.bump_reaction(NEW.post_id, NEW.type, 1);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER reactions_count AFTER INSERT OR UPDATE OR DELETE ON content.reactions
    FOR EACH ROW EXECUTE FUNCTION content.count_reactions();
