-- The transactional outbox and the record of emails sent.
--
-- A message that must leave the process (to RabbitMQ, or the in-process queue) is written here in the
-- transaction of the change that caused it; the outbox relay publishes it with publisher confirms and
-- only then sets published_at. The row id is the message id consumers de-duplicate by.

CREATE TABLE outbox (
    id            UUID PRIMARY KEY,
    -- The routing key, e.g. 'order.paid'.
    topic         TEXT        NOT NULL CHECK (topic <> ''),
    payload       JSONB       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Not before this time: a failed hand-over is retried later, not in a tight loop.
    available_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ,
    attempts      INT         NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error    TEXT
);

-- The relay's only question: what is still to publish, oldest first.
CREATE INDEX outbox_unpublished_idx ON outbox (available_at, created_at) WHERE published_at IS NULL;

-- Wakes the relay (LISTEN outbox) as soon as the inserting transaction commits; NOTIFY is
-- transactional, so a rolled-back order never wakes anyone.
CREATE FUNCTION outbox_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('outbox', NEW.topic);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_notify();

-- One email per (order, kind), however often its message is delivered. No foreign key to orders:
-- the payload carries everything the email needs.
CREATE TABLE email_deliveries (
    order_id    UUID        NOT NULL,
    kind        TEXT        NOT NULL CHECK (kind IN ('paid', 'cancelled', 'refunded')),
    message_id  UUID        NOT NULL,
    recipient   TEXT        NOT NULL,
    sent_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT email_deliveries_order_kind_key UNIQUE (order_id, kind)
);
