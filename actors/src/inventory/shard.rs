//! One inventory shard: the only writer of its variants' availability. Stock is loaded from
//! PostgreSQL on first touch (on hand minus live holds) and live holds at start, so a restarted
//! shard rebuilds exactly what was persisted. Reservations are group-committed: a `Reserve` is
//! decided in memory and queued; a `Flush` the shard sends itself (after whatever is already in
//! its mailbox) starts writing the whole batch in one statement, and its callers are answered
//! once it is committed. Up to [`WRITES_IN_FLIGHT`] batches are written at once while the shard
//! goes on deciding; anything else that touches holds in PostgreSQL (commit, release, expiry,
//! stock edits, reconciliation) first waits for every batch being written.
//!
//! A batch's write outlives the shard that started it (a killed or panicked shard's task goes on,
//! and answers its callers once the write commits). Each write holds its shard's [`Handover`]
//! shared, and the next incarnation of the shard takes it exclusively before it reads the live
//! holds: it starts from what its predecessor wrote, not from a snapshot taken while those writes
//! were still landing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{ActorProcessingErr, RpcReplyPort};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::store::{self, HoldRow};
use super::{Demand, EditFailure, InventoryError, Shortage, Writes, shard_index};
use crate::instrument::{Mailbox, ShopActor};
use crate::partition::Fence;

pub enum ShardMsg {
    Available(
        Vec<Uuid>,
        RpcReplyPort<Result<Vec<(Uuid, i32)>, InventoryError>>,
    ),
    Reserve {
        owner: Uuid,
        lines: Vec<Demand>,
        expires_at: DateTime<Utc>,
        reply: RpcReplyPort<Result<(), InventoryError>>,
    },
    /// Start writing the reservations decided since the last flush; their callers are answered
    /// once the write commits.
    Flush,
    /// A batch's write failed: undo its reservations in memory and answer its callers.
    WriteFailed,
    /// Sells `owner`'s holds; answers the units `owner` has sold on this shard, those sold by an
    /// earlier commit included, so that a repeated commit answers the same.
    Commit {
        owner: Uuid,
        reply: RpcReplyPort<Result<i32, InventoryError>>,
    },
    /// Returns `owner`'s sold units on this shard to the shelf; answers the units returned.
    Restock {
        owner: Uuid,
        reply: RpcReplyPort<Result<i32, InventoryError>>,
    },
    Release {
        owner: Uuid,
        reply: RpcReplyPort<Result<i32, InventoryError>>,
    },
    /// Sets a variant's units on hand, together with the caller's `writes` (if any) in one
    /// transaction that commits only if the stock change is allowed and the writes succeed.
    SetOnHand {
        variant: Uuid,
        on_hand: i32,
        writes: Option<Writes>,
        reply: RpcReplyPort<Result<(), EditFailure>>,
    },
    /// Release holds whose time is up (the shard's own timer).
    ExpireDue,
    Reconcile(RpcReplyPort<Result<u32, InventoryError>>),
}

/// What one shard's incarnations share: the writes still landing, and whether a new incarnation is
/// waiting for them.
#[derive(Debug, Default)]
pub struct Handover {
    /// Held shared by every batch write in flight; taken exclusively by a starting shard.
    writes: Arc<tokio::sync::RwLock<()>>,
    waiting: AtomicBool,
}

impl Handover {
    /// True while a starting shard waits for its predecessor's writes.
    pub fn successor_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire)
    }

    /// Waits until no write of an earlier incarnation can still land.
    async fn drained(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        if let Ok(guard) = self.writes.try_write() {
            return guard;
        }
        self.waiting.store(true, Ordering::Release);
        tracing::info!("waiting for the previous incarnation's writes to land before rebuilding");
        let guard = self.writes.write().await;
        self.waiting.store(false, Ordering::Release);
        guard
    }
}

