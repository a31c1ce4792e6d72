-- The W3C trace context of the transaction that wrote an outbox row, when traces are exported:
-- the relay sends it as the message's `traceparent` header, and the email dispatcher's span joins
-- the trace of the checkout (or the refund, or the cancel) that caused the email.
ALTER TABLE outbox ADD COLUMN traceparent text
    CHECK (traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');
