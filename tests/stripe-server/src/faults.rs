//! Faults on demand, for tests of what the shop does when Stripe misbehaves: a call to a path
//! can be refused with a 5xx before anything happens, answered late, or carried out with its
//! answer lost (the effect stands, the client sees a 500: the case idempotency keys exist for).

use std::time::Duration;

/// What happens to a matching call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Answered with this status and Stripe's `api_error` body; nothing is done.
    Fail(u16),
    /// Carried out, but answered only after this long.
    Delay(Duration),
    /// Carried out, then answered with a 500 as if the answer was lost on the way back.
    LoseAnswer,
}

/// Applies `action` to the next `times` calls whose method is `method` and whose path starts with
/// `path_prefix` (e.g. `POST`, `/v1/refunds`).
#[derive(Debug, Clone)]
pub struct Fault {
    pub method: &'static str,
    pub path_prefix: String,
    pub times: u32,
    pub action: FaultAction,
}

impl Fault {
    pub fn new(method: &'static str, path_prefix: &str, times: u32, action: FaultAction) -> Self {
        Self {
            method,
            path_prefix: path_prefix.to_owned(),
            times,
            action,
        }
    }

    pub(crate) fn matches(&self, method: &str, path: &str) -> bool {
        self.times > 0 && self.method == method && path.starts_with(&self.path_prefix)
    }
}