#[derive(Clone)]
pub struct ShardArgs {
    pub index: usize,
    pub count: usize,
    pub db: PgPool,
    /// This node's partitions: every write of holds and stock proves it still owns them.
    pub fence: Fence,
    pub expiry_interval: Duration,
    pub reconcile_interval: Duration,
    /// Shared by every incarnation of this shard.
    pub handover: Arc<Handover>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Stock {
    on_hand: i32,
    held: i32,
}

impl Stock {
    fn available(self) -> i32 {
        (self.on_hand - self.held).max(0)
    }
}

struct Pending {
    owner: Uuid,
    lines: Vec<Demand>,
    expires_at: DateTime<Utc>,
    reply: RpcReplyPort<Result<(), InventoryError>>,
}

/// Most batches of reservations written at once (each takes a pool connection for its commit).
const WRITES_IN_FLIGHT: usize = 4;

/// A batch being written. Its task answers the callers when the write commits; when it fails it
/// hands the batch back, to be undone in memory before its callers are answered.
struct Write {
    /// Who and what the batch holds, for when the task itself is lost (it panicked).
    holds: Vec<(Uuid, Vec<Uuid>)>,
    task: JoinHandle<Option<(Vec<Pending>, sqlx::Error)>>,
}

pub struct ShardState {
    index: usize,
    count: usize,
    db: PgPool,
    fence: Fence,
    stock: HashMap<Uuid, Stock>,
    /// Live holds by owner: (variant, units, expiry).
    holds: HashMap<Uuid, Vec<(Uuid, i32, DateTime<Utc>)>>,
    pending: Vec<Pending>,
    flush_queued: bool,
    writing: VecDeque<Write>,
    handover: Arc<Handover>,
    shard_label: String,
    /// Owners whose last commit or release failed with an unknown outcome: their holds are read
    /// back from PostgreSQL before anything else is decided about them.
    unsure: HashSet<Uuid>,
}

pub struct InventoryShard;

impl InventoryShard {
    pub const KIND_NAME: &'static str = "inventory_shard";
}

impl ShardState {
    /// Makes sure every variant of `ids` this shard owns is in memory.
    async fn load(&mut self, ids: &[Uuid]) -> Result<(), InventoryError> {
        let missing: Vec<Uuid> = ids
            .iter()
            .filter(|id| !self.stock.contains_key(id))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        for (variant, on_hand, held) in store::load_stock(&self.db, &missing).await? {
            self.stock.insert(variant, Stock { on_hand, held });
        }
        // Variants that do not exist have nothing to sell.
        for id in missing {
            self.stock.entry(id).or_default();
        }
        Ok(())
    }

    fn report(&self) {
        let held: i64 = self.stock.values().map(|s| i64::from(s.held)).sum();
        metrics::gauge!("inventory_reserved_units", "shard" => self.shard_label.clone())
            .set(held as f64);
    }

    /// Starts writing the reservations decided since the last flush (after the oldest batch
    /// being written, when [`WRITES_IN_FLIGHT`] already are).
    async fn flush(&mut self, myself: &Mailbox<ShardMsg>) {
        self.flush_queued = false;
        if self.pending.is_empty() {
            return;
        }
        while self.writing.len() >= WRITES_IN_FLIGHT {
            self.finish_oldest().await;
        }
        let batch = std::mem::take(&mut self.pending);
        let rows: Vec<HoldRow> = batch
            .iter()
            .flat_map(|p| {
                p.lines.iter().map(|line| HoldRow {
                    owner_id: p.owner,
                    variant_id: line.variant_id,
                    quantity: line.quantity,
                    expires_at: p.expires_at,
                })
            })
            .collect();
        metrics::histogram!("inventory_flush_batch_size").record(batch.len() as f64);
        let holds = batch
            .iter()
            .map(|p| (p.owner, p.lines.iter().map(|l| l.variant_id).collect()))
            .collect();
        let (db, fence, myself) = (self.db.clone(), self.fence.clone(), myself.clone());
        // Taken here, not in the task: a successor must not slip in between the spawn and the
        // task's first poll. Only a starting incarnation ever takes it exclusively, so this
        // does not wait.
        let landing = self.handover.writes.clone().read_owned().await;
        let task = tokio::spawn(async move {
            let _landing = landing;
            match store::insert_holds(&db, &fence, &rows).await {
                Ok(()) => {
                    for pending in batch {
                        let _ = pending.reply.send(Ok(()));
                    }
                    None
                }
                Err(error) => {
                    // Wakes the shard to undo the batch; if it is stopping, its last settle does.
                    if myself.cast(ShardMsg::WriteFailed).is_err() {
                        tracing::debug!("the shard is stopping; its settle undoes the batch");
                    }
                    Some((batch, error))
                }
            }
        });
        self.writing.push_back(Write { holds, task });
    }

