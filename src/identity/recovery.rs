//! Account recovery and email verification: a password reset asked for by email, confirmed with
//! the token the email carries, and the verification of the address a user registered with.
//!
//! A token is a row of `account_tokens`: a verification token's is written with the account and
//! the outbox message that asks for its email, a reset token's by the dispatcher as it sends. Its
//! value is minted by the email dispatcher as it sends
//! (`src/messaging/dispatcher.rs`), so only the email holds it and the database only its SHA-256.
//! A token is single-use and expires (`auth.password_reset_ttl_secs`,
//! `auth.email_verification_ttl_secs`); an unknown, spent and expired token get one answer.
//!
//! A reset request is answered 202 with the same body whether or not the email has an account,
//! and it does the same work either way: one transaction records the request (for the limits)
//! and writes an outbox message with the email. The dispatcher looks the account up and writes
//! the reset token's row as it sends; for an email without an account it sends nothing. So
//! neither the answer nor its time says which emails have accounts. The
//! limits count per email and per client address in PostgreSQL (`recovery_attempts`), shared by
//! every instance: every reset request, whether or not the email has an account, and every token
//! that did not verify.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::service::Identity;
use super::{Email, NewPassword, store};
use crate::error::AppError;
use crate::messaging::{AccountEmail, AccountEmailKind, PasswordResetEmail, enqueue};
use crate::opaque_token::hash_opaque_token;

/// The limits count attempts over this sliding window.
pub const RECOVERY_WINDOW_SECS: i64 = 60 * 60;

const BAD_TOKEN: &str = "The token is invalid, spent or expired.";

/// How many recovery attempts the limits allow per hour; `None` in [`Identity`] when rate
/// limits are off.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryLimits {
    pub requests_per_email: i64,
    pub requests_per_ip: i64,
    pub bad_tokens_per_ip: i64,
}

/// What `recovery_attempts` counts.
#[derive(Debug, Clone, Copy)]
enum Attempt {
    ResetRequested,
    BadToken,
}

impl Attempt {
    fn as_str(self) -> &'static str {
        match self {
            Self::ResetRequested => "reset_requested",
            Self::BadToken => "bad_token",
        }
    }
}

impl Identity {
    /// Asks for a password-reset email for `email`. Answers the same (`Ok`) whether or not it
    /// has an account; only the limits can refuse it, and they count the email either way.
    pub async fn request_password_reset(
        &self,
        db: &PgPool,
        email: &Email,
        ip: IpAddr,
    ) -> Result<(), AppError> {
        let mut tx = db.begin().await?;
        if let Some(limits) = self.recovery_limits {
            // Counting and recording are one step per email and per address: without the
            // locks, concurrent requests all count before any of them has recorded, and more
            // than the limit get through.
            serialize_attempts(&mut tx, Attempt::ResetRequested, Some(email.as_str()), ip).await?;
            over_limit(
                &mut tx,
                Attempt::ResetRequested,
                &[
                    (Some(email.as_str()), None, limits.requests_per_email),
                    (None, Some(ip), limits.requests_per_ip),
                ],
            )
            .await?;
        }
        record(&mut tx, Attempt::ResetRequested, Some(email.as_str()), ip).await?;
        let expires_at = Utc::now()
            + chrono::Duration::from_std(self.password_reset_ttl).map_err(anyhow::Error::new)?;
        let request = PasswordResetEmail {
            email: email.as_str().to_owned(),
            expires_at,
        };
        enqueue(&mut tx, AccountEmailKind::PasswordReset.topic(), &request).await?;
        tx.commit().await?;
        metrics::counter!("password_reset_requests_total").increment(1);
        Ok(())
    }

