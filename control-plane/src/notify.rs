//! Outgoing deployment notifications.
//!
//! When a deployment finishes, [`Notifier::finished_hook`] (subscribed with
//! `Fleet::on_finished`) queues it without blocking; the notifier's task writes one
//! `webhook_deliveries` row per subscribed, enabled webhook (durable before any attempt), then
//! sends due deliveries: a signed JSON POST each (see [`payload`]), 10 s per attempt, 2xx is
//! delivered, anything else is retried with exponential backoff ([`retry_delay`]) until
//! [`MAX_ATTEMPTS`]. Every attempt is recorded on the row.
//!
//! Delivery is at least once: a restart resumes every pending row (a claimed row is leased for
//! [`LEASE`], so an attempt cut short by a crash is sent again), and a receiver can drop
//! duplicates by the `X-Berth-Delivery` id.
//!
//! Deliveries go to public addresses only unless the node allows private ones
//! ([`DestinationPolicy`], `--notify-allow-private`): see `destination`.
//!
//! Architecture invariant: the signing secret exists in plaintext only while one attempt is
//! signed; it is never logged, never in the payload, and returned only once, at creation.

mod destination;
mod http;
pub mod payload;
mod webhooks;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::crypto::Aad;
use crate::error::{Error, Result};
use crate::fleet::FinishedHook;
use crate::model::{DeploymentLog, DeploymentStatus};
use crate::service::Service;
use crate::store::{AttemptRecord, DueDelivery, NewDelivery};

pub use destination::{is_public, DestinationPolicy};
pub use http::{HttpSender, SendError, ATTEMPT_TIMEOUT};
pub use payload::{event_body, signature, DeploymentPayload};
pub use webhooks::{
    CreatedWebhook, DEFAULT_DELIVERY_LIMIT, MAX_DELIVERY_LIMIT, MAX_WEBHOOK_URL_LEN,
    WEBHOOK_SECRET_PREFIX,
};

/// Subscribes to both outcomes.
pub const EVENT_FINISHED: &str = "deployment.finished";
pub const EVENT_SUCCEEDED: &str = "deployment.succeeded";
pub const EVENT_FAILED: &str = "deployment.failed";
/// Every event a webhook may subscribe to.
/// A queued deployment replaced by a newer one of the same application before it ran.
pub const EVENT_SUPERSEDED: &str = "deployment.superseded";
pub const EVENTS: [&str; 4] = [
    EVENT_FINISHED,
    EVENT_SUCCEEDED,
    EVENT_FAILED,
    EVENT_SUPERSEDED,
];

/// Attempts per delivery before it is marked failed.
pub const MAX_ATTEMPTS: u32 = 6;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(300);
/// How long a claimed delivery is hidden from other claims: longer than any attempt.
pub const LEASE: Duration = Duration::from_secs(30);
/// Deliveries sent at once, so one slow receiver does not hold back the others.
const MAX_IN_FLIGHT: usize = 8;
/// Upper bound on sleeping, should a wake-up be missed.
const IDLE_POLL: Duration = Duration::from_secs(30);

/// The wait before the next attempt after `attempts_made` unsuccessful ones: 1 s, 2 s, 4 s, …
/// capped at 5 minutes; `None` once [`MAX_ATTEMPTS`] are spent.
pub fn retry_delay(attempts_made: u32) -> Option<Duration> {
    if attempts_made == 0 || attempts_made >= MAX_ATTEMPTS {
        return None;
    }
    let factor = 1u32.checked_shl(attempts_made - 1).unwrap_or(u32::MAX);
    Some(FIRST_RETRY.saturating_mul(factor).min(MAX_RETRY))
}

/// The event a finished deployment raises: succeeded for `success`, superseded for
/// `superseded`, failed for anything else (`failed`, `rolled_back`).
pub fn event_for_status(status: DeploymentStatus) -> &'static str {
    match status {
        DeploymentStatus::Success => EVENT_SUCCEEDED,
        DeploymentStatus::Superseded => EVENT_SUPERSEDED,
        _ => EVENT_FAILED,
    }
}

