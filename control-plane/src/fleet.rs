//! The agent side of the control plane: who is connected, what each live stream carries,
//! and how results find the rollout waiting for them.
//!
//! Presence is memory only (heartbeats never touch SQLite); what must survive a crash —
//! deployments, targets, events, results — is written through the store before it is
//! acknowledged to anyone.
//!
//! Architecture invariant: this module speaks the agent protocol (berth.v1 agent messages)
//! but knows nothing of tonic; `grpc/agent.rs` adapts streams and certificates to it.

mod challenges;
mod deployments;
mod enroll;
pub mod failure;
mod prepare;
mod reconcile;
mod refusals;
mod rollout;
mod routes;
#[cfg(test)]
mod tests;
mod watchers;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::error::{Error, Result};
use crate::model::TargetStatus;
use crate::pki::Pki;
use crate::service::Service;
use crate::store::{AgentRow, Report};

pub use deployments::{DeploymentView, WatchUpdate};
pub use enroll::{IssuedCertificate, ENROLLMENT_TOKEN_PREFIX};
pub use failure::{public_error, Failure, FailureKind};
pub use prepare::{DeployTrigger, RolloutConfig};
pub use watchers::WatchLimits;

/// Outbound queue depth per agent; a full queue means a stuck agent, not a reason to block.
const OUTBOUND_QUEUE: usize = 1024;
/// Events one target may add to a deployment's log (a deploy sends a few dozen).
const EVENTS_PER_TARGET: i64 = 1000;
/// Why every stream ends when the node stops (the agent reconnects to the next one).
pub const SHUTTING_DOWN: &str = "the control plane is shutting down";

#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// host:port agents dial for the mTLS stream (returned at enrollment).
    pub agent_endpoint: String,
    /// Lifetime of agent certificates (default 30 days).
    pub cert_ttl: Duration,
    pub rollout: RolloutConfig,
    /// What registries must present on `RegistryPush`; `None` (the default) refuses every
    /// registry notification.
    pub registry_secret: Option<webhook::RegistrySecret>,
    /// Bounds on `WatchDeployment` streams.
    pub watch: WatchLimits,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            agent_endpoint: "127.0.0.1:7444".to_string(),
            cert_ttl: Duration::from_secs(30 * 86400),
            rollout: RolloutConfig::default(),
            registry_secret: None,
            watch: WatchLimits::default(),
        }
    }
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    service: Service,
    pki: Arc<Pki>,
    config: FleetConfig,
    live: Mutex<HashMap<String, LiveAgent>>,
    waiters: Mutex<HashMap<WaitKey, oneshot::Sender<pb::DeployResult>>>,
    /// Commands sent and not yet answered, re-sent when their agent reconnects.
    inflight: Mutex<HashMap<WaitKey, pb::ControlMessage>>,
    /// Woken on every stored event or result, for watchers.
    changed: Notify,
    /// Open `WatchDeployment` streams, bounded by `config.watch`.
    watchers: Arc<watchers::Watchers>,
    /// Bounds the unauthenticated `Enroll` calls served at once.
    enroll_gate: enroll::EnrollGate,
    /// Woken when an agent connects, for rollouts waiting on a target.
    connected: Notify,
    /// Called once per finished deployment (outgoing notifications subscribe here).
    on_finished: Mutex<Vec<FinishedHook>>,
    /// Running deployments a newer one asked to cancel (`--cancel-in-progress`), by id: the
    /// newer deployment's id. Checked between batches.
    cancels: Mutex<HashMap<String, String>>,
    /// ACME challenges sent to agents and not yet confirmed, by (agent, token): the reply's
    /// error ("" when the agent's proxy answers the token).
    challenge_replies: Mutex<HashMap<(String, String), oneshot::Sender<String>>>,
    /// Woken when a domain with ACME is added, so its first order starts at once.
    acme_wake: Notify,
    next_session: AtomicU64,
    /// Set (under the `live` lock) when the node stops: no stream registers after it.
    closing: AtomicBool,
    /// Stream handlers still running (a [`StreamGuard`] each), and their wake-up: the node
    /// closes the store only once they have recorded their disconnect.
    open_streams: AtomicUsize,
    streams_done: Notify,
    /// Fired once when the node starts to stop (with `closing` set first).
    stopping: Notify,
    /// Refused webhook tokens and registry secrets, audited per client and window.
    refusals: refusals::Refusals,
}

