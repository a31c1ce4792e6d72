-- Account recovery and email verification (src/identity/recovery.rs).
--
-- A token is a row here; its value exists only in the email. A verification token's row is
-- written with the account and the outbox message that asks for its email; a reset token's by
-- the email dispatcher, under the id of the reset request's outbox message, when an account has
-- the requested email. The dispatcher mints the value when it sends: it stores the SHA-256 of the value in `token_hash`, with
-- `sent_at`, in the transaction it commits after the SMTP server accepted the email. So neither
-- the outbox nor the broker ever carries a usable token, and an email whose send was not
-- recorded (a crash between the SMTP answer and the commit) holds a value that was never stored:
-- its redelivery sends a new one that works.

ALTER TABLE users ADD COLUMN email_verified_at TIMESTAMPTZ;

CREATE TABLE account_tokens (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose     TEXT NOT NULL CHECK (purpose IN ('password_reset', 'verify_email')),
    expires_at  TIMESTAMPTZ NOT NULL,
    -- Set together by the dispatcher when the email is sent.
    token_hash  BYTEA CHECK (length(token_hash) = 32),
    sent_at     TIMESTAMPTZ,
    -- Set once: by its own use, or when another token of the same purpose is used (a password
    -- reset spends every other reset token of the user).
    spent_at    TIMESTAMPTZ,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT account_tokens_token_hash_key UNIQUE (token_hash),
    CONSTRAINT account_tokens_sent_with_hash CHECK ((token_hash IS NULL) = (sent_at IS NULL))
);
CREATE INDEX account_tokens_user_idx ON account_tokens (user_id, purpose) WHERE spent_at IS NULL;

-- What the recovery routes count against their limits, per email and per client address, in a
-- sliding window shared by every instance (as login_failures): every password-reset request
-- (whether or not the email has an account, so a limit says nothing about which emails do), and
-- every token that did not verify.
CREATE TABLE recovery_attempts (
    kind       TEXT NOT NULL CHECK (kind IN ('reset_requested', 'bad_token')),
    email      CITEXT,
    ip         INET NOT NULL,
    at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX recovery_attempts_email_idx ON recovery_attempts (email, at) WHERE email IS NOT NULL;
CREATE INDEX recovery_attempts_ip_idx ON recovery_attempts (ip, kind, at);
