//! The coupon limiter: N shard actors, each the only writer of its coupons' uses (shard =
//! hash(coupon_id) mod N, hashed like the inventory's variants), under the coupon supervisor. A
//! checkout reserves one use of its coupon for its order, checked against the coupon's global and
//! per-customer limits together in memory and persisted before it is answered; the order saga
//! commits the use when the order is paid and releases it when the order is cancelled, expires or
//! fails at checkout. Uses are rows of `coupon_redemptions`; a restarted shard rebuilds from them.
//!
//! Held uses do not expire on their own: the saga that holds one ends it (it is resumed from
//! PostgreSQL after a restart). After an error from [`CouponLimiter::reserve`] the use may or may not
//! be held (an actor that timed out may still write it): the caller retries with the same order,
//! which is idempotent, or releases it. A shard drops a reservation whose caller has given up
//! before it is written; a use stranded anyway (the release failed too, the process died before
//! its order was written) is ended by the shard's periodic reconciliation after a grace period.

mod shard;
mod store;

use std::time::Duration;

use ractor::{ActorCell, RpcReplyPort};
use sqlx::PgPool;
use uuid::Uuid;

use crate::instrument::{ActorError, Slot};
use crate::inventory::shard_index;
use crate::partition::Fence;
use crate::root::{ChildSpec, RestartPolicy, SupervisorKind};
pub use shard::{CouponLimiterShard, LimiterArgs, LimiterMsg};

/// A coupon's limits as the caller read them from `coupons` just now; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub usage_limit: Option<i32>,
    pub per_customer_limit: Option<i32>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CouponError {
    /// The coupon's `usage_limit` is used up (held and committed uses).
    #[error("the coupon's usage limit is reached")]
    LimitReached,
    /// The customer has used the coupon `per_customer_limit` times already.
    #[error("the customer's limit for this coupon is reached")]
    CustomerLimitReached,
    /// A commit for an order that holds no use of the coupon (never reserved, or released).
    #[error("the order holds no use of this coupon")]
    NotHeld,
    #[error(transparent)]
    Actor(#[from] ActorError),
    #[error("coupon limiter storage: {0}")]
    Storage(String),
}

pub struct CouponsKind;
impl SupervisorKind for CouponsKind {
    const KIND: &'static str = "coupon_supervisor";
}

#[derive(Debug, Clone)]
pub struct CouponConfig {
    pub shards: usize,
    pub call_timeout: Duration,
    /// This node's partitions (every shard's writes are fenced by them).
    pub fence: Fence,
    /// How often each shard looks for stranded held uses (see [`LimiterArgs::orphan_grace`]).
    pub reconcile_interval: Duration,
    pub orphan_grace: Duration,
}

/// The typed handle to the coupon limiter shards.
#[derive(Clone)]
pub struct CouponLimiter {
    shards: Vec<Slot<LimiterMsg>>,
    timeout: Duration,
}

impl CouponLimiter {
    /// The handle and the supervisor's child spec (registered as `{prefix}coupons`, shards as
    /// `{prefix}coupon-shard-{i}`). Each shard keeps one PostgreSQL connection of its own, outside
    /// the pool (see `store::connect`).
    pub fn new(
        prefix: &str,
        db: PgPool,
        config: &CouponConfig,
        policy: RestartPolicy,
        supervisor_slot: Slot<crate::root::RootMsg>,
    ) -> (Self, ChildSpec) {
        let count = config.shards.max(1);
        let mut shards = Vec::with_capacity(count);
        let mut specs = Vec::with_capacity(count);
        for index in 0..count {
            let slot = Slot::empty(CouponLimiterShard::KIND_NAME);
            let args = LimiterArgs {
                index,
                count,
                db: db.clone(),
                fence: config.fence.clone(),
                reconcile_interval: config.reconcile_interval,
                orphan_grace: config.orphan_grace,
            };
            specs.push(ChildSpec::new(
                format!("{prefix}coupon-shard-{index}"),
                slot.clone(),
                move || (CouponLimiterShard, args.clone()),
            ));
            shards.push(slot);
        }
        let spec = ChildSpec::supervisor::<CouponsKind>(
            format!("{prefix}coupons"),
            supervisor_slot,
            specs,
            policy,
            Duration::from_secs(10),
        );
        (
            Self {
                shards,
                timeout: config.call_timeout,
            },
            spec,
        )
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn shard_of(&self, coupon: Uuid) -> usize {
        shard_index(coupon, self.shards.len())
    }

    /// The actor now running shard `index` (tests kill it to see it rebuilt).
    pub fn shard_cell(&self, index: usize) -> Option<ActorCell> {
        self.shards
            .get(index)?
            .get()
            .ok()
            .map(|mailbox| mailbox.cell())
    }

    async fn ask<R: Send + 'static>(
        &self,
        coupon: Uuid,
        build: impl FnOnce(RpcReplyPort<Result<R, CouponError>>) -> LimiterMsg,
    ) -> Result<R, CouponError> {
        self.shards[self.shard_of(coupon)]
            .get()?
            .call(build, self.timeout)
            .await?
    }

    /// Holds one use of `coupon` for `order` by `user`, if neither `limits.usage_limit` (held and
    /// committed uses of the coupon) nor `limits.per_customer_limit` (those of `user`) is reached.
    /// Idempotent: an order that already has a live use of the coupon gets `Ok` without a second
    /// one; an order whose use was released holds it again (within the limits).
    pub async fn reserve(
        &self,
        coupon: Uuid,
        order: Uuid,
        user: Uuid,
        limits: Limits,
    ) -> Result<(), CouponError> {
        self.ask(coupon, |reply| LimiterMsg::Reserve {
            coupon,
            order,
            user,
            limits,
            reply,
        })
        .await
    }

    /// The order is paid: its held use becomes committed for good. Idempotent; an order holding no
    /// use of the coupon gets [`CouponError::NotHeld`].
    pub async fn commit(&self, coupon: Uuid, order: Uuid) -> Result<(), CouponError> {
        self.ask(coupon, |reply| LimiterMsg::Commit {
            coupon,
            order,
            reply,
        })
        .await
    }

    /// The order is cancelled, expired or failed at checkout: its held use is freed. Idempotent;
    /// a committed use stays committed, and an order without a use gets `Ok`.
    pub async fn release(&self, coupon: Uuid, order: Uuid) -> Result<(), CouponError> {
        self.ask(coupon, |reply| LimiterMsg::Release {
            coupon,
            order,
            reply,
        })
        .await
    }

    /// Held plus committed uses of `coupon` (tests and the admin).
    pub async fn used(&self, coupon: Uuid) -> Result<i32, CouponError> {
        self.ask(coupon, |reply| LimiterMsg::Used { coupon, reply })
            .await
    }
}
