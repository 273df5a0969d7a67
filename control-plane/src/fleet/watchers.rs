//! Bounds on `berth deploy --follow` streams (issue 9, attack path 7): how many may be open at
//! once, in total and per caller, and how long one may live.
//!
//! Each watch task holds a [`WatchSlot`] from before it is spawned until it ends, so
//! [`Watchers::live`] is the exact number of watch tasks alive, and a caller over its share is
//! refused (RESOURCE_EXHAUSTED) before anything is spawned or read.
//!
//! Architecture invariant: a slot is only released by its task ending (its `Drop`), never by
//! bookkeeping elsewhere, so the count cannot drift from the tasks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};

/// What the node allows watch streams.
#[derive(Debug, Clone)]
pub struct WatchLimits {
    /// Open streams on the node, all callers together: each holds a task, a buffer and a
    /// poll of the store, so an unbounded number would let any reader exhaust the node.
    pub max_total: usize,
    /// Open streams per caller (API key): one key (a leaked viewer key, a CI loop that never
    /// closes its streams) cannot take the whole node's share.
    pub max_per_caller: usize,
    /// How long one stream may stay open; a deployment still running then is followed by
    /// opening a new stream. Ends streams a client forgot but whose connection stays up.
    pub max_lifetime: Duration,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits {
            max_total: 1024,
            max_per_caller: 32,
            max_lifetime: Duration::from_secs(3600),
        }
    }
}

/// The open watch streams, counted in total and per caller.
#[derive(Debug, Default)]
pub(super) struct Watchers {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only callers with at least one open stream have an entry.
    per_caller: HashMap<String, usize>,
}

impl Watchers {
    /// Takes a slot for a new stream of `caller`, or refuses it when a bound is reached.
    pub(super) fn admit(self: &Arc<Self>, limits: &WatchLimits, caller: &str) -> Result<WatchSlot> {
        let mut counts = self.counts.lock().expect("watchers lock");
        let mine = counts.per_caller.get(caller).copied().unwrap_or(0);
        if mine >= limits.max_per_caller {
            return Err(Error::ResourceExhausted(format!(
                "{caller} already has {mine} open deployment watch streams (the limit); \
                 close one, or read the deployment with `berth deploy show`"
            )));
        }
        if counts.total >= limits.max_total {
            return Err(Error::ResourceExhausted(format!(
                "the control plane already serves {} deployment watch streams (the limit); \
                 retry later, or read the deployment with `berth deploy show`",
                counts.total
            )));
        }
        counts.total += 1;
        *counts.per_caller.entry(caller.to_string()).or_default() += 1;
        Ok(WatchSlot {
            watchers: self.clone(),
            caller: caller.to_string(),
        })
    }

    /// Watch tasks alive now.
    pub(super) fn live(&self) -> usize {
        self.counts.lock().expect("watchers lock").total
    }
}

/// One open watch stream; dropping it (when its task ends) frees the slot.
#[derive(Debug)]
pub(super) struct WatchSlot {
    watchers: Arc<Watchers>,
    caller: String,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut counts = self.watchers.counts.lock().expect("watchers lock");
        counts.total -= 1;
        if let Some(mine) = counts.per_caller.get_mut(&self.caller) {
            *mine -= 1;
            if *mine == 0 {
                counts.per_caller.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn limits(max_total: usize, max_per_caller: usize) -> WatchLimits {
        WatchLimits {
            max_total,
            max_per_caller,
            ..WatchLimits::default()
        }
    }

    #[test]
    fn a_caller_over_its_share_and_a_full_node_are_refused_and_slots_come_back() {
        let watchers = Arc::new(Watchers::default());
        let limits = limits(5, 3);
        let mut a: Vec<WatchSlot> = (0..3)
            .map(|_| watchers.admit(&limits, "apikey:a").unwrap())
            .collect();
        let e = watchers.admit(&limits, "apikey:a").unwrap_err();
        assert_eq!(e.code(), ErrorCode::ResourceExhausted);
        assert!(e.to_string().contains("apikey:a already has 3 open"), "{e}");

        let b: Vec<WatchSlot> = (0..2)
            .map(|_| watchers.admit(&limits, "apikey:b").unwrap())
            .collect();
        let e = watchers.admit(&limits, "apikey:c").unwrap_err();
        assert_eq!(e.code(), ErrorCode::ResourceExhausted);
        assert!(e.to_string().contains("already serves 5"), "{e}");
        assert_eq!(watchers.live(), 5);

        a.pop();
        assert!(
            watchers.admit(&limits, "apikey:c").is_ok(),
            "a freed slot is reusable"
        );
        drop((a, b));
        assert_eq!(watchers.live(), 0);
        assert!(watchers.counts.lock().unwrap().per_caller.is_empty());
    }
}
