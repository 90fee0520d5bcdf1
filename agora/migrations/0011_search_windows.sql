-- Search windows with plans that do not hang on the planner's guesses (agora/storage/search.py).
--
-- The newest matches of a word are found one of two ways: a rare word's few matches from the
-- GIN index, a common word's by walking post ids down until enough have matched. The planner
-- picks by its estimate of how common the words are, and for two words or a phrase that estimate
-- can be wrong by orders of magnitude (words that are each common but seldom together): it then
-- walks every post. These functions bound the walk instead of trusting the guess.

-- Each step is dynamic SQL (EXECUTE ... USING), so it is planned for the actual values, with
-- the plan shape it was written for (a function's SET applies while it runs).

-- Walking: the newest n matches among the newest `budget` posts between the ids (upper
-- exclusive), reading posts newest first and stopping at the n-th match.
CREATE FUNCTION search.posts_walking(
    q tsquery, upper bigint, lower bigint, budget integer, n integer
) RETURNS SETOF bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
BEGIN
    RETURN QUERY EXECUTE
        'SELECT r.id FROM (
             SELECT p.id, p.search FROM content.posts p
             WHERE p.id < $2 AND p.id >= $3 ORDER BY p.id DESC LIMIT $4) r
         WHERE r.search @@ $1
         ORDER BY r.id DESC LIMIT $5'
        USING q, upper, lower, budget, n;
END $$;

-- The lowest id among the newest `budget` posts between the ids (from the id index alone).
CREATE FUNCTION search.posts_floor(upper bigint, lower bigint, budget integer) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT min(r.id) FROM (
        SELECT p.id FROM content.posts p
        WHERE p.id < upper AND p.id >= lower ORDER BY p.id DESC LIMIT budget) r
$$;

-- From the index: the newest n of every match between the ids, read from the GIN index.
CREATE FUNCTION search.posts_from_index(q tsquery, upper bigint, lower bigint, n integer)
RETURNS SETOF bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET enable_seqscan = off SET enable_indexscan = off
AS $$
BEGIN
    RETURN QUERY EXECUTE
        'SELECT p.id FROM content.posts p
         WHERE p.search @@ $1 AND p.id < $2 AND p.id >= $3
         ORDER BY p.id DESC LIMIT $4'
        USING q, upper, lower, n;
END $$;

-- The share of posts the planner expects to match q (its estimate, from the column's statistics:
-- good for one word, guessed for several).
-- (VOLATILE only because PostgreSQL allows EXPLAIN in no other function; it writes nothing.)
CREATE FUNCTION search.posts_share(q tsquery) RETURNS float8
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    plan json;
BEGIN
    EXECUTE 'EXPLAIN (FORMAT JSON) SELECT 1 FROM content.posts p WHERE p.search @@ $1'
        INTO plan USING q;
    RETURN (plan -> 0 -> 'Plan' ->> 'Plan Rows')::float8
        / greatest((SELECT c.reltuples FROM pg_class c WHERE c.oid = 'content.posts'::regclass), 1);
END $$;

-- The newest n posts matching q between the ids. Words expected in at least n of every
-- `budget` posts are met walking the newest `budget` posts (at most `budget` rows read), and
-- what is missing then comes from the GIN index below them; rarer words come from the GIN
-- index at once (their matches only are read). So a wrong guess costs a bounded walk, never a
-- walk over every post (a word common long ago and rare now, words common apart and seldom
-- together). `walk` decides instead of the estimate when it is not NULL (tests).
CREATE FUNCTION search.newest_posts(
    q tsquery, upper bigint, lower bigint, n integer, budget integer, walk boolean DEFAULT NULL
) RETURNS SETOF bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    near bigint[];
    floor bigint;
BEGIN
    IF NOT coalesce(walk, search.posts_share(q) >= n::float8 / budget) THEN
        RETURN QUERY SELECT search.posts_from_index(q, upper, lower, n);
        RETURN;
    END IF;
    near := ARRAY(SELECT search.posts_walking(q, upper, lower, budget, n));
    RETURN QUERY SELECT unnest(near);
    IF cardinality(near) < n THEN
        floor := search.posts_floor(upper, lower, budget);
        IF floor IS NOT NULL AND floor > lower THEN
            RETURN QUERY SELECT search.posts_from_index(q, floor, lower, n - cardinality(near));
        END IF;
    END IF;
END $$;

-- The newest n messages of the viewer's conversations between the ids, matching q (NULL: any)
-- and sent by one of `senders` (NULL: anyone): always through the indexes of what is asked
-- (the words, the conversations, the senders), so the work is bounded by the viewer's own
-- conversations, never by every message.
CREATE FUNCTION search.newest_messages(
    q tsquery, viewer bigint, senders bigint[], upper bigint, lower bigint, n integer
) RETURNS SETOF bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET enable_seqscan = off SET enable_indexscan = off
AS $$
DECLARE
    conversations bigint[] := ARRAY(
        SELECT mb.conversation_id FROM chat.members mb WHERE mb.user_id = viewer);
BEGIN
    IF q IS NOT NULL THEN
        RETURN QUERY
            SELECT m.id FROM chat.messages m
            WHERE m.search @@ q AND m.conversation_id = ANY (conversations)
              AND (senders IS NULL OR m.sender_id = ANY (senders))
              AND m.id < upper AND m.id >= lower
            ORDER BY m.id DESC LIMIT n;
    ELSIF senders IS NOT NULL THEN
        RETURN QUERY
            SELECT m.id FROM chat.messages m
            WHERE m.sender_id = ANY (senders) AND m.conversation_id = ANY (conversations)
              AND m.id < upper AND m.id >= lower
            ORDER BY m.id DESC LIMIT n;
    ELSE
        RETURN QUERY
            SELECT m.id FROM chat.messages m
            WHERE m.conversation_id = ANY (conversations)
              AND m.id < upper AND m.id >= lower
            ORDER BY m.id DESC LIMIT n;
    END IF;
END $$;
