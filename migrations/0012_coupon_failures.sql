-- Wrong coupon codes tried, per customer: more than `rate_limit.coupon_failures_per_customer` in
-- 15 minutes and `POST /cart/coupon` answers 429 (codes cannot be guessed). Shared by every
-- instance through PostgreSQL, like the login failures.
CREATE TABLE coupon_failures (
    id      BIGSERIAL PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX coupon_failures_user_idx ON coupon_failures (user_id, at);
