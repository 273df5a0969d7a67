//! Auto-sync: every provider whose group has `auto_sync` is synced on its interval
//! (default 5 min, at least 30 s), with jitter so providers added together do not sync in
//! step, and exponential backoff after failures. Each sync runs in a task of its own under
//! the sync time limit, so a slow or hanging provider delays nothing else; syncs of one
//! provider never overlap (the service's sync guard).
//!
//! Architecture invariant: this loop only decides *when*; what a sync does (and records) is
//! `Service::sync_provider`, the same code path as `berth provider sync`.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use rand::Rng as _;
use tokio::time::Instant;

use super::MIN_SYNC_INTERVAL;
use crate::service::{Actor, Service};

/// How often the loop looks for due providers.
const TICK: Duration = Duration::from_secs(5);
/// Longest wait after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// When one provider syncs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Schedule {
    next: Instant,
    failures: u32,
}

impl Schedule {
    /// A provider first seen now: synced within `spread` (six ticks, or its interval if
    /// shorter), at a random point (`jitter` in 0..1), so a restart does not sync every
    /// provider at once.
    fn first_within(now: Instant, spread: Duration, jitter: f64) -> Self {
        Schedule {
            next: now + spread.mul_f64(jitter),
            failures: 0,
        }
    }

    pub(crate) fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// After a good sync: the interval, jittered by ±10 %.
    pub(crate) fn succeeded(&mut self, now: Instant, interval: Duration, jitter: f64) {
        self.failures = 0;
        self.next = now + interval.mul_f64(0.9 + 0.2 * jitter);
    }

    /// After a failed sync: 30 s, 60 s, 120 s, … up to the longer of the interval and an hour.
    pub(crate) fn failed(&mut self, now: Instant, interval: Duration) {
        self.failures = self.failures.saturating_add(1);
        let step = MIN_SYNC_INTERVAL
            .saturating_mul(1u32.checked_shl(self.failures - 1).unwrap_or(u32::MAX));
        self.next = now + step.min(MAX_BACKOFF.max(interval));
    }
}

/// Runs until `shutdown` resolves.
pub async fn run(service: Service, shutdown: impl Future<Output = ()>) {
    run_every(service, TICK, shutdown).await
}

/// The loop, looking for due providers every `tick` (tests use a short one; a new provider
/// is first synced within six ticks).
pub(crate) async fn run_every(
    service: Service,
    tick_every: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut schedules: HashMap<i64, Schedule> = HashMap::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(i64, bool)>();
    let mut running: std::collections::HashSet<i64> = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            Some((id, ok)) = done_rx.recv() => {
                running.remove(&id);
                let interval = interval_of(&service, id).await;
                if let Some(s) = schedules.get_mut(&id) {
                    if ok {
                        s.succeeded(Instant::now(), interval, rand::thread_rng().gen());
                    } else {
                        s.failed(Instant::now(), interval);
                    }
                }
            }
            _ = tick.tick() => {
                let providers = match service.store().list_providers().await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "auto-sync cannot list providers");
                        continue;
                    }
                };
                let now = Instant::now();
                let mut seen = std::collections::HashSet::new();
                for p in providers {
                    let Some(group) = &p.group_name else { continue };
                    match service.store().group(group).await {
                        Ok(g) if g.auto_sync => {}
                        _ => continue,
                    }
                    seen.insert(p.id);
                    let interval = seconds(p.sync_interval_s);
                    let schedule = schedules
                        .entry(p.id)
                        .or_insert_with(|| {
                            Schedule::first_within(
                                now,
                                interval.min(tick_every * 6),
                                rand::thread_rng().gen(),
                            )
                        });
                    if !schedule.due(now) || !running.insert(p.id) {
                        continue;
                    }
                    let service = service.clone();
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        let outcome = service.sync_provider(&Actor::system(), &p.name, false).await;
                        match &outcome {
                            Ok(o) => tracing::info!(provider = %p.name, status = o.summary.status(),
                                created = o.summary.created.len(), updated = o.summary.updated.len(),
                                removed = o.summary.removed.len(), "auto-sync"),
                            Err(e) => tracing::warn!(provider = %p.name, error = %e, "auto-sync failed"),
                        }
                        let _ = done.send((p.id, outcome.is_ok()));
                    });
                }
                schedules.retain(|id, _| seen.contains(id) || running.contains(id));
            }
        }
    }
}

async fn interval_of(service: &Service, id: i64) -> Duration {
    match service.store().list_providers().await {
        Ok(rows) => rows
            .iter()
            .find(|r| r.id == id)
            .map_or(super::DEFAULT_SYNC_INTERVAL, |r| seconds(r.sync_interval_s)),
        Err(_) => super::DEFAULT_SYNC_INTERVAL,
    }
}

fn seconds(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(300)).max(MIN_SYNC_INTERVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_provider_syncs_within_its_first_interval_at_a_jittered_point() {
        let now = Instant::now();
        let early = Schedule::first_within(now, Duration::from_secs(30), 0.0);
        let late = Schedule::first_within(now, Duration::from_secs(30), 0.99);
        assert!(early.due(now));
        assert!(!late.due(now + Duration::from_secs(29)));
        assert!(late.due(now + Duration::from_secs(30)));
    }

    #[test]
    fn success_waits_the_interval_and_failures_back_off_exponentially() {
        let now = Instant::now();
        let interval = Duration::from_secs(300);
        let mut s = Schedule::first_within(now, interval, 0.0);
        s.succeeded(now, interval, 0.5);
        assert!(!s.due(now + Duration::from_secs(299)));
        assert!(s.due(now + Duration::from_secs(300)));
        let mut waits = Vec::new();
        for _ in 0..10 {
            s.failed(now, interval);
            waits.push(s.next - now);
        }
        assert_eq!(waits[0], Duration::from_secs(30));
        assert_eq!(waits[1], Duration::from_secs(60));
        assert_eq!(waits[2], Duration::from_secs(120));
        assert_eq!(*waits.last().unwrap(), MAX_BACKOFF);
        // A success resets the backoff.
        s.succeeded(now, interval, 0.0);
        s.failed(now, interval);
        assert_eq!(s.next - now, Duration::from_secs(30));
    }
}
