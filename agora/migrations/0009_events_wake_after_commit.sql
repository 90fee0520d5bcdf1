-- NOTIFY inside a writing transaction takes PostgreSQL's global notification lock at commit
-- and holds it through the commit's WAL flush, so every transaction that wrote an event
-- committed one after another (bench events: commits waiting on "Lock object" behind
-- "WALSync", the node stuck near 450 writes/s). Writers now wake the relay after their commit
-- instead (the node's own relay directly, others with a NOTIFY of its own, which writes no WAL).
DROP TRIGGER outbox_written ON events.outbox;
DROP FUNCTION events.outbox_written();
DROP TRIGGER deliveries_written ON events.deliveries;
DROP FUNCTION events.deliveries_written();

-- The outbox and the in-process queues churn: every row is written, updated or deleted soon
-- after. Vacuum them as soon as a hundredth of them is dead (where autovacuum runs).
ALTER TABLE events.outbox SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE events.deliveries SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE events.processed SET (autovacuum_vacuum_scale_factor = 0.02);
