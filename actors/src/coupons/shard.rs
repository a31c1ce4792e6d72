//! One coupon limiter shard: the only writer of its coupons' uses. A coupon's uses are loaded from
//! PostgreSQL on its first touch (and, at start, those of every coupon with a held use), so a
//! restarted shard rebuilds exactly what was persisted. Reservations are group-committed like the
//! inventory's: a `Reserve` is decided in memory and queued; a `Flush` the shard sends itself
//! (after whatever is already in its mailbox) persists the whole batch in one statement, and only
//! then are the callers answered. Commits and releases are written before they are answered.
//!
//! Held uses do not expire here: the order saga that reserved one releases it when the order is
//! cancelled or expires (the inventory's holds carry their own expiry; a coupon use lives and dies
//! with its order's saga, which is resumed from PostgreSQL after a restart). A use no saga will
//! ever end (its checkout failed and could not release it, the process died between the
//! reservation and the order) is found by the shard's periodic reconciliation: a use held for
//! longer than the grace period for an order that does not exist or is final is released (the
//! order was never placed, or was cancelled) or committed (the order was paid).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ractor::{ActorProcessingErr, RpcReplyPort};
use sqlx::PgPool;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::store::{self, NewUse, Settled, Stranded};
use super::{CouponError, Limits};
use crate::instrument::{Mailbox, ShopActor};
use crate::inventory::shard_index;
use crate::orders::OrderStatus;
use crate::partition::{Fence, is_not_owner};

pub enum LimiterMsg {
    Reserve {
        coupon: Uuid,
        order: Uuid,
        user: Uuid,
        limits: Limits,
        reply: RpcReplyPort<Result<(), CouponError>>,
    },
    /// Persist the reservations decided since the last flush, then answer their callers.
    Flush,
    Commit {
        coupon: Uuid,
        order: Uuid,
        reply: RpcReplyPort<Result<(), CouponError>>,
    },
    Release {
        coupon: Uuid,
        order: Uuid,
        reply: RpcReplyPort<Result<(), CouponError>>,
    },
    /// Held plus committed uses of a coupon.
    Used {
        coupon: Uuid,
        reply: RpcReplyPort<Result<i32, CouponError>>,
    },
    /// End the stranded held uses of this shard's coupons (the shard's own timer).
    Reconcile,
}

#[derive(Clone)]
pub struct LimiterArgs {
    pub index: usize,
    pub count: usize,
    pub db: PgPool,
    /// This node's partitions: every write of a coupon's uses proves it still owns them.
    pub fence: Fence,
    /// How often the shard looks for stranded held uses.
    pub reconcile_interval: Duration,
    /// How long a use may be held for an order that does not exist (yet) or is final before it
    /// is repaired: longer than a checkout can take to write its order.
    pub orphan_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Decided, waiting for the next flush: counted, not yet answered.
    Deciding,
    Held,
    Committed,
}

#[derive(Debug, Clone, Copy)]
struct Use {
    user: Uuid,
    state: State,
}

/// The live uses of one coupon, as PostgreSQL has them (plus those being flushed).
#[derive(Debug, Default)]
struct Uses {
    /// Held (or being held) and committed uses, by order.
    orders: HashMap<Uuid, Use>,
    /// Live uses per customer.
    per_user: HashMap<Uuid, i32>,
    /// Uses held or being held (the gauge).
    held: i32,
}

impl Uses {
    fn live(&self) -> i32 {
        i32::try_from(self.orders.len()).unwrap_or(i32::MAX)
    }

    fn add(&mut self, order: Uuid, user: Uuid, state: State) {
        if let Some(old) = self.orders.insert(order, Use { user, state }) {
            // Not expected (callers check first); keep the counts right regardless.
            self.forget_counts(old);
        }
        *self.per_user.entry(user).or_default() += 1;
        if state != State::Committed {
            self.held += 1;
        }
    }

    fn remove(&mut self, order: Uuid) {
        if let Some(old) = self.orders.remove(&order) {
            self.forget_counts(old);
        }
    }

    fn forget_counts(&mut self, old: Use) {
        if let Some(count) = self.per_user.get_mut(&old.user) {
            *count -= 1;
            if *count <= 0 {
                self.per_user.remove(&old.user);
            }
        }
        if old.state != State::Committed {
            self.held -= 1;
        }
    }
}

