//! `Idempotency-Key` on the customer's mutating routes ([`OPERATIONS`]: cart edits, the coupon,
//! paying and cancelling): the first request with a key claims it in PostgreSQL, its answer is
//! stored, and a repeat by the same user within [`RETENTION`] gets that answer again, marked
//! `idempotent-replayed: true`, without running the handler. Checkout keeps its own, stronger key
//! (bound to the order row in the order's transaction, `crate::orders::checkout`).
//!
//! The entry is bound to the method, the path and a SHA-256 of the body: the same key with another
//! request is 422 `idempotency-key-reused`. A second request arriving while the first still runs
//! waits for it (up to `server.idempotency_wait_ms`) and replays its answer, or is 409
//! `idempotency-key-in-use`. Only 2xx and 4xx answers are kept; a 5xx, a 408/429 (try again
//! later), a timeout, a panic or a dropped request deletes the claim, so a retry runs again.
//!
//! A claim whose effect was committed is never deleted. The handler gets its claim
//! ([`RequestClaim`]), and a cart change marks it applied in the change's own transaction
//! (`shop_actors::carts::KeyClaim`, migration 0016), so:
//! - an answer that was lost (the change's COMMIT answer, the cart actor) is read back
//!   ([`RequestClaim::read_back`]): made, the handler answers as if it had been told so; not made,
//!   the claim is deleted in the same step, which the change, if it is still on its way, can no
//!   longer mark, so it is rolled back;
//! - a claim that is applied outlives a failed answer or a failed save of the answer: a retry
//!   waits until it counts as abandoned, takes it over with its mark, and gets the cart as it is
//!   instead of the change made twice ([`RequestClaim::applied`]).

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, OriginalUri, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{FromFnLayer, Next};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::Instrument;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, RefOr, Required, ResponseBuilder, Type};
use uuid::Uuid;

use crate::error::{AppError, FieldError, PROBLEM_JSON, Problem, ResultExt};
use crate::http::auth::MaybeAuthUser;
use shop_actors::carts::KeyClaim;

/// How long an answer is replayed; older entries are ignored, then swept.
pub const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// How often [`sweep_every`] deletes entries past [`RETENTION`].
pub const SWEEP_EVERY: Duration = Duration::from_secs(10 * 60);
/// The largest answer kept; a larger one is answered once and its claim released.
pub const MAX_STORED_BODY: usize = 1024 * 1024;
/// How often a request that found its key in progress looks again.
const POLL: Duration = Duration::from_millis(50);
/// A claim older than the request timeout plus this was left by a process that died mid-request
/// (a live one answers, or drops the claim, within the request timeout): it may be taken over.
const ABANDONED_AFTER_TIMEOUT: Duration = Duration::from_secs(5);

/// The header as the API names it (in problems and in the OpenAPI document).
pub const HEADER_NAME: &str = "Idempotency-Key";
pub static HEADER: HeaderName = HeaderName::from_static("idempotency-key");
pub static REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The operations behind [`layer`], as (method, path in the OpenAPI document); [`document`]
/// declares the header and its answers on exactly these.
pub const OPERATIONS: [(Method, &str); 8] = [
    (Method::POST, "/api/v1/cart/items"),
    (Method::PATCH, "/api/v1/cart/items/{item_id}"),
    (Method::DELETE, "/api/v1/cart/items/{item_id}"),
    (Method::DELETE, "/api/v1/cart"),
    (Method::POST, "/api/v1/cart/coupon"),
    (Method::DELETE, "/api/v1/cart/coupon"),
    (Method::POST, "/api/v1/orders/{id}/pay"),
    (Method::POST, "/api/v1/orders/{id}/cancel"),
];

type Middleware = fn(Request, Next) -> BoxFuture<'static, Response>;

/// The middleware, for `route_layer` on the routes of [`OPERATIONS`].
pub fn layer() -> FromFnLayer<Middleware, (), (Request,)> {
    let middleware: Middleware = |request, next| Box::pin(idempotent(request, next));
    axum::middleware::from_fn(middleware)
}

