//! Partitions and the fencing epoch: which node may write which keys, proven in PostgreSQL.
//!
//! Every actor key (a variant's stock, a coupon's uses, a cart, an order in flight) maps to one
//! of P partitions through [`key_hash`], the one hash the shards use too. A node owns a partition
//! once it has bumped that partition's `epoch` in `partition_leases` ([`Fence::take_all`]), which
//! it does before any actor loads state. Every transaction that writes owned state first calls
//! [`Fence::check`] with the keys it writes: the `shop_fence` function (migration 0014) takes a
//! share lock on those partitions' rows if their epochs are still the ones this node took, and
//! raises SQLSTATE `SH001` otherwise.
//!
//! So a stale owner (one whose lease PostgreSQL has already handed to another node, which it has
//! not noticed yet) either holds its share lock before the new owner's bump, in which case the
//! bump and therefore the new owner's load wait until that transaction has ended, or it finds the
//! higher epoch and its transaction is rolled back. Its writes land before the new owner reads
//! the state, or not at all. A rejected check also revokes the fence: every later check fails
//! without asking PostgreSQL, and [`Fence::revoked`] tells the server to stop the tree.

use std::collections::BTreeSet;
use std::hash::Hasher;
use std::sync::{Arc, OnceLock};

use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

/// The SQLSTATE `shop_fence` raises when an epoch is no longer current.
pub const NOT_OWNER: &str = "SH001";

/// The stable hash of an actor key: the same in every process, version and restart (SipHash
/// with fixed keys, which also spreads v7 UUIDs whose leading bytes are a timestamp). Partitions
/// and shards are both this hash modulo their count.
pub fn key_hash(key: Uuid) -> u64 {
    #[allow(deprecated)]
    let mut hasher = std::hash::SipHasher::new();
    // The 16 bytes alone: no length prefix, nothing that depends on the platform.
    hasher.write(key.as_bytes());
    hasher.finish()
}

/// The partition of `key` among `count` partitions.
pub fn of(key: Uuid, count: u32) -> u32 {
    (key_hash(key) % u64::from(count.max(1))) as u32
}

/// Whether `error` is the fence's refusal (raised by `shop_fence`).
pub fn is_not_owner(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == NOT_OWNER)
}

/// This node's partitions and the epochs it took them at. Cheap to clone: every clone is the
/// same fence.
#[derive(Clone)]
pub struct Fence {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("count", &self.inner.count)
            .field("node", &self.inner.node)
            .field("epochs", &self.epochs())
            .finish_non_exhaustive()
    }
}

struct Inner {
    count: u32,
    node: String,
    /// The epoch of each partition, by index, once taken.
    epochs: OnceLock<Vec<i64>>,
    /// Why the fence refused a write, once it has.
    revoked: watch::Sender<Option<String>>,
    /// Random, one per fence: the namespace of the advisory locks between incarnations of one
    /// actor on this node ([`Fence::local_lock`]).
    incarnation: i32,
}

