-- Refunds as durable intentions, and how much of each order went back.
--
-- A refund is decided in the transaction that decides it (a late payment for a cancelled order, a
-- payment that does not match its order, an admin's refund) by writing a row here; the refund
-- worker actor then calls the provider with the row's idempotency key until the provider takes
-- it. A refund the provider has not confirmed yet is `owed` (the gauge `refunds_owed`).

ALTER TABLE orders
    ADD COLUMN refunded_amount BIGINT NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    -- Units the order holds in the inventory, bundles counted as their components: what a
    -- complete stock commit answers. Fewer means some holds were gone before the payment.
    ADD COLUMN reserved_units INT NOT NULL DEFAULT 0 CHECK (reserved_units >= 0);

CREATE TABLE refunds (
    id                 UUID PRIMARY KEY,
    order_id           UUID NOT NULL REFERENCES orders (id),
    -- The n-th refund of the order: its idempotency key at the provider is `order:{id}:refund:{n}`.
    seq                INT NOT NULL CHECK (seq >= 1),
    intent_id          TEXT NOT NULL,
    -- Minor units of `currency`.
    amount             BIGINT NOT NULL CHECK (amount > 0),
    currency           TEXT NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    reason             TEXT NOT NULL CHECK (reason IN ('late_payment', 'mismatch', 'admin')),
    status             TEXT NOT NULL DEFAULT 'owed' CHECK (status IN ('owed', 'succeeded')),
    -- What makes the decision once-only: `late:{intent}`, `mismatch:{intent}`, `admin:{order}:{n}`.
    dedup_key          TEXT NOT NULL,
    attempts           INT NOT NULL DEFAULT 0,
    next_attempt_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error         TEXT,
    provider_refund_id TEXT,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at       TIMESTAMPTZ,
    CONSTRAINT refunds_dedup_key UNIQUE (dedup_key),
    CONSTRAINT refunds_order_seq_key UNIQUE (order_id, seq)
);
CREATE INDEX refunds_owed_idx ON refunds (next_attempt_at) WHERE status = 'owed';
