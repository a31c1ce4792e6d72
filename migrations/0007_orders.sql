-- Orders: a snapshot of the cart at checkout, the saga step it reached, and its status history.

CREATE SEQUENCE order_number_seq START 1001;

CREATE TABLE orders (
    id                  UUID PRIMARY KEY,
    -- Human-readable and unique: what the customer quotes on the phone.
    number              TEXT NOT NULL,
    user_id             UUID NOT NULL REFERENCES users (id),
    status              TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded')),
    subtotal            BIGINT NOT NULL CHECK (subtotal >= 0),
    discount_total      BIGINT NOT NULL DEFAULT 0 CHECK (discount_total >= 0 AND discount_total <= subtotal),
    total               BIGINT NOT NULL CHECK (total >= 0),
    currency            TEXT NOT NULL,
    shipping_address    JSONB NOT NULL,
    -- Stock is held for this order until then; the saga cancels it if unpaid by then.
    expires_at          TIMESTAMPTZ NOT NULL,
    -- Where the order saga is: reserved → awaiting_payment → done.
    saga_step           TEXT NOT NULL DEFAULT 'reserved',
    payment_provider    TEXT NOT NULL,
    payment_intent_id   TEXT,
    payment_client_secret TEXT,
    payment_status      TEXT NOT NULL DEFAULT 'requires_payment_method',
    payment_attempt     INT NOT NULL DEFAULT 1,
    payment_error       TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT orders_number_key UNIQUE (number),
    CONSTRAINT orders_total_is_subtotal_less_discount CHECK (total = subtotal - discount_total)
);
SELECT trigger_updated_at('orders');
CREATE INDEX orders_user_idx ON orders (user_id, created_at DESC);
CREATE INDEX orders_status_idx ON orders (status, created_at DESC);
CREATE UNIQUE INDEX orders_payment_intent_key ON orders (payment_intent_id) WHERE payment_intent_id IS NOT NULL;

CREATE TABLE order_items (
    id          UUID PRIMARY KEY,
    order_id    UUID NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    variant_id  UUID NOT NULL REFERENCES product_variants (id),
    product_id  UUID NOT NULL REFERENCES products (id),
    -- A snapshot: later catalog edits do not change what was bought.
    sku         TEXT NOT NULL,
    name        TEXT NOT NULL,
    options     JSONB NOT NULL DEFAULT '{}',
    unit_price  BIGINT NOT NULL CHECK (unit_price >= 0),
    quantity    INT NOT NULL CHECK (quantity BETWEEN 1 AND 99),
    line_total  BIGINT NOT NULL CHECK (line_total = unit_price * quantity)
);
CREATE INDEX order_items_order_idx ON order_items (order_id);

CREATE TABLE order_status_history (
    id          UUID PRIMARY KEY,
    order_id    UUID NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    -- Who moved it: customer, admin, system (expiry, payment events).
    actor       TEXT NOT NULL,
    reason      TEXT,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX order_status_history_order_idx ON order_status_history (order_id, at);

-- Checkout idempotency: the same key from the same customer returns the same order.
CREATE TABLE checkout_requests (
    user_id      UUID NOT NULL REFERENCES users (id),
    key          TEXT NOT NULL,
    request_hash BYTEA NOT NULL,
    order_id     UUID NOT NULL REFERENCES orders (id),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
