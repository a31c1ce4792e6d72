//! Routes of the Identity table of the API: registration, login, token refresh and logout, the
//! caller's profile, and user administration.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{AppError, Problem};
use crate::http::auth::AuthUser;
use crate::http::extract::{Json, Path, Query};
use crate::http::pagination::{PageParams, Paged};
use crate::identity::service::TokenPair;
use crate::identity::{Email, NewPassword, Role, User, UserName, all_valid, store};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(request_password_reset))
        .routes(routes!(confirm_password_reset))
        .routes(routes!(verify_email))
        .routes(routes!(me))
}

pub fn admin_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users))
        .routes(routes!(change_role))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(example = "ada@example.com", format = Email, max_length = 254)]
    email: String,
    /// 8 to 1024 characters.
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 1024)]
    password: SecretString,
    #[schema(
        example = "Ada Lovelace",
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    name: String,
}

/// Create a customer account.
#[utoipa::path(post, path = "/auth/register", tag = "identity",
    request_body = RegisterRequest,
    responses(
        (status = 201, body = User),
        (status = 409, description = "The email is taken (in any case)", body = Problem),
        (status = 422, description = "Invalid email, name or password", body = Problem),
    ))]
async fn register(
    State(state): State<AppState>,
    Json(body): Json<RegisterRequest>,
) -> Result<(StatusCode, axum::Json<User>), AppError> {
    let (email, name, password) = all_valid(
        Email::parse(&body.email),
        UserName::parse(&body.name),
        NewPassword::parse(body.password),
    )?;
    let user = state
        .identity
        .register(&state.db, email, name, password, Role::Customer)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(user)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    email: String,
    #[schema(value_type = String, format = Password)]
    password: SecretString,
}

/// Exchange credentials for an access token and a refresh token.
#[utoipa::path(post, path = "/auth/login", tag = "identity",
    request_body = LoginRequest,
    responses(
        (status = 200, body = TokenPair),
        (status = 401, description = "Unknown email or wrong password (the same answer for both)", body = Problem),
        (status = 429, description = "Too many failed logins for this email", body = Problem),
    ))]
async fn login(
    State(state): State<AppState>,
    Json(body): Json<LoginRequest>,
) -> Result<axum::Json<TokenPair>, AppError> {
    let pair = state
        .identity
        .login(&state.db, &body.email, body.password)
        .await?;
    Ok(axum::Json(pair))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// Rotate a refresh token: the presented token is spent and a new pair returned. Presenting a
/// spent token revokes every token of its family.
#[utoipa::path(post, path = "/auth/refresh", tag = "identity",
    request_body = RefreshRequest,
    responses(
        (status = 200, body = TokenPair),
        (status = 401, description = "Invalid, expired, spent or revoked token", body = Problem),
    ))]
async fn refresh(
    State(state): State<AppState>,
    Json(body): Json<RefreshRequest>,
) -> Result<axum::Json<TokenPair>, AppError> {
    let pair = state
        .identity
        .refresh(&state.db, &body.refresh_token)
        .await?;
    Ok(axum::Json(pair))
}

/// Revoke the refresh token's family: none of its tokens refreshes any more.
#[utoipa::path(post, path = "/auth/logout", tag = "identity",
    request_body = RefreshRequest,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, body = Problem),
    ))]
async fn logout(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<RefreshRequest>,
) -> Result<StatusCode, AppError> {
    state
        .identity
        .logout(&state.db, user.id, &body.refresh_token)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequest {
    #[schema(example = "ada@example.com", format = Email, max_length = 254)]
    email: String,
}

/// The answer to a password-reset request: the same whether or not the email has an account.
#[derive(Serialize, ToSchema)]
pub struct PasswordResetAccepted {
    /// Always `accepted`.
    #[schema(example = "accepted")]
    status: &'static str,
    detail: &'static str,
}

/// Ask for a password-reset email. The answer is the same whether or not an account has this
/// email; if one has, an email with a single-use link (valid for 30 minutes by default) goes out
/// through the outbox. Limited per email and per client address.
#[utoipa::path(post, path = "/auth/password-reset", tag = "identity",
    request_body = PasswordResetRequest,
    responses(
        (status = 202, body = PasswordResetAccepted),
        (status = 422, description = "Not an email address", body = Problem),
        (status = 429, description = "Too many reset requests for this email or from this address", body = Problem),
    ))]
