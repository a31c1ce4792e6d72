//! The identity use cases: register, log in, rotate and revoke refresh tokens, change roles.
//! Password resets and email verification are in [`super::recovery`].

use chrono::Utc;
use secrecy::SecretString;
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::password::{Passwords, Verified};
use super::recovery::{self, RecoveryLimits};
use super::tokens::TokenKeys;
use super::{Email, NewPassword, Role, User, UserName, store};
use crate::config::Settings;
use crate::error::{AppError, ResultExt};
use crate::messaging::AccountEmailKind;
use crate::opaque_token::{hash_opaque_token, new_opaque_token};

/// Failed logins for one email are counted over this window.
pub const LOGIN_FAILURE_WINDOW_SECS: i64 = 15 * 60;

const BAD_CREDENTIALS: &str = "Invalid email or password.";
const BAD_REFRESH_TOKEN: &str = "The refresh token is invalid, expired or revoked.";

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    /// A JWT to send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Opaque; exchange it at `/auth/refresh` for a new pair. It can be used once.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

pub struct Identity {
    pub passwords: Passwords,
    pub tokens: TokenKeys,
    login_failures_limit: i64,
    throttle_logins: bool,
    pub(super) password_reset_ttl: std::time::Duration,
    pub(super) email_verification_ttl: std::time::Duration,
    /// `None` when rate limits are off.
    pub(super) recovery_limits: Option<RecoveryLimits>,
}

