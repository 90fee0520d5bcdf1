-- Shared helpers and the accounts domain.

CREATE SCHEMA agora;

-- Time-ordered 53-bit ids (safe as JSON numbers too, though the API sends strings):
-- milliseconds since 2025-01-01 in the high bits, 12 bits of a global sequence below.
-- Ordering by id is ordering by creation time, which keyset pagination relies on.
CREATE SEQUENCE agora.id_seq;

CREATE FUNCTION agora.next_id(at timestamptz DEFAULT clock_timestamp()) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT ((floor(extract(epoch FROM at) * 1000)::bigint - 1735689600000) << 12)
           | (nextval('agora.id_seq') % 4096)
$$;

CREATE SCHEMA accounts;

CREATE TABLE accounts.users (
    id              bigint PRIMARY KEY DEFAULT agora.next_id(),
    username        text NOT NULL CHECK (username ~ '^[A-Za-z0-9_]{3,30}$'),
    email           text NOT NULL,
    password_hash   text NOT NULL,
    display_name    text NOT NULL DEFAULT '',
    bio             text NOT NULL DEFAULT '',
    avatar_media_id bigint,
    role            text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'moderator', 'admin')),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- Case-insensitive uniqueness: `Alice` cannot register when `alice` exists.
CREATE UNIQUE INDEX users_username_ci ON accounts.users (lower(username));
CREATE UNIQUE INDEX users_email_ci ON accounts.users (lower(email));

-- One row per login: the family of refresh tokens it rotates through. `sid` in access tokens.
CREATE TABLE accounts.login_sessions (
    id             bigint PRIMARY KEY DEFAULT agora.next_id(),
    user_id        bigint NOT NULL REFERENCES accounts.users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_used_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    revoked_reason text,
    user_agent     text NOT NULL DEFAULT ''
);
CREATE INDEX login_sessions_user ON accounts.login_sessions (user_id) WHERE revoked_at IS NULL;
CREATE INDEX login_sessions_revoked ON accounts.login_sessions (revoked_at) WHERE revoked_at IS NOT NULL;

-- Refresh tokens are stored only as SHA-256 hashes. A token is used once: `used_at` set on
-- rotation; presenting a used one again revokes its whole session (reuse detection).
CREATE TABLE accounts.refresh_tokens (
    token_hash  bytea PRIMARY KEY,
    session_id  bigint NOT NULL REFERENCES accounts.login_sessions (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX refresh_tokens_session ON accounts.refresh_tokens (session_id);
