-- Housekeeping of logins: each login knows when it expires (its refresh window: the newest
-- refresh token's expiry, moved on every rotation), so the periodic session re-check and the
-- purge of old logins and refresh tokens read one indexed column instead of every token.

ALTER TABLE accounts.login_sessions ADD COLUMN expires_at timestamptz;
UPDATE accounts.login_sessions s SET expires_at = coalesce(
    (SELECT max(t.expires_at) FROM accounts.refresh_tokens t WHERE t.session_id = s.id),
    s.last_used_at + interval '30 days');
-- The default serves rows written without it (the bench's fixtures); Agora always sets it.
ALTER TABLE accounts.login_sessions
    ALTER COLUMN expires_at SET DEFAULT now() + interval '30 days',
    ALTER COLUMN expires_at SET NOT NULL;

-- What the purge looks for: live logins past their expiry (revoked ones are found by
-- login_sessions_revoked), expired refresh tokens, and tokens used long ago.
CREATE INDEX login_sessions_expires ON accounts.login_sessions (expires_at)
    WHERE revoked_at IS NULL;
CREATE INDEX refresh_tokens_expires ON accounts.refresh_tokens (expires_at);
CREATE INDEX refresh_tokens_used ON accounts.refresh_tokens (used_at) WHERE used_at IS NOT NULL;