type WaitKey = (String, String, i32);

/// How many agents are enrolled, connected now, revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentCounts {
    pub total: u32,
    pub connected: u32,
    pub revoked: u32,
}

/// A subscriber to finished deployments: gets the final `deployment_logs` row and the app name.
pub type FinishedHook = Arc<dyn Fn(&crate::model::DeploymentLog, &str) + Send + Sync>;

struct LiveAgent {
    session: u64,
    tx: mpsc::Sender<pb::ControlMessage>,
    labels: BTreeMap<String, String>,
    last_heartbeat: Instant,
    /// Firing this ends the stream at once (revocation, re-enrollment).
    kill: Option<oneshot::Sender<&'static str>>,
}

/// A registered stream: the handler forwards `outbound` to the agent and ends the stream
/// with the given reason when `killed` fires.
pub struct Session {
    pub id: u64,
    pub outbound: mpsc::Receiver<pb::ControlMessage>,
    pub killed: oneshot::Receiver<&'static str>,
    /// Held by the stream's handler until it has closed the session.
    _running: StreamGuard,
}

/// Counts a running stream handler; [`Fleet::close_streams`] waits for all of them.
struct StreamGuard(Arc<Inner>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.open_streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.streams_done.notify_waiters();
        }
    }
}

impl Fleet {
    pub fn new(service: Service, pki: Arc<Pki>, config: FleetConfig) -> Self {
        Fleet {
            inner: Arc::new(Inner {
                service,
                pki,
                config,
                live: Mutex::new(HashMap::new()),
                waiters: Mutex::new(HashMap::new()),
                inflight: Mutex::new(HashMap::new()),
                changed: Notify::new(),
                watchers: Arc::default(),
                enroll_gate: enroll::EnrollGate::new(),
                connected: Notify::new(),
                on_finished: Mutex::new(Vec::new()),
                cancels: Mutex::new(HashMap::new()),
                challenge_replies: Mutex::new(HashMap::new()),
                acme_wake: Notify::new(),
                next_session: AtomicU64::new(1),
                closing: AtomicBool::new(false),
                open_streams: AtomicUsize::new(0),
                streams_done: Notify::new(),
                stopping: Notify::new(),
                refusals: refusals::Refusals::default(),
            }),
        }
    }

    pub fn service(&self) -> &Service {
        &self.inner.service
    }

    fn pki(&self) -> &Pki {
        &self.inner.pki
    }

    fn cert_ttl(&self) -> time::Duration {
        time::Duration::try_from(self.inner.config.cert_ttl).unwrap_or(time::Duration::days(30))
    }

    pub fn agent_endpoint(&self) -> &str {
        &self.inner.config.agent_endpoint
    }

    pub fn ca_pem(&self) -> &str {
        &self.inner.pki.ca_cert_pem
    }

    pub fn ca_fingerprint(&self) -> &str {
        &self.inner.pki.ca_fingerprint
    }

    /// Maps a client certificate (by its SHA-256 fingerprint) to an enrolled, unrevoked agent.
    pub async fn authenticate_agent(&self, fingerprint: &str) -> Result<AgentRow> {
        match self
            .service()
            .store()
            .agent_by_fingerprint(fingerprint)
            .await?
        {
            Some(agent) if agent.revoked_at.is_none() => {
                let presents_current = agent.cert_fingerprint.as_deref() == Some(fingerprint);
                if presents_current && agent.prev_cert_fingerprint.is_some() {
                    // The renewed certificate is in use: the one before it is retired.
                    self.service()
                        .store()
                        .retire_previous_certificate(&agent.name, fingerprint)
                        .await?;
                }
                Ok(agent)
            }
            Some(agent) => Err(Error::PermissionDenied(format!(
                "agent {:?} is revoked",
                agent.name
            ))),
            None => Err(Error::Unauthenticated(
                "client certificate is not the current certificate of any agent".to_string(),
            )),
        }
    }

