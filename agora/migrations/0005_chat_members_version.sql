-- Membership is fenced like last_seq: every change to a conversation's members moves
-- members_version in the same transaction, and a message commits only while the version is the one
-- its owner actor loaded its member set at (UPDATE ... WHERE members_version = <what it believes>).
-- A sender removed after the owner loaded its members can therefore not store a message, and the
-- members a committed message is fanned out to are never older than the last committed change.
ALTER TABLE chat.conversations ADD COLUMN members_version bigint NOT NULL DEFAULT 0;

-- The cascade path of deleting a user who created conversations (Known limits).
CREATE INDEX conversations_created_by ON chat.conversations (created_by);