    /// Waits for the oldest batch being written.
    async fn finish_oldest(&mut self) {
        if let Some(write) = self.writing.pop_front() {
            self.finish(write).await;
        }
    }

    /// Finishes every batch whose write is done (a failed one woke the shard).
    async fn finish_done(&mut self) {
        while let Some(at) = self.writing.iter().position(|w| w.task.is_finished()) {
            if let Some(write) = self.writing.remove(at) {
                self.finish(write).await;
            }
        }
    }

    /// Waits for one batch's write; undoes the batch in memory if the write failed.
    async fn finish(&mut self, write: Write) {
        match write.task.await {
            Ok(None) => {}
            // PostgreSQL answered with an error: the transaction rolled back, nothing landed.
            Ok(Some((batch, error @ sqlx::Error::Database(_)))) => {
                tracing::error!(shard = self.index, %error, "persisting reservations failed; undoing them");
                for pending in batch {
                    self.undo(&pending);
                    let _ = pending
                        .reply
                        .send(Err(InventoryError::Storage(error.to_string())));
                }
            }
            // Anything else (the connection broke, the COMMIT's answer was lost) may have
            // landed: memory no longer claims to know, and reads the holds back before it
            // decides anything about their owners (their callers release them).
            Ok(Some((batch, error))) => {
                tracing::error!(shard = self.index, %error, "persisting reservations has an unknown outcome; reading them back");
                self.forget_all(write.holds);
                for pending in batch {
                    let _ = pending
                        .reply
                        .send(Err(InventoryError::Storage(error.to_string())));
                }
            }
            // The write's task panicked: whether its rows landed is unknown (its callers' replies
            // were dropped, which they see as an error). Memory no longer claims to know.
            Err(error) => {
                tracing::error!(shard = self.index, %error, "a reservation write was lost; reloading its holds");
                self.forget_all(write.holds);
            }
        }
        self.report();
    }

    /// Writes whatever was decided and waits until every batch is written: holds in PostgreSQL
    /// are then exactly those in memory.
    async fn settle_writes(&mut self, myself: &Mailbox<ShardMsg>) {
        self.flush(myself).await;
        while !self.writing.is_empty() {
            self.finish_oldest().await;
        }
    }

    fn undo(&mut self, pending: &Pending) {
        for line in &pending.lines {
            if let Some(stock) = self.stock.get_mut(&line.variant_id) {
                stock.held -= line.quantity;
            }
        }
        if let Some(holds) = self.holds.get_mut(&pending.owner) {
            holds.retain(|(variant, _, expires)| {
                !(pending.lines.iter().any(|l| l.variant_id == *variant)
                    && *expires == pending.expires_at)
            });
            if holds.is_empty() {
                self.holds.remove(&pending.owner);
            }
        }
    }

    async fn reserve(&mut self, lines: &[Demand]) -> Result<(), InventoryError> {
        let ids: Vec<Uuid> = lines.iter().map(|l| l.variant_id).collect();
        self.load(&ids).await?;
        let short: Vec<Shortage> = lines
            .iter()
            .filter_map(|line| {
                let available = self
                    .stock
                    .get(&line.variant_id)
                    .copied()
                    .unwrap_or_default()
                    .available();
                (available < line.quantity).then_some(Shortage {
                    variant_id: line.variant_id,
                    requested: line.quantity,
                    available,
                })
            })
            .collect();
        if !short.is_empty() {
            return Err(InventoryError::Short(short));
        }
        for line in lines {
            if let Some(stock) = self.stock.get_mut(&line.variant_id) {
                stock.held += line.quantity;
            }
        }
        Ok(())
    }

