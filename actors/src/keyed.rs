//! Bookkeeping for supervisors with one child per key (a cart per customer, a saga per order):
//! which child serves which key, and which key a child that just exited served.

use std::collections::HashMap;
use std::hash::Hash;

use ractor::{ActorId, SupervisionEvent};

use crate::instrument::Mailbox;

/// How a keyed child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It stopped (idle, done).
    Stopped,
    /// It panicked or returned an error: the supervisor should restart it.
    Failed,
}

pub struct KeyedChildren<K, M> {
    by_key: HashMap<K, Mailbox<M>>,
    by_actor: HashMap<ActorId, K>,
}

impl<K, M> Default for KeyedChildren<K, M> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            by_actor: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Copy, M: Send + 'static> KeyedChildren<K, M> {
    /// The child serving `key`, if it is running (not stopping).
    pub fn running(&self, key: &K) -> Option<Mailbox<M>> {
        self.by_key
            .get(key)
            .filter(|child| child.cell().get_status() == ractor::ActorStatus::Running)
            .cloned()
    }

    /// The child serving `key`, whatever its state.
    pub fn get(&self, key: &K) -> Option<&Mailbox<M>> {
        self.by_key.get(key)
    }

    pub fn insert(&mut self, key: K, child: Mailbox<M>) {
        self.by_actor.insert(child.cell().get_id(), key);
        self.by_key.insert(key, child);
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Forgets a child that exited and says which key it served and how it ended; `None` for
    /// events that are not a keyed child's exit.
    pub fn exited(&mut self, event: &SupervisionEvent) -> Option<(K, Exit)> {
        let (cell, exit) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, Exit::Stopped),
            SupervisionEvent::ActorFailed(cell, error) => {
                tracing::warn!(%error, actor = ?cell.get_name(), "a supervised actor failed");
                (cell, Exit::Failed)
            }
            _ => return None,
        };
        let key = self.by_actor.remove(&cell.get_id())?;
        // A newer child may already serve the key: only forget the one that exited.
        if self
            .by_key
            .get(&key)
            .is_some_and(|child| child.cell().get_id() == cell.get_id())
        {
            self.by_key.remove(&key);
        }
        Some((key, exit))
    }
}
