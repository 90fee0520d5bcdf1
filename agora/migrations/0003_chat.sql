-- Conversations, members with read receipts, and messages with their per-conversation seq.

CREATE SCHEMA chat;

CREATE TABLE chat.conversations (
    id                bigint PRIMARY KEY DEFAULT agora.next_id(),
    kind              text NOT NULL CHECK (kind IN ('direct', 'group')),
    title             text,
    created_by        bigint NOT NULL REFERENCES accounts.users (id) ON DELETE CASCADE,
    -- '<lower id>:<higher id>' for direct conversations: at most one per pair.
    direct_key        text UNIQUE,
    -- Written only by the conversation's owner actor, in the transaction that stores messages
    -- (UPDATE ... WHERE last_seq = <what the owner believes>): a stale owner matches no row.
    last_seq          bigint NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_activity_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'direct') = (direct_key IS NOT NULL))
);

CREATE TABLE chat.members (
    conversation_id  bigint NOT NULL REFERENCES chat.conversations (id) ON DELETE CASCADE,
    user_id          bigint NOT NULL REFERENCES accounts.users (id) ON DELETE CASCADE,
    joined_at        timestamptz NOT NULL DEFAULT now(),
    last_read_seq    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_user ON chat.members (user_id, conversation_id);

CREATE TABLE chat.messages (
    id               bigint PRIMARY KEY DEFAULT agora.next_id(),
    conversation_id  bigint NOT NULL REFERENCES chat.conversations (id) ON DELETE CASCADE,
    seq              bigint NOT NULL,
    sender_id        bigint NOT NULL REFERENCES accounts.users (id) ON DELETE CASCADE,
    client_id        text NOT NULL,
    text             text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- No gap, no repeat: two owners racing for one seq cannot both commit.
    CONSTRAINT messages_seq UNIQUE (conversation_id, seq),
    -- A resent client_id finds its first message instead of storing a second.
    CONSTRAINT messages_client UNIQUE (conversation_id, sender_id, client_id)
);
CREATE INDEX messages_sender ON chat.messages (sender_id);
