-- Stock reservations (owned by the inventory shard actors) and persistent carts (owned by one
-- cart actor per customer).

CREATE TABLE stock_reservations (
    id          UUID PRIMARY KEY,
    -- Whoever holds the units: an order id.
    owner_id    UUID NOT NULL,
    variant_id  UUID NOT NULL REFERENCES product_variants (id),
    quantity    INT NOT NULL CHECK (quantity > 0),
    status      TEXT NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'committed', 'released')),
    expires_at  TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
SELECT trigger_updated_at('stock_reservations');
CREATE INDEX stock_reservations_held_idx ON stock_reservations (variant_id) WHERE status = 'held';
CREATE INDEX stock_reservations_owner_idx ON stock_reservations (owner_id);

-- Units held by pending orders: the live reservations.
CREATE OR REPLACE FUNCTION variant_held(vid UUID) RETURNS INT AS $$
    SELECT coalesce(sum(quantity), 0)::INT FROM stock_reservations
    WHERE variant_id = vid AND status = 'held';
$$ LANGUAGE sql STABLE;

CREATE TABLE carts (
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT carts_user_key UNIQUE (user_id)
);
SELECT trigger_updated_at('carts');

CREATE TABLE cart_items (
    id                UUID PRIMARY KEY,
    cart_id           UUID NOT NULL REFERENCES carts (id) ON DELETE CASCADE,
    variant_id        UUID NOT NULL REFERENCES product_variants (id),
    quantity          INT NOT NULL CHECK (quantity BETWEEN 1 AND 99),
    -- The unit price when the line was added, to tell the customer when it changed.
    unit_price_at_add BIGINT NOT NULL CHECK (unit_price_at_add >= 0),
    added_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT cart_items_variant_key UNIQUE (cart_id, variant_id)
);
