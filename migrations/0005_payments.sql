-- Payments: every call made to the payment provider and every outcome it reported
-- (payment_transactions), every provider event received, once per event id (stripe_events), and
-- the state of the built-in simulated provider (simulated_payment_intents and its idempotency
-- store). `order_id` has no foreign key yet: the orders table lands with the order saga.

CREATE TABLE payment_transactions (
    id         UUID PRIMARY KEY,
    order_id   UUID NOT NULL,
    provider   TEXT NOT NULL CHECK (provider IN ('simulated', 'stripe')),
    intent_id  TEXT NOT NULL,
    kind       TEXT NOT NULL
               CHECK (kind IN ('create', 'confirm', 'succeeded', 'failed', 'canceled', 'refund')),
    -- Minor units of `currency`.
    amount     BIGINT NOT NULL CHECK (amount >= 0),
    currency   TEXT NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    -- The intent's status as the provider reported it (`succeeded`, `requires_payment_method`...).
    status     TEXT NOT NULL,
    -- The provider's object or event, for audits and disputes.
    raw        JSONB NOT NULL DEFAULT '{}',
    -- What makes the row once-only: the call's idempotency key (a retried call is not recorded
    -- again), or `event:{event id}` for an outcome.
    dedup_key  TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT payment_transactions_dedup_key UNIQUE (dedup_key)
);
CREATE INDEX payment_transactions_order_idx ON payment_transactions (order_id, created_at);
CREATE INDEX payment_transactions_intent_idx ON payment_transactions (intent_id);

-- Stripe's events (and the simulated provider's, which take the same path), stored by their id:
-- the primary key is what makes a redelivered event a no-op.
CREATE TABLE stripe_events (
    id           TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    provider     TEXT NOT NULL DEFAULT 'stripe' CHECK (provider IN ('simulated', 'stripe')),
    intent_id    TEXT,
    order_id     UUID,
    payload      JSONB NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- NULL until the order saga has acted on it; replayed to the saga until then.
    processed_at TIMESTAMPTZ
);
CREATE INDEX stripe_events_order_idx ON stripe_events (order_id);
CREATE INDEX stripe_events_intent_idx ON stripe_events (intent_id);
CREATE INDEX stripe_events_unprocessed_idx ON stripe_events (received_at) WHERE processed_at IS NULL;

-- The simulated provider's PaymentIntents: kept in Postgres so that they outlive a restart, as
-- Stripe's do, and a resumed saga can confirm, cancel or refund what it created before.
CREATE TABLE simulated_payment_intents (
    id                 TEXT PRIMARY KEY,
    -- The create request's idempotency key: the same key answers the same intent.
    create_key         TEXT NOT NULL,
    client_secret      TEXT NOT NULL,
    amount             BIGINT NOT NULL CHECK (amount > 0),
    amount_received    BIGINT NOT NULL DEFAULT 0 CHECK (amount_received >= 0),
    amount_refunded    BIGINT NOT NULL DEFAULT 0
                       CHECK (amount_refunded >= 0 AND amount_refunded <= amount_received),
    currency           TEXT NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    status             TEXT NOT NULL CHECK (status IN ('requires_payment_method', 'requires_confirmation',
                           'requires_action', 'processing', 'succeeded', 'canceled')),
    payment_method     TEXT,
    last_payment_error JSONB,
    latest_charge      TEXT,
    metadata           JSONB NOT NULL DEFAULT '{}',
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT simulated_payment_intents_create_key UNIQUE (create_key)
);
SELECT trigger_updated_at('simulated_payment_intents');

-- Answers kept by idempotency key (confirm, cancel, refund), replayed instead of acting twice.
CREATE TABLE simulated_payment_requests (
    idempotency_key TEXT PRIMARY KEY,
    intent_id       TEXT NOT NULL REFERENCES simulated_payment_intents (id) ON DELETE CASCADE,
    operation       TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    response        JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
