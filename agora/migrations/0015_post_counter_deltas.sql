-- Post counters without a hot row (issue 15). The comment and reaction triggers updated their
-- post's one content.post_stats row in the writer's transaction, so every writer of a popular
-- post waited for the previous one's commit (its WAL flush included) to take that row's lock.
-- They now insert a delta row instead: an insert locks nothing another writer needs. A post's
-- counts are its post_stats row plus the sum of its pending deltas (content.post_counts), read
-- in one statement, so they are exact at every moment; a periodic fold
-- (agora.storage.content.FOLD_COUNTERS) moves deltas into post_stats in one statement.

-- One row per change of a post's counters: how much each counter moves. No foreign key: a delta
-- of a post deleted meanwhile is dropped by the next fold.
CREATE TABLE content.post_stat_deltas (
    id             bigserial PRIMARY KEY,
    post_id        bigint NOT NULL,
    comment_count  integer NOT NULL DEFAULT 0,
    like_count     integer NOT NULL DEFAULT 0,
    love_count     integer NOT NULL DEFAULT 0,
    haha_count     integer NOT NULL DEFAULT 0,
    wow_count      integer NOT NULL DEFAULT 0,
    sad_count      integer NOT NULL DEFAULT 0,
    angry_count    integer NOT NULL DEFAULT 0
);
CREATE INDEX post_stat_deltas_post ON content.post_stat_deltas (post_id);

-- A post's counts: its folded row plus its pending deltas, summed through the post_id index.
CREATE VIEW content.post_counts AS
SELECT s.post_id,
       s.comment_count + d.comment_count AS comment_count,
       s.like_count + d.like_count AS like_count,
       s.love_count + d.love_count AS love_count,
       s.haha_count + d.haha_count AS haha_count,
       s.wow_count + d.wow_count AS wow_count,
       s.sad_count + d.sad_count AS sad_count,
       s.angry_count + d.angry_count AS angry_count
FROM content.post_stats s
CROSS JOIN LATERAL (
    SELECT coalesce(sum(x.comment_count), 0)::integer AS comment_count,
           coalesce(sum(x.like_count), 0)::integer AS like_count,
           coalesce(sum(x.love_count), 0)::integer AS love_count,
           coalesce(sum(x.haha_count), 0)::integer AS haha_count,
           coalesce(sum(x.wow_count), 0)::integer AS wow_count,
           coalesce(sum(x.sad_count), 0)::integer AS sad_count,
           coalesce(sum(x.angry_count), 0)::integer AS angry_count
    FROM content.post_stat_deltas x
    WHERE x.post_id = s.post_id
) d;

-- The triggers: one delta row per change. As in 0004, a delete whose post is already gone (a
-- cascade from the post, or from several users deleted at once) writes nothing.
CREATE OR REPLACE FUNCTION content.count_comments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO content.post_stat_deltas (post_id, comment_count) VALUES (NEW.post_id, 1);
    ELSIF EXISTS (SELECT 1 FROM content.posts WHERE id = OLD.post_id) THEN
        INSERT INTO content.post_stat_deltas (post_id, comment_count) VALUES (OLD.post_id, -1);
    END IF;
    RETURN NULL;
END $$;

-- One delta row: `removed` (a type or NULL) goes down by one, `added` up by one.
CREATE FUNCTION content.reaction_delta(post bigint, removed text, added text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO content.post_stat_deltas (post_id, like_count, love_count, haha_count,
                                          wow_count, sad_count, angry_count)
    VALUES (post,
            (CASE WHEN added = 'like'  THEN 1 ELSE 0 END) - (CASE WHEN removed = 'like'  THEN 1 ELSE 0 END),
            (CASE WHEN added = 'love'  THEN 1 ELSE 0 END) - (CASE WHEN removed = 'love'  THEN 1 ELSE 0 END),
            (CASE WHEN added = 'haha'  THEN 1 ELSE 0 END) - (CASE WHEN removed = 'haha'  THEN 1 ELSE 0 END),
            (CASE WHEN added = 'wow'   THEN 1 ELSE 0 END) - (CASE WHEN removed = 'wow'   THEN 1 ELSE 0 END),
            (CASE WHEN added = 'sad'   THEN 1 ELSE 0 END) - (CASE WHEN removed = 'sad'   THEN 1 ELSE 0 END),
            (CASE WHEN added = 'angry' THEN 1 ELSE 0 END) - (CASE WHEN removed = 'angry' THEN 1 ELSE 0 END))
$$;

CREATE OR REPLACE FUNCTION content.count_reactions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM content.reaction_delta(NEW.post_id, NULL, NEW.type);
    ELSIF TG_OP = 'DELETE' THEN
        IF EXISTS (SELECT 1 FROM content.posts WHERE id = OLD.post_id) THEN
            PERFORM content.reaction_delta(OLD.post_id, OLD.type, NULL);
        END IF;
    ELSIF OLD.type <> NEW.type THEN
        PERFORM content.reaction_delta(NEW.post_id, OLD.type, NEW.type);
    END IF;
    RETURN NULL;
END $$;

DROP FUNCTION content.bump_reaction(bigint, text, integer);
