-- Search (the PostgreSQL backend, agora/search/postgres.py): full text over posts and messages,
-- prefix and typo-tolerant matching over user names. Every piece works on the embedded
-- PostgreSQL (which has no contrib extensions); pg_trgm is used where it is available.

CREATE SCHEMA search;

-- A text's lexemes twice in one tsvector: as typed ('simple': lower-cased, no stemming, no stop
-- words) with weight A, and stemmed ('english') with weight B. Stemmed lexemes let "running"
-- find "runs"; the simple ones keep stop words and words of other languages findable as typed,
-- rank exact forms above stemmed ones, and carry the phrases ('simple' positions are the text's
-- own: the english half's positions are shifted past them by the concatenation).
CREATE FUNCTION search.document(body text) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT setweight(to_tsvector('pg_catalog.simple'::regconfig, body), 'A')
        || setweight(to_tsvector('pg_catalog.english'::regconfig, body), 'B')
$$;

-- The matching tsquery: every word (stemmed or as typed) and every phrase (as typed) must
-- match, no excluded word or phrase may. NULL when nothing positive is asked (a query of
-- operators only), so callers skip the text condition instead of matching nothing.
CREATE FUNCTION search.query(
    words text[], phrases text[], excluded text[], excluded_phrases text[]
) RETURNS tsquery
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    q tsquery := NULL;
    part tsquery;
    w text;
BEGIN
    FOREACH w IN ARRAY words LOOP
        part := plainto_tsquery('pg_catalog.english'::regconfig, w)
             || plainto_tsquery('pg_catalog.simple'::regconfig, w);
        q := CASE WHEN q IS NULL THEN part ELSE q && part END;
    END LOOP;
    FOREACH w IN ARRAY phrases LOOP
        part := phraseto_tsquery('pg_catalog.simple'::regconfig, w);
        q := CASE WHEN q IS NULL THEN part ELSE q && part END;
    END LOOP;
    IF q IS NULL OR numnode(q) = 0 THEN
        RETURN NULL;
    END IF;
    FOREACH w IN ARRAY excluded LOOP
        part := plainto_tsquery('pg_catalog.english'::regconfig, w)
             || plainto_tsquery('pg_catalog.simple'::regconfig, w);
        IF numnode(part) > 0 THEN
            q := q && !!part;
        END IF;
    END LOOP;
    FOREACH w IN ARRAY excluded_phrases LOOP
        part := phraseto_tsquery('pg_catalog.simple'::regconfig, w);
        IF numnode(part) > 0 THEN
            q := q && !!part;
        END IF;
    END LOOP;
    RETURN q;
END $$;

-- What a snippet highlights: any positive word or phrase word, stemmed as the snippet's text is
-- (ts_headline parses it with 'english'). NULL when every word is a stop word.
CREATE FUNCTION search.highlight(terms text[]) RETURNS tsquery
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    q tsquery := NULL;
    part tsquery;
    w text;
BEGIN
    FOREACH w IN ARRAY terms LOOP
        part := plainto_tsquery('pg_catalog.english'::regconfig, w);
        IF numnode(part) > 0 THEN
            q := CASE WHEN q IS NULL THEN part ELSE q || part END;
        END IF;
    END LOOP;
    RETURN q;
END $$;

-- GIN without the pending list (fastupdate): a search would otherwise scan up to 4 MB of
-- unmerged entries, and the insert that overflows it would merge them while the writer (for
-- messages, the chat committer) waits.
ALTER TABLE content.posts
    ADD COLUMN search tsvector GENERATED ALWAYS AS (search.document(text)) STORED;
CREATE INDEX posts_search ON content.posts USING gin (search) WITH (fastupdate = off);
-- has:media without any other condition must not walk every post.
CREATE INDEX posts_with_media ON content.posts (id) WHERE cardinality(media_ids) > 0;

ALTER TABLE chat.messages
    ADD COLUMN search tsvector GENERATED ALWAYS AS (search.document(text)) STORED;
CREATE INDEX messages_search ON chat.messages USING gin (search) WITH (fastupdate = off);

-- Names: prefixes through btree indexes in the "C" collation, which serve both LIKE 'prefix%'
-- ('_' and '%' escaped in the pattern) and the ORDER BY that stops after a page ...
CREATE INDEX users_username_prefix ON accounts.users ((lower(username) COLLATE "C"));
CREATE INDEX users_display_name_prefix ON accounts.users ((lower(display_name) COLLATE "C"));

-- ... and typos through trigrams. pg_trgm's own where the server has it (the machine's
-- PostgreSQL); otherwise the same trigrams (pg_trgm's: each word padded with two spaces before
-- and one after) in a text[] with a built-in GIN index, which the embedded PostgreSQL can do.
CREATE FUNCTION search.trigrams(body text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT coalesce(array_agg(DISTINCT substr('  ' || w || ' ', i, 3)), '{}')
    FROM regexp_split_to_table(lower(body), '[^[:alnum:]]+') AS w,
         generate_series(1, length(w) + 1) AS i
    WHERE w <> ''
$$;

CREATE FUNCTION search.name(username text, display_name text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT lower(username || ' ' || display_name)
$$;

ALTER TABLE accounts.users
    ADD COLUMN name_trigrams text[]
    GENERATED ALWAYS AS (search.trigrams(username || ' ' || display_name)) STORED;
CREATE INDEX users_name_trigrams ON accounts.users USING gin (name_trigrams);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
        CREATE INDEX users_name_trgm ON accounts.users
            USING gin (search.name(username, display_name) gin_trgm_ops);
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'pg_trgm could not be created (%); user search uses built-in trigrams', SQLERRM;
END $$;
