//! argon2id password hashing off the async runtime, behind a semaphore so that a burst of logins
//! cannot take more than `hash_concurrency × argon2_memory_kib` of memory.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::config::AuthSettings;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("argon2: {0}")]
    Argon2(String),
    #[error("the hashing task failed")]
    Join,
}

/// The outcome of checking a password.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    /// Right password; `needs_rehash` when the stored hash used other parameters than today's.
    Valid {
        needs_rehash: bool,
    },
    Invalid,
}

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
    /// A hash of a random password with today's parameters, checked against when the user does
    /// not exist, so that an unknown email costs as much time as a wrong password.
    dummy_hash: Arc<String>,
}

impl Passwords {
    pub async fn new(settings: &AuthSettings) -> Result<Self, PasswordError> {
        let params = Params::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.argon2_parallelism,
            None,
        )
        .map_err(|e| PasswordError::Argon2(e.to_string()))?;
        let mut passwords = Self {
            params,
            permits: Arc::new(Semaphore::new(settings.hash_concurrency.max(1))),
            dummy_hash: Arc::new(String::new()),
        };
        let random = SaltString::generate(&mut OsRng);
        let dummy = passwords
            .hash(SecretString::from(random.as_str().to_owned()))
            .await?;
        passwords.dummy_hash = Arc::new(dummy);
        Ok(passwords)
    }

    fn hasher(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    /// A PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
    pub async fn hash(&self, password: SecretString) -> Result<String, PasswordError> {
        let params = self.params.clone();
        self.blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            Self::hasher(params)
                .hash_password(password.expose_secret().as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| PasswordError::Argon2(e.to_string()))
        })
        .await
    }

    /// Checks `password` against `stored`, or against the dummy hash when there is no user, so
    /// both cases take the same time.
    pub async fn verify(
        &self,
        password: SecretString,
        stored: Option<String>,
    ) -> Result<Verified, PasswordError> {
        let exists = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.as_ref().clone());
        let current = self.params.clone();
        self.blocking(move || {
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return Ok(Verified::Invalid);
            };
            let matches = Argon2::default()
                .verify_password(password.expose_secret().as_bytes(), &parsed)
                .is_ok();
            if !(matches && exists) {
                return Ok(Verified::Invalid);
            }
            let needs_rehash = parsed.algorithm.as_str() != "argon2id"
                || Params::try_from(&parsed).map_or(true, |used| {
                    used.m_cost() != current.m_cost()
                        || used.t_cost() != current.t_cost()
                        || used.p_cost() != current.p_cost()
                });
            Ok(Verified::Valid { needs_rehash })
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::Join)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| PasswordError::Join)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(m: u32, t: u32) -> AuthSettings {
        AuthSettings {
            jwt_secret: SecretString::from("x".repeat(32)),
            access_ttl_secs: 900,
            refresh_ttl_secs: 3600,
            issuer: "shop".into(),
            audience: "shop-api".into(),
            argon2_memory_kib: m,
            argon2_iterations: t,
            argon2_parallelism: 1,
            hash_concurrency: 2,
            password_reset_ttl_secs: 1800,
            email_verification_ttl_secs: 172800,
        }
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[tokio::test]
    async fn hashes_are_argon2id_phc_strings_with_the_configured_params() {
        let passwords = Passwords::new(&settings(19456, 2)).await.unwrap();
        let hash = passwords.hash(secret("correct horse")).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let ok = passwords
            .verify(secret("correct horse"), Some(hash.clone()))
            .await;
        assert_eq!(
            ok.unwrap(),
            Verified::Valid {
                needs_rehash: false
            }
        );
        let wrong = passwords.verify(secret("wrong horse"), Some(hash)).await;
        assert_eq!(wrong.unwrap(), Verified::Invalid);
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies_even_with_the_dummy_password() {
        let passwords = Passwords::new(&settings(19456, 2)).await.unwrap();
        let result = passwords
            .verify(secret("anything at all"), None)
            .await
            .unwrap();
        assert_eq!(result, Verified::Invalid);
    }

    #[tokio::test]
    async fn a_hash_with_older_params_asks_for_a_rehash() {
        let old = Passwords::new(&settings(19456, 2)).await.unwrap();
        let hash = old.hash(secret("correct horse")).await.unwrap();
        let stronger = Passwords::new(&settings(19456, 3)).await.unwrap();
        let result = stronger
            .verify(secret("correct horse"), Some(hash))
            .await
            .unwrap();
        assert_eq!(result, Verified::Valid { needs_rehash: true });
    }
}
