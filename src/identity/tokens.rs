//! Access tokens (HS256 JWTs, RFC 8725 practices: one algorithm allow-listed, every claim required
//! and checked, `typ` set apart from any other token). Refresh tokens are opaque
//! ([`crate::opaque_token`]).

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Role;
use crate::config::AuthSettings;

/// Marks a JWT as an access token; a token of any other `typ` does not deserialize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenUse {
    #[serde(rename = "access")]
    Access,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: Uuid,
    pub role: Role,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    pub aud: String,
    pub jti: Uuid,
    pub typ: TokenUse,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid token")]
pub struct InvalidToken;

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

impl TokenKeys {
    pub fn new(settings: &AuthSettings) -> Self {
        let secret = settings.jwt_secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            access_ttl: Duration::from_secs(settings.access_ttl_secs),
            refresh_ttl: Duration::from_secs(settings.refresh_ttl_secs),
        }
    }

    pub fn issue_access(
        &self,
        user: Uuid,
        role: Role,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = Utc::now().timestamp();
        let claims = AccessClaims {
            sub: user,
            role,
            iat: now,
            exp: now + self.access_ttl.as_secs() as i64,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: Uuid::new_v4(),
            typ: TokenUse::Access,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, InvalidToken> {
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|_| InvalidToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(&AuthSettings {
            jwt_secret: secret.to_owned().into(),
            access_ttl_secs: 900,
            refresh_ttl_secs: 3600,
            issuer: "shop".into(),
            audience: "shop-api".into(),
            argon2_memory_kib: 19456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            hash_concurrency: 1,
            password_reset_ttl_secs: 1800,
            email_verification_ttl_secs: 172800,
        })
    }

    #[test]
    fn an_issued_token_verifies_with_every_claim() {
        let keys = keys(&"k".repeat(32));
        let user = Uuid::new_v4();
        let token = keys.issue_access(user, Role::Admin).unwrap();
        let claims = keys.verify_access(&token).unwrap();
        assert_eq!(claims.sub, user);
        assert_eq!(claims.role, Role::Admin);
        assert_eq!(claims.exp - claims.iat, 900);
        assert_eq!(claims.typ, TokenUse::Access);
    }

    #[test]
    fn another_key_does_not_verify() {
        let token = keys(&"a".repeat(32))
            .issue_access(Uuid::new_v4(), Role::Customer)
            .unwrap();
        assert!(keys(&"b".repeat(32)).verify_access(&token).is_err());
    }
}
