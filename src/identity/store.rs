//! The identity tables: users, refresh-token families and failed logins.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use super::{Email, Role, User, UserName};

#[derive(Debug, FromRow)]
struct UserRow {
    id: Uuid,
    email: String,
    name: String,
    role: Role,
    created_at: DateTime<Utc>,
    email_verified: bool,
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> Self {
        Self {
            id: row.id,
            email: row.email,
            name: row.name,
            role: row.role,
            created_at: row.created_at,
            email_verified: row.email_verified,
        }
    }
}

/// A user with the credentials needed to log in.
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

pub async fn insert_user(
    db: impl PgExecutor<'_>,
    email: &Email,
    name: &UserName,
    password_hash: &str,
    role: Role,
) -> Result<User, sqlx::Error> {
    sqlx::query_as::<_, UserRow>(
        r#"INSERT INTO users (id, email, name, password_hash, role)
           VALUES ($1, $2, $3, $4, $5)
           RETURNING id, email::text AS email, name, role, created_at,
                  email_verified_at IS NOT NULL AS email_verified"#,
    )
    .bind(Uuid::now_v7())
    .bind(email.as_str())
    .bind(name.as_str())
    .bind(password_hash)
    .bind(role.as_str())
    .fetch_one(db)
    .await
    .map(User::from)
}

pub async fn find_credentials(
    db: impl PgExecutor<'_>,
    email: &str,
) -> Result<Option<Credentials>, sqlx::Error> {
    #[derive(FromRow)]
    struct Row {
        #[sqlx(flatten)]
        user: UserRow,
        password_hash: String,
    }
    let row = sqlx::query_as::<_, Row>(
        r#"SELECT id, email::text AS email, name, role, created_at,
                  email_verified_at IS NOT NULL AS email_verified, password_hash
           FROM users WHERE email = $1::citext"#,
    )
    .bind(email)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| Credentials {
        user: row.user.into(),
        password_hash: row.password_hash,
    }))
}

pub async fn find_user(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as::<_, UserRow>(
        "SELECT id, email::text AS email, name, role, created_at,
                  email_verified_at IS NOT NULL AS email_verified FROM users WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
    .map(|row| row.map(User::from))
}

pub async fn list_users(
    db: impl PgExecutor<'_>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<User>, i64), sqlx::Error> {
    #[derive(FromRow)]
    struct Row {
        #[sqlx(flatten)]
        user: UserRow,
        total: i64,
    }
    let rows = sqlx::query_as::<_, Row>(
        r#"SELECT id, email::text AS email, name, role, created_at,
                  email_verified_at IS NOT NULL AS email_verified, count(*) OVER () AS total
           FROM users ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"#,
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?;
    let total = rows.first().map_or(0, |row| row.total);
    Ok((rows.into_iter().map(|row| row.user.into()).collect(), total))
}

pub async fn set_password_hash(
    db: impl PgExecutor<'_>,
    id: Uuid,
    password_hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
        .bind(id)
        .bind(password_hash)
        .execute(db)
        .await?;
    Ok(())
}

/// Locks every admin row and returns their ids: a role change that could remove the last admin
/// holds these locks, so two concurrent demotions cannot both succeed.
pub async fn lock_admins(db: impl PgExecutor<'_>) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM users WHERE role = 'admin' FOR UPDATE")
        .fetch_all(db)
        .await
}

pub async fn update_role(
    db: impl PgExecutor<'_>,
    id: Uuid,
    role: Role,
) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as::<_, UserRow>(
        r#"UPDATE users SET role = $2 WHERE id = $1
           RETURNING id, email::text AS email, name, role, created_at,
                  email_verified_at IS NOT NULL AS email_verified"#,
    )
    .bind(id)
    .bind(role.as_str())
    .fetch_optional(db)
    .await
    .map(|row| row.map(User::from))
}

pub async fn any_admin(db: impl PgExecutor<'_>) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin')")
        .fetch_one(db)
        .await
}