    /// Sets a new password with a reset token: the token is spent, and so is every other reset
    /// token of the user; every refresh-token family of the user is revoked (access tokens
    /// already issued live out their short TTL); the email counts as verified, since the token
    /// came through it; failed logins are forgotten.
    pub async fn confirm_password_reset(
        &self,
        db: &PgPool,
        token: &str,
        password: NewPassword,
        ip: IpAddr,
    ) -> Result<(), AppError> {
        self.refuse_token_guessers(db, ip).await?;
        let hash = hash_opaque_token(token);
        // Checked before the (costly) password hash, and again when the token is spent.
        let live: Option<Uuid> = sqlx::query_scalar(
            r#"SELECT user_id FROM account_tokens
               WHERE token_hash = $1 AND purpose = $2 AND spent_at IS NULL AND expires_at > now()"#,
        )
        .bind(&hash)
        .bind(AccountEmailKind::PasswordReset)
        .fetch_optional(db)
        .await?;
        if live.is_none() {
            return Err(self.bad_token(db, ip).await);
        }
        let password_hash = self
            .passwords
            .hash(password.into_secret())
            .await
            .map_err(anyhow::Error::new)?;
        let mut tx = db.begin().await?;
        let Some(user) = spend(&mut tx, &hash, AccountEmailKind::PasswordReset).await? else {
            // Spent or expired since the check above.
            tx.rollback().await?;
            return Err(self.bad_token(db, ip).await);
        };
        store::set_password_hash(&mut *tx, user, &password_hash).await?;
        sqlx::query(
            r#"UPDATE account_tokens SET spent_at = now()
               WHERE user_id = $1 AND purpose = $2 AND spent_at IS NULL"#,
        )
        .bind(user)
        .bind(AccountEmailKind::PasswordReset)
        .execute(&mut *tx)
        .await?;
        let revoked = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let email = mark_verified(&mut tx, user).await?;
        store::clear_failures(&mut *tx, &email).await?;
        tx.commit().await?;
        metrics::counter!("password_resets_total").increment(1);
        tracing::info!(%user, revoked_refresh_tokens = revoked, "password reset");
        Ok(())
    }

    /// Confirms the email address of the token's user.
    pub async fn verify_email(&self, db: &PgPool, token: &str, ip: IpAddr) -> Result<(), AppError> {
        self.refuse_token_guessers(db, ip).await?;
        let hash = hash_opaque_token(token);
        let mut tx = db.begin().await?;
        let Some(user) = spend(&mut tx, &hash, AccountEmailKind::VerifyEmail).await? else {
            tx.rollback().await?;
            return Err(self.bad_token(db, ip).await);
        };
        mark_verified(&mut tx, user).await?;
        tx.commit().await?;
        metrics::counter!("emails_verified_total").increment(1);
        Ok(())
    }

    /// 429 once this address has presented too many tokens that did not verify.
    async fn refuse_token_guessers(&self, db: &PgPool, ip: IpAddr) -> Result<(), AppError> {
        let Some(limits) = self.recovery_limits else {
            return Ok(());
        };
        let mut connection = db.acquire().await?;
        over_limit(
            &mut connection,
            Attempt::BadToken,
            &[(None, Some(ip), limits.bad_tokens_per_ip)],
        )
        .await
    }

    /// Records a token that did not verify and returns the one answer for all of them. Should
    /// the record fail, that failure is the answer (a 500), not a 400 that was not counted.
    async fn bad_token(&self, db: &PgPool, ip: IpAddr) -> AppError {
        metrics::counter!("recovery_bad_tokens_total").increment(1);
        if self.recovery_limits.is_none() {
            return AppError::bad_request(BAD_TOKEN);
        }
        let recorded = async {
            let mut connection = db.acquire().await?;
            record(&mut connection, Attempt::BadToken, None, ip).await
        };
        match recorded.await {
            Ok(()) => AppError::bad_request(BAD_TOKEN),
            Err(error) => error.into(),
        }
    }
}

