-- Search windows with plans that do not hang on the planner's guesses (agora/storage/search.py).
--
-- The newest matches of a word are found one of two ways: a rare word's few matches from the
-- GIN index, a common word's by walking post ids down until enough have matched. The planner
-- picks by its estimate of how common the words are, and for two words or a phrase that estimate
-- can be wrong by orders of magnitude (words that are each common but seldom together): it then
-- walks every post. These functions decide by counting instead, and each step runs with the
-- plan shape it was written for (a function's SET applies while it runs).

-- agora.next_id's bits for a time: the smallest id made at or after it.
CREATE FUNCTION agora.next_id_floor(at timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT greatest(floor(extract(epoch FROM at) * 1000)::bigint - 1735689600000, 0) << 12
$$;

-- Each step is dynamic SQL (EXECUTE ... USING), so it is planned for the actual values: the id
-- range joins in (a bitmap of the ids) only where it is narrow enough to help, and drops out
-- where it covers every post.

-- Up to `cap` posts matching q between the ids (upper exclusive), in no order, from the GIN
-- index alone. A range from the start to (nearly) now is searched as every post (the posts of
-- the last minute are dropped by the caller's own bounds).
CREATE FUNCTION search.posts_matching(q tsquery, upper bigint, lower bigint, cap integer)
RETURNS SETOF bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET enable_seqscan = off SET enable_indexscan = off
AS $$
BEGIN
    IF lower <= 0 AND upper >= agora.next_id_floor(now() - interval '1 minute') THEN
        RETURN QUERY EXECUTE
            'SELECT p.id FROM content.posts p WHERE p.search @@ $1 LIMIT $2'
            USING q, cap;
    ELSE
        RETURN QUERY EXECUTE
            'SELECT p.id FROM content.posts p
             WHERE p.search @@ $1 AND p.id < $2 AND p.id >= $3 LIMIT $4'
            USING q, upper, lower, cap;
    END IF;
END $$;

-- The newest n posts matching q between the ids, walking the ids down.
CREATE FUNCTION search.posts_walking(q tsquery, upper bigint, lower bigint, n integer)
RETURNS SETOF bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
BEGIN
    RETURN QUERY EXECUTE
        'SELECT p.id FROM content.posts p
         WHERE p.search @@ $1 AND p.id < $2 AND p.id >= $3
         ORDER BY p.id DESC
         LIMIT $4'
        USING q, upper, lower, n;
END $$;

-- The newest n posts matching q between the ids. With at most `cap` matches they all come from
-- the index and the newest are kept; with more, the walk meets n of them within about
-- n * (posts in the range) / cap rows. Either way the work is bounded through `cap`
-- (storage/search.py picks it), never the whole table.
CREATE FUNCTION search.newest_posts(q tsquery, upper bigint, lower bigint, n integer, cap integer)
RETURNS SETOF bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    found bigint[] := ARRAY(SELECT search.posts_matching(q, upper, lower, cap + 1));
BEGIN
    IF cardinality(found) <= cap THEN
        RETURN QUERY
            SELECT f.id FROM unnest(found) AS f(id)
            WHERE f.id < upper AND f.id >= lower
            ORDER BY f.id DESC LIMIT n;
    ELSE
        RETURN QUERY SELECT search.posts_walking(q, upper, lower, n);
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