    /// Commits `owner`'s holds. With none in memory, the owner's earlier sales on this shard
    /// are read back: holds are committed all at once, so an owner with holds here has sold
    /// nothing here yet, and one without has sold whatever the table says.
    async fn commit(&mut self, owner: Uuid) -> Result<i32, InventoryError> {
        let variants: Vec<Uuid> = self
            .holds
            .get(&owner)
            .map(|holds| holds.iter().map(|(v, _, _)| *v).collect())
            .unwrap_or_default();
        if variants.is_empty() {
            return Ok(self.mine(store::committed(&self.db, owner).await?));
        }
        let (sold, total) = match store::commit(&self.db, &self.fence, owner, &variants).await {
            Ok(answer) => answer,
            Err(error) => {
                self.forget(owner, &variants);
                return Err(error.into());
            }
        };
        for (variant, quantity) in sold {
            if let Some(stock) = self.stock.get_mut(&variant) {
                stock.on_hand -= quantity;
                stock.held -= quantity;
            }
        }
        self.holds.remove(&owner);
        self.report();
        Ok(total)
    }

    /// A write about `owner` on `variants` failed and may or may not have landed: memory no
    /// longer claims to know. The variants reload on their next touch, the owner's holds before
    /// the next decision about them ([`Self::settle_unsure`]).
    fn forget(&mut self, owner: Uuid, variants: &[Uuid]) {
        for variant in variants {
            self.stock.remove(variant);
        }
        self.holds.remove(&owner);
        self.unsure.insert(owner);
    }

    /// [`forget`](Self::forget) for every owner of a batch whose write has an unknown outcome.
    fn forget_all(&mut self, holds: Vec<(Uuid, Vec<Uuid>)>) {
        for (owner, variants) in holds {
            self.forget(owner, &variants);
        }
    }

    /// Reads back the holds of every owner whose last write had an unknown outcome.
    async fn settle_unsure(&mut self) -> Result<(), InventoryError> {
        if self.unsure.is_empty() {
            return Ok(());
        }
        let owners: Vec<Uuid> = self.unsure.iter().copied().collect();
        let rows = store::holds_of(&self.db, &owners).await?;
        for owner in &owners {
            self.holds.remove(owner);
        }
        let mut variants = Vec::new();
        for hold in rows {
            if shard_index(hold.variant_id, self.count) != self.index {
                continue;
            }
            variants.push(hold.variant_id);
            self.holds.entry(hold.owner_id).or_default().push((
                hold.variant_id,
                hold.quantity,
                hold.expires_at,
            ));
        }
        self.load(&variants).await?;
        self.unsure.clear();
        Ok(())
    }

    async fn restock(&mut self, owner: Uuid) -> Result<i32, InventoryError> {
        let variants: Vec<Uuid> = store::committed(&self.db, owner)
            .await?
            .into_iter()
            .map(|(variant, _)| variant)
            .filter(|variant| shard_index(*variant, self.count) == self.index)
            .collect();
        if variants.is_empty() {
            return Ok(0);
        }
        self.load(&variants).await?;
        let returned = match store::restock(&self.db, &self.fence, owner, &variants).await {
            Ok(returned) => returned,
            Err(error) => {
                // Whether the units went back is unknown: reload the variants on next touch.
                for variant in &variants {
                    self.stock.remove(variant);
                }
                return Err(error.into());
            }
        };
        let mut units = 0;
        for (variant, quantity) in returned {
            units += quantity;
            if let Some(stock) = self.stock.get_mut(&variant) {
                stock.on_hand += quantity;
            }
        }
        Ok(units)
    }

    /// The units of `rows` whose variants this shard owns.
    fn mine(&self, rows: Vec<(Uuid, i32)>) -> i32 {
        rows.into_iter()
            .filter(|(variant, _)| shard_index(*variant, self.count) == self.index)
            .map(|(_, quantity)| quantity)
            .sum()
    }

