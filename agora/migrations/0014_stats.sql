-- Analytics (issue 12, point 6): per-day counters kept by the `stats` event consumer
-- (agora/services/stats.py), so GET /admin/stats reads a few rows by primary key and never
-- counts posts or messages.
--
-- A row per UTC day (of the event's `occurred_at`). A counter counts what was *created* that
-- day: sign-ups (user.registered), posts (post.created), comments (comment.created), reactions
-- (reaction.set without `previous`: a changed reaction is not a new one) and messages
-- (message.stored). Deletions do not decrement: a day's figure is activity, not what survives.
-- The consumer adds to a row inside the transaction that records the event as handled
-- (events.processed), so a redelivered event is not counted twice.

CREATE SCHEMA stats;

CREATE TABLE stats.daily (
    day        date PRIMARY KEY,
    signups    bigint NOT NULL DEFAULT 0 CHECK (signups >= 0),
    posts      bigint NOT NULL DEFAULT 0 CHECK (posts >= 0),
    comments   bigint NOT NULL DEFAULT 0 CHECK (comments >= 0),
    reactions  bigint NOT NULL DEFAULT 0 CHECK (reactions >= 0),
    messages   bigint NOT NULL DEFAULT 0 CHECK (messages >= 0)
);