pub async fn current_role(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Role>, sqlx::Error> {
    sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn promote_to_admin(db: impl PgExecutor<'_>, email: &str) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query("UPDATE users SET role = 'admin' WHERE email = $1::citext")
        .bind(email)
        .execute(db)
        .await?;
    Ok(updated.rows_affected() == 1)
}

// --- refresh tokens

pub async fn insert_refresh_token(
    db: impl PgExecutor<'_>,
    family: Uuid,
    user: Uuid,
    hash: &[u8],
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at)
           VALUES ($1, $2, $3, $4, $5)"#,
    )
    .bind(Uuid::now_v7())
    .bind(family)
    .bind(user)
    .bind(hash)
    .bind(expires_at)
    .execute(db)
    .await?;
    Ok(())
}

/// The token that was spent by a successful rotation.
#[derive(FromRow)]
pub struct SpentToken {
    pub family_id: Uuid,
    pub user_id: Uuid,
}

/// Spends a live token in one atomic statement: of two concurrent presentations, exactly one
/// gets the row back.
pub async fn spend_refresh_token(
    db: impl PgExecutor<'_>,
    hash: &[u8],
) -> Result<Option<SpentToken>, sqlx::Error> {
    sqlx::query_as::<_, SpentToken>(
        r#"UPDATE refresh_tokens SET used_at = now()
           WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now()
           RETURNING family_id, user_id"#,
    )
    .bind(hash)
    .fetch_optional(db)
    .await
}

/// Revokes the family of a token that was already spent (reuse detected). Returns whether the
/// token was a spent one.
pub async fn revoke_family_if_spent(
    db: impl PgExecutor<'_>,
    hash: &[u8],
) -> Result<bool, sqlx::Error> {
    let revoked = sqlx::query(
        r#"UPDATE refresh_tokens SET revoked_at = now()
           WHERE revoked_at IS NULL
             AND family_id = (SELECT family_id FROM refresh_tokens
                              WHERE token_hash = $1 AND used_at IS NOT NULL)"#,
    )
    .bind(hash)
    .execute(db)
    .await?;
    Ok(revoked.rows_affected() > 0)
}

/// Revokes the family of a token the user holds (logout).
pub async fn revoke_family_of(
    db: impl PgExecutor<'_>,
    hash: &[u8],
    user: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"UPDATE refresh_tokens SET revoked_at = now()
           WHERE revoked_at IS NULL
             AND family_id = (SELECT family_id FROM refresh_tokens
                              WHERE token_hash = $1 AND user_id = $2)"#,
    )
    .bind(hash)
    .bind(user)
    .execute(db)
    .await?;
    Ok(())
}

// --- failed logins

/// How many logins failed for `email` within the window, and when the oldest of them leaves it.
pub async fn recent_failures(
    db: impl PgExecutor<'_>,
    email: &str,
    window_secs: i64,
) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    sqlx::query_as(
        r#"SELECT count(*), min(failed_at) + make_interval(secs => $2)
           FROM login_failures
           WHERE email = $1::citext AND failed_at > now() - make_interval(secs => $2)"#,
    )
    .bind(email)
    .bind(window_secs as f64)
    .fetch_one(db)
    .await
}

pub async fn record_failure(
    db: impl PgExecutor<'_>,
    email: &str,
    window_secs: i64,
) -> Result<(), sqlx::Error> {
    // Forget what has left the window while we are here, so the table stays small.
    sqlx::query(
        r#"WITH expired AS (
               DELETE FROM login_failures
               WHERE email = $1::citext AND failed_at <= now() - make_interval(secs => $2))
           INSERT INTO login_failures (email) VALUES ($1)"#,
    )
    .bind(email)
    .bind(window_secs as f64)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn clear_failures(db: impl PgExecutor<'_>, email: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM login_failures WHERE email = $1::citext")
        .bind(email)
        .execute(db)
        .await?;
    Ok(())
}
