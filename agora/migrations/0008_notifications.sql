-- Notifications: one row per notification group (a single notification is a group of one), the
-- events each group is made of, and each user's preferences per kind.
-- Written by the "notifications" event consumer (agora/services/notifications.py), read by
-- GET /api/v1/notifications.

CREATE SCHEMA notifications;

CREATE TABLE notifications.groups (
    id            bigint PRIMARY KEY DEFAULT agora.next_id(),
    user_id       bigint NOT NULL REFERENCES accounts.users (id) ON DELETE CASCADE,  -- recipient
    kind          text NOT NULL CHECK (kind IN ('friend_request', 'friend_accepted', 'comment',
                                                'reply', 'reaction', 'mention', 'message')),
    -- What groups together, without the window: 'reaction:post:<id>', 'message:conversation:<id>'.
    -- The API's group_key is this plus the group's id (each window is its own group).
    base_key      text NOT NULL,
    subject_type  text NOT NULL CHECK (subject_type IN ('post', 'comment', 'user', 'conversation')),
    subject_id    bigint NOT NULL,
    -- The post the notification is about (its visibility is re-checked on every read; deleting
    -- the post deletes the group). Null for friend requests and messages.
    post_id       bigint,
    actor_id      bigint NOT NULL,               -- the most recent actor
    actor_ids     bigint[] NOT NULL,             -- most recent first, at most 3, distinct
    count         integer NOT NULL CHECK (count > 0),  -- = its rows in notifications.sources
    created_at    timestamptz NOT NULL,          -- the first event (the grouping window's start)
    updated_at    timestamptz NOT NULL,          -- the latest event
    read_at       timestamptz,                   -- per recipient, shared by all their devices
    -- "Newest first": a time-ordered id (agora.next_id) taken again whenever the group grows,
    -- so a grown group moves to the top; unique, so it is also the keyset of the pages.
    sort_key      bigint NOT NULL
);
-- The list, newest first (also serves the per-user deletes of a block).
CREATE INDEX groups_user ON notifications.groups (user_id, sort_key DESC);
-- ?unread=true and unread_count.
CREATE INDEX groups_unread ON notifications.groups (user_id, sort_key DESC) WHERE read_at IS NULL;
-- The open group of a (recipient, base key): the latest one.
CREATE INDEX groups_open ON notifications.groups (user_id, base_key, created_at DESC);
-- Deleting a post's notifications, and a deleted comment's contribution (through its post).
CREATE INDEX groups_post ON notifications.groups (post_id) WHERE post_id IS NOT NULL;

-- The events a group is made of: its count, its actors, and what deleting a comment (or a block)
-- takes away. One row per source: a reaction per reacting user (reacting again does not count
-- twice), a comment per comment, a message per message.
CREATE TABLE notifications.sources (
    notification_id  bigint NOT NULL REFERENCES notifications.groups (id) ON DELETE CASCADE,
    source_key       bigint NOT NULL,  -- the reacting user, the comment, the message, the request
    event_id         bigint NOT NULL,
    actor_id         bigint NOT NULL,
    comment_id       bigint,           -- the comment this source is (comment, reply, mention)
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (notification_id, source_key)
);

-- Preferences: a row per (user, kind) the user has set; without one, the defaults (enabled,
-- from everyone).
CREATE TABLE notifications.settings (
    user_id       bigint NOT NULL REFERENCES accounts.users (id) ON DELETE CASCADE,
    kind          text NOT NULL,
    enabled       boolean NOT NULL DEFAULT true,
    only_friends  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (user_id, kind),
    CHECK (NOT only_friends OR kind IN ('mention', 'comment', 'reply', 'reaction'))
);