struct Pending {
    coupon: Uuid,
    order: Uuid,
    user: Uuid,
    /// False for a repeated reserve of a use already in this batch: it is answered with the
    /// first one's outcome and writes nothing.
    row: bool,
    reply: RpcReplyPort<Result<(), CouponError>>,
}

pub struct LimiterState {
    index: usize,
    count: usize,
    db: PgPool,
    fence: Fence,
    /// The shard's own connection, holding its advisory lock (see [`store::connect`]); dropped
    /// after an error whose outcome is unknown, and opened again (behind the lock) on next use.
    conn: Option<PgConnection>,
    coupons: HashMap<Uuid, Uses>,
    pending: Vec<Pending>,
    flush_queued: bool,
    shard_label: String,
    orphan_grace: Duration,
}

pub struct CouponLimiterShard;

impl CouponLimiterShard {
    pub const KIND_NAME: &'static str = "coupon_limiter_shard";
}

fn storage(error: &sqlx::Error) -> CouponError {
    if crate::partition::is_not_owner(error) {
        return CouponError::Actor(crate::ActorError::NotOwner);
    }
    CouponError::Storage(error.to_string())
}

impl LimiterState {
    async fn conn(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => store::connect(&self.db, &self.fence, self.index).await?,
        };
        Ok(self.conn.insert(conn))
    }

    /// After a failed statement: an error PostgreSQL answered means the statement did not apply;
    /// any other (the connection broke, say) leaves its outcome unknown. Then the connection is
    /// dropped, so that the next one waits on the advisory lock until the old statement has ended,
    /// and `true` tells the caller to forget what memory says about the coupons involved.
    fn unsure_after(&mut self, error: &sqlx::Error) -> bool {
        if matches!(error, sqlx::Error::Database(_)) {
            false
        } else {
            self.conn = None;
            true
        }
    }

    /// Makes sure `coupon`'s live uses are in memory.
    async fn load(&mut self, coupon: Uuid) -> Result<(), CouponError> {
        if self.coupons.contains_key(&coupon) {
            return Ok(());
        }
        let rows = match store::live_uses(self.conn().await.map_err(|e| storage(&e))?, coupon).await
        {
            Ok(rows) => rows,
            Err(error) => {
                self.unsure_after(&error);
                return Err(storage(&error));
            }
        };
        let mut uses = Uses::default();
        for row in rows {
            let state = if row.committed {
                State::Committed
            } else {
                State::Held
            };
            uses.add(row.order_id, row.user_id, state);
        }
        self.coupons.insert(coupon, uses);
        Ok(())
    }

    fn report(&self) {
        let held: i64 = self.coupons.values().map(|u| i64::from(u.held)).sum();
        metrics::gauge!("coupon_uses_held", "shard" => self.shard_label.clone()).set(held as f64);
    }

    /// Ends every stranded held use of this shard's coupons (see the module's doc). A use that
    /// cannot be ended now stays held, and the next pass tries again.
    async fn reconcile(&mut self) -> Result<(), CouponError> {
        self.flush().await;
        let grace = self.orphan_grace;
        let found =
            match store::stranded_uses(self.conn().await.map_err(|e| storage(&e))?, grace).await {
                Ok(found) => found,
                Err(error) => {
                    self.unsure_after(&error);
                    return Err(storage(&error));
                }
            };
        let mine: Vec<Stranded> = found
            .into_iter()
            .filter(|use_| shard_index(use_.coupon_id, self.count) == self.index)
            .collect();
        metrics::gauge!("coupon_uses_stranded", "shard" => self.shard_label.clone())
            .set(mine.len() as f64);
        // Memory may not know of these uses (written by a call whose caller had given up, or
        // before a crash): their coupons are read again, so that the settles see them.
        for stranded in &mine {
            self.coupons.remove(&stranded.coupon_id);
        }
        for stranded in mine {
            let status = stranded.order_status.as_deref().map(OrderStatus::parse);
            let to = match status {
                None | Some(Ok(OrderStatus::Cancelled)) => Settled::Released,
                Some(Ok(
                    OrderStatus::Paid
                    | OrderStatus::Shipped
                    | OrderStatus::Delivered
                    | OrderStatus::Refunded,
                )) => Settled::Committed,
                // Not stranded (the query leaves pending orders out), but never guessed at.
                Some(Ok(OrderStatus::Pending)) => continue,
                Some(Err(unknown)) => {
                    tracing::error!(shard = self.index, coupon = %stranded.coupon_id, order = %stranded.order_id,
                        %unknown, "a held coupon use's order has an unknown status; left held");
                    continue;
                }
            };
            match self.settle(stranded.coupon_id, stranded.order_id, to).await {
                Ok(()) => {
                    tracing::warn!(shard = self.index, coupon = %stranded.coupon_id, order = %stranded.order_id,
                        to = to.as_str(), "a stranded coupon use was repaired");
                    metrics::counter!("coupon_uses_repaired_total", "to" => to.as_str())
                        .increment(1);
                }
                Err(error) => {
                    tracing::error!(shard = self.index, coupon = %stranded.coupon_id, order = %stranded.order_id,
                        ?error, "repairing a stranded coupon use failed; the next pass tries again");
                }
            }
        }
        Ok(())
    }

    /// Decides a reservation in memory: `None` when a new use is to be written, else the state of
    /// the use the order already has (written, or `Deciding` in this batch).
    async fn decide(
        &mut self,
        coupon: Uuid,
        order: Uuid,
        user: Uuid,
        limits: Limits,
    ) -> Result<Option<State>, CouponError> {
        self.load(coupon).await?;
        let Some(uses) = self.coupons.get_mut(&coupon) else {
            return Err(CouponError::Storage(
                "the coupon's uses did not load".into(),
            ));
        };
        if let Some(existing) = uses.orders.get(&order) {
            return Ok(Some(existing.state));
        }
        // Both limits against the same counts, in one turn: nothing can be decided in between.
        if limits.usage_limit.is_some_and(|limit| uses.live() >= limit) {
            return Err(CouponError::LimitReached);
        }
        let mine = uses.per_user.get(&user).copied().unwrap_or(0);
        if limits.per_customer_limit.is_some_and(|limit| mine >= limit) {
            return Err(CouponError::CustomerLimitReached);
        }
        uses.add(order, user, State::Deciding);
        Ok(None)
    }

    async fn flush(&mut self) {
        self.flush_queued = false;
        if self.pending.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut self.pending);
        // A caller that gave up (its call timed out) has answered its checkout with an error: its
        // use is not written, and its place under the limits is free again.
        batch.retain(|pending| {
            if !pending.reply.is_closed() {
                return true;
            }
            if pending.row
                && let Some(uses) = self.coupons.get_mut(&pending.coupon)
            {
                uses.remove(pending.order);
            }
            metrics::counter!("coupon_reservations_abandoned_total").increment(1);
            false
        });
        if batch.is_empty() {
            self.report();
            return;
        }
        let rows: Vec<NewUse> = batch
            .iter()
            .filter(|p| p.row)
            .map(|p| NewUse {
                coupon_id: p.coupon,
                order_id: p.order,
                user_id: p.user,
            })
            .collect();
        metrics::histogram!("coupon_flush_batch_size").record(batch.len() as f64);
        let (outcomes, unsure) = self.persist(&rows).await;
        for pending in batch {
            let outcome = outcomes
                .get(&(pending.coupon, pending.order))
                .cloned()
                // Every row has an outcome; a repeat without one is told to ask again.
                .unwrap_or_else(|| Err("the reservation's outcome is unknown; retry".into()));
            if pending.row
                && let Some(uses) = self.coupons.get_mut(&pending.coupon)
            {
                match outcome {
                    Ok(()) => {
                        if let Some(held) = uses.orders.get_mut(&pending.order) {
                            held.state = State::Held;
                        }
                    }
                    Err(_) => uses.remove(pending.order),
                }
            }
            let _ = pending.reply.send(outcome.map_err(CouponError::Storage));
        }
        for coupon in unsure {
            self.coupons.remove(&coupon);
        }
        self.report();
    }

    /// Writes the held uses of a batch: in one statement, or row by row when PostgreSQL refused
    /// the statement (one bad row, a customer that does not exist say, must not fail the others).
    /// Answers each row's outcome and the coupons memory must reload.
    async fn persist(
        &mut self,
        rows: &[NewUse],
    ) -> (HashMap<(Uuid, Uuid), Result<(), String>>, HashSet<Uuid>) {
        let mut outcomes = HashMap::new();
        let mut unsure = HashSet::new();
        if rows.is_empty() {
            return (outcomes, unsure);
        }
        let error = match self.hold(rows).await {
            Ok(written) => {
                self.written(rows, &written, &mut outcomes, &mut unsure);
                return (outcomes, unsure);
            }
            Err(error) => error,
        };
        let broken = self.unsure_after(&error);
        // The fence refuses every row alike: no use in trying them one by one.
        if broken || rows.len() == 1 || is_not_owner(&error) {
            tracing::error!(shard = self.index, %error, "persisting coupon uses failed; undoing them");
            for row in rows {
                outcomes.insert((row.coupon_id, row.order_id), Err(error.to_string()));
                if broken {
                    unsure.insert(row.coupon_id);
                }
            }
            return (outcomes, unsure);
        }
        tracing::warn!(shard = self.index, %error, "a batch of coupon uses was refused; holding them one by one");
        for (at, row) in rows.iter().enumerate() {
            let one = std::slice::from_ref(row);
            match self.hold(one).await {
                Ok(written) => self.written(one, &written, &mut outcomes, &mut unsure),
                Err(error) => {
                    outcomes.insert((row.coupon_id, row.order_id), Err(error.to_string()));
                    if self.unsure_after(&error) {
                        // The connection broke: this row's outcome is unknown, the rest were not
                        // tried.
                        unsure.insert(row.coupon_id);
                        for rest in &rows[at + 1..] {
                            outcomes
                                .insert((rest.coupon_id, rest.order_id), Err(error.to_string()));
                        }
                        break;
                    }
                }
            }
        }
        (outcomes, unsure)
    }

    async fn hold(&mut self, rows: &[NewUse]) -> Result<Vec<(Uuid, Uuid)>, sqlx::Error> {
        let fence = self.fence.clone();
        store::hold(self.conn().await?, &fence, rows).await
    }

    /// Every row was persisted or already live: a row PostgreSQL did not write had a live use that
    /// memory did not know of, so that coupon is reloaded.
    fn written(
        &self,
        rows: &[NewUse],
        written: &[(Uuid, Uuid)],
        outcomes: &mut HashMap<(Uuid, Uuid), Result<(), String>>,
        unsure: &mut HashSet<Uuid>,
    ) {
        let written: HashSet<&(Uuid, Uuid)> = written.iter().collect();
        for row in rows {
            let key = (row.coupon_id, row.order_id);
            if !written.contains(&key) {
                tracing::warn!(shard = self.index, coupon = %row.coupon_id, order = %row.order_id, "the use was already live in PostgreSQL; reloading the coupon");
                unsure.insert(row.coupon_id);
            }
            outcomes.insert(key, Ok(()));
        }
    }

    /// Moves a held use to `to`. Idempotent: a use already there, or gone, is left as it is; a
    /// committed use is never released. Committing a use the order does not hold is refused.
    async fn settle(&mut self, coupon: Uuid, order: Uuid, to: Settled) -> Result<(), CouponError> {
        self.load(coupon).await?;
        let current = self
            .coupons
            .get(&coupon)
            .and_then(|uses| uses.orders.get(&order))
            .map(|u| u.state);
        match (current, to) {
            (Some(State::Committed), _) | (None, Settled::Released) => return Ok(()),
            (None, Settled::Committed) => return Err(CouponError::NotHeld),
            // Flushed before every settle: nothing is being decided.
            (Some(State::Deciding | State::Held), _) => {}
        }
        let fence = self.fence.clone();
        let written = match self.conn().await {
            Ok(conn) => store::settle(conn, &fence, coupon, order, to).await,
            Err(error) => Err(error),
        };
        match written {
            Ok(true) => {
                if let Some(uses) = self.coupons.get_mut(&coupon) {
                    match to {
                        Settled::Committed => {
                            if let Some(held) = uses.orders.get_mut(&order)
                                && held.state != State::Committed
                            {
                                held.state = State::Committed;
                                uses.held -= 1;
                            }
                        }
                        Settled::Released => uses.remove(order),
                    }
                }
                self.report();
                Ok(())
            }
            Ok(false) => {
                // PostgreSQL had no held use where memory had one: memory was wrong; reload it.
                tracing::error!(shard = self.index, %coupon, %order, "no held use in PostgreSQL where memory had one; reloading the coupon");
                self.coupons.remove(&coupon);
                Err(CouponError::Storage(
                    "the coupon's uses changed under the limiter; retry".into(),
                ))
            }
            Err(error) => {
                // Whether it applied may be unknown: reload the coupon on its next touch.
                self.unsure_after(&error);
                self.coupons.remove(&coupon);
                Err(storage(&error))
            }
        }
    }
}

