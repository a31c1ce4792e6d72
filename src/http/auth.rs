//! Who is calling: [`AuthUser`] (a valid access token is required: missing, invalid or expired is
//! 401), [`MaybeAuthUser`] (public routes: no token is anonymous, a malformed one is still 401), and
//! [`require_admin`], the layer on the whole `/admin` tree (deny by default, 403 for customers).

use axum::extract::{FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use uuid::Uuid;

use crate::error::AppError;
use crate::identity::{Role, store};
use crate::state::AppState;

#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub id: Uuid,
    pub role: Role,
}

impl AuthUser {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// The token of the `Authorization` header, if there is one; why it is unusable otherwise.
fn bearer_token(parts: &Parts) -> Result<Option<&str>, &'static str> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = "The Authorization header is malformed.";
    let value = value.to_str().map_err(|_| malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err("Expected a Bearer token.");
    }
    Ok(Some(token.trim()))
}

/// The request's caller as first worked out, kept in its extensions: the rate limit, the
/// Idempotency-Key layer and the handler's extractor all ask, and the token is verified once.
#[derive(Clone, Copy)]
struct Caller(Result<Option<AuthUser>, &'static str>);

/// The caller the bearer token names: `None` without a token, 401 when it does not verify.
pub(crate) fn authenticate(
    parts: &mut Parts,
    state: &AppState,
) -> Result<Option<AuthUser>, AppError> {
    let caller = match parts.extensions.get::<Caller>() {
        Some(known) => *known,
        None => {
            let caller = Caller(verify(parts, state));
            parts.extensions.insert(caller);
            caller
        }
    };
    caller.0.map_err(AppError::Unauthorized)
}

fn verify(parts: &Parts, state: &AppState) -> Result<Option<AuthUser>, &'static str> {
    let Some(token) = bearer_token(parts)? else {
        return Ok(None);
    };
    let claims = state
        .identity
        .tokens
        .verify_access(token)
        .map_err(|_| "The access token is invalid or expired.")?;
    Ok(Some(AuthUser {
        id: claims.sub,
        role: claims.role,
    }))
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        authenticate(parts, state)?.ok_or(AppError::Unauthorized("A bearer token is required."))
    }
}

/// The caller, if they sent a token; a token that does not verify is a 401, never anonymous.
#[derive(Debug, Clone, Copy)]
pub struct MaybeAuthUser(pub Option<AuthUser>);

impl FromRequestParts<AppState> for MaybeAuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        authenticate(parts, state).map(MaybeAuthUser)
    }
}

/// The state the middleware stack puts in every request, for middleware that needs it.
pub fn app_state(request: &Request) -> Result<AppState, AppError> {
    request
        .extensions()
        .get::<AppState>()
        .cloned()
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("AppState extension missing")))
}

/// Guards the `/admin` tree. The token must carry the admin role and the user must still be an
/// admin in the database, so a demotion takes effect at once on admin routes.
pub async fn require_admin(request: Request, next: Next) -> Result<Response, AppError> {
    let state = app_state(&request)?;
    let (mut parts, body) = request.into_parts();
    let user = AuthUser::from_request_parts(&mut parts, &state).await?;
    if !user.is_admin() || store::current_role(&state.db, user.id).await? != Some(Role::Admin) {
        return Err(AppError::Forbidden);
    }
    Ok(next.run(Request::from_parts(parts, body)).await)
}

/// An admin, checked like [`require_admin`] does, for admin-only routes outside `/admin` (catalog
/// writes).
#[derive(Debug, Clone, Copy)]
pub struct AdminUser(pub AuthUser);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if !user.is_admin() || store::current_role(&state.db, user.id).await? != Some(Role::Admin) {
            return Err(AppError::Forbidden);
        }
        Ok(Self(user))
    }
}