    /// Registers a stream after the agent's Hello; an older stream of the same agent is
    /// dropped.
    pub async fn open_session(&self, agent: &AgentRow, hello: &pb::Hello) -> Result<Session> {
        let (tx, outbound) = mpsc::channel(OUTBOUND_QUEUE);
        let (kill, killed) = oneshot::channel();
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let labels = agent.labels();
        let (previous, running) = {
            let mut live = self.inner.live.lock().expect("live lock");
            if self.inner.closing.load(Ordering::Acquire) {
                return Err(Error::Unavailable(SHUTTING_DOWN.to_string()));
            }
            self.inner.open_streams.fetch_add(1, Ordering::AcqRel);
            let running = StreamGuard(self.inner.clone());
            let previous = live.insert(
                agent.name.clone(),
                LiveAgent {
                    session: id,
                    tx,
                    labels: labels.clone(),
                    last_heartbeat: Instant::now(),
                    kill: Some(kill),
                },
            );
            (previous, running)
        };
        if let Some(mut previous) = previous {
            if let Some(kill) = previous.kill.take() {
                let _ = kill.send("replaced by a newer stream of the same agent");
            }
        }
        // Checked again now that the stream is registered: a revocation (or re-enrollment)
        // that came after the handshake either finds the stream above and ends it, or is
        // seen here. On any error the stream is unregistered again (no handler serves it).
        if let Err(e) = self.admit(agent, hello).await {
            self.remove_session(&agent.name, id);
            return Err(e);
        }
        tracing::info!(agent = %agent.name, session = id, running = hello.running.len(), "agent connected");
        self.inner.connected.notify_waiters();
        self.resend_inflight(&agent.name);
        // After the re-sent commands: the current routes are the last word.
        self.send_routes_on_connect(&agent.name, &labels).await;
        Ok(Session {
            id,
            outbound,
            killed,
            _running: running,
        })
    }

    /// Whether a registered stream may stay: the agent is not revoked and still has the
    /// certificate it authenticated with; then its presence is recorded.
    async fn admit(&self, agent: &AgentRow, hello: &pb::Hello) -> Result<()> {
        let fingerprint = agent.cert_fingerprint.as_deref().unwrap_or_default();
        let admitted = self
            .service()
            .store()
            .admit_agent(
                &agent.name,
                fingerprint,
                &hello.agent_version,
                &hello.docker_version,
            )
            .await?;
        if !admitted {
            return Err(Error::PermissionDenied(format!(
                "agent {:?} was revoked or re-enrolled",
                agent.name
            )));
        }
        Ok(())
    }

