//! The audit trail of refused webhook tokens and registry secrets, without an fsync per
//! refusal (issue 11): a flood of bad tokens must not become a flood of durable writes.
//!
//! The first refusal of a (client, action, target) in a window is written at once, so a
//! single probe is always on record; the ones after it in the same window are only counted,
//! and written as one row ("N more …") when the window closes ([`Refusals::take_closed`],
//! called by the node every few seconds) or when the node stops. Memory is bounded: past
//! [`MAX_TRACKED`] open windows, further clients share one overflow window per action.
//!
//! A crash loses at most the counts of the windows still open (never the first refusal of a
//! client); nothing here is acknowledged to anyone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long refusals of one client are counted before their row is written.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Open windows kept in memory; past it, new clients are counted together.
pub const MAX_TRACKED: usize = 10_000;
/// The actor of the overflow window.
const OVERFLOW_ACTOR: &str = "many clients";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    actor: String,
    action: &'static str,
    target: String,
}

struct Window {
    opened: Instant,
    more: u64,
}

/// An audit row to write: (actor, action, target, details).
pub type AuditRow = (String, &'static str, String, String);

#[derive(Default)]
pub struct Refusals {
    windows: Mutex<HashMap<Key, Window>>,
}

impl Refusals {
    /// Counts one refusal; returns true when it is the first of its window (the caller writes
    /// its audit row now).
    pub fn count(&self, actor: &str, action: &'static str, target: &str) -> bool {
        let mut windows = self.windows.lock().expect("refusals lock");
        let mut key = Key {
            actor: actor.to_string(),
            action,
            target: target.to_string(),
        };
        if !windows.contains_key(&key) && windows.len() >= MAX_TRACKED {
            key = Key {
                actor: OVERFLOW_ACTOR.to_string(),
                action,
                target: "*".to_string(),
            };
        }
        match windows.get_mut(&key) {
            Some(window) => {
                window.more += 1;
                false
            }
            None => {
                windows.insert(
                    key,
                    Window {
                        opened: Instant::now(),
                        more: 0,
                    },
                );
                true
            }
        }
    }

    /// Closes the windows older than [`WINDOW`] (all of them with `all`), returning one audit
    /// row for each that counted refusals after its first.
    pub fn take_closed(&self, all: bool) -> Vec<AuditRow> {
        let mut windows = self.windows.lock().expect("refusals lock");
        let closed: Vec<Key> = windows
            .iter()
            .filter(|(_, w)| all || w.opened.elapsed() >= WINDOW)
            .map(|(k, _)| k.clone())
            .collect();
        closed
            .into_iter()
            .filter_map(|key| {
                let window = windows.remove(&key)?;
                (window.more > 0).then(|| {
                    let details = format!(
                        "{} more refusals from {} in {}s",
                        window.more,
                        key.actor,
                        window.opened.elapsed().as_secs().max(1)
                    );
                    (key.actor, key.action, key.target, details)
                })
            })
            .collect()
    }

    /// Open windows, for tests.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.windows.lock().expect("refusals lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_refusal_of_a_client_is_written_and_the_rest_of_its_window_counted() {
        let r = Refusals::default();
        assert!(r.count("webhook:1.2.3.4", "webhook.token_refused", "web"));
        for _ in 0..999 {
            assert!(!r.count("webhook:1.2.3.4", "webhook.token_refused", "web"));
        }
        // Another client, or another app, has a window of its own.
        assert!(r.count("webhook:5.6.7.8", "webhook.token_refused", "web"));
        assert!(r.count("webhook:1.2.3.4", "webhook.token_refused", "api"));
        // Open windows are not written before they close...
        assert!(r.take_closed(false).is_empty());
        // ...and at stop, only the one that counted more than its first becomes a row.
        let rows = r.take_closed(true);
        assert_eq!(rows.len(), 1, "{rows:?}");
        let (actor, action, target, details) = &rows[0];
        assert_eq!(
            (actor.as_str(), *action, target.as_str()),
            ("webhook:1.2.3.4", "webhook.token_refused", "web")
        );
        assert!(
            details.starts_with("999 more refusals from webhook:1.2.3.4"),
            "{details}"
        );
        assert_eq!(r.tracked(), 0);
        // A new window starts with a written refusal again.
        assert!(r.count("webhook:1.2.3.4", "webhook.token_refused", "web"));
    }

    #[test]
    fn memory_is_bounded_by_an_overflow_window() {
        let r = Refusals::default();
        for n in 0..MAX_TRACKED + 500 {
            r.count(
                &format!("webhook:client-{n}"),
                "webhook.token_refused",
                "web",
            );
        }
        assert_eq!(r.tracked(), MAX_TRACKED + 1);
        let rows = r.take_closed(true);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, OVERFLOW_ACTOR);
        assert!(rows[0].3.starts_with("499 more refusals"), "{:?}", rows[0]);
    }
}
