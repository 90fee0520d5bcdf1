-- Counter triggers ran their UPDATE of content.post_stats even when the post itself was being
-- deleted by the same statement (deleting several users at once cascades to posts, comments and
-- reactions together); PostgreSQL then re-checks the post_stats foreign key and fails.
-- Decrements now skip posts that are already gone.

CREATE OR REPLACE FUNCTION content.count_comments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE content.post_stats SET comment_count = comment_count + 1 WHERE post_id = NEW.post_id;
    ELSIF EXISTS (SELECT 1 FROM content.posts WHERE id = OLD.post_id) THEN
        UPDATE content.post_stats SET comment_count = comment_count - 1 WHERE post_id = OLD.post_id;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION content.count_reactions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM content.bump_reaction(NEW.post_id, NEW.type, 1);
    ELSIF TG_OP = 'DELETE' THEN
        IF EXISTS (SELECT 1 FROM content.posts WHERE id = OLD.post_id) THEN
            PERFORM content.bump_reaction(OLD.post_id, OLD.type, -1);
        END IF;
    ELSIF OLD.type <> NEW.type THEN
        PERFORM content.bump_reaction(OLD.post_id, OLD.type, -1);
        PERFORM content.bump_reaction(NEW.post_id, NEW.type, 1);
    END IF;
    RETURN NULL;
END $$;