fn subscribed(events: &[String], event: &str) -> bool {
    events.iter().any(|e| e == event || e == EVENT_FINISHED)
}

/// A finished deployment waiting to become delivery rows.
struct Finished {
    log: DeploymentLog,
    app: String,
}

/// The node's one notifier: queues finished deployments and sends their deliveries.
pub struct Notifier {
    service: Service,
    sender: HttpSender,
    /// Fed by [`Notifier::finished_hook`]; unbounded so the hook never blocks a rollout
    /// (deployments are few; each entry is one row's worth of text).
    queue_tx: mpsc::UnboundedSender<Finished>,
    queue_rx: mpsc::UnboundedReceiver<Finished>,
}

impl Notifier {
    /// A notifier that delivers to the destinations `policy` allows.
    pub fn new(service: Service, policy: DestinationPolicy) -> Self {
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        Notifier {
            service,
            sender: HttpSender::new(policy),
            queue_tx,
            queue_rx,
        }
    }

    /// The `Fleet::on_finished` subscriber: queues and returns at once.
    pub fn finished_hook(&self) -> FinishedHook {
        let tx = self.queue_tx.clone();
        std::sync::Arc::new(move |log: &DeploymentLog, app: &str| {
            if tx
                .send(Finished {
                    log: log.clone(),
                    app: app.to_string(),
                })
                .is_err()
            {
                tracing::warn!(deployment = %log.deployment_id, "notifier stopped; no notification for this deployment");
            }
        })
    }

