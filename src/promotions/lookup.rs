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
    cached(state, "coupon", &key, || async {
        store::find_by_code(&state.db, code).await
    })
    .await
}

/// The gift rules whose `active` flag is set, oldest first; the caller checks their dates.
pub async fn active_gift_rules(state: &AppState) -> Result<Vec<GiftRule>, AppError> {
    cached(state, "gift_rules", "active", || async {
        store::active_gift_rules(&state.db).await
    })
    .await
}

/// `load`'s answer, from the cache when it holds one under the current promotions version. A
/// cache that is down, or an entry that does not decode, is a miss: PostgreSQL answers.
async fn cached<T: Serialize + DeserializeOwned, Load>(
    state: &AppState,
    namespace: &'static str,
    key: &str,
    load: impl Fn() -> Load + Sync,
) -> Result<T, AppError>
where
    Load: Future<Output = Result<T, sqlx::Error>> + Send,
{
    let bytes = state
        .cache
        .get_or_load(Scope::Promotions, namespace, key, async {
            let value = load().await?;
            serde_json::to_vec(&value)
                .map(Bytes::from)
                .map_err(|error| AppError::Internal(error.into()))
        })
        .await?;
    match serde_json::from_slice(&bytes) {
        Ok(value) => Ok(value),
        Err(error) => {
            tracing::warn!(%error, namespace, "undecodable cache entry; reloading");
            Ok(load().await?)
        }
    }
}