    /// Returns once the node has started to stop ([`Fleet::close_streams`]): what a
    /// long-lived stream (a deploy watch) waits for so that it never holds the stop up.
    pub async fn stopping(&self) {
        loop {
            let notified = self.inner.stopping.notified();
            if self.inner.closing.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// When the node stops: refuses new streams, ends every live one ([`SHUTTING_DOWN`]),
    /// and waits (at most `limit`) until their handlers have recorded the disconnects, so
    /// that the store can be closed after. Connected agents do not hold the stop up.
    pub async fn close_streams(&self, limit: Duration) {
        let killed: Vec<oneshot::Sender<&'static str>> = {
            let mut live = self.inner.live.lock().expect("live lock");
            self.inner.closing.store(true, Ordering::Release);
            live.values_mut().filter_map(|a| a.kill.take()).collect()
        };
        self.inner.stopping.notify_waiters();
        for kill in killed {
            let _ = kill.send(SHUTTING_DOWN);
        }
        let all_closed = async {
            loop {
                let done = self.inner.streams_done.notified();
                if self.inner.open_streams.load(Ordering::Acquire) == 0 {
                    return;
                }
                done.await;
            }
        };
        if tokio::time::timeout(limit, all_closed).await.is_err() {
            tracing::warn!(
                streams = self.inner.open_streams.load(Ordering::Acquire),
                "agent streams still open at shutdown"
            );
        }
    }

    /// Removes a stream from the live table if it is still the agent's current one.
    fn remove_session(&self, agent: &str, session: u64) -> bool {
        let mut live = self.inner.live.lock().expect("live lock");
        match live.get(agent) {
            Some(current) if current.session == session => live.remove(agent).is_some(),
            _ => false,
        }
    }

    /// Unregisters a stream that ended (if it is still the agent's current one).
    pub async fn close_session(&self, agent: &str, session: u64) {
        if self.remove_session(agent, session) {
            tracing::info!(agent, session, "agent disconnected");
            if let Err(e) = self
                .service()
                .store()
                .agent_seen(agent, "disconnected", None, None)
                .await
            {
                tracing::warn!(agent, error = %e, "cannot record disconnect");
            }
        }
    }

    /// Handles one message from an agent's stream `session`. A session that is no longer the
    /// agent's current one (revoked, re-enrolled, replaced by a newer stream) is refused
    /// here, on every message, not only when the stream opened.
    pub async fn handle_message(
        &self,
        agent: &str,
        session: u64,
        message: pb::AgentMessage,
    ) -> Result<()> {
        {
            let mut live = self.inner.live.lock().expect("live lock");
            match live.get_mut(agent) {
                Some(current) if current.session == session => {
                    if let Some(pb::agent_message::Msg::Heartbeat(_)) = message.msg {
                        current.last_heartbeat = Instant::now();
                        return Ok(());
                    }
                }
                _ => {
                    return Err(Error::PermissionDenied(format!(
                        "the stream of agent {agent:?} is no longer its current one (revoked, re-enrolled or replaced)"
                    )))
                }
            }
        }
        match message.msg {
            Some(pb::agent_message::Msg::Heartbeat(_)) => {}
            Some(pb::agent_message::Msg::Event(event)) => {
                // Only a target of the deployment adds to its log, and only so much. The step
                // log is nobody's acknowledgement: the stream's next message is read as soon as
                // this event is queued (in order, behind the stream's earlier writes), so an
                // agent's steps and its result share a commit instead of taking one each.
                let stored = self
                    .service()
                    .store()
                    .queue_report(Report::Event {
                        deployment_id: event.deployment_id,
                        agent: agent.to_string(),
                        phase: truncate(&event.phase, 32),
                        message: truncate(&event.message, 2048),
                        cap: EVENTS_PER_TARGET,
                    })
                    .await?;
                let fleet = self.clone();
                let agent = agent.to_string();
                tokio::spawn(async move {
                    match stored.await {
                        Ok(true) => fleet.inner.changed.notify_waiters(),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(%agent, error = %e, "cannot record an agent's event")
                        }
                    }
                });
            }
            Some(pb::agent_message::Msg::Result(result)) => {
                self.handle_result(agent, result).await?
            }
            Some(pb::agent_message::Msg::ChallengeReply(reply)) => {
                self.challenge_replied(agent, reply)
            }
            Some(pb::agent_message::Msg::Hello(_)) | None => {
                return Err(Error::invalid("unexpected message on an open stream"));
            }
        }
        Ok(())
    }

    /// Stores a result durably, acknowledges it, and wakes the rollout waiting for it.
    async fn handle_result(&self, agent: &str, result: pb::DeployResult) -> Result<()> {
        let store = self.service().store();
        let kind = pb::CommandKind::try_from(result.kind).unwrap_or(pb::CommandKind::Unspecified);
        // No read first: a result for a deployment or target the store does not know updates
        // nothing (and a success is then checked by `late_success`).
        let container = (!result.container_id.is_empty()).then_some(result.container_id.as_str());
        let error = (!result.error.is_empty()).then_some(truncate(&result.error, 2048));
        let status = match kind {
            pb::CommandKind::Deploy if result.success => Some(TargetStatus::Success),
            pb::CommandKind::Deploy => Some(TargetStatus::Failed),
            pb::CommandKind::Rollback => Some(TargetStatus::RolledBack),
            _ => None,
        };
        if let Some(status) = status {
            let recorded = store
                .queue_report(Report::Result {
                    deployment_id: result.deployment_id.clone(),
                    agent: agent.to_string(),
                    status,
                    container_id: container.map(str::to_string),
                    error,
                })
                .await?
                .await?;
            if !recorded && kind == pb::CommandKind::Deploy && result.success {
                self.late_success(&result.deployment_id, agent).await?;
            }
            self.inner.changed.notify_waiters();
        }
        self.send(agent, ack(&result.deployment_id, result.kind));
        let key = (result.deployment_id.clone(), agent.to_string(), result.kind);
        if let Some(waiter) = self
            .inner
            .waiters
            .lock()
            .expect("waiters lock")
            .remove(&key)
        {
            let _ = waiter.send(result);
        }
        Ok(())
    }

