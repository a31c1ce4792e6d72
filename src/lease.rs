//! The ownership lease: which instance on a database runs the actor tree.
//!
//! The actor tree is the single writer of stock, carts and coupon uses: each shard holds its
//! variants' availability in memory and decides from it. Two trees on one database would both
//! believe they are that single writer and accept the same unit twice (the `CHECK (stock >= 0)`
//! backstop then cancels a paid order). So an instance runs the tree only while it holds a
//! session-level `pg_advisory_lock` on [`LEASE_KEY`], taken on a connection of its own (never
//! one from the pool, which would hand the session, and the lock, to whichever query came next).
//!
//! PostgreSQL releases a session lock when the session ends, so an owner that dies (kill -9, a
//! crashed node: its socket closes) frees the lease by itself, and an owner that drains releases
//! it after its tree has stopped. A standby polls `pg_try_advisory_lock` (a blocking
//! `pg_advisory_lock` would run into the connection's `statement_timeout`, and a standby asked to
//! stop could not take its waiting query back) and takes over within one poll.
//!
//! Advisory locks are per database, so instances of different shops on one server never contend.

use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::config::DatabaseSettings;

/// The lease's name, as operators see it in the docs; [`LEASE_KEY`] is derived from it.
pub const LEASE_NAME: &str = "shop.actor-tree";

/// The advisory-lock key: FNV-1a (64 bits) of [`LEASE_NAME`], computed at build time so that it
/// is the same in every version of the binary (a rolling update must contend on the same key).
pub const LEASE_KEY: i64 = fnv1a(LEASE_NAME.as_bytes());

/// How long a check of the lease may take before the owner counts it as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How the lease shows in `pg_locks` (`locktype = 'advisory'`, `objsubid = 1`): its `classid`
/// (the key's high half) and `objid` (its low half), as bigints.
pub const fn lock_ids() -> (i64, i64) {
    (
        (LEASE_KEY as u64 >> 32) as i64,
        (LEASE_KEY as u64 & 0xffff_ffff) as i64,
    )
}

const fn fnv1a(bytes: &[u8]) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash as i64
}

/// The dedicated connection of an instance that does not (yet) hold the lease.
pub struct LeaseCandidate {
    connection: PgConnection,
}

/// The held lease: as long as its session lives, no other instance runs an actor tree on this
/// database.
pub struct OwnershipLease {
    connection: PgConnection,
}

/// What [`LeaseCandidate::try_take`] found.
pub enum Attempt {
    Taken(OwnershipLease),
    HeldElsewhere(LeaseCandidate),
}

async fn open(settings: &DatabaseSettings) -> anyhow::Result<PgConnection> {
    // `application_name` makes the lease's session easy to find in `pg_stat_activity`.
    let options = crate::db::connect_options(settings)?.application_name("shop-lease");
    Ok(PgConnection::connect_with(&options).await?)
}

impl LeaseCandidate {
    /// Opens the lease's own connection.
    pub async fn open(settings: &DatabaseSettings) -> anyhow::Result<Self> {
        Ok(Self {
            connection: open(settings).await?,
        })
    }

    /// One attempt to take the lease, without waiting for it.
    pub async fn try_take(mut self) -> anyhow::Result<Attempt> {
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEASE_KEY)
            .fetch_one(&mut self.connection)
            .await?;
        Ok(if taken {
            Attempt::Taken(OwnershipLease {
                connection: self.connection,
            })
        } else {
            Attempt::HeldElsewhere(self)
        })
    }

    /// Tries every `every` until the lease is taken. A connection that fails meanwhile is opened
    /// again (a standby's connection holds nothing), so only a database that stays unreachable
    /// keeps the standby waiting.
    pub async fn take(self, settings: &DatabaseSettings, every: Duration) -> OwnershipLease {
        let mut candidate = Some(self);
        loop {
            let current = match candidate.take() {
                Some(current) => Ok(current),
                None => Self::open(settings).await,
            };
            match current {
                Ok(current) => match current.try_take().await {
                    Ok(Attempt::Taken(lease)) => return lease,
                    Ok(Attempt::HeldElsewhere(current)) => candidate = Some(current),
                    Err(error) => {
                        tracing::warn!(%error, "standby: checking the ownership lease failed");
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "standby: reconnecting for the ownership lease failed");
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    pub async fn close(self) {
        let _ = self.connection.close().await;
    }
}

impl OwnershipLease {
    /// Whether the lease's session still holds the lock: an error when the connection is gone
    /// or does not answer within [`CHECK_TIMEOUT`], `Ok(false)` if the lock was released
    /// behind the instance's back.
    pub async fn check(&mut self) -> anyhow::Result<bool> {
        let (high, low) = lock_ids();
        let held = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks
                            WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                              AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1)",
        )
        .bind(high)
        .bind(low)
        .fetch_one(&mut self.connection);
        match tokio::time::timeout(CHECK_TIMEOUT, held).await {
            Ok(held) => Ok(held?),
            Err(_) => anyhow::bail!("the lease's connection did not answer in {CHECK_TIMEOUT:?}"),
        }
    }

    /// Resolves when the lease can no longer be proven held (checked every `every`), with why.
    pub async fn lost(&mut self, every: Duration) -> String {
        loop {
            tokio::time::sleep(every).await;
            match self.check().await {
                Ok(true) => {}
                Ok(false) => return "the ownership lock is no longer held".into(),
                Err(error) => return format!("the ownership lease's connection failed: {error}"),
            }
        }
    }

    /// Gives the lease up (once the actor tree has stopped): a standby takes it at its next try.
    pub async fn release(mut self) -> anyhow::Result<()> {
        sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
            .bind(LEASE_KEY)
            .fetch_one(&mut self.connection)
            .await?;
        self.connection.close().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_fixed_across_builds() {
        // FNV-1a 64 of "shop.actor-tree": a change here strands old and new versions of the binary
        // on different keys during a rolling update.
        assert_eq!(LEASE_KEY, 0x80e1_bb14_0a76_0cc5_u64 as i64);
        assert_eq!(LEASE_KEY, -9_159_834_472_345_629_499);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
    }
}