/// Writes a token row for `user` and the outbox message that asks for its email, in the
/// caller's transaction (registration's, for the verification email).
pub(super) async fn issue(
    tx: &mut PgConnection,
    user: Uuid,
    kind: AccountEmailKind,
    ttl: std::time::Duration,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query(
        r#"INSERT INTO account_tokens (id, user_id, purpose, expires_at)
           VALUES ($1, $2, $3, now() + make_interval(secs => $4))"#,
    )
    .bind(id)
    .bind(user)
    .bind(kind)
    .bind(ttl.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    enqueue(tx, kind.topic(), &AccountEmail { token_id: id }).await?;
    Ok(id)
}

/// Spends a live token of `kind` in one statement: of two concurrent uses, exactly one gets its
/// user back.
async fn spend(
    tx: &mut PgConnection,
    hash: &[u8],
    kind: AccountEmailKind,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        r#"UPDATE account_tokens SET spent_at = now()
           WHERE token_hash = $1 AND purpose = $2 AND spent_at IS NULL AND expires_at > now()
           RETURNING user_id"#,
    )
    .bind(hash)
    .bind(kind)
    .fetch_optional(tx)
    .await
}

/// Marks the user's email verified (keeping the first time) and returns it.
async fn mark_verified(tx: &mut PgConnection, user: Uuid) -> Result<String, sqlx::Error> {
    sqlx::query_scalar(
        r#"UPDATE users SET email_verified_at = COALESCE(email_verified_at, now())
           WHERE id = $1 RETURNING email::text"#,
    )
    .bind(user)
    .fetch_one(tx)
    .await
}

/// Takes the transaction's advisory locks on the attempts of this `email` (when given) and then
/// of this `ip`, so that concurrent requests of one email or one address count and record one
/// after the other; they are released when the transaction ends. Always email first, then
/// address: two requests sharing only an address wait on it without a cycle.
async fn serialize_attempts(
    tx: &mut PgConnection,
    attempt: Attempt,
    email: Option<&str>,
    ip: IpAddr,
) -> Result<(), sqlx::Error> {
    // Lower-cased, as the citext column compares emails: `A@x` and `a@x` share a lock.
    let keys = email
        .map(|email| {
            format!(
                "shop.recovery.{}.email.{}",
                attempt.as_str(),
                email.to_lowercase()
            )
        })
        .into_iter()
        .chain([format!("shop.recovery.{}.ip.{ip}", attempt.as_str())]);
    for key in keys {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(key)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// 429 when any of `limits` (an email or an address, and how many attempts it may make in the
/// window) is used up, with `Retry-After` until its oldest attempt leaves the window.
async fn over_limit(
    db: &mut PgConnection,
    attempt: Attempt,
    limits: &[(Option<&str>, Option<IpAddr>, i64)],
) -> Result<(), AppError> {
    for &(email, ip, limit) in limits {
        let (count, free_at): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
            r#"SELECT count(*), min(at) + make_interval(secs => $4)
               FROM recovery_attempts
               WHERE kind = $1
                 AND ($2::citext IS NULL OR email = $2::citext)
                 AND ($3::inet IS NULL OR ip = $3::inet)
                 AND at > now() - make_interval(secs => $4)"#,
        )
        .bind(attempt.as_str())
        .bind(email)
        .bind(ip.map(|ip| ip.to_string()))
        .bind(RECOVERY_WINDOW_SECS as f64)
        .fetch_one(&mut *db)
        .await?;
        if count >= limit {
            let scope = if email.is_some() { "email" } else { "ip" };
            metrics::counter!("rate_limited_total", "scope" => format!("recovery_{scope}"))
                .increment(1);
            let wait = free_at.map_or(RECOVERY_WINDOW_SECS, |at| (at - Utc::now()).num_seconds());
            return Err(AppError::RateLimited {
                retry_after_secs: wait.max(1) as u64,
            });
        }
    }
    Ok(())
}

/// Records one attempt, forgetting this address's and this email's attempts that have left the
/// window, so the table stays small.
async fn record(
    db: &mut PgConnection,
    attempt: Attempt,
    email: Option<&str>,
    ip: IpAddr,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"WITH expired AS (
               DELETE FROM recovery_attempts
               WHERE (ip = $3::inet OR email = $2::citext)
                 AND at <= now() - make_interval(secs => $4))
           INSERT INTO recovery_attempts (kind, email, ip) VALUES ($1, $2, $3::inet)"#,
    )
    .bind(attempt.as_str())
    .bind(email)
    .bind(ip.to_string())
    .bind(RECOVERY_WINDOW_SECS as f64)
    .execute(db)
    .await?;
    Ok(())
}
