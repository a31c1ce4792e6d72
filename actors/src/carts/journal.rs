//! Group commit of cart lines. Every cart actor writes its own lines, but an add or a quantity
//! change of many carts at once would be as many transactions; instead they queue here and a few
//! flushers write whatever is queued as one statement in one transaction, then answer each
//! writer. A quiet shop pays nothing for it: a lone write finds a free flusher and is written at
//! once, alone, as before.
//!
//! Each write keeps its own deadline (see [`super::store`]): a write already late when its batch
//! is taken is answered `Expired` unwritten, and the batch runs under the earliest deadline of
//! the rest. If the batch is refused as a whole (the earliest deadline passed, one line broke a
//! constraint, one line's Idempotency-Key claim was lost), PostgreSQL rolled all of it back, so
//! each line is written again on its own and gets its own answer. Only a commit whose answer was lost leaves its lines unknown
//! ([`CartError::Interrupted`]): their carts reload from PostgreSQL, as for a lone write.

use crate::partition::Fence;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{CartError, CartLine, KeyClaim, store};

/// Flushers writing at once, each with its own connection: a batch commits while the next one
/// gathers.
const FLUSHERS: usize = 4;
/// Most lines in one statement.
const MAX_BATCH: usize = 256;

/// The cart lines' group commit; one per process, shared by every cart actor.
pub struct Journal {
    db: PgPool,
    fence: Fence,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Queued>,
    flushers: usize,
}

struct Queued {
    cart: Uuid,
    line: CartLine,
    claim: Option<KeyClaim>,
    deadline: Instant,
    done: oneshot::Sender<Result<(), CartError>>,
}

/// A flusher's turn; gives it back if the flusher dies mid-batch (a panic), so the count of
/// flushers never drifts.
struct Turn {
    journal: Arc<Journal>,
    held: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.held {
            let mut queue = self.journal.lock();
            queue.flushers -= 1;
            let orphaned = !queue.waiting.is_empty();
            drop(queue);
            if orphaned {
                Journal::wake(&self.journal);
            }
        }
    }
}

impl Journal {
    pub fn new(db: PgPool, fence: Fence) -> Arc<Self> {
        Arc::new(Self {
            db,
            fence,
            queue: Mutex::new(Queue::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Inserts or updates `line` of `cart`, before `deadline` or not at all, marking `claim`
    /// applied in the same transaction.
    pub async fn upsert(
        self: &Arc<Self>,
        cart: Uuid,
        line: &CartLine,
        claim: Option<&KeyClaim>,
        deadline: Instant,
    ) -> Result<(), CartError> {
        let (done, answer) = oneshot::channel();
        self.lock().waiting.push(Queued {
            cart,
            line: line.clone(),
            claim: claim.cloned(),
            deadline,
            done,
        });
        Self::wake(self);
        match answer.await {
            Ok(result) => result,
            // The flusher died with the line in hand, maybe mid-commit.
            Err(_) => Err(CartError::Interrupted(
                "the cart journal stopped while writing".into(),
            )),
        }
    }

    /// Starts a flusher if one is free; the busy ones take what is queued on their next turn.
    fn wake(journal: &Arc<Self>) {
        {
            let mut queue = journal.lock();
            if queue.flushers >= FLUSHERS || queue.waiting.is_empty() {
                return;
            }
            queue.flushers += 1;
        }
        let turn = Turn {
            journal: journal.clone(),
            held: true,
        };
        tokio::spawn(Self::flush(turn));
    }

    async fn flush(mut turn: Turn) {
        loop {
            let batch: Vec<Queued> = {
                let mut queue = turn.journal.lock();
                if queue.waiting.is_empty() {
                    // Given back under the same lock that saw the queue empty: a write queued
                    // after this finds a free flusher.
                    queue.flushers -= 1;
                    turn.held = false;
                    return;
                }
                let take = queue.waiting.len().min(MAX_BATCH);
                queue.waiting.drain(..take).collect()
            };
            metrics::histogram!("cart_journal_batch_size").record(batch.len() as f64);
            turn.journal.write(batch).await;
        }
    }

    async fn write(&self, batch: Vec<Queued>) {
        let now = Instant::now();
        let (live, late): (Vec<Queued>, Vec<Queued>) =
            batch.into_iter().partition(|q| q.deadline > now);
        for queued in late {
            // Its writer is answered within its grace; nothing was written.
            let _ = queued.done.send(Err(CartError::Expired));
        }
        let Some(deadline) = live.iter().map(|q| q.deadline).min() else {
            return;
        };
        let lines: Vec<(Uuid, &CartLine)> = live.iter().map(|q| (q.cart, &q.line)).collect();
        let claims: Vec<&KeyClaim> = live.iter().filter_map(|q| q.claim.as_ref()).collect();
        match store::upsert_lines(&self.db, &self.fence, &lines, &claims, deadline).await {
            // Rolled back as a whole: each line on its own, for its own answer.
            Err(error) if live.len() > 1 && !matches!(error, CartError::Interrupted(_)) => {
                tracing::debug!(%error, lines = live.len(), "a batch of cart lines was refused; writing them one by one");
                let alone = live.into_iter().map(|queued| async move {
                    let line = [(queued.cart, &queued.line)];
                    let claim: Vec<&KeyClaim> = queued.claim.iter().collect();
                    let result =
                        store::upsert_lines(&self.db, &self.fence, &line, &claim, queued.deadline)
                            .await;
                    let _ = queued.done.send(result);
                });
                futures::future::join_all(alone).await;
            }
            // Committed, refused on its own (one line), or unknown (the commit's answer was lost).
            result => {
                for queued in live {
                    let _ = queued.done.send(result.clone());
                }
            }
        }
    }
}
