//! Inventory: N shard actors, each the only writer of the availability of its variants
//! (shard = hash(variant_id) mod N), under the inventory supervisor. "Single writer, not locks":
//! 10,000 buyers of 100 units are decided one message at a time in memory, and every decision is
//! persisted (group-committed) before it is acknowledged. The [`Inventory`] handle is what the rest
//! of the shop calls: it expands bundles into component demand and makes a multi-shard
//! reservation all-or-nothing.

mod shard;
mod store;

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use futures::{FutureExt, TryFutureExt};
use ractor::ActorCell;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::instrument::{ActorError, Slot};
use crate::partition::Fence;
use crate::root::{ChildSpec, RestartPolicy, SupervisorKind};
pub use shard::{Handover, InventoryShard, ShardArgs, ShardMsg};

/// One line of demand: so many units of a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    pub variant_id: Uuid,
    pub quantity: i32,
}

/// A line that cannot be served: what was asked and what is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shortage {
    pub variant_id: Uuid,
    pub requested: i32,
    pub available: i32,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InventoryError {
    #[error("not enough stock")]
    Short(Vec<Shortage>),
    #[error("stock on hand cannot go below the {held} units held by pending orders")]
    BelowHeld { held: i32 },
    #[error(transparent)]
    Actor(#[from] ActorError),
    #[error("inventory storage: {0}")]
    Storage(String),
}

impl From<sqlx::Error> for InventoryError {
    fn from(error: sqlx::Error) -> Self {
        if crate::partition::is_not_owner(&error) {
            return Self::Actor(ActorError::NotOwner);
        }
        Self::Storage(error.to_string())
    }
}

/// Writes that must commit together with a stock change, or not at all: they run in the
/// transaction that sets the units on hand (see [`Inventory::set_on_hand_with`]). Their error is
/// the caller's own type, carried through the shard unopened.
pub type Writes = Box<
    dyn for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<(), Box<dyn Any + Send>>>
        + Send,
>;

/// Why a stock change with writes was not applied (as the shard answers it).
pub enum EditFailure {
    Inventory(InventoryError),
    /// The caller's writes failed; their error, as the caller's type.
    Writes(Box<dyn Any + Send>),
    /// The caller stopped waiting before the commit, so nothing was committed.
    Abandoned,
}

impl From<InventoryError> for EditFailure {
    fn from(error: InventoryError) -> Self {
        Self::Inventory(error)
    }
}

/// Why [`Inventory::set_on_hand_with`] applied nothing.
#[derive(Debug)]
pub enum EditError<E> {
    Inventory(InventoryError),
    Writes(E),
}

pub struct InventoryKind;
impl SupervisorKind for InventoryKind {
    const KIND: &'static str = "inventory_supervisor";
}

#[derive(Debug, Clone)]
pub struct InventoryConfig {
    pub shards: usize,
    /// How often each shard looks for expired holds.
    pub expiry_interval: Duration,
    /// How often each shard checks its memory against PostgreSQL.
    pub reconcile_interval: Duration,
    pub call_timeout: Duration,
    /// This node's partitions (every shard's writes are fenced by them).
    pub fence: Fence,
}

/// The typed handle to the inventory shards.
#[derive(Clone)]
pub struct Inventory {
    shards: Vec<Slot<ShardMsg>>,
    /// Per shard, what its incarnations share (see [`Handover`]).
    handovers: Vec<Arc<Handover>>,
    db: PgPool,
    timeout: Duration,
    /// Variants known not to be bundles. A product's type never changes and a variant never
    /// changes product, so once read this holds for good: their demand is their own, with no
    /// read of `bundle_components` (a cart add and a checkout each made one).
    plain: Arc<RwLock<HashSet<Uuid>>>,
}

/// The shards that may hold anything for an owner: the ones its reservation went to, or every
/// shard when that is not known (a saga resumed after a restart). Committing, releasing and
/// restocking ask only these; the others hold nothing for the owner, so their answer is 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holding {
    shards: Option<BTreeSet<usize>>,
}

impl Holding {
    /// Not known: every shard is asked.
    pub fn anywhere() -> Self {
        Self { shards: None }
    }