    /// A deploy result that could not be recorded because its target is already finished:
    /// a success after the target was marked failed (its result came after the timeout, or
    /// after the restart's reconcile gave up) means the host serves a version its
    /// deployment failed: it is rolled back.
    async fn late_success(&self, deployment_id: &str, agent: &str) -> Result<()> {
        let store = self.service().store();
        if store.target_status(deployment_id, agent).await? == Some(TargetStatus::Failed) {
            let (_, app) = store.deployment(deployment_id).await?;
            self.withdraw(
                deployment_id,
                agent,
                &app,
                "it reported success after its target was marked failed",
            );
        }
        Ok(())
    }

    /// Queues a message for a connected agent; false when it is not connected or stuck.
    fn send(&self, agent: &str, message: pb::ControlMessage) -> bool {
        let live = self.inner.live.lock().expect("live lock");
        match live.get(agent) {
            Some(a) => a.tx.try_send(message).is_ok(),
            None => false,
        }
    }

    /// Ends an agent's live stream at once.
    fn drop_stream(&self, agent: &str) {
        if let Some(mut live) = self.inner.live.lock().expect("live lock").remove(agent) {
            if let Some(kill) = live.kill.take() {
                let _ = kill.send("agent certificate replaced or revoked");
            }
        }
    }

    /// `berth agent revoke`: refuses the certificate from now on and drops the live stream.
    pub async fn revoke(&self, actor: &crate::service::Actor, name: &str) -> Result<()> {
        actor.require(crate::service::Permission::Write)?;
        self.service().store().revoke_agent(name).await?;
        self.drop_stream(name);
        self.service()
            .store()
            .audit(&actor.name, "agent.revoke", name, None)
            .await
    }

    /// Agents as `berth agent list` shows them: stored rows with live presence.
    /// Enrolled, connected and revoked agents, without reading any agent's row.
    pub async fn agent_counts(&self, actor: &crate::service::Actor) -> Result<AgentCounts> {
        actor.require(crate::service::Permission::Read)?;
        let (total, revoked) = self.service().store().count_agents().await?;
        Ok(AgentCounts {
            total: u32::try_from(total).unwrap_or(u32::MAX),
            connected: u32::try_from(self.connected_count()).unwrap_or(u32::MAX),
            revoked: u32::try_from(revoked).unwrap_or(u32::MAX),
        })
    }

    pub async fn list_agents(
        &self,
        actor: &crate::service::Actor,
    ) -> Result<Vec<(AgentRow, bool)>> {
        actor.require(crate::service::Permission::Read)?;
        let rows = self.service().store().list_agents().await?;
        let live = self.inner.live.lock().expect("live lock");
        Ok(rows
            .into_iter()
            .map(|r| {
                let connected = live.contains_key(&r.name);
                (r, connected)
            })
            .collect())
    }

    pub fn is_connected(&self, agent: &str) -> bool {
        self.inner
            .live
            .lock()
            .expect("live lock")
            .contains_key(agent)
    }

    pub fn connected_count(&self) -> usize {
        self.inner.live.lock().expect("live lock").len()
    }