impl Fence {
    /// A fence over `count` partitions for the node named `node`, before it owns any of them.
    pub fn new(count: u32, node: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                count: count.max(1),
                node: node.into(),
                epochs: OnceLock::new(),
                revoked: watch::Sender::new(None),
                incarnation: Uuid::new_v4().as_u128() as i32,
            }),
        }
    }

    pub fn count(&self) -> u32 {
        self.inner.count
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn partition_of(&self, key: Uuid) -> u32 {
        of(key, self.inner.count)
    }

    /// The two keys of the advisory lock that keeps two incarnations of actor `index` of one
    /// kind on this node from writing at once (a restarted actor waits on it until the killed
    /// one's last statement has ended). Between nodes the epochs are the fence, so another
    /// node's tree, which has a fence of its own, never waits on these.
    pub fn local_lock(&self, class: i32, index: usize) -> (i32, i32) {
        (
            self.inner.incarnation ^ class,
            i32::try_from(index).unwrap_or(i32::MAX),
        )
    }

    /// The epochs this node took, by partition (empty before [`Fence::take_all`]).
    pub fn epochs(&self) -> &[i64] {
        self.inner.epochs.get().map_or(&[], Vec::as_slice)
    }

    /// Takes every partition: bumps each one's epoch (creating the rows at epoch 1), in one
    /// transaction, and keeps the new epochs. The bump's row locks wait for every transaction of a
    /// previous owner that passed its fence check, so once this returns, nothing that owner writes
    /// can land. Called once, before the actors load their state.
    pub async fn take_all(&self, db: &PgPool) -> Result<(), sqlx::Error> {
        let count = i32::try_from(self.inner.count).unwrap_or(i32::MAX);
        let mut tx = db.begin().await?;
        // The count is fixed for a database once set: with another one every key would move
        // partition under the epochs of the old split.
        let (existing,): (i64,) = sqlx::query_as("SELECT count(*) FROM partition_leases")
            .fetch_one(&mut *tx)
            .await?;
        if existing != 0 && existing != i64::from(count) {
            return Err(sqlx::Error::Protocol(format!(
                "this database is split into {existing} partitions, not {count}: \
                 cluster.partitions is fixed for a database once set"
            )));
        }
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "INSERT INTO partition_leases (partition, epoch, owner)
             SELECT p, 1, $2 FROM generate_series(0, $1 - 1) AS p
             ON CONFLICT (partition) DO UPDATE
                SET epoch = partition_leases.epoch + 1, owner = EXCLUDED.owner, taken_at = now()
             RETURNING partition, epoch",
        )
        .bind(count)
        .bind(&self.inner.node)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut epochs = vec![0; self.inner.count as usize];
        let mut handoffs = 0_u64;
        for (partition, epoch) in rows {
            if let Some(slot) = usize::try_from(partition)
                .ok()
                .and_then(|p| epochs.get_mut(p))
            {
                *slot = epoch;
                if epoch > 1 {
                    handoffs += 1;
                }
            }
        }
        if epochs.contains(&0) {
            return Err(sqlx::Error::Protocol(
                "taking the partitions returned fewer rows than partitions".into(),
            ));
        }
        if self.inner.epochs.set(epochs).is_err() {
            return Err(sqlx::Error::Protocol(
                "the partitions were taken already".into(),
            ));
        }
        metrics::gauge!("partitions_owned").set(f64::from(self.inner.count));
        metrics::counter!("partition_handoffs_total").increment(handoffs);
        tracing::info!(
            partitions = self.inner.count,
            node = %self.inner.node,
            "took every partition"
        );
        Ok(())
    }

    /// In the transaction about to write state owned under `keys`: proves this node still owns
    /// their partitions and holds them until the transaction ends. Refused with SQLSTATE
    /// [`NOT_OWNER`] (the transaction must roll back; the caller answers "not owner") when
    /// another node took one of them, or once the fence was revoked.
    pub async fn check(
        &self,
        conn: &mut PgConnection,
        keys: impl IntoIterator<Item = Uuid>,
    ) -> Result<(), sqlx::Error> {
        let partitions: BTreeSet<u32> = keys.into_iter().map(|k| self.partition_of(k)).collect();
        if partitions.is_empty() {
            return Ok(());
        }
        let epochs = self.epochs();
        // Before the partitions are taken, or once revoked, epoch 0 (never current) is asked
        // for, so that PostgreSQL raises the one refusal every caller already handles.
        let revoked = self.inner.revoked.borrow().is_some();
        let (ids, at): (Vec<i32>, Vec<i64>) = partitions
            .iter()
            .map(|&p| {
                let epoch = if revoked {
                    0
                } else {
                    epochs.get(p as usize).copied().unwrap_or(0)
                };
                (i32::try_from(p).unwrap_or(i32::MAX), epoch)
            })
            .unzip();
        let result = sqlx::query("SELECT shop_fence($1, $2)")
            .bind(&ids)
            .bind(&at)
            .execute(conn)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_not_owner(&error) => {
                metrics::counter!("partition_fence_rejections_total").increment(1);
                let why = format!(
                    "the fence refused a write: partition(s) {ids:?} were taken by another node"
                );
                tracing::error!(node = %self.inner.node, "{why}");
                self.inner.revoked.send_if_modified(|revoked| {
                    if revoked.is_some() {
                        return false;
                    }
                    *revoked = Some(why);
                    true
                });
                metrics::gauge!("partitions_owned").set(0.0);
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    /// Resolves, with why, once a check was refused: this node no longer owns its partitions.
    pub async fn revoked(&self) -> String {
        let mut revoked = self.inner.revoked.subscribe();
        let why = revoked
            .wait_for(Option::is_some)
            .await
            .map(|why| why.clone().unwrap_or_default());
        match why {
            Ok(why) => why,
            // The sender lives in `self`: it cannot be dropped while this waits.
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_has_one_partition_in_range_and_the_hash_is_fixed() {
        let key = Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0001);
        assert_eq!(of(key, 64), of(key, 64));
        assert!(of(key, 64) < 64);
        assert_eq!(of(key, 1), 0);
        assert_eq!(of(key, 0), 0, "0 partitions counts as one");
        // A change here moves keys between partitions (and shards) across a rolling update.
        assert_eq!(key_hash(key), 14_975_353_006_138_945_477);
        let spread: BTreeSet<u32> = (0..1_000_u128)
            .map(|i| {
                of(
                    Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0000 + i),
                    8,
                )
            })
            .collect();
        assert_eq!(
            spread.len(),
            8,
            "consecutive v7-like keys reach every partition"
        );
    }
}
