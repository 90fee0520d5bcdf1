-- Domain events: the transactional outbox, the relay's partition claims, and what consumers
-- keep (events handled, per consumer; and, without RabbitMQ, their queues and dead letters).

CREATE SCHEMA events;

-- One row per domain event, written in the transaction of the change it describes.
-- `position` orders the rows as they were written; within one aggregate that is commit order,
-- because every writer of an aggregate holds a row lock of it when it writes its event.
-- `partition` spreads aggregates over the relays: each partition is relayed by one relay at a
-- time, in position order.
CREATE TABLE events.outbox (
    position     bigserial PRIMARY KEY,
    id           bigint NOT NULL DEFAULT agora.next_id(),
    type         text NOT NULL,
    aggregate    text NOT NULL,
    aggregate_id bigint NOT NULL,
    actor_id     bigint,
    occurred_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    version      integer NOT NULL DEFAULT 1,
    payload      jsonb NOT NULL,
    partition    smallint NOT NULL GENERATED ALWAYS AS ((aggregate_id % 16)::smallint) STORED,
    sent_at      timestamptz
);
CREATE INDEX outbox_unsent ON events.outbox (partition, position) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent ON events.outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Wake the relays at commit (NOTIFY is delivered only when the transaction commits, and once
-- per transaction however many rows it wrote).
CREATE FUNCTION events.outbox_written() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agora_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_written AFTER INSERT ON events.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION events.outbox_written();

-- A relay claims partitions with FOR UPDATE SKIP LOCKED for the length of one batch.
CREATE TABLE events.relay_partitions (partition smallint PRIMARY KEY);
INSERT INTO events.relay_partitions SELECT generate_series(0, 15);

-- Idempotency: the events each consumer has handled (written in the transaction of its effect).
CREATE TABLE events.processed (
    consumer     text NOT NULL,
    event_id     bigint NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX processed_at ON events.processed (processed_at);

-- Without RabbitMQ: each consumer's durable queue. The relay moves an event into the queues
-- of the consumers bound to its type in the transaction that marks it sent.
CREATE TABLE events.deliveries (
    id           bigserial PRIMARY KEY,
    consumer     text NOT NULL,
    event_id     bigint NOT NULL,
    body         bytea NOT NULL,
    leased_until timestamptz NOT NULL DEFAULT '-infinity'
);
CREATE INDEX deliveries_next ON events.deliveries (consumer, id);

CREATE FUNCTION events.deliveries_written() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agora_deliveries', '');
    RETURN NULL;
END $$;
CREATE TRIGGER deliveries_written AFTER INSERT ON events.deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION events.deliveries_written();

-- Without RabbitMQ: events a consumer gave up on (with RabbitMQ they wait in its dead-letter
-- queue instead).
CREATE TABLE events.dead_letters (
    id        bigserial PRIMARY KEY,
    consumer  text NOT NULL,
    event_id  bigint NOT NULL,
    type      text NOT NULL,
    body      bytea NOT NULL,
    error     text NOT NULL,
    attempts  integer NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_consumer ON events.dead_letters (consumer, id);
