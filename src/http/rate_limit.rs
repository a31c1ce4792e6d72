//! The request rate limits ([`crate::rate_limit`]) as a layer: every request counts against its
//! client's address, and a write (POST, PUT, PATCH, DELETE) carrying a valid access token also
//! against its user, so one account cannot spread its writes over many addresses. Over either
//! limit is a 429 with `Retry-After`, counted in `rate_limited_total{scope}`. Failed logins and
//! wrong coupon codes are throttled separately, through PostgreSQL.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use crate::error::AppError;
use crate::http::auth;
use crate::rate_limit::{Decision, RateLimits, Scope};
use crate::state::AppState;

pub async fn enforce(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let Some(limits) = &state.rate_limits else {
        return Ok(next.run(request).await);
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip())
        .ok_or_else(|| {
            AppError::Internal(anyhow::anyhow!(
                "rate limit: the client address is unknown (served without connect info)"
            ))
        })?;
    count(limits, Scope::Ip, &peer.to_string()).await?;
    if !is_write(request.method()) {
        return Ok(next.run(request).await);
    }
    let (mut parts, body) = request.into_parts();
    // A token that does not verify is the route's to refuse (401); here it only means there is
    // no user to count.
    if let Ok(Some(user)) = auth::authenticate(&mut parts, &state) {
        count(limits, Scope::User, &user.id.to_string()).await?;
    }
    Ok(next.run(Request::from_parts(parts, body)).await)
}

fn is_write(method: &Method) -> bool {
    [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(method)
}

async fn count(limits: &RateLimits, scope: Scope, key: &str) -> Result<(), AppError> {
    match limits.check(scope, key).await {
        Decision::Allowed => Ok(()),
        Decision::Limited { retry_after } => {
            metrics::counter!("rate_limited_total", "scope" => scope.as_str()).increment(1);
            Err(AppError::RateLimited {
                retry_after_secs: whole_seconds(retry_after),
            })
        }
    }
}

/// `Retry-After` is in whole seconds: rounded up, and at least 1 (0 would invite a retry storm).
fn whole_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_rounded_up_to_whole_seconds_and_never_zero() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(60)), 60);
    }
}