    fn on(shards: impl IntoIterator<Item = usize>) -> Self {
        Self {
            shards: Some(shards.into_iter().collect()),
        }
    }

    /// Both owners' shards (a checkout reserves paid lines and gifts apart).
    pub fn and(self, other: Holding) -> Self {
        match (self.shards, other.shards) {
            (Some(mut one), Some(two)) => {
                one.extend(two);
                Self { shards: Some(one) }
            }
            _ => Self::anywhere(),
        }
    }
}

impl Inventory {
    /// The handle and the supervisor's child spec (registered as `{prefix}inventory`, shards as
    /// `{prefix}inventory-shard-{i}`).
    pub fn new(
        prefix: &str,
        db: PgPool,
        config: &InventoryConfig,
        policy: RestartPolicy,
        supervisor_slot: Slot<crate::root::RootMsg>,
    ) -> (Self, ChildSpec) {
        let count = config.shards.max(1);
        let mut shards = Vec::with_capacity(count);
        let mut specs = Vec::with_capacity(count);
        let mut handovers = Vec::with_capacity(count);
        for index in 0..count {
            let slot = Slot::empty(InventoryShard::KIND_NAME);
            let handover = Arc::<Handover>::default();
            handovers.push(handover.clone());
            let args = ShardArgs {
                index,
                count,
                db: db.clone(),
                fence: config.fence.clone(),
                expiry_interval: config.expiry_interval,
                reconcile_interval: config.reconcile_interval,
                handover,
            };
            specs.push(ChildSpec::new(
                format!("{prefix}inventory-shard-{index}"),
                slot.clone(),
                move || (InventoryShard, args.clone()),
            ));
            shards.push(slot);
        }
        let spec = ChildSpec::supervisor::<InventoryKind>(
            format!("{prefix}inventory"),
            supervisor_slot,
            specs,
            policy,
            Duration::from_secs(10),
        );
        (
            Self {
                shards,
                handovers,
                db,
                timeout: config.call_timeout,
                plain: Arc::default(),
            },
            spec,
        )
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn shard_of(&self, variant: Uuid) -> usize {
        shard_index(variant, self.shards.len())
    }

    /// The actor now running shard `index` (tests kill it to see it rebuilt).
    pub fn shard_cell(&self, index: usize) -> Option<ActorCell> {
        self.shards
            .get(index)?
            .get()
            .ok()
            .map(|mailbox| mailbox.cell())
    }

    /// True while a restarted shard `index` waits for its predecessor's writes to land (tests).
    pub fn successor_waiting(&self, index: usize) -> bool {
        self.handovers
            .get(index)
            .is_some_and(|handover| handover.successor_waiting())
    }

    /// Bundles become the demand of their components; demand for the same variant is summed.
    pub async fn expand(&self, demand: &[Demand]) -> Result<Vec<Demand>, InventoryError> {
        let unknown: Vec<Uuid> = {
            let plain = self.plain.read().unwrap_or_else(|e| e.into_inner());
            demand
                .iter()
                .map(|d| d.variant_id)
                .filter(|v| !plain.contains(v))
                .collect()
        };
        let components = if unknown.is_empty() {
            HashMap::new()
        } else {
            let read = store::bundle_components(&self.db, &unknown).await?;
            self.plain
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .extend(read.plain);
            read.components
        };
        let mut total: BTreeMap<Uuid, i32> = BTreeMap::new();
        for line in demand {
            match components.get(&line.variant_id) {
                Some(parts) => {
                    for (component, per_bundle) in parts {
                        *total.entry(*component).or_default() += per_bundle * line.quantity;
                    }
                }
                None => *total.entry(line.variant_id).or_default() += line.quantity,
            }
        }
        Ok(total
            .into_iter()
            .map(|(variant_id, quantity)| Demand {
                variant_id,
                quantity,
            })
            .collect())
    }

    fn by_shard(&self, demand: &[Demand]) -> BTreeMap<usize, Vec<Demand>> {
        let mut grouped: BTreeMap<usize, Vec<Demand>> = BTreeMap::new();
        for line in demand {
            grouped
                .entry(self.shard_of(line.variant_id))
                .or_default()
                .push(*line);
        }
        grouped
    }

    /// Units of each (plain) variant that can be sold now.
    pub async fn available(&self, variants: &[Uuid]) -> Result<HashMap<Uuid, i32>, InventoryError> {
        let demand: Vec<Demand> = variants
            .iter()
            .map(|v| Demand {
                variant_id: *v,
                quantity: 0,
            })
            .collect();
        let mut available = HashMap::new();
        for (shard, lines) in self.by_shard(&demand) {
            let ids = lines.iter().map(|d| d.variant_id).collect();
            let answer = self.shards[shard]
                .get()?
                .call(|reply| ShardMsg::Available(ids, reply), self.timeout)
                .await??;
            available.extend(answer);
        }
        Ok(available)
    }

    /// How many units of `variant` can be sold now; for a bundle, how many whole bundles.
    pub async fn available_for(&self, variant: Uuid) -> Result<i32, InventoryError> {
        let per_unit = self
            .expand(&[Demand {
                variant_id: variant,
                quantity: 1,
            }])
            .await?;
        let ids: Vec<Uuid> = per_unit.iter().map(|d| d.variant_id).collect();
        let available = self.available(&ids).await?;
        Ok(per_unit
            .iter()
            .map(|d| available.get(&d.variant_id).copied().unwrap_or(0) / d.quantity.max(1))
            .min()
            .unwrap_or(0))
    }

    /// Holds `demand` for `owner` until `ttl` has passed, all or nothing: shards are asked in
    /// order; if any line is short, what was granted is released and every short line is
    /// reported. Answers the units held, bundles counted as their components (what a full
    /// [`commit`](Self::commit) answers).
    pub async fn reserve(
        &self,
        owner: Uuid,
        demand: &[Demand],
        ttl: Duration,
    ) -> Result<i32, InventoryError> {
        self.reserve_holding(owner, demand, ttl)
            .await
            .map(|(units, _)| units)
    }

    /// [`reserve`](Self::reserve), answering also where the holds are, for the commit, release
    /// or restock that follows.
    pub async fn reserve_holding(
        &self,
        owner: Uuid,
        demand: &[Demand],
        ttl: Duration,
    ) -> Result<(i32, Holding), InventoryError> {
        let demand = self.expand(demand).await?;
        let expires_at = Utc::now()
            + chrono::Duration::from_std(ttl).unwrap_or_else(|_| chrono::Duration::minutes(15));
        let mut granted = Vec::new();
        let mut shortages = Vec::new();
        for (shard, lines) in self.by_shard(&demand) {
            let mailbox = match self.shards[shard].get() {
                Ok(mailbox) => mailbox,
                Err(error) => {
                    self.release_from(owner, &granted).await;
                    return Err(error.into());
                }
            };
            if !shortages.is_empty() {
                // Already failing: only ask what is there, so nothing more is held meanwhile.
                let ids: Vec<Uuid> = lines.iter().map(|d| d.variant_id).collect();
                if let Ok(Ok(available)) = mailbox
                    .call(|reply| ShardMsg::Available(ids, reply), self.timeout)
                    .await
                {
                    shortages.extend(short_lines(&lines, &available.into_iter().collect()));
                }
                continue;
            }
            let answer = mailbox
                .call(
                    |reply| ShardMsg::Reserve {
                        owner,
                        lines: lines.clone(),
                        expires_at,
                        reply,
                    },
                    self.timeout,
                )
                .await;
            match answer {
                Ok(Ok(())) => granted.push(shard),
                Ok(Err(InventoryError::Short(short))) => shortages.extend(short),
                Ok(Err(error)) => {
                    // A write with an unknown outcome may have landed: released there too (the
                    // shard reads the owner's holds back first; nothing there is nothing).
                    granted.push(shard);
                    self.release_from(owner, &granted).await;
                    return Err(error);
                }
                Err(error) => {
                    // The shard may or may not have persisted the hold: release there too.
                    granted.push(shard);
                    self.release_from(owner, &granted).await;
                    return Err(error.into());
                }
            }
        }
        if shortages.is_empty() {
            Ok((
                demand.iter().map(|d| d.quantity).sum(),
                Holding::on(granted),
            ))
        } else {
            self.release_from(owner, &granted).await;
            Err(InventoryError::Short(shortages))
        }
    }

    async fn release_from(&self, owner: Uuid, shards: &[usize]) {
        for shard in shards {
            if let Err(error) = self.release_on(*shard, owner).await {
                tracing::error!(%owner, shard, %error, "compensating release failed; the hold expires on its own");
            }
        }
    }

    async fn release_on(&self, shard: usize, owner: Uuid) -> Result<i32, InventoryError> {
        self.shards[shard]
            .get()?
            .call(|reply| ShardMsg::Release { owner, reply }, self.timeout)
            .await?
    }

    /// Releases everything `owner` holds (idempotent). Returns the units released.
    pub async fn release(&self, owner: Uuid) -> Result<i32, InventoryError> {
        self.release_holding(owner, &Holding::anywhere()).await
    }

    /// [`release`](Self::release) on the shards of `holding` only.
    pub async fn release_holding(
        &self,
        owner: Uuid,
        holding: &Holding,
    ) -> Result<i32, InventoryError> {
        let mut released = 0;
        for shard in self.shards_of(holding) {
            released += self.release_on(shard, owner).await?;
        }
        Ok(released)
    }

    fn shards_of(&self, holding: &Holding) -> Vec<usize> {
        match &holding.shards {
            Some(shards) => shards.iter().copied().collect(),
            None => (0..self.shards.len()).collect(),
        }
    }

    /// Turns `owner`'s holds into sales: stock on hand goes down in the same transaction. Asks
    /// every shard, even after one failed, and answers the units `owner` has sold in all (an
    /// earlier commit's included), so the call can be repeated until it succeeds. Fewer units
    /// than the order has means some holds were gone (expired or released) before the commit.
    pub async fn commit(&self, owner: Uuid) -> Result<i32, InventoryError> {
        self.commit_holding(owner, &Holding::anywhere()).await
    }

    /// [`commit`](Self::commit) on the shards of `holding` only.
    pub async fn commit_holding(
        &self,
        owner: Uuid,
        holding: &Holding,
    ) -> Result<i32, InventoryError> {
        self.on_shards(holding, |reply| ShardMsg::Commit { owner, reply })
            .await
    }

    /// Returns what `owner` sold to the shelf (idempotent): for an order that is cancelled after
    /// part of its stock was committed. Answers the units returned by this call.
    pub async fn restock(&self, owner: Uuid) -> Result<i32, InventoryError> {
        self.restock_holding(owner, &Holding::anywhere()).await
    }

    /// [`restock`](Self::restock) on the shards of `holding` only.
    pub async fn restock_holding(
        &self,
        owner: Uuid,
        holding: &Holding,
    ) -> Result<i32, InventoryError> {
        self.on_shards(holding, |reply| ShardMsg::Restock { owner, reply })
            .await
    }

    /// Sends one message to each shard of `holding` and sums the answers; the first error after
    /// all were asked.
    async fn on_shards(
        &self,
        holding: &Holding,
        build: impl Fn(ractor::RpcReplyPort<Result<i32, InventoryError>>) -> ShardMsg,
    ) -> Result<i32, InventoryError> {
        let mut total = 0;
        let mut failure = None;
        for index in self.shards_of(holding) {
            let slot = &self.shards[index];
            let answer = match slot.get() {
                Ok(shard) => shard.call(&build, self.timeout).await,
                Err(error) => Err(error),
            };
            match answer {
                Ok(Ok(units)) => total += units,
                Ok(Err(error)) => failure = failure.or(Some(error)),
                Err(error) => failure = failure.or(Some(error.into())),
            }
        }
        match failure {
            None => Ok(total),
            Some(error) => Err(error),
        }
    }

    /// Sets the units on hand of a variant (admin stock edits), refusing to go below what pending
    /// orders hold.
    pub async fn set_on_hand(&self, variant: Uuid, on_hand: i32) -> Result<(), InventoryError> {
        match self.edit(variant, on_hand, None).await {
            Ok(()) => Ok(()),
            Err(EditFailure::Inventory(error)) => Err(error),
            Err(EditFailure::Writes(_)) => Err(InventoryError::Storage(
                "writes failed although none were given".into(),
            )),
            Err(EditFailure::Abandoned) => Err(self.gave_up()),
        }
    }

    /// Sets the units on hand of a variant and applies `writes` (say, the rest of an admin's
    /// product update) in the same transaction: both or neither. The shard refuses a stock below
    /// what pending orders hold before running the writes; if the writes fail, their error comes
    /// back as [`EditError::Writes`] and the stock is unchanged, in PostgreSQL and in memory.
    ///
    /// The writes run inside the shard's turn: keep them to a few statements on the edited rows.
    /// A timeout means the call's outcome is unknown only if it fell during the commit itself; a
    /// caller that gave up earlier is seen by the shard, which then rolls back.
    pub async fn set_on_hand_with<E, F>(
        &self,
        variant: Uuid,
        on_hand: i32,
        writes: F,
    ) -> Result<(), EditError<E>>
    where
        E: Send + 'static,
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<(), E>> + Send + 'static,
    {
        let erased: Writes = Box::new(move |conn: &mut PgConnection| {
            writes(conn)
                .map_err(|error| Box::new(error) as Box<dyn Any + Send>)
                .boxed()
        });
        match self.edit(variant, on_hand, Some(erased)).await {
            Ok(()) => Ok(()),
            Err(EditFailure::Inventory(error)) => Err(EditError::Inventory(error)),
            Err(EditFailure::Writes(error)) => match error.downcast::<E>() {
                Ok(error) => Err(EditError::Writes(*error)),
                // Only this function builds the erased writes, always with `E`.
                Err(_) => Err(EditError::Inventory(InventoryError::Storage(
                    "the writes failed with an error of another type".into(),
                ))),
            },
            Err(EditFailure::Abandoned) => Err(EditError::Inventory(self.gave_up())),
        }
    }

    async fn edit(
        &self,
        variant: Uuid,
        on_hand: i32,
        writes: Option<Writes>,
    ) -> Result<(), EditFailure> {
        self.shards[self.shard_of(variant)]
            .get()
            .map_err(InventoryError::from)?
            .call(
                |reply| ShardMsg::SetOnHand {
                    variant,
                    on_hand,
                    writes,
                    reply,
                },
                self.timeout,
            )
            .await
            .map_err(InventoryError::from)?
    }

    /// The shard answers `Abandoned` only to a caller that is no longer listening, so this is
    /// what that caller's own timeout looks like.
    fn gave_up(&self) -> InventoryError {
        InventoryError::Actor(ActorError::Timeout {
            kind: InventoryShard::KIND_NAME,
            timeout: self.timeout,
        })
    }

    /// Compares every shard's memory with PostgreSQL; the number of variants that disagree
    /// (also the gauge `inventory_reconciliation_mismatches`). Should always be 0.
    pub async fn reconcile(&self) -> Result<u32, InventoryError> {
        let mut mismatches = 0;
        for slot in &self.shards {
            mismatches += slot
                .get()?
                .call(ShardMsg::Reconcile, self.timeout)
                .await??;
        }
        Ok(mismatches)
    }
}

fn short_lines(lines: &[Demand], available: &HashMap<Uuid, i32>) -> Vec<Shortage> {
    lines
        .iter()
        .filter_map(|line| {
            let there = available.get(&line.variant_id).copied().unwrap_or(0);
            (there < line.quantity).then_some(Shortage {
                variant_id: line.variant_id,
                requested: line.quantity,
                available: there.max(0),
            })
        })
        .collect()
}

/// A stable shard for a variant (the same in every process and after restarts): the key's
/// [`crate::partition::key_hash`], the hash its partition comes from too.
pub fn shard_index(variant: Uuid, shards: usize) -> usize {
    (crate::partition::key_hash(variant) % shards.max(1) as u64) as usize
}
