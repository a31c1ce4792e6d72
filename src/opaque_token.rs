//! Opaque tokens: 256 random bits handed to their holder once (a refresh token, a password-reset
//! or email-verification token sent by email) and stored only as their SHA-256. A plain hash is
//! enough: there is nothing to guess in 256 random bits, and a lookup by hash is one index probe.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A freshly minted token: the value goes to its holder once, the hash to the database.
pub struct OpaqueToken {
    pub token: String,
    pub hash: Vec<u8>,
}

/// 256 random bits, URL-safe base64 without padding (43 characters: safe in a link as it is).
pub fn new_opaque_token() -> OpaqueToken {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_opaque_token(&token);
    OpaqueToken { token, hash }
}

/// The SHA-256 a token is stored and looked up by.
pub fn hash_opaque_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bit_and_stored_hashed() {
        let first = new_opaque_token();
        let second = new_opaque_token();
        assert_ne!(first.token, second.token);
        assert_eq!(URL_SAFE_NO_PAD.decode(&first.token).unwrap().len(), 32);
        assert_eq!(first.hash, hash_opaque_token(&first.token));
        assert_eq!(first.hash.len(), 32);
    }
}
