//! Who is still talking to which container: TCP connections, in-flight HTTP requests and
//! upgraded HTTP connections, counted per backend container id, and [`Connections::drain`].
//!
//! Architecture invariant: every forwarded connection or request holds a [`ConnectionGuard`]
//! for as long as it uses its backend, so a count of 0 means nothing uses the container; a
//! drain cancels exactly the guards of its container.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

#[derive(Debug)]
struct Backend {
    app: String,
    open: u64,
    /// How many ended by themselves since the entry exists (a drain counts the difference).
    ended: u64,
    /// Drains waiting on this container: the entry stays while one waits.
    draining: u64,
    /// Cancelled by a drain's timeout: every guard of this container watches it.
    close: CancellationToken,
}

/// Open connections per container id.
#[derive(Debug, Default)]
pub struct Connections {
    backends: Mutex<HashMap<String, Backend>>,
    /// Woken each time a connection ends.
    ended: Notify,
}

/// What a drain found: connections that ended by themselves, and those it closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOutcome {
    pub finished: u64,
    pub closed: u64,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Backend>> {
        self.backends
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one connection (or request) to `container_id` of `app` until the guard drops.
    pub fn open(self: &Arc<Self>, app: &str, container_id: &str) -> ConnectionGuard {
        let mut backends = self.lock();
        let backend = backends
            .entry(container_id.to_owned())
            .or_insert_with(|| Backend {
                app: app.to_owned(),
                open: 0,
                ended: 0,
                draining: 0,
                close: CancellationToken::new(),
            });
        backend.open += 1;
        ConnectionGuard {
            connections: self.clone(),
            container_id: container_id.to_owned(),
            close: backend.close.clone(),
        }
    }

    /// Connections open now to `container_id`.
    pub fn count(&self, container_id: &str) -> u64 {
        self.lock().get(container_id).map_or(0, |b| b.open)
    }

    /// Connections open now per container id of `app` (its current backend and any draining).
    pub fn counts_of_app(&self, app: &str) -> BTreeMap<String, u64> {
        self.lock()
            .iter()
            .filter(|(_, b)| b.app == app && b.open > 0)
            .map(|(id, b)| (id.clone(), b.open))
            .collect()
    }

    /// Drains waiting on `container_id` now (tests wait for a drain to have begun).
    #[cfg(test)]
    pub fn draining(&self, container_id: &str) -> u64 {
        self.lock().get(container_id).map_or(0, |b| b.draining)
    }

    /// Waits until no connection to `container_id` is open or `timeout` passed, then closes
    /// those still open.
    pub async fn drain(&self, container_id: &str, timeout: Duration) -> DrainOutcome {
        let ended_before = {
            let mut backends = self.lock();
            match backends.get_mut(container_id) {
                None => {
                    return DrainOutcome {
                        finished: 0,
                        closed: 0,
                    }
                }
                Some(backend) => {
                    backend.draining += 1;
                    backend.ended
                }
            }
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.count(container_id) == 0 {
                break;
            }
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let mut backends = self.lock();
        let backend = backends
            .get_mut(container_id)
            .expect("a draining backend stays in the map");
        backend.draining -= 1;
        let outcome = DrainOutcome {
            finished: backend.ended - ended_before,
            closed: backend.open,
        };
        if backend.open > 0 {
            backend.close.cancel();
            // Connections still to come for this id (none should: no route points at it)
            // start with a fresh token.
            backend.close = CancellationToken::new();
        }
        if backend.open == 0 && backend.draining == 0 {
            backends.remove(container_id);
        }
        outcome
    }

    fn release(&self, container_id: &str, closed: bool) {
        let mut backends = self.lock();
        if let Some(backend) = backends.get_mut(container_id) {
            backend.open -= 1;
            if !closed {
                backend.ended += 1;
            }
            if backend.open == 0 && backend.draining == 0 {
                backends.remove(container_id);
            }
        }
        drop(backends);
        self.ended.notify_waiters();
    }
}

/// One counted connection; dropping it ends the count.
#[derive(Debug)]
pub struct ConnectionGuard {
    connections: Arc<Connections>,
    container_id: String,
    close: CancellationToken,
}

impl ConnectionGuard {
    /// Resolves when a drain closes this container's connections.
    pub fn closed(&self) -> WaitForCancellationFutureOwned {
        self.close.clone().cancelled_owned()
    }

    #[cfg(test)]
    pub fn is_closed(&self) -> bool {
        self.close.is_cancelled()
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.connections
            .release(&self.container_id, self.close.is_cancelled());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_counts_what_ended_and_closes_the_rest() {
        let connections = Arc::new(Connections::default());
        let ending = connections.open("web", "c1");
        let staying = connections.open("web", "c1");
        let other = connections.open("web", "c2");
        assert_eq!(connections.count("c1"), 2);
        let closed = staying.closed();
        let drain = {
            let connections = connections.clone();
            tokio::spawn(async move { connections.drain("c1", Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        drop(ending);
        let outcome = drain.await.expect("drain task");
        assert_eq!(
            outcome,
            DrainOutcome {
                finished: 1,
                closed: 1
            }
        );
        closed.await;
        assert!(!other.is_closed(), "another container's connection closed");
        drop(staying);
        assert_eq!(connections.count("c1"), 0);
        assert_eq!(connections.counts_of_app("web").get("c2"), Some(&1));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_returns_when_the_last_connection_ends() {
        let connections = Arc::new(Connections::default());
        let guard = connections.open("web", "c1");
        let drain = {
            let connections = connections.clone();
            tokio::spawn(async move { connections.drain("c1", Duration::from_secs(3600)).await })
        };
        tokio::task::yield_now().await;
        drop(guard);
        let outcome = drain.await.expect("drain task");
        assert_eq!(
            outcome,
            DrainOutcome {
                finished: 1,
                closed: 0
            }
        );
        assert!(connections.counts_of_app("web").is_empty());
    }
}
