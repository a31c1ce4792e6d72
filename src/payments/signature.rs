//! The `Stripe-Signature` check, done on the raw body before anything is parsed:
//! `t={unix seconds},v1={hex HMAC-SHA256(secret, "{t}.{raw body}")}[,v1=...]`. Any of several `v1`
//! may match (Stripe sends one per active secret while a secret is rolled), the comparison is
//! constant-time, and the timestamp must be within [`TOLERANCE_SECS`] of now, so a captured delivery
//! cannot be replayed later.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far the signed timestamp may be from now, either way (Stripe's libraries use 300 s).
pub const TOLERANCE_SECS: i64 = 300;

/// Why a delivery was refused. The variants are shown to the sender: they say what is wrong with
/// the request, nothing about the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    #[error("the Stripe-Signature timestamp is outside the tolerance")]
    Stale,
    #[error("no signature in the Stripe-Signature header matches the payload")]
    NoMatch,
}

/// The parts of a `Stripe-Signature` header that matter: the timestamp and every `v1`.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    timestamp: i64,
    signatures: Vec<Vec<u8>>,
}

fn parse_header(header: &str) -> Result<Header, SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" if timestamp.is_none() => {
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed)?,
                );
            }
            // A v1 that is not hex cannot match; it does not spoil the others.
            "v1" => {
                if let Ok(signature) = hex::decode(value) {
                    signatures.push(signature);
                }
            }
            // v0 (test-mode legacy) and future schemes are ignored, as Stripe's libraries do.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    Ok(Header {
        timestamp,
        signatures,
    })
}

/// Verifies `header` for `payload` (the raw body bytes) with `secret`, at time `now` (unix
/// seconds).
pub fn verify(
    payload: &[u8],
    header: Option<&str>,
    secret: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let header = parse_header(header.ok_or(SignatureError::Missing)?)?;
    if now.abs_diff(header.timestamp) > TOLERANCE_SECS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SignatureError::NoMatch)?;
    mac.update(header.timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    let expected = mac.finalize().into_bytes();
    // Every candidate is compared in constant time; which one matched is not secret.
    let matched = header
        .signatures
        .iter()
        .any(|candidate| bool::from(candidate.as_slice().ct_eq(expected.as_slice())));
    if matched {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

/// The unix time now, for [`verify`].
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test";
    // HMAC-SHA256("whsec_test", "1700000000.{}"), as Stripe (and `openssl dgst -hmac`) computes it.
    const SIGNED_EMPTY_OBJECT: &str =
        "35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91";
    const T: i64 = 1_700_000_000;

    fn header(signatures: &[&str]) -> String {
        let mut header = format!("t={T}");
        for signature in signatures {
            header.push_str(&format!(",v1={signature}"));
        }
        header
    }

    #[test]
    fn a_stripe_signature_verifies() {
        let header = header(&[SIGNED_EMPTY_OBJECT]);
        assert_eq!(verify(b"{}", Some(&header), SECRET.as_bytes(), T), Ok(()));
    }

    #[test]
    fn any_of_several_v1_may_match_and_v0_is_ignored() {
        let header = format!(
            "t={T},v0=deadbeef,v1={},v1=not-hex,v1={SIGNED_EMPTY_OBJECT}",
            "00".repeat(32)
        );
        assert_eq!(verify(b"{}", Some(&header), SECRET.as_bytes(), T), Ok(()));
    }

    #[test]
    fn another_body_another_secret_or_no_v1_is_refused() {
        let header = header(&[SIGNED_EMPTY_OBJECT]);
        assert_eq!(
            verify(b"{ }", Some(&header), SECRET.as_bytes(), T),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(b"{}", Some(&header), b"whsec_other", T),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(b"{}", Some(&format!("t={T}")), SECRET.as_bytes(), T),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(b"{}", Some("garbage"), SECRET.as_bytes(), T),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(b"{}", None, SECRET.as_bytes(), T),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn the_timestamp_must_be_within_300_seconds_either_way() {
        let header = header(&[SIGNED_EMPTY_OBJECT]);
        let secret = SECRET.as_bytes();
        assert_eq!(verify(b"{}", Some(&header), secret, T + 300), Ok(()));
        assert_eq!(verify(b"{}", Some(&header), secret, T - 300), Ok(()));
        assert_eq!(
            verify(b"{}", Some(&header), secret, T + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(b"{}", Some(&header), secret, T - 301),
            Err(SignatureError::Stale)
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn sign(secret: &[u8], timestamp: i64, payload: &[u8]) -> String {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
            mac.update(format!("{timestamp}.").as_bytes());
            mac.update(payload);
            hex::encode(mac.finalize().into_bytes())
        }

        /// Headers that look like Stripe's: `t`, `v1`, `v0` and stray parts, in any order.
        fn header_like() -> impl Strategy<Value = String> {
            let part = prop_oneof![
                any::<i64>().prop_map(|t| format!("t={t}")),
                "[0-9a-fA-F]{0,70}".prop_map(|v| format!("v1={v}")),
                "[ -~]{0,20}".prop_map(|v| format!("v0={v}")),
                "[ -~]{0,20}",
                Just("t=".to_owned()),
                Just("=".to_owned()),
            ];
            proptest::collection::vec(part, 0..6).prop_map(|parts| parts.join(","))
        }

        proptest! {
            #[test]
            fn any_header_is_verified_or_refused_without_panicking(
                header in prop_oneof![header_like(), any::<String>()],
                payload in proptest::collection::vec(any::<u8>(), 0..256),
                now in any::<i64>(),
            ) {
                // Refusals are 400s (`http::payments::refused`); only a real signature passes,
                // and none of these is signed with the secret.
                prop_assert!(verify(&payload, Some(&header), b"whsec_property", now).is_err());
            }

            #[test]
            fn a_signature_made_with_the_secret_verifies_within_the_tolerance_only(
                payload in proptest::collection::vec(any::<u8>(), 0..256),
                timestamp in 0i64..4_000_000_000,
                skew in -600i64..600,
                decoys in proptest::collection::vec("[0-9a-f]{64}", 0..3),
            ) {
                let secret = b"whsec_property";
                let mut header = format!("t={timestamp}");
                for decoy in &decoys {
                    header.push_str(&format!(",v1={decoy}"));
                }
                header.push_str(&format!(",v1={}", sign(secret, timestamp, &payload)));
                let expected = if skew.abs() <= TOLERANCE_SECS {
                    Ok(())
                } else {
                    Err(SignatureError::Stale)
                };
                prop_assert_eq!(verify(&payload, Some(&header), secret, timestamp + skew), expected);
            }

            #[test]
            fn any_change_to_the_payload_breaks_the_signature(
                payload in proptest::collection::vec(any::<u8>(), 1..256),
                index in any::<proptest::sample::Index>(),
                flip in 1u8..=255,
            ) {
                let secret = b"whsec_property";
                let header = format!("t={T},v1={}", sign(secret, T, &payload));
                let mut tampered = payload.clone();
                let at = index.index(tampered.len());
                tampered[at] ^= flip;
                prop_assert_eq!(
                    verify(&tampered, Some(&header), secret, T),
                    Err(SignatureError::NoMatch)
                );
            }
        }
    }
}