    /// The stock change and the caller's writes commit together or not at all, and memory follows
    /// only what was committed. The writes run in this shard's turn, so no reservation or commit of
    /// the variant can slip between the check against held units and the commit.
    async fn set_on_hand<R>(
        &mut self,
        variant: Uuid,
        on_hand: i32,
        writes: Option<Writes>,
        reply: &RpcReplyPort<R>,
    ) -> Result<(), EditFailure> {
        self.load(&[variant]).await?;
        let held = self.stock.get(&variant).map_or(0, |s| s.held);
        if on_hand < held {
            return Err(InventoryError::BelowHeld { held }.into());
        }
        let mut tx = self.db.begin().await.map_err(InventoryError::from)?;
        self.fence
            .check(&mut tx, [variant])
            .await
            .map_err(InventoryError::from)?;
        if let Some(writes) = writes {
            // Dropping `tx` on the way out rolls back whatever the writes did.
            writes(&mut tx).await.map_err(EditFailure::Writes)?;
        }
        store::set_on_hand(&mut tx, variant, on_hand)
            .await
            .map_err(InventoryError::from)?;
        if reply.is_closed() {
            // The caller has given up (timed out) and answered its client with an error: applying
            // the change now would make that failed request take effect.
            return Err(EditFailure::Abandoned);
        }
        if let Err(error) = tx.commit().await {
            // Whether PostgreSQL committed is unknown: forget the variant, so that its next touch
            // reloads what was persisted instead of trusting either guess.
            self.stock.remove(&variant);
            return Err(InventoryError::from(error).into());
        }
        if let Some(stock) = self.stock.get_mut(&variant) {
            stock.on_hand = on_hand;
        }
        Ok(())
    }

    async fn release(
        &mut self,
        owners: &[Uuid],
        only_expired: bool,
    ) -> Result<i32, InventoryError> {
        let variants: Vec<Uuid> = owners
            .iter()
            .filter_map(|owner| self.holds.get(owner))
            .flatten()
            .map(|(variant, _, _)| *variant)
            .collect();
        if variants.is_empty() {
            return Ok(0);
        }
        let released =
            match store::release(&self.db, &self.fence, owners, &variants, only_expired).await {
                Ok(released) => released,
                Err(error) => {
                    for owner in owners {
                        self.forget(*owner, &variants);
                    }
                    return Err(error.into());
                }
            };
        let mut units = 0;
        for (owner, variant, quantity) in released {
            units += quantity;
            if let Some(stock) = self.stock.get_mut(&variant) {
                stock.held -= quantity;
            }
            if let Some(holds) = self.holds.get_mut(&owner) {
                if let Some(at) = holds
                    .iter()
                    .position(|(v, q, _)| *v == variant && *q == quantity)
                {
                    holds.remove(at);
                }
                if holds.is_empty() {
                    self.holds.remove(&owner);
                }
            }
        }
        self.report();
        Ok(units)
    }
}

impl ShopActor for InventoryShard {
    const KIND: &'static str = Self::KIND_NAME;
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        myself: Mailbox<ShardMsg>,
        args: ShardArgs,
    ) -> Result<ShardState, ActorProcessingErr> {
        let mut state = ShardState {
            index: args.index,
            count: args.count,
            db: args.db,
            fence: args.fence,
            stock: HashMap::new(),
            holds: HashMap::new(),
            unsure: HashSet::new(),
            pending: Vec::new(),
            flush_queued: false,
            writing: VecDeque::new(),
            handover: args.handover.clone(),
            shard_label: args.index.to_string(),
        };
        // Rebuild: every live hold of this shard's variants, and those variants' stock, once the
        // writes an earlier incarnation started have landed (or failed).
        let drained = args.handover.drained().await;
        let holds: Vec<HoldRow> = store::live_holds(&state.db)
            .await?
            .into_iter()
            .filter(|hold| shard_index(hold.variant_id, state.count) == state.index)
            .collect();
        let variants: Vec<Uuid> = holds.iter().map(|h| h.variant_id).collect();
        state.load(&variants).await?;
        drop(drained);
        for hold in holds {
            state.holds.entry(hold.owner_id).or_default().push((
                hold.variant_id,
                hold.quantity,
                hold.expires_at,
            ));
        }
        state.report();
        // Memory was just read from PostgreSQL: nothing mismatches yet. Exported from the start,
        // so that the mismatch alert tells a healthy shard from one not scraped.
        metrics::gauge!("inventory_reconciliation_mismatches", "shard" => state.shard_label.clone())
            .set(0.0);
        myself.cast_every(args.expiry_interval, || ShardMsg::ExpireDue);
        myself.cast_every(args.reconcile_interval, || {
            // A reconciliation nobody waits for: it only sets the gauge.
            let (reply, _) = ractor::concurrency::oneshot();
            ShardMsg::Reconcile(reply.into())
        });
        Ok(state)
    }