async fn request_password_reset(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(body): Json<PasswordResetRequest>,
) -> Result<(StatusCode, axum::Json<PasswordResetAccepted>), AppError> {
    let email = Email::parse(&body.email)?;
    state
        .identity
        .request_password_reset(&state.db, &email, peer.ip())
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(PasswordResetAccepted {
            status: "accepted",
            detail: "If an account has this email, a link to reset its password is on its way.",
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetConfirmation {
    /// The token of the reset email.
    token: String,
    /// The new password: 8 to 1024 characters.
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 1024)]
    password: SecretString,
}

/// Set a new password with the token of a reset email. The token is spent, and every refresh
/// token of the account stops working (every session must log in again).
#[utoipa::path(post, path = "/auth/password-reset/confirm", tag = "identity",
    request_body = PasswordResetConfirmation,
    responses(
        (status = 204, description = "The password is changed"),
        (status = 400, description = "The token is unknown, spent or expired (one answer for all three)", body = Problem),
        (status = 422, description = "The new password is too short or too long", body = Problem),
        (status = 429, description = "Too many bad tokens from this address", body = Problem),
    ))]
async fn confirm_password_reset(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(body): Json<PasswordResetConfirmation>,
) -> Result<StatusCode, AppError> {
    let password = NewPassword::parse(body.password)?;
    state
        .identity
        .confirm_password_reset(&state.db, &body.token, password, peer.ip())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyEmailRequest {
    /// The token of the verification email sent at registration.
    token: String,
}

/// Confirm the account's email address with the token of its verification email; `/users/me`
/// then shows `email_verified: true`.
#[utoipa::path(post, path = "/auth/verify-email", tag = "identity",
    request_body = VerifyEmailRequest,
    responses(
        (status = 204, description = "The email is verified"),
        (status = 400, description = "The token is unknown, spent or expired", body = Problem),
        (status = 429, description = "Too many bad tokens from this address", body = Problem),
    ))]
async fn verify_email(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(body): Json<VerifyEmailRequest>,
) -> Result<StatusCode, AppError> {
    state
        .identity
        .verify_email(&state.db, &body.token, peer.ip())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's account.
#[utoipa::path(get, path = "/users/me", tag = "identity",
    security(("bearer" = [])),
    responses((status = 200, body = User), (status = 401, body = Problem)))]
async fn me(State(state): State<AppState>, user: AuthUser) -> Result<axum::Json<User>, AppError> {
    let user = store::find_user(&state.db, user.id)
        .await?
        .ok_or(AppError::Unauthorized("The account no longer exists."))?;
    Ok(axum::Json(user))
}

/// Every user, newest first.
#[utoipa::path(get, path = "/users", tag = "admin",
    params(PageParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Paged<User>),
        (status = 401, body = Problem),
        (status = 403, body = Problem),
    ))]
async fn list_users(
    State(state): State<AppState>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Paged<User>>, AppError> {
    let (users, total) = store::list_users(&state.db, page.limit(), page.offset()).await?;
    Ok(axum::Json(page.wrap(users, total)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRoleRequest {
    role: Role,
}

/// Change a user's role. It applies to admin routes at once and to the user's tokens at their
/// next refresh. Demoting the last admin is refused.
#[utoipa::path(patch, path = "/users/{id}", tag = "admin",
    params(("id" = Uuid, Path, description = "User id")),
    request_body = ChangeRoleRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, body = User),
        (status = 401, body = Problem),
        (status = 403, body = Problem),
        (status = 404, body = Problem),
        (status = 409, description = "It would leave no admin", body = Problem),
    ))]
async fn change_role(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<ChangeRoleRequest>,
) -> Result<axum::Json<User>, AppError> {
    let user = state.identity.set_role(&state.db, id, body.role).await?;
    Ok(axum::Json(user))
}