impl ShopActor for CouponLimiterShard {
    const KIND: &'static str = Self::KIND_NAME;
    type Msg = LimiterMsg;
    type State = LimiterState;
    type Arguments = LimiterArgs;

    async fn pre_start(
        &self,
        myself: Mailbox<LimiterMsg>,
        args: LimiterArgs,
    ) -> Result<LimiterState, ActorProcessingErr> {
        let mut conn = store::connect(&args.db, &args.fence, args.index).await?;
        // Rebuild: every coupon of this shard with a held use (others load on first touch).
        let coupons: Vec<Uuid> = store::coupons_with_held_uses(&mut conn)
            .await?
            .into_iter()
            .filter(|coupon| shard_index(*coupon, args.count) == args.index)
            .collect();
        let mut state = LimiterState {
            index: args.index,
            count: args.count,
            db: args.db,
            fence: args.fence,
            conn: Some(conn),
            coupons: HashMap::new(),
            pending: Vec::new(),
            flush_queued: false,
            shard_label: args.index.to_string(),
            orphan_grace: args.orphan_grace,
        };
        for coupon in coupons {
            state.load(coupon).await?;
        }
        state.report();
        metrics::gauge!("coupon_uses_stranded", "shard" => state.shard_label.clone()).set(0.0);
        myself.cast_every(args.reconcile_interval, || LimiterMsg::Reconcile);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: Mailbox<LimiterMsg>,
        message: LimiterMsg,
        state: &mut LimiterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LimiterMsg::Reserve {
                coupon,
                order,
                reply,
                ..
            } if reply.is_closed() => {
                // The caller gave up before its turn: nothing is decided for it.
                metrics::counter!("coupon_reservations_abandoned_total").increment(1);
                tracing::debug!(shard = state.index, %coupon, %order, "a reservation nobody waits for is dropped");
            }
            LimiterMsg::Reserve {
                coupon,
                order,
                user,
                limits,
                reply,
            } => match state.decide(coupon, order, user, limits).await {
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
                Ok(Some(State::Held | State::Committed)) => {
                    let _ = reply.send(Ok(()));
                }
                Ok(decided) => {
                    state.pending.push(Pending {
                        coupon,
                        order,
                        user,
                        row: decided.is_none(),
                        reply,
                    });
                    if !state.flush_queued {
                        state.flush_queued = true;
                        if myself.cast(LimiterMsg::Flush).is_err() {
                            state.flush().await;
                        }
                    }
                }
            },
            LimiterMsg::Flush => state.flush().await,
            LimiterMsg::Commit {
                coupon,
                order,
                reply,
            } => {
                state.flush().await;
                let _ = reply.send(state.settle(coupon, order, Settled::Committed).await);
            }
            LimiterMsg::Release {
                coupon,
                order,
                reply,
            } => {
                state.flush().await;
                let _ = reply.send(state.settle(coupon, order, Settled::Released).await);
            }
            LimiterMsg::Used { coupon, reply } => {
                state.flush().await;
                let answer = match state.load(coupon).await {
                    Ok(()) => state.coupons.get(&coupon).map(Uses::live).ok_or_else(|| {
                        CouponError::Storage("the coupon's uses did not load".into())
                    }),
                    Err(error) => Err(error),
                };
                let _ = reply.send(answer);
            }
            LimiterMsg::Reconcile => {
                if let Err(error) = state.reconcile().await {
                    tracing::error!(
                        shard = state.index,
                        ?error,
                        "the coupon reconciliation failed; the next pass tries again"
                    );
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: Mailbox<LimiterMsg>,
        state: &mut LimiterState,
    ) -> Result<(), ActorProcessingErr> {
        // Whatever was decided but not yet persisted is persisted (or refused) before stopping.
        state.flush().await;
        Ok(())
    }
}
