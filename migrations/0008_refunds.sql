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
    -- `already_refunded`: the provider had refunded the charge by other means (its dashboard); the
    -- money is back, and the provider's own event says how much, so this row adds nothing.
    status             TEXT NOT NULL DEFAULT 'owed'
                       CHECK (status IN ('owed', 'succeeded', 'already_refunded')),
    -- What makes the decision once-only: `payment:{intent}` for a payment that pays for nothing
    -- (late or mismatched: one refund per payment, whichever path found it first),
    -- `admin:{order}:{idempotency key or n}` for an admin's.
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

-- Orders pending at this migration: what their holds add up to, bundles as their components.
UPDATE orders o SET reserved_units = (
    SELECT coalesce(sum(i.quantity * coalesce(
               (SELECT sum(bc.quantity) FROM product_variants v
                JOIN products p ON p.id = v.product_id AND p.type = 'bundle'
                JOIN bundle_components bc ON bc.bundle_id = p.id
                WHERE v.id = i.variant_id), 1)), 0)::int
    FROM order_items i WHERE i.order_id = o.id)
WHERE o.status = 'pending';