/// A key as sent: 1 to 255 visible ASCII characters (VCHAR), one header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The request's key, if it sent one; a malformed one (or several) is 400.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, AppError> {
        let mut values = headers.get_all(&HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(invalid_key("must be sent once"));
        }
        Self::parse(value.as_bytes()).map(Some)
    }

    pub fn parse(raw: &[u8]) -> Result<Self, AppError> {
        let visible = raw.iter().all(|byte| (0x21..=0x7e).contains(byte));
        if raw.is_empty() || raw.len() > 255 || !visible {
            return Err(invalid_key("must be 1 to 255 visible ASCII characters"));
        }
        let key = std::str::from_utf8(raw)
            .map_err(|_| invalid_key("must be 1 to 255 visible ASCII characters"))?;
        Ok(Self(key.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn invalid_key(message: &str) -> AppError {
    AppError::BadRequest {
        detail: "The Idempotency-Key header is malformed.".into(),
        errors: vec![FieldError::new(HEADER_NAME, message)],
    }
}

async fn idempotent(request: Request, next: Next) -> Response {
    match replay_or_run(request, next).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn replay_or_run(request: Request, next: Next) -> Result<Response, AppError> {
    // Without a key, or without a caller (the handler answers 401), nothing changes.
    if !request.headers().contains_key(&HEADER) {
        return Ok(next.run(request).await);
    }
    let state = super::auth::app_state(&request)?;
    let (mut parts, body) = request.into_parts();
    let Ok(MaybeAuthUser(Some(user))) = MaybeAuthUser::from_request_parts(&mut parts, &state).await
    else {
        return Ok(next.run(Request::from_parts(parts, body)).await);
    };
    let Some(key) = IdempotencyKey::from_headers(&parts.headers)? else {
        return Ok(next.run(Request::from_parts(parts, body)).await);
    };
    let body = read_body(&parts, body).await?;
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // The path as the client sent it (a nested router sees it without its prefix).
    let Ok(OriginalUri(uri)) = OriginalUri::from_request_parts(&mut parts, &state).await;
    let fingerprint = Fingerprint {
        method: parts.method.as_str().to_owned(),
        path: uri.path().to_owned(),
        hash: Sha256::digest(&body).to_vec(),
    };
    let entry = EntryId {
        user: user.id,
        key: key.as_str().to_owned(),
    };

    let settings = &state.settings;
    let wait = Duration::from_millis(settings.server.idempotency_wait_ms);
    let abandoned = settings.request_timeout() + ABANDONED_AFTER_TIMEOUT;
    let deadline = Instant::now() + wait;
    let guard = loop {
        match claim(&state.db, &entry, &fingerprint, abandoned).await? {
            Claimed::Ours { claim, applied } => {
                parts.extensions.insert(RequestClaim {
                    claim: KeyClaim {
                        user: entry.user,
                        key: entry.key.clone(),
                        claim,
                    },
                    applied,
                });
                break ClaimGuard::new(state.db.clone(), entry, claim);
            }
            Claimed::Held(held) => {
                if held.fingerprint != fingerprint {
                    return Ok(reused(&held.fingerprint, &fingerprint));
                }
                match held.answer {
                    Some(answer) => return Ok(replay(answer, &route)),
                    None if Instant::now() >= deadline => return Ok(in_use()),
                    None => tokio::time::sleep(POLL).await,
                }
            }
            // Released or expired between the two statements: claim again.
            Claimed::Gone if Instant::now() >= deadline => return Ok(in_use()),
            Claimed::Gone => {}
        }
    };

    // The handler runs in a task of its own: a client that disconnects, or the request timeout,
    // ends the wait for the answer, not the work, which ends by keeping its answer or releasing
    // the key. Cancelled half-way instead, its effect could still land (a message already in an
    // actor's mailbox) after the key was released, and the retry would have it twice.
    let request = Request::from_parts(parts, Body::from(body));
    let limit = settings.request_timeout();
    let handler = tokio::spawn(
        run_and_keep(guard, next, request, route, limit).instrument(tracing::Span::current()),
    );
    match handler.await {
        Ok(answered) => answered,
        // The claim was released as the guard unwound.
        Err(error) if error.is_panic() => Ok(super::middleware::panic_response(error.into_panic())),
        Err(error) => Err(AppError::Unavailable(format!(
            "the request's task was cancelled: {error}"
        ))),
    }
}

/// Runs the handler under the claim and keeps its answer if it is one to keep. The handler gets
/// the request timeout still (so a claim older than that was abandoned by a dead process).
async fn run_and_keep(
    guard: ClaimGuard,
    next: Next,
    request: Request,
    route: String,
    limit: Duration,
) -> Result<Response, AppError> {
    let Ok(response) = tokio::time::timeout(limit, next.run(request)).await else {
        guard.release().await;
        return Err(AppError::Unavailable(format!(
            "{route} took longer than the request timeout"
        )));
    };
    let status = response.status();
    let kept = (status.is_success() || status.is_client_error())
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::TOO_MANY_REQUESTS;
    if !kept {
        guard.release().await;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let small = body
        .size_hint()
        .upper()
        .is_some_and(|size| size <= MAX_STORED_BODY as u64);
    if !small {
        tracing::warn!(%route, "an answer too large to keep for its Idempotency-Key; the key is released");
        guard.release().await;
        return Ok(Response::from_parts(parts, body));
    }
    let bytes = match axum::body::to_bytes(body, MAX_STORED_BODY).await {
        Ok(bytes) => bytes,
        Err(error) => {
            guard.release().await;
            return Err(AppError::Internal(
                anyhow::Error::new(error).context("reading an answer to keep it"),
            ));
        }
    };
    let answer = Answer {
        status,
        content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
        body: bytes,
    };
    if let Err(error) = guard.complete(&answer).await {
        // The caller gets its answer; only the replay is lost. The claim is released unless
        // its effect was marked applied (a cart change): then a retry takes it over once it
        // counts as abandoned and answers with the cart as it is.
        tracing::error!(error = ?error, %route, "keeping an answer for its Idempotency-Key failed; the claim is released unless its change was applied");
        metrics::counter!("idempotency_store_failures_total", "route" => route).increment(1);
    }
    Ok(Response::from_parts(parts, Body::from(answer.body)))
}

/// The body, read whole (within the JSON body limit: 413 beyond it) so that it can be hashed.
async fn read_body(parts: &axum::http::request::Parts, body: Body) -> Result<Bytes, AppError> {
    let mut probe = Request::new(body);
    // The route's body limit travels in the extensions.
    *probe.extensions_mut() = parts.extensions.clone();
    Bytes::from_request(probe, &())
        .await
        .map_err(super::extract::body_unreadable)
}

fn reused(stored: &Fingerprint, now: &Fingerprint) -> Response {
    let what = if stored.method != now.method || stored.path != now.path {
        "another route"
    } else {
        "another body"
    };
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
        .kind("idempotency-key-reused")
        .detail(format!(
            "This Idempotency-Key was used for {what}; use a new key for a new request."
        ))
        .field_errors(vec![FieldError::new(
            HEADER_NAME,
            "was used with a different request",
        )])
        .into_response()
}

fn in_use() -> Response {
    AppError::conflict(
        "idempotency-key-in-use",
        "A request with this Idempotency-Key is still being processed; retry shortly.",
    )
    .into_response()
}

fn replay(answer: Answer, route: &str) -> Response {
    metrics::counter!("idempotency_replays_total", "route" => route.to_owned()).increment(1);
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    if let Some(content_type) = answer.content_type {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    headers.insert(REPLAYED.clone(), HeaderValue::from_static("true"));
    response
}

/// Whose key: entries are per user.
#[derive(Debug, Clone)]
struct EntryId {
    user: Uuid,
    key: String,
}

/// What a key is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    method: String,
    path: String,
    hash: Vec<u8>,
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

#[derive(Debug)]
struct Held {
    fingerprint: Fingerprint,
    /// `None` while the first request still runs.
    answer: Option<Answer>,
}

enum Claimed {
    /// The key is this request's; `applied` when it took over an abandoned claim of the same
    /// request whose change had been made.
    Ours {
        claim: Uuid,
        applied: bool,
    },
    Held(Held),
    Gone,
}

/// The claim a request runs under, in its extensions for the handler: cart changes mark it
/// applied in their own transaction (`Carts::under_claim`).
#[derive(Debug, Clone)]
pub struct RequestClaim {
    claim: KeyClaim,
    applied: bool,
}

/// Whether a change whose answer was lost was made, as its claim says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBack {
    /// The change committed its mark: it was made.
    Made,
    /// It was not made, and the claim is released so that it never will be.
    NotMade,
    /// The claim is no longer this request's (taken over by a retry, which answers for it).
    NotOurs,
}

impl RequestClaim {
    pub fn key_claim(&self) -> KeyClaim {
        self.claim.clone()
    }

    /// A retry that took over the claim of the same request after its change was made: the
    /// handler answers with the state as it is, without making the change again.
    pub fn applied(&self) -> bool {
        self.applied
    }

    /// Reads back whether this request's change was made. The release waits for a change that
    /// marked the claim and has not committed yet, and a change that has not marked it by then
    /// never can (see the module doc).
    pub async fn read_back(&self, db: &PgPool) -> Result<ReadBack, sqlx::Error> {
        let KeyClaim { user, key, claim } = &self.claim;
        if delete_unapplied(db, *user, key, *claim).await? {
            metrics::counter!("idempotency_read_backs_total", "made" => "false").increment(1);
            return Ok(ReadBack::NotMade);
        }
        // A statement of its own: it sees what the release waited for.
        let applied: Option<bool> = sqlx::query_scalar(
            "SELECT applied_at IS NOT NULL FROM idempotency_keys
             WHERE user_id = $1 AND key = $2 AND claim = $3",
        )
        .bind(user)
        .bind(key)
        .bind(claim)
        .fetch_optional(db)
        .await?;
        Ok(match applied {
            Some(true) => {
                metrics::counter!("idempotency_read_backs_total", "made" => "true").increment(1);
                ReadBack::Made
            }
            // Released or completed by someone else: only a takeover changes the claim.
            Some(false) | None => ReadBack::NotOurs,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    InProgress,
    Completed,
}

impl EntryState {
    fn parse(raw: &str) -> Result<Self, AppError> {
        match raw {
            "in_progress" => Ok(Self::InProgress),
            "completed" => Ok(Self::Completed),
            other => Err(AppError::Internal(anyhow::anyhow!(
                "idempotency_keys.state is {other:?}"
            ))),
        }
    }
}

type EntryRow = (
    String,
    String,
    Vec<u8>,
    String,
    Option<i16>,
    Option<String>,
    Option<Vec<u8>>,
);

/// Claims the key for this request, taking over an entry past [`RETENTION`] or a claim of the
/// same request left by a dead process (keeping its mark that the change was applied);
/// otherwise reads what holds it.
async fn claim(
    db: &PgPool,
    entry: &EntryId,
    fingerprint: &Fingerprint,
    abandoned: Duration,
) -> Result<Claimed, AppError> {
    let claim = Uuid::now_v7();
    // An expired entry is a new request's; an abandoned claim is the same request's retry.
    let taken: Option<(Uuid, bool)> = sqlx::query_as(
        r#"INSERT INTO idempotency_keys (user_id, key, claim, method, path, request_hash, state)
           VALUES ($1, $2, $3, $4, $5, $6, 'in_progress')
           ON CONFLICT (user_id, key) DO UPDATE
               SET claim = EXCLUDED.claim, method = EXCLUDED.method, path = EXCLUDED.path,
                   request_hash = EXCLUDED.request_hash, state = 'in_progress', status = NULL,
                   content_type = NULL, body = NULL, created_at = now(), completed_at = NULL,
                   applied_at = CASE WHEN idempotency_keys.created_at > now() - make_interval(secs => $7)
                                     THEN idempotency_keys.applied_at END
               WHERE idempotency_keys.created_at <= now() - make_interval(secs => $7)
                  OR (idempotency_keys.state = 'in_progress'
                      AND idempotency_keys.created_at <= now() - make_interval(secs => $8)
                      AND (idempotency_keys.method, idempotency_keys.path,
                           idempotency_keys.request_hash)
                          = (EXCLUDED.method, EXCLUDED.path, EXCLUDED.request_hash))
           RETURNING claim, applied_at IS NOT NULL"#,
    )
    .bind(entry.user)
    .bind(&entry.key)
    .bind(claim)
    .bind(&fingerprint.method)
    .bind(&fingerprint.path)
    .bind(&fingerprint.hash)
    .bind(RETENTION.as_secs_f64())
    .bind(abandoned.as_secs_f64())
    .fetch_optional(db)
    .await
    .on_constraint("idempotency_keys_user_id_fkey", |_| {
        AppError::Unauthorized("The access token is invalid or expired.")
    })?;
    if let Some((taken, applied)) = taken
        && taken == claim
    {
        return Ok(Claimed::Ours { claim, applied });
    }
    let row: Option<EntryRow> = sqlx::query_as(
        r#"SELECT method, path, request_hash, state, status, content_type, body
           FROM idempotency_keys
           WHERE user_id = $1 AND key = $2 AND created_at > now() - make_interval(secs => $3)"#,
    )
    .bind(entry.user)
    .bind(&entry.key)
    .bind(RETENTION.as_secs_f64())
    .fetch_optional(db)
    .await?;
    let Some((method, path, hash, state, status, content_type, body)) = row else {
        return Ok(Claimed::Gone);
    };
    let fingerprint = Fingerprint { method, path, hash };
    let answer = match (EntryState::parse(&state)?, status, body) {
        (EntryState::InProgress, None, None) => None,
        (EntryState::Completed, Some(status), Some(body)) => {
            let status = u16::try_from(status)
                .ok()
                .and_then(|status| StatusCode::from_u16(status).ok())
                .ok_or_else(|| {
                    AppError::Internal(anyhow::anyhow!("idempotency_keys.status is {status}"))
                })?;
            let content_type = content_type
                .map(|raw| HeaderValue::try_from(raw.as_str()))
                .transpose()
                .map_err(|error| {
                    AppError::Internal(
                        anyhow::Error::new(error).context("idempotency_keys.content_type"),
                    )
                })?;
            Some(Answer {
                status,
                content_type,
                body: Bytes::from(body),
            })
        }
        (state, status, body) => {
            return Err(AppError::Internal(anyhow::anyhow!(
                "idempotency_keys row is {state:?} with status {status:?} and a body: {}",
                body.is_some()
            )));
        }
    };
    Ok(Claimed::Held(Held {
        fingerprint,
        answer,
    }))
}

/// The claim of a running request. Completed, it keeps the answer; released, or dropped (the
/// request timed out, panicked or was cancelled), it deletes the claim so a retry runs again,
/// unless the claim's change was applied.
struct ClaimGuard {
    db: PgPool,
    entry: EntryId,
    claim: Option<Uuid>,
}

impl ClaimGuard {
    fn new(db: PgPool, entry: EntryId, claim: Uuid) -> Self {
        Self {
            db,
            entry,
            claim: Some(claim),
        }
    }

    async fn complete(mut self, answer: &Answer) -> Result<(), anyhow::Error> {
        let Some(claim) = self.claim else {
            return Ok(());
        };
        let status = i16::try_from(answer.status.as_u16())?;
        let content_type = answer
            .content_type
            .as_ref()
            .map(HeaderValue::to_str)
            .transpose()?;
        let kept = sqlx::query(
            r#"UPDATE idempotency_keys
               SET state = 'completed', status = $4, content_type = $5, body = $6,
                   completed_at = now()
               WHERE user_id = $1 AND key = $2 AND claim = $3 AND state = 'in_progress'"#,
        )
        .bind(self.entry.user)
        .bind(&self.entry.key)
        .bind(claim)
        .bind(status)
        .bind(content_type)
        .bind(answer.body.as_ref())
        .execute(&self.db)
        .await?
        .rows_affected();
        if kept != 1 {
            // Taken over as abandoned meanwhile: the other request owns the key now.
            anyhow::bail!("the claim on the key was no longer this request's");
        }
        self.claim = None;
        Ok(())
    }

    async fn release(mut self) {
        if let Some(claim) = self.claim.take() {
            release(&self.db, &self.entry, claim).await;
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        let (db, entry) = (self.db.clone(), self.entry.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { release(&db, &entry, claim).await });
            }
            Err(_) => tracing::error!(
                "no runtime to release an Idempotency-Key claim; it is taken over once abandoned"
            ),
        }
    }
}

/// Deletes the claim unless its change was applied (then a retry takes it over once abandoned).
async fn release(db: &PgPool, entry: &EntryId, claim: Uuid) {
    if let Err(error) = delete_unapplied(db, entry.user, &entry.key, claim).await {
        // The claim stays until it counts as abandoned (request timeout + a margin).
        tracing::error!(error = ?error, "releasing an Idempotency-Key claim failed");
    }
}

/// Deletes `claim` while it is in progress and not applied; whether it did. It waits for a change
/// that marked the claim and has not committed yet, and keeps the claim if that change commits.
async fn delete_unapplied(
    db: &PgPool,
    user: Uuid,
    key: &str,
    claim: Uuid,
) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM idempotency_keys
         WHERE user_id = $1 AND key = $2 AND claim = $3 AND state = 'in_progress'
           AND applied_at IS NULL",
    )
    .bind(user)
    .bind(key)
    .bind(claim)
    .execute(db)
    .await?;
    Ok(deleted.rows_affected() == 1)
}

/// Deletes the entries past [`RETENTION`]; how many.
pub async fn sweep(db: &PgPool) -> Result<u64, sqlx::Error> {
    let swept = sqlx::query(
        "DELETE FROM idempotency_keys WHERE created_at <= now() - make_interval(secs => $1)",
    )
    .bind(RETENTION.as_secs_f64())
    .execute(db)
    .await?;
    Ok(swept.rows_affected())
}

/// Runs [`sweep`] every `every` until `stop` is set (or its sender is gone).
pub async fn sweep_every(db: PgPool, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        match sweep(&db).await {
            Ok(swept) => tracing::debug!(swept, "expired Idempotency-Key entries swept"),
            Err(error) => tracing::warn!(
                error = ?error,
                "sweeping Idempotency-Key entries failed; the next tick tries again"
            ),
        }
    }
}

/// Declares the header, the replay marker and the 400/409/422 answers on each of [`OPERATIONS`].
pub fn document(openapi: &mut OpenApiDoc) {
    for (method, path) in &OPERATIONS {
        let Some(operation) = openapi
            .paths
            .paths
            .get_mut(*path)
            .and_then(|item| operation_mut(item, method))
        else {
            // A route in OPERATIONS that the document lacks is caught by the tests.
            continue;
        };
        declare(operation);
    }
}

fn operation_mut<'a>(item: &'a mut PathItem, method: &Method) -> Option<&'a mut Operation> {
    match *method {
        Method::POST => item.post.as_mut(),
        Method::PUT => item.put.as_mut(),
        Method::PATCH => item.patch.as_mut(),
        Method::DELETE => item.delete.as_mut(),
        _ => None,
    }
}

fn declare(operation: &mut Operation) {
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    let declared = parameters.iter().any(|parameter| {
        matches!(parameter, RefOr::T(parameter) if parameter.name.eq_ignore_ascii_case(HEADER.as_str()))
    });
    if !declared {
        parameters.push(RefOr::T(
            ParameterBuilder::new()
                .name(HEADER_NAME)
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "Makes the request safe to retry: a repeat with the same key by the same user \
                     within 24 hours gets the first answer again (2xx and 4xx answers are kept), \
                     marked `idempotent-replayed: true`, and changes nothing.",
                ))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .max_length(Some(255))
                        .pattern(Some("^[!-~]+$")),
                ))
                .build(),
        ));
    }
    for (status, answer) in operation.responses.responses.iter_mut() {
        if let (true, RefOr::T(answer)) = (status.starts_with('2'), answer) {
            answer.headers.insert(
                REPLAYED.as_str().to_owned(),
                RefOr::T(
                    HeaderBuilder::new()
                        .schema(Some(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .enum_values(Some(["true"])),
                        ))
                        .description(Some(
                            "Present on an answer replayed for an `Idempotency-Key` already used.",
                        ))
                        .build(),
                ),
            );
        }
    }
    for (status, why) in [
        ("400", "The `Idempotency-Key` header is malformed"),
        (
            "409",
            "A request with this `Idempotency-Key` is still being processed (`idempotency-key-in-use`)",
        ),
        (
            "422",
            "This `Idempotency-Key` was used with another request (`idempotency-key-reused`)",
        ),
    ] {
        problem_answer(operation, status, why);
    }
}

