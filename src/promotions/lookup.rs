//! Cached promotion reads for the cart, the pricing and the checkout: a coupon by its code and
//! the active gift rules, through the cache layer (Redis or in-process) under the promotions
//! version that every admin edit bumps, so an edit is seen by the next lookup. Usage counts are
//! never read here: they belong to the coupon limiter actor.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::admin::is_coupon_code;
use super::{Coupon, GiftRule, store};
use crate::cache::Scope;
use crate::error::AppError;
use crate::state::AppState;

/// The coupon with this code, in any case, active or not (the caller decides what an inactive
/// coupon means: to a customer, the same as an unknown one). A string that cannot be a code is
/// `None` without a query. The absence of a code is cached too: creating it invalidates that.
pub async fn coupon_by_code(state: &AppState, code: &str) -> Result<Option<Coupon>, AppError> {
    if !is_coupon_code(code) {
        return Ok(None);
    }
    // Codes are ASCII (checked above), so this is the CITEXT column's own equality.
    let key = code.to_ascii_lowercase();
    cached(state, "coupon", &key, async || {
        store::find_by_code(&state.db, code).await
    })
    .await
}

/// The gift rules whose `active` flag is set, oldest first; the caller checks their dates.
pub async fn active_gift_rules(state: &AppState) -> Result<Vec<GiftRule>, AppError> {
    cached(state, "gift_rules", "active", async || {
        store::active_gift_rules(&state.db).await
    })
    .await
}

/// `load`'s answer, from the cache when it holds one under the current promotions version. A
/// cache that is down, or an entry that does not decode, is a miss: PostgreSQL answers.
async fn cached<T: Serialize + DeserializeOwned>(
    state: &AppState,
    namespace: &'static str,
    key: &str,
    load: impl AsyncFnOnce() -> Result<T, sqlx::Error>,
) -> Result<T, AppError> {
    let cache = &state.cache;
    // Read before the database: a write that lands meanwhile bumps the version, so what is put
    // below under this (then old) version is never read again.
    let version = cache.version(Scope::Promotions).await;
    if let Some(version) = version
        && let Some(bytes) = cache
            .get_in(Scope::Promotions, namespace, version, key)
            .await
    {
        match serde_json::from_slice(&bytes) {
            Ok(value) => return Ok(value),
            Err(error) => tracing::warn!(%error, namespace, "undecodable cache entry; reloading"),
        }
    }
    let value = load().await?;
    if let Some(version) = version {
        match serde_json::to_vec(&value) {
            Ok(bytes) => {
                cache
                    .put_in(
                        Scope::Promotions,
                        namespace,
                        version,
                        key,
                        Bytes::from(bytes),
                    )
                    .await;
            }
            Err(error) => tracing::warn!(%error, namespace, "cannot cache a promotion"),
        }
    }
    Ok(value)
}
