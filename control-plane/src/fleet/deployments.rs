//! Reading deployments: one deployment with its targets and step log, an application's
//! history, waiting for the end of one, and watching one live (`berth deploy --follow`).
//!
//! Architecture invariant: every read is authorized here (`Permission::Read`), so the gRPC
//! handlers only convert; whether a deployment is finished is asked of
//! `DeploymentStatus::is_finished` and nowhere else. A watch task never outlives its client
//! nor `WatchLimits::max_lifetime`, and holds a slot of `watchers.rs` while it runs.

use std::time::Duration;

use tokio::sync::mpsc;

use super::Fleet;
use crate::error::{Error, Result};
use crate::model::DeploymentLog;
use crate::service::{Actor, Permission};
use crate::store::{DeploymentEventRow, DeploymentTargetRow};

/// How long a watcher sleeps when nothing woke it (a change it missed, or a stuck stream).
const WATCH_POLL: Duration = Duration::from_millis(500);
/// Updates a watcher may buffer before it waits for its client.
const WATCH_BUFFER: usize = 64;
/// How long a watcher that must end tries to hand its client the reason (a client that
/// stopped reading does not hold the task).
const WATCH_LAST_WORD: Duration = Duration::from_secs(5);
/// History rows `deploy list` returns by default, and at most.
const LIST_DEFAULT: u32 = 20;
const LIST_MAX: u32 = 500;

/// One deployment as `berth deploy show` reads it.
#[derive(Debug, Clone)]
pub struct DeploymentView {
    pub log: DeploymentLog,
    pub app: String,
    pub targets: Vec<DeploymentTargetRow>,
    pub events: Vec<DeploymentEventRow>,
}

/// What a watcher receives: every step as it is stored, then the final row, then the end.
#[derive(Debug, Clone)]
pub enum WatchUpdate {
    Event(DeploymentEventRow),
    Finished(DeploymentLog),
}

impl Fleet {
    /// `berth deploy show`: by id or by a unique prefix of one.
    pub async fn deployment(&self, actor: &Actor, deployment_id: &str) -> Result<DeploymentView> {
        actor.require(Permission::Read)?;
        let deployment_id = self
            .service()
            .store()
            .resolve_deployment_id(deployment_id)
            .await?;
        self.deployment_view(&deployment_id).await
    }

    /// The full view of a deployment the caller was already authorized for (the deploy call
    /// answers with it).
    pub(crate) async fn deployment_view(&self, deployment_id: &str) -> Result<DeploymentView> {
        let store = self.service().store();
        let (log, app) = store.deployment(deployment_id).await?;
        let targets = store.deployment_targets(deployment_id).await?;
        let events = store.deployment_events(deployment_id, 0).await?;
        Ok(DeploymentView {
            log,
            app,
            targets,
            events,
        })
    }

    /// `berth deploy list APP`: the newest first; `limit` 0 means the default.
    pub async fn list_deployments(
        &self,
        actor: &Actor,
        app: &str,
        limit: u32,
    ) -> Result<Vec<DeploymentLog>> {
        actor.require(Permission::Read)?;
        let store = self.service().store();
        let app = store.application(app).await?;
        let limit = if limit == 0 {
            LIST_DEFAULT
        } else {
            limit.min(LIST_MAX)
        };
        store.recent_deployments(app.id, limit.into()).await
    }

    /// `berth deploy --follow`: a stream of the deployment's steps (by id or a unique prefix
    /// of one), from the first, ending with its final row. The stream ends early when the receiver is dropped (at once, not
    /// at the next step), when it reached its maximum lifetime or when the store fails (the
    /// error is the last item). Refused when the caller or the node has too many open.
    pub async fn watch(
        &self,
        actor: &Actor,
        deployment_id: &str,
    ) -> Result<mpsc::Receiver<Result<WatchUpdate>>> {
        actor.require(Permission::Read)?;
        let limits = &self.inner.config.watch;
        let slot = self.inner.watchers.admit(limits, &actor.name)?;
        // An unknown id (or an ambiguous prefix) is refused now, not as the first item of
        // the stream.
        let deployment_id = self
            .service()
            .store()
            .resolve_deployment_id(deployment_id)
            .await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let fleet = self.clone();
        let lifetime = limits.max_lifetime;
        tokio::spawn(async move {
            let _slot = slot;
            let ended = tokio::select! {
                // The client is gone (the RPC's response stream, holding the receiver, was
                // dropped): nothing is left to do, even if the deployment never moves again.
                () = tx.closed() => return,
                // The node stops: an open watch must not hold its graceful stop up.
                () = fleet.stopping() => Err(Error::Unavailable(format!(
                    "the control plane is stopping: follow deployment {deployment_id} again \
                     once it is back (`berth deploy show {deployment_id} --follow`)"
                ))),
                () = tokio::time::sleep(lifetime) => Err(Error::Unavailable(format!(
                    "the watch of deployment {deployment_id} reached its maximum lifetime of \
                     {} s before the deployment finished: watch it again or see \
                     `berth deploy show {deployment_id}`",
                    lifetime.as_secs()
                ))),
                fed = fleet.feed_watcher(&deployment_id, &tx) => fed,
            };
            if let Err(e) = ended {
                let _ = tokio::time::timeout(WATCH_LAST_WORD, tx.send(Err(e))).await;
            }
        });
        Ok(rx)
    }

    async fn feed_watcher(
        &self,
        deployment_id: &str,
        tx: &mpsc::Sender<Result<WatchUpdate>>,
    ) -> Result<()> {
        let store = self.service().store();
        let mut last = 0;
        loop {
            // Subscribe before reading, so a change between the read and the wait wakes us.
            let notified = self.changed();
            for e in store.deployment_events(deployment_id, last).await? {
                last = e.id;
                if tx.send(Ok(WatchUpdate::Event(e))).await.is_err() {
                    return Ok(());
                }
            }
            let (log, _) = store.deployment(deployment_id).await?;
            if log.status.is_finished() {
                // Events written together with the final status come before it.
                for e in store.deployment_events(deployment_id, last).await? {
                    if tx.send(Ok(WatchUpdate::Event(e))).await.is_err() {
                        return Ok(());
                    }
                }
                let _ = tx.send(Ok(WatchUpdate::Finished(log))).await;
                return Ok(());
            }
            let _ = tokio::time::timeout(WATCH_POLL, notified).await;
        }
    }

    /// Waits until a deployment is finished (or `timeout`), returning its row.
    pub async fn wait_finished(
        &self,
        deployment_id: &str,
        timeout: Duration,
    ) -> Result<DeploymentLog> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed();
            let (log, _) = self.service().store().deployment(deployment_id).await?;
            if log.status.is_finished() {
                return Ok(log);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(self.service().store().deployment(deployment_id).await?.0);
            }
        }
    }
}
