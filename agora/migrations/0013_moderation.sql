-- Moderation (issue 12): suspensions, content held by the word filter, removed messages,
-- reports and the append-only audit log. Written by agora/storage/moderation.py (reports, the
-- audit log, held content's release) and agora/storage/accounts.py (suspensions).

CREATE SCHEMA moderation;

-- A suspension: why, since when, and until when (NULL: until a moderator lifts it). An expired
-- one is lifted by the housekeeping job, or at once by a login or refresh that finds it over.
ALTER TABLE accounts.users
    ADD COLUMN suspended_at timestamptz,
    ADD COLUMN suspended_until timestamptz,
    ADD COLUMN suspended_reason text;
CREATE INDEX users_suspension_ends ON accounts.users (suspended_until)
    WHERE status = 'suspended' AND suspended_until IS NOT NULL;
CREATE INDEX users_suspended ON accounts.users (id) WHERE status = 'suspended';

-- Held by the word filter: visible only to the author (agora/storage/visibility.py) until a
-- moderator publishes (dismiss) or deletes (remove) it.
ALTER TABLE content.posts ADD COLUMN held boolean NOT NULL DEFAULT false;
ALTER TABLE content.comments ADD COLUMN held boolean NOT NULL DEFAULT false;

-- A removed message keeps its row and seq (sync needs no gap) with its text emptied: history
-- and sync return a tombstone, search finds nothing. The audit entry keeps the copy.
ALTER TABLE chat.messages ADD COLUMN removed_at timestamptz;

CREATE TABLE moderation.reports (
    id             bigint PRIMARY KEY DEFAULT agora.next_id(),
    -- NULL: raised by the word filter (the content is held until the report is resolved).
    reporter_id    bigint REFERENCES accounts.users (id) ON DELETE SET NULL,
    subject_type   text NOT NULL CHECK (subject_type IN ('post', 'comment', 'user', 'message')),
    subject_id     bigint NOT NULL,
    -- The account the subject belongs to (author, sender, the user reported), for the queue
    -- and for `suspend`; NULL once that account is gone.
    subject_user_id bigint REFERENCES accounts.users (id) ON DELETE SET NULL,
    category       text NOT NULL CHECK (category IN ('spam', 'harassment', 'illegal', 'other')),
    reason         text NOT NULL,
    -- What the subject was when reported (for a message: that message and nothing else of the
    -- conversation), so the moderator sees it even after the author edits or deletes it.
    snapshot       jsonb NOT NULL,
    status         text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    action         text CHECK (action IN ('dismiss', 'remove', 'suspend')),
    note           text,
    resolved_by    bigint REFERENCES accounts.users (id) ON DELETE SET NULL,
    resolved_at    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'open') = (action IS NULL))
);
-- One open report per reporter and subject (and one hold per held subject).
CREATE UNIQUE INDEX reports_one_open ON moderation.reports (reporter_id, subject_type, subject_id)
    WHERE status = 'open' AND reporter_id IS NOT NULL;
CREATE UNIQUE INDEX reports_one_hold ON moderation.reports (subject_type, subject_id)
    WHERE status = 'open' AND reporter_id IS NULL;
-- The queue, oldest first, by status (and category).
CREATE INDEX reports_queue ON moderation.reports (status, id);
-- The other open reports of a subject, closed with it.
CREATE INDEX reports_subject ON moderation.reports (subject_type, subject_id) WHERE status = 'open';
CREATE INDEX reports_reporter ON moderation.reports (reporter_id) WHERE reporter_id IS NOT NULL;
CREATE INDEX reports_subject_user ON moderation.reports (subject_user_id)
    WHERE subject_user_id IS NOT NULL;
CREATE INDEX reports_resolved_by ON moderation.reports (resolved_by) WHERE resolved_by IS NOT NULL;

-- Every moderator and admin action. No foreign keys: an entry outlives its actor and target,
-- whose copy it holds (`human_identifier`, as Mastodon's admin action log keeps one, and a
-- JSON snapshot). Append-only: no code path updates or deletes it, and the triggers below
-- refuse it for everyone (the application's own role owns the table, so REVOKE cannot).
CREATE TABLE moderation.audit_log (
    id                bigint PRIMARY KEY DEFAULT agora.next_id(),
    created_at        timestamptz NOT NULL DEFAULT now(),
    actor_id          bigint,                -- NULL: the CLI or the system (see `via`)
    actor_username    text,
    via               text NOT NULL CHECK (via IN ('api', 'cli', 'system')),
    action            text NOT NULL,
    target_type       text NOT NULL,
    target_id         bigint,
    human_identifier  text NOT NULL,
    snapshot          jsonb NOT NULL DEFAULT '{}',
    note              text
);
CREATE INDEX audit_log_action ON moderation.audit_log (action, id DESC);
CREATE INDEX audit_log_target ON moderation.audit_log (target_type, target_id, id DESC);

CREATE FUNCTION moderation.audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'moderation.audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON moderation.audit_log
    FOR EACH ROW EXECUTE FUNCTION moderation.audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON moderation.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION moderation.audit_log_is_append_only();

-- The reporter is told the outcome: a notification kind and subject of their own.
ALTER TABLE notifications.groups DROP CONSTRAINT groups_kind_check;
ALTER TABLE notifications.groups ADD CONSTRAINT groups_kind_check
    CHECK (kind IN ('friend_request', 'friend_accepted', 'comment', 'reply', 'reaction',
                    'mention', 'message', 'report_resolved'));
ALTER TABLE notifications.groups DROP CONSTRAINT groups_subject_type_check;
ALTER TABLE notifications.groups ADD CONSTRAINT groups_subject_type_check
    CHECK (subject_type IN ('post', 'comment', 'user', 'conversation', 'report'));