    async fn handle(
        &self,
        myself: Mailbox<ShardMsg>,
        message: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ShardMsg::Available(ids, reply) => {
                let answer = state.load(&ids).await.map(|()| {
                    ids.iter()
                        .map(|id| {
                            (
                                *id,
                                state.stock.get(id).copied().unwrap_or_default().available(),
                            )
                        })
                        .collect()
                });
                let _ = reply.send(answer);
            }
            ShardMsg::Reserve {
                owner,
                lines,
                expires_at,
                reply,
            } => match state.reserve(&lines).await {
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
                Ok(()) => {
                    let holds = state.holds.entry(owner).or_default();
                    holds.extend(lines.iter().map(|l| (l.variant_id, l.quantity, expires_at)));
                    state.pending.push(Pending {
                        owner,
                        lines,
                        expires_at,
                        reply,
                    });
                    if !state.flush_queued {
                        state.flush_queued = true;
                        if myself.cast(ShardMsg::Flush).is_err() {
                            state.settle_writes(&myself).await;
                        }
                    }
                }
            },
            ShardMsg::Flush => state.flush(&myself).await,
            ShardMsg::WriteFailed => state.finish_done().await,
            ShardMsg::Commit { owner, reply } => {
                state.settle_writes(&myself).await;
                let answer = match state.settle_unsure().await {
                    Ok(()) => state.commit(owner).await,
                    Err(error) => Err(error),
                };
                let _ = reply.send(answer);
            }
            ShardMsg::Restock { owner, reply } => {
                state.settle_writes(&myself).await;
                let _ = reply.send(state.restock(owner).await);
            }
            ShardMsg::Release { owner, reply } => {
                state.settle_writes(&myself).await;
                let answer = match state.settle_unsure().await {
                    Ok(()) => state.release(&[owner], false).await,
                    Err(error) => Err(error),
                };
                let _ = reply.send(answer);
            }
            ShardMsg::SetOnHand {
                variant,
                on_hand,
                writes,
                reply,
            } => {
                state.settle_writes(&myself).await;
                let answer = state.set_on_hand(variant, on_hand, writes, &reply).await;
                let _ = reply.send(answer);
            }
            ShardMsg::ExpireDue => {
                state.settle_writes(&myself).await;
                if let Err(error) = state.settle_unsure().await {
                    // Nothing is released on a guess; the next tick reads the holds back.
                    tracing::warn!(shard = state.index, %error, "reading back unsure holds failed");
                    return Ok(());
                }
                let now = Utc::now();
                let due: Vec<Uuid> = state
                    .holds
                    .iter()
                    .filter(|(_, holds)| holds.iter().any(|(_, _, expires)| *expires <= now))
                    .map(|(owner, _)| *owner)
                    .collect();
                if !due.is_empty() {
                    match state.release(&due, true).await {
                        Ok(units) => {
                            tracing::debug!(shard = state.index, units, "expired holds released")
                        }
                        Err(error) => {
                            tracing::warn!(shard = state.index, %error, "releasing expired holds failed")
                        }
                    }
                }
            }
            ShardMsg::Reconcile(reply) => {
                state.settle_writes(&myself).await;
                let ids: Vec<Uuid> = state.stock.keys().copied().collect();
                let answer = store::load_stock(&state.db, &ids).await.map(|rows| {
                    let found: HashMap<Uuid, (i32, i32)> =
                        rows.into_iter().map(|(v, on_hand, held)| (v, (on_hand, held))).collect();
                    let mismatches = state
                        .stock
                        .iter()
                        .filter(|(variant, stock)| {
                            let (on_hand, held) = found.get(variant).copied().unwrap_or((0, 0));
                            stock.on_hand != on_hand || stock.held != held || stock.held < 0
                        })
                        .count() as u32;
                    metrics::gauge!("inventory_reconciliation_mismatches", "shard" => state.shard_label.clone())
                        .set(f64::from(mismatches));
                    mismatches
                });
                let _ = reply.send(answer.map_err(InventoryError::from));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: Mailbox<ShardMsg>,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        // Whatever was decided but not yet persisted is persisted (or refused) before stopping.
        state.settle_writes(&myself).await;
        Ok(())
    }
}
