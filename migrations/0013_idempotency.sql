-- Idempotency-Key on the customer's mutating routes (src/http/idempotency.rs). The first request
-- with a key claims it (`in_progress`, held by `claim`); its answer is kept (`completed`) and a
-- repeat by the same user gets that answer again for 24 hours, after which the row is taken over
-- or swept. A failed request (5xx, timeout, panic, dropped) deletes its claim so a retry runs.
-- Checkout keeps its own key, bound to the order row (orders.idempotency_key).
CREATE TABLE idempotency_keys (
    user_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- 1 to 255 visible ASCII characters (VCHAR, RFC 5234), as the header parser requires.
    key          TEXT NOT NULL CHECK (octet_length(key) BETWEEN 1 AND 255 AND key ~ '^[!-~]+$'),
    -- Which request holds an in_progress row: only it may complete or release it.
    claim        UUID NOT NULL,
    method       TEXT NOT NULL CHECK (method IN ('POST', 'PUT', 'PATCH', 'DELETE')),
    path         TEXT NOT NULL CHECK (path LIKE '/%'),
    -- SHA-256 of the request body.
    request_hash BYTEA NOT NULL CHECK (octet_length(request_hash) = 32),
    state        TEXT NOT NULL CHECK (state IN ('in_progress', 'completed')),
    status       SMALLINT CHECK (status BETWEEN 200 AND 299 OR status BETWEEN 400 AND 499),
    content_type TEXT,
    body         BYTEA CHECK (octet_length(body) <= 1048576),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at TIMESTAMPTZ,
    PRIMARY KEY (user_id, key),
    -- A claim has no answer yet; a completed row has one (a 204 has no content type).
    CONSTRAINT idempotency_keys_answer_when_completed CHECK (
        (state = 'in_progress' AND status IS NULL AND content_type IS NULL AND body IS NULL
            AND completed_at IS NULL)
        OR (state = 'completed' AND status IS NOT NULL AND body IS NOT NULL
            AND completed_at IS NOT NULL)
    )
);
-- The sweep deletes by age.
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
