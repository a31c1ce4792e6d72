-- Promotions: coupons (one per cart), their uses (owned by the coupon limiter actor), gift rules,
-- and what an order keeps of them.

CREATE TABLE coupons (
    id                 UUID PRIMARY KEY,
    -- Unique without regard to case: `SPRING10` and `spring10` are one coupon.
    code               CITEXT NOT NULL CHECK (code ~ '^[A-Za-z0-9_-]{3,32}$'),
    kind               TEXT NOT NULL CHECK (kind IN ('percent', 'fixed')),
    -- percent: 1 to 100; fixed: minor units of the store currency.
    value              BIGINT NOT NULL CHECK (value > 0 AND (kind <> 'percent' OR value <= 100)),
    scope              TEXT NOT NULL CHECK (scope IN ('order', 'product')),
    -- Product scope: the lines of these products, or of products in these categories or their
    -- descendants.
    product_ids        UUID[] NOT NULL DEFAULT '{}',
    category_ids       UUID[] NOT NULL DEFAULT '{}',
    min_order_total    BIGINT CHECK (min_order_total >= 0),
    starts_at          TIMESTAMPTZ,
    expires_at         TIMESTAMPTZ,
    usage_limit        INT CHECK (usage_limit > 0),
    per_customer_limit INT CHECK (per_customer_limit > 0),
    -- Deleting a coupon deactivates it: past orders keep their snapshot of it.
    active             BOOLEAN NOT NULL DEFAULT true,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT coupons_code_key UNIQUE (code),
    CONSTRAINT coupons_dates_ordered CHECK (starts_at IS NULL OR expires_at IS NULL OR starts_at < expires_at)
);
SELECT trigger_updated_at('coupons');

-- One use of a coupon by an order: held at checkout, committed when the order is paid, released
-- when it is cancelled or expires. Owned by the coupon limiter actor.
CREATE TABLE coupon_redemptions (
    id          UUID PRIMARY KEY,
    coupon_id   UUID NOT NULL REFERENCES coupons (id),
    order_id    UUID NOT NULL,
    user_id     UUID NOT NULL REFERENCES users (id),
    status      TEXT NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'committed', 'released')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT coupon_redemptions_order_key UNIQUE (coupon_id, order_id)
);
SELECT trigger_updated_at('coupon_redemptions');
CREATE INDEX coupon_redemptions_live_idx ON coupon_redemptions (coupon_id, user_id)
    WHERE status IN ('held', 'committed');

-- The code a customer applied to their cart (kept even while it does not apply).
ALTER TABLE carts ADD COLUMN coupon_code CITEXT;

CREATE TABLE gift_rules (
    id                   UUID PRIMARY KEY,
    name                 TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    gift_variant_id      UUID NOT NULL REFERENCES product_variants (id),
    gift_quantity        INT NOT NULL CHECK (gift_quantity BETWEEN 1 AND 99),
    min_order_total      BIGINT CHECK (min_order_total >= 0),
    required_variant_ids UUID[] NOT NULL DEFAULT '{}',
    starts_at            TIMESTAMPTZ,
    expires_at           TIMESTAMPTZ,
    active               BOOLEAN NOT NULL DEFAULT true,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT gift_rules_dates_ordered CHECK (starts_at IS NULL OR expires_at IS NULL OR starts_at < expires_at)
);
SELECT trigger_updated_at('gift_rules');

-- The order's snapshot of its promotion: the code and coupon it used, and per line the discount
-- and whether the line is a gift.
ALTER TABLE orders
    ADD COLUMN coupon_id UUID REFERENCES coupons (id),
    ADD COLUMN coupon_code TEXT;
ALTER TABLE order_items
    ADD COLUMN discount BIGINT NOT NULL DEFAULT 0 CHECK (discount >= 0 AND discount <= line_total),
    ADD COLUMN gift BOOLEAN NOT NULL DEFAULT false;
