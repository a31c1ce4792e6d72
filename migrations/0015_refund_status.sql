-- A refund's status is the provider's (docs/ARCHITECTURE.md, "Refunds are durable intentions").
--
-- The provider may take a refund and settle it later (`pending`), or take it as `succeeded` and
-- report later that it `failed` (an expired card, a closed account): `charge.refund.updated`,
-- `refund.updated`, `refund.failed`. A refund the provider has not confirmed is not money back:
--
-- * `pending`: the provider took it (`provider_refund_id`) and has not settled it. It is owed in
--   the sense of the `refunds_owed` gauge and `shop refunds`, and what an admin can refund counts
--   it as committed, but it does not count in the order's `refunded_amount`.
-- * A provider refund that fails or is canceled makes the row `owed` again, one `failed_tries`
--   more. Each try has its own idempotency key at the provider (`order:{id}:refund:{n}`, then
--   `order:{id}:refund:{n}:retry:{tries}`), since the provider answers a repeated key with the
--   refund that failed. A row that was `succeeded` gives its amount back out of `refunded_amount`.
ALTER TABLE refunds DROP CONSTRAINT refunds_status_check;
ALTER TABLE refunds
    ADD CONSTRAINT refunds_status_check
        CHECK (status IN ('owed', 'pending', 'succeeded', 'already_refunded')),
    ADD COLUMN failed_tries INT NOT NULL DEFAULT 0 CHECK (failed_tries >= 0);

-- A provider refund is one row's try: its events find the row by this id when they lack the
-- row's metadata (`metadata.refund_id`, set on every refund the shop asks for).
CREATE UNIQUE INDEX refunds_provider_refund_id_key ON refunds (provider_refund_id);