impl Identity {
    pub async fn new(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            passwords: Passwords::new(&settings.auth).await?,
            tokens: TokenKeys::new(&settings.auth),
            login_failures_limit: i64::from(settings.rate_limit.login_failures_per_email),
            throttle_logins: settings.rate_limit.enabled,
            password_reset_ttl: std::time::Duration::from_secs(
                settings.auth.password_reset_ttl_secs,
            ),
            email_verification_ttl: std::time::Duration::from_secs(
                settings.auth.email_verification_ttl_secs,
            ),
            recovery_limits: settings.rate_limit.enabled.then(|| RecoveryLimits {
                requests_per_email: i64::from(settings.rate_limit.recovery_requests_per_email),
                requests_per_ip: i64::from(settings.rate_limit.recovery_requests_per_ip),
                bad_tokens_per_ip: i64::from(settings.rate_limit.bad_recovery_tokens_per_ip),
            }),
        })
    }

    pub async fn register(
        &self,
        db: &PgPool,
        email: Email,
        name: UserName,
        password: NewPassword,
        role: Role,
    ) -> Result<User, AppError> {
        let hash = self
            .passwords
            .hash(password.into_secret())
            .await
            .map_err(anyhow::Error::new)?;
        // The account and the email that asks to confirm its address commit together.
        let mut tx = db.begin().await?;
        let user = store::insert_user(&mut *tx, &email, &name, &hash, role)
            .await
            .on_constraint("users_email_key", |_| {
                AppError::conflict("email-taken", "An account with this email already exists.")
            })?;
        recovery::issue(
            &mut tx,
            user.id,
            AccountEmailKind::VerifyEmail,
            self.email_verification_ttl,
        )
        .await?;
        tx.commit().await?;
        Ok(user)
    }

    pub async fn login(
        &self,
        db: &PgPool,
        email: &str,
        password: SecretString,
    ) -> Result<TokenPair, AppError> {
        let email = email.trim();
        if self.throttle_logins {
            let (failures, free_at) =
                store::recent_failures(db, email, LOGIN_FAILURE_WINDOW_SECS).await?;
            if failures >= self.login_failures_limit {
                let wait = free_at.map_or(LOGIN_FAILURE_WINDOW_SECS, |at| {
                    (at - Utc::now()).num_seconds()
                });
                return Err(AppError::RateLimited {
                    retry_after_secs: wait.max(1) as u64,
                });
            }
        }
        let credentials = store::find_credentials(db, email).await?;
        let stored = credentials.as_ref().map(|c| c.password_hash.clone());
        let verified = self
            .passwords
            .verify(password.clone(), stored)
            .await
            .map_err(anyhow::Error::new)?;
        let (Verified::Valid { needs_rehash }, Some(credentials)) = (verified, credentials) else {
            if self.throttle_logins {
                store::record_failure(db, email, LOGIN_FAILURE_WINDOW_SECS).await?;
            }
            return Err(AppError::Unauthorized(BAD_CREDENTIALS));
        };
        let user = credentials.user;
        if self.throttle_logins {
            store::clear_failures(db, email).await?;
        }
        if needs_rehash {
            match self.passwords.hash(password).await {
                Ok(hash) => store::set_password_hash(db, user.id, &hash).await?,
                Err(error) => tracing::warn!(%error, user = %user.id, "rehash failed"),
            }
        }
        let family = Uuid::now_v7();
        let refresh = self.new_refresh_token(db, family, user.id).await?;
        self.pair(user.id, user.role, refresh)
    }

    /// Rotates a refresh token: the presented one is spent, a new one joins its family. A token
    /// that was already spent revokes the whole family.
    pub async fn refresh(&self, db: &PgPool, token: &str) -> Result<TokenPair, AppError> {
        let hash = hash_opaque_token(token);
        let mut tx = db.begin().await?;
        let Some(spent) = store::spend_refresh_token(&mut *tx, &hash).await? else {
            tx.rollback().await?;
            if store::revoke_family_if_spent(db, &hash).await? {
                tracing::warn!("a spent refresh token was presented again; its family is revoked");
            }
            return Err(AppError::Unauthorized(BAD_REFRESH_TOKEN));
        };
        // The role is read afresh, so a role change takes effect at the next refresh.
        let Some(role) = store::current_role(&mut *tx, spent.user_id).await? else {
            return Err(AppError::Unauthorized(BAD_REFRESH_TOKEN));
        };
        let refresh = self
            .new_refresh_token(&mut *tx, spent.family_id, spent.user_id)
            .await?;
        tx.commit().await?;
        self.pair(spent.user_id, role, refresh)
    }

    /// Revokes the family of `token` if it belongs to `user`. Unknown tokens are ignored, so
    /// logout is idempotent.
    pub async fn logout(&self, db: &PgPool, user: Uuid, token: &str) -> Result<(), AppError> {
        store::revoke_family_of(db, &hash_opaque_token(token), user).await?;
        Ok(())
    }

    /// Changes a user's role; demoting the last admin is refused.
    pub async fn set_role(&self, db: &PgPool, id: Uuid, role: Role) -> Result<User, AppError> {
        let mut tx = db.begin().await?;
        let admins = store::lock_admins(&mut *tx).await?;
        if role != Role::Admin && admins == [id] {
            return Err(AppError::conflict(
                "last-admin",
                "This is the last admin; promote another user first.",
            ));
        }
        let user = store::update_role(&mut *tx, id, role)
            .await?
            .ok_or(AppError::NotFound)?;
        tx.commit().await?;
        Ok(user)
    }

    /// Creates an admin with this email, or promotes the existing user. Returns whether a new
    /// account was created.
    pub async fn ensure_admin(
        &self,
        db: &PgPool,
        email: Email,
        name: UserName,
        password: Option<NewPassword>,
    ) -> Result<bool, AppError> {
        if store::promote_to_admin(db, email.as_str()).await? {
            return Ok(false);
        }
        let password = password
            .ok_or_else(|| AppError::invalid("password", "is required to create a new admin"))?;
        self.register(db, email, name, password, Role::Admin)
            .await?;
        Ok(true)
    }

    async fn new_refresh_token(
        &self,
        db: impl sqlx::PgExecutor<'_>,
        family: Uuid,
        user: Uuid,
    ) -> Result<String, AppError> {
        let token = new_opaque_token();
        let expires_at = Utc::now()
            + chrono::Duration::from_std(self.tokens.refresh_ttl).map_err(anyhow::Error::new)?;
        store::insert_refresh_token(db, family, user, &token.hash, expires_at).await?;
        Ok(token.token)
    }

    fn pair(&self, user: Uuid, role: Role, refresh_token: String) -> Result<TokenPair, AppError> {
        let access_token = self
            .tokens
            .issue_access(user, role)
            .map_err(anyhow::Error::new)?;
        Ok(TokenPair {
            access_token,
            refresh_token,
            token_type: "Bearer",
            expires_in: self.tokens.access_ttl.as_secs(),
        })
    }
}