/// Adds `why` to the operation's `status` answer, which is problem+json.
fn problem_answer(operation: &mut Operation, status: &str, why: &str) {
    let problem = || {
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build()
    };
    match operation.responses.responses.get_mut(status) {
        Some(RefOr::T(answer)) => {
            answer.description = if answer.description.is_empty() {
                why.to_owned()
            } else {
                format!("{}; or: {why}", answer.description)
            };
            answer
                .content
                .entry(PROBLEM_JSON.to_owned())
                .or_insert_with(|| RefOr::T(problem()));
        }
        // A shared response component: leave it as it is.
        Some(RefOr::Ref(_)) => {}
        None => {
            operation.responses.responses.insert(
                status.to_owned(),
                RefOr::T(
                    ResponseBuilder::new()
                        .description(why)
                        .content(PROBLEM_JSON, problem())
                        .build(),
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_1_to_255_visible_ascii_characters() {
        assert!(IdempotencyKey::parse(b"a").is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; 255]).is_ok());
        assert!(IdempotencyKey::parse(b"order-7:retry_2~!").is_ok());
        for bad in [
            &b""[..],
            &[b'k'; 256],
            b"two words",
            b"tab\there",
            "caf\u{e9}".as_bytes(),
        ] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn two_key_headers_are_refused() {
        let mut headers = HeaderMap::new();
        headers.append(HEADER.clone(), HeaderValue::from_static("a"));
        headers.append(HEADER.clone(), HeaderValue::from_static("b"));
        assert!(IdempotencyKey::from_headers(&headers).is_err());
    }
}