    /// Agents whose heartbeats stopped for longer than `timeout`: dropped so their stream
    /// slot is freed and rollouts stop waiting on a dead connection.
    pub fn reap_silent(&self, timeout: Duration) {
        let silent: Vec<String> = self
            .inner
            .live
            .lock()
            .expect("live lock")
            .iter()
            .filter(|(_, a)| a.last_heartbeat.elapsed() > timeout)
            .map(|(n, _)| n.clone())
            .collect();
        for name in silent {
            tracing::warn!(agent = %name, "no heartbeat; dropping stream");
            self.drop_stream(&name);
        }
    }

    /// Labels of a connected agent.
    fn live_labels(&self, agent: &str) -> Option<BTreeMap<String, String>> {
        self.inner
            .live
            .lock()
            .expect("live lock")
            .get(agent)
            .map(|a| a.labels.clone())
    }

    fn request_cancel(&self, deployment_id: &str, by: &str) {
        self.inner
            .cancels
            .lock()
            .expect("cancels lock")
            .insert(deployment_id.to_string(), by.to_string());
    }

    fn cancel_requested(&self, deployment_id: &str) -> Option<String> {
        self.inner
            .cancels
            .lock()
            .expect("cancels lock")
            .get(deployment_id)
            .cloned()
    }

    fn cancel_done(&self, deployment_id: &str) {
        self.inner
            .cancels
            .lock()
            .expect("cancels lock")
            .remove(deployment_id);
    }

    /// Audits a refused credential: the first refusal of a client in a window at once, the
    /// rest counted (see `fleet/refusals.rs`), so a flood of bad tokens costs no fsyncs.
    /// Returns whether this was the first (the caller logs that one only: a flood must not
    /// become a flood of log lines either).
    pub(crate) async fn audit_refusal(
        &self,
        actor: &str,
        action: &'static str,
        target: &str,
        details: &str,
    ) -> Result<bool> {
        let first = self.inner.refusals.count(actor, action, target);
        if first {
            self.service()
                .store()
                .audit(actor, action, target, Some(details))
                .await?;
        }
        Ok(first)
    }

    /// Writes one audit row per closed refusal window (every window with `all`, at stop).
    pub async fn flush_refusals(&self, all: bool) {
        for (actor, action, target, details) in self.inner.refusals.take_closed(all) {
            if let Err(e) = self
                .service()
                .store()
                .audit(&actor, action, &target, Some(&details))
                .await
            {
                tracing::warn!(%actor, action, error = %e, "cannot audit refusals");
            }
        }
    }

    /// Subscribes to finished deployments (called after the final status is stored).
    pub fn on_finished(&self, hook: FinishedHook) {
        self.inner
            .on_finished
            .lock()
            .expect("hooks lock")
            .push(hook);
    }

    /// Runs the finished-deployment hooks with the final row, as the write that finished it
    /// returned it (nothing is read back).
    pub(crate) fn notify_finished(&self, log: &crate::model::DeploymentLog, app: &str) {
        let hooks: Vec<FinishedHook> = self.inner.on_finished.lock().expect("hooks lock").clone();
        for hook in hooks {
            hook(log, app);
        }
    }

    /// For tests and the simulator: labels of the connected agents.
    pub fn connected_labels(&self) -> HashMap<String, BTreeMap<String, String>> {
        let names: Vec<String> = self
            .inner
            .live
            .lock()
            .expect("live lock")
            .keys()
            .cloned()
            .collect();
        names
            .into_iter()
            .filter_map(|n| self.live_labels(&n).map(|l| (n, l)))
            .collect()
    }

    /// The next stored event or result anywhere (watchers re-read the store). Subscribed
    /// when called, not when first polled, so a change between this call and the wait is
    /// not missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.changed.notified()
    }

    /// `WatchDeployment` streams whose task is still running.
    pub fn live_watchers(&self) -> usize {
        self.inner.watchers.live()
    }
}

fn ack(deployment_id: &str, kind: i32) -> pb::ControlMessage {
    pb::ControlMessage {
        msg: Some(pb::control_message::Msg::Ack(pb::ResultAck {
            deployment_id: deployment_id.to_string(),
            kind,
        })),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