    /// Runs until `shutdown` resolves. Attempts still running then are abandoned; their rows
    /// stay pending and are sent again after the lease, by this node's next run.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut store_failing = false;
        loop {
            let wait = match self.launch_due(&mut tasks, &mut running).await {
                Ok(wait) => {
                    store_failing = false;
                    wait
                }
                Err(e) => {
                    if !store_failing {
                        tracing::error!(error = %e, "notifier cannot read pending deliveries; retrying");
                    }
                    store_failing = true;
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                Some(finished) = self.queue_rx.recv() => {
                    let deployment = finished.log.deployment_id.clone();
                    if let Err(e) = self.enqueue(finished).await {
                        tracing::error!(%deployment, error = %e, "cannot queue notifications");
                    }
                }
                Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let id = match &joined {
                        Ok((id, ())) => *id,
                        Err(e) => e.id(),
                    };
                    if let (Some(delivery), Err(e)) = (running.remove(&id), joined) {
                        tracing::error!(%delivery, error = %e, "delivery task ended abnormally");
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tasks.shutdown().await;
        tracing::debug!("notifier stopped");
    }

    /// Writes one pending delivery per subscribed, enabled webhook.
    async fn enqueue(&self, finished: Finished) -> Result<usize> {
        let store = self.service.store();
        let event = event_for_status(finished.log.status);
        let payload = serde_json::to_string(&DeploymentPayload::new(&finished.log, &finished.app))
            .map_err(|e| Error::Internal(format!("cannot encode deployment: {e}")))?;
        let deliveries: Vec<NewDelivery> = store
            .enabled_webhooks()
            .await?
            .into_iter()
            .filter(|(_, events)| subscribed(events, event))
            .map(|(webhook_id, _)| NewDelivery {
                id: uuid::Uuid::new_v4().to_string(),
                webhook_id,
                event,
                deployment_id: finished.log.deployment_id.clone(),
                payload: payload.clone(),
            })
            .collect();
        if !deliveries.is_empty() {
            store.insert_deliveries(&deliveries).await?;
            tracing::debug!(deployment = %finished.log.deployment_id, event, count = deliveries.len(), "notifications queued");
        }
        Ok(deliveries.len())
    }

    /// Starts attempts for due deliveries while there is room; returns how long to sleep.
    async fn launch_due(
        &self,
        tasks: &mut JoinSet<()>,
        running: &mut HashMap<tokio::task::Id, String>,
    ) -> Result<Duration> {
        let store = self.service.store();
        let room = MAX_IN_FLIGHT.saturating_sub(tasks.len());
        if room == 0 {
            // Woken by the next finished attempt.
            return Ok(IDLE_POLL);
        }
        for due in store.due_deliveries(room as i64).await? {
            if !store.lease_delivery(&due.id, LEASE.as_secs_f64()).await? {
                continue;
            }
            let id = due.id.clone();
            let (service, sender) = (self.service.clone(), self.sender.clone());
            let handle = tasks.spawn(async move { attempt(&service, &sender, due).await });
            running.insert(handle.id(), id);
        }
        if tasks.len() >= MAX_IN_FLIGHT {
            return Ok(IDLE_POLL);
        }
        let next = store.seconds_until_next_delivery().await?;
        Ok(next
            .map(Duration::from_secs_f64)
            .unwrap_or(IDLE_POLL)
            .clamp(Duration::from_millis(10), IDLE_POLL))
    }
}

/// One attempt of one delivery, recorded on its row.
async fn attempt(service: &Service, sender: &HttpSender, due: DueDelivery) {
    let number = due.attempt + 1;
    let answer = send(service, sender, &due).await;
    let (response_code, error) = match &answer {
        Ok(code) if (200..300).contains(code) => (Some(*code), None),
        Ok(code) => (Some(*code), Some(format!("receiver answered {code}"))),
        Err(e) => (None, Some(e.to_string())),
    };
    let retry = if error.is_some() {
        retry_delay(u32::try_from(number).unwrap_or(u32::MAX))
    } else {
        None
    };
    let status = match (&error, retry) {
        (None, _) => "delivered",
        (Some(_), Some(_)) => "pending",
        (Some(_), None) => "failed",
    };
    let fields = (due.webhook_id, due.id.as_str(), number);
    match (status, &error) {
        ("delivered", _) => {
            tracing::info!(webhook = fields.0, delivery = fields.1, attempt = fields.2, code = ?response_code, "notification delivered")
        }
        ("failed", Some(e)) => {
            tracing::warn!(webhook = fields.0, delivery = fields.1, attempt = fields.2, error = %e, "notification failed; giving up")
        }
        // Retries are logged once, at the first failure.
        (_, Some(e)) if number == 1 => {
            tracing::warn!(webhook = fields.0, delivery = fields.1, error = %e, "notification not delivered; retrying with backoff")
        }
        _ => tracing::debug!(
            webhook = fields.0,
            delivery = fields.1,
            attempt = fields.2,
            "notification retry failed"
        ),
    }
    let record = AttemptRecord {
        attempt: number,
        status,
        response_code,
        error,
        retry_in_seconds: retry.map(|d| d.as_secs_f64()),
    };
    if let Err(e) = service
        .store()
        .record_delivery_attempt(&due.id, &record)
        .await
    {
        tracing::error!(delivery = %due.id, error = %e, "cannot record a delivery attempt");
    }
}

/// Signs and POSTs one delivery; the HTTP status, or why there was none.
async fn send(
    service: &Service,
    sender: &HttpSender,
    due: &DueDelivery,
) -> std::result::Result<u16, String> {
    let ciphertext = due.secret.as_deref().ok_or_else(|| {
        "the webhook has no signing secret: remove it and add it again".to_string()
    })?;
    let secret = service
        .key()
        .decrypt(ciphertext, &Aad::webhook_secret(due.webhook_id))
        .map_err(|e| e.to_string())?;
    let body = event_body(
        &due.id,
        &due.event,
        &due.payload,
        time::OffsetDateTime::now_utc(),
    )
    .map_err(|e| e.to_string())?;
    let headers = [
        ("x-berth-event", due.event.clone()),
        ("x-berth-delivery", due.id.clone()),
        ("x-berth-signature-256", signature(&secret, &body)),
    ];
    drop(secret);
    sender
        .post(&due.url, &headers, body)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
