//! Rolling a prepared deployment out: batch by batch, each batch made
//! durable in one transaction before its commands go out, stopping at the first failed
//! target and rolling back the targets that already succeeded; then the aggregate is
//! recorded and the finished-deployment hooks run.
//!
//! Architecture invariant: a command is registered as in flight before it is sent, so a
//! target that reconnects gets it again (agents run a deployment id once and answer a
//! re-send with the recorded result).

use berth_proto::v1 as pb;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::failure::{Failure, FailureKind};
use super::prepare::batch_size;
use super::Fleet;
use crate::error::{Error, Result};
use crate::model::{Application, TargetStatus};
use crate::store::FailureText;

impl Fleet {
    pub(super) async fn run_rollout(
        self,
        deployment_id: String,
        app: Application,
        command: pb::DeployCommand,
        targets: Vec<String>,
    ) {
        if let Err(e) = self.rollout(&deployment_id, &app, command, &targets).await {
            tracing::error!(deployment = %deployment_id, error = %e, "rollout failed to record its outcome; reconciling");
            // Finish it from what the store and the agents know, as after a restart.
            for attempt in 1..=5u32 {
                tokio::time::sleep(std::time::Duration::from_secs(u64::from(attempt))).await;
                match self.reconcile_one(&deployment_id).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::error!(deployment = %deployment_id, error = %e, attempt, "reconcile failed")
                    }
                }
            }
        }
    }

    async fn rollout(
        &self,
        deployment_id: &str,
        app: &Application,
        command: pb::DeployCommand,
        targets: &[String],
    ) -> Result<()> {
        let store = self.service().store();
        let mut succeeded = Vec::new();
        let mut failure: Option<String> = None;
        let mut failed_hosts = 0;
        let mut reached = 0;
        for (n, batch) in targets.chunks(batch_size(app)).enumerate() {
            reached += batch.len();
            // One durable record for the whole batch, then every command goes out at once.
            // The first batch was recorded with the deployment's admission (or its targets).
            if n > 0 {
                store
                    .dispatch_targets(
                        deployment_id,
                        batch,
                        true,
                        command_word(pb::CommandKind::Deploy),
                    )
                    .await?;
            }
            let mut set = JoinSet::new();
            for agent in batch {
                let fleet = self.clone();
                let agent = agent.clone();
                let mut cmd = command.clone();
                let id = deployment_id.to_string();
                set.spawn(async move {
                    cmd.sent_at_unix_nanos = now_nanos();
                    let msg = pb::ControlMessage {
                        msg: Some(pb::control_message::Msg::Deploy(cmd)),
                    };
                    let result = fleet
                        .dispatch(&id, &agent, pb::CommandKind::Deploy, msg, false)
                        .await;
                    (agent, result)
                });
            }
            while let Some(joined) = set.join_next().await {
                let (agent, result) =
                    joined.map_err(|e| Error::Internal(format!("rollout task: {e}")))?;
                let why = match result {
                    Ok(Dispatched::Answered(r)) if r.success => {
                        succeeded.push(agent);
                        continue;
                    }
                    Ok(Dispatched::Answered(r)) => {
                        failed_hosts += 1;
                        let why = if r.error.is_empty() {
                            "deploy failed".to_string()
                        } else {
                            r.error
                        };
                        failure.get_or_insert(format!("target {agent} failed: {why}"));
                        continue;
                    }
                    Ok(Dispatched::TimedOut(why)) => {
                        // The agent may still finish: it is told to undo whatever it does.
                        self.withdraw(deployment_id, &agent, &app.name, &why);
                        why
                    }
                    Ok(Dispatched::NotConnected(why)) => why,
                    Err(e) => e.to_string(),
                };
                store
                    .finish_target(
                        deployment_id,
                        &agent,
                        TargetStatus::Failed,
                        None,
                        Some(&why),
                    )
                    .await?;
                failed_hosts += 1;
                failure.get_or_insert(format!("target {agent} failed: {why}"));
            }
            if failure.is_some() {
                break;
            }
            if reached < targets.len() {
                if let Some(by) = self.cancel_requested(deployment_id) {
                    // Cancelled by a newer deployment: stop between batches; the targets
                    // updated so far are rolled back, so no host is left on this version
                    // while others were never reached.
                    let reason = format!("cancelled by deployment {by}");
                    store
                        .add_deployment_event(deployment_id, None, "cancel", &reason)
                        .await?;
                    self.cancel_done(deployment_id);
                    let cancelled = Failure::new(FailureKind::Cancelled { by: by.clone() }, reason);
                    return self
                        .conclude_as(
                            deployment_id,
                            &succeeded,
                            &targets[reached..],
                            Some(cancelled),
                            Some(&by),
                        )
                        .await;
                }
            }
        }
        // Every batch went out: the deployment finishes on its own (a cancel that came too
        // late to stop a batch changes nothing; the newer deployment follows it).
        self.cancel_done(deployment_id);
        let failure = failure.map(|detail| {
            let total = targets.len();
            Failure::new(
                FailureKind::Hosts {
                    failed: failed_hosts,
                    total,
                },
                detail,
            )
        });
        self.conclude(deployment_id, &succeeded, &targets[reached..], failure)
            .await
    }

    /// Ends a deployment: rolls back the targets that succeeded when another failed, or
    /// commits them all; then records the aggregate.
    pub(super) async fn conclude(
        &self,
        deployment_id: &str,
        succeeded: &[String],
        untouched: &[String],
        failure: Option<Failure>,
    ) -> Result<()> {
        self.conclude_as(deployment_id, succeeded, untouched, failure, None)
            .await
    }

    /// [`Fleet::conclude`]; with `superseded_by`, the rolled-back deployment ends
    /// `superseded` by that one instead of `failed`.
    pub(super) async fn conclude_as(
        &self,
        deployment_id: &str,
        succeeded: &[String],
        untouched: &[String],
        failure: Option<Failure>,
        superseded_by: Option<&str>,
    ) -> Result<()> {
        let store = self.service().store();
        let (_, app) = store.deployment(deployment_id).await?;
        for agent in untouched {
            store
                .finish_target(deployment_id, agent, TargetStatus::Skipped, None, None)
                .await?;
        }
        let ended = match failure {
            Some(failure) => {
                let reason = failure.detail.as_str();
                let public_reason = failure.public_reason();
                for agent in succeeded {
                    store
                        .add_deployment_event(
                            deployment_id,
                            None,
                            "rollback",
                            &format!("rolling back {agent}"),
                        )
                        .await?;
                    let msg = pb::ControlMessage {
                        msg: Some(pb::control_message::Msg::Rollback(pb::RollbackCommand {
                            deployment_id: deployment_id.to_string(),
                            app: app.clone(),
                        })),
                    };
                    let unanswered = match self
                        .dispatch(deployment_id, agent, pb::CommandKind::Rollback, msg, true)
                        .await
                    {
                        Ok(Dispatched::Answered(_)) => None,
                        Ok(Dispatched::TimedOut(why) | Dispatched::NotConnected(why)) => Some(why),
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(why) = unanswered {
                        store
                            .add_deployment_event(
                                deployment_id,
                                None,
                                "rollback",
                                &format!("rollback of {agent} failed: {why}"),
                            )
                            .await?;
                    }
                }
                let text = FailureText {
                    detail: reason,
                    public_reason: &public_reason,
                };
                let ended = store
                    .finish_deployment_as(
                        deployment_id,
                        false,
                        Some(&text),
                        superseded_by,
                        ("failed", reason),
                    )
                    .await?;
                tracing::warn!(deployment = %deployment_id, %app, %reason, "deployment failed");
                ended
            }
            None => {
                for agent in succeeded {
                    let msg = pb::ControlMessage {
                        msg: Some(pb::control_message::Msg::Commit(pb::CommitCommand {
                            deployment_id: deployment_id.to_string(),
                            app: app.clone(),
                        })),
                    };
                    // Commit only removes superseded containers; the deployment already serves.
                    self.send(agent, msg);
                }
                let ended = store
                    .finish_deployment(
                        deployment_id,
                        true,
                        None,
                        ("done", "deployment succeeded on every target"),
                    )
                    .await?;
                tracing::info!(deployment = %deployment_id, %app, "deployment succeeded");
                ended
            }
        };
        self.inner.changed.notify_waiters();
        // `None`: another path (a reconcile that raced this rollout) finished it first, and
        // its hooks ran then.
        let application_id = match ended {
            Some(log) => {
                self.notify_finished(&log, &app);
                log.application_id
            }
            None => store.deployment(deployment_id).await?.0.application_id,
        };
        // The application's slot is free: the newest queued deployment takes it.
        self.start_next(application_id);
        Ok(())
    }

    /// A target given up on without its result — no answer within the result timeout, or no
    /// report after a restart — may still finish its deploy and serve the version its
    /// deployment failed. It is sent a rollback in the background (the agent runs it after
    /// the deploy, under the app's lock; a re-send gets the recorded result), unless one is
    /// already out or a later deployment of the app reached that agent.
    pub(super) fn withdraw(&self, deployment_id: &str, agent: &str, app: &str, why: &str) {
        let key = (
            deployment_id.to_string(),
            agent.to_string(),
            pb::CommandKind::Rollback as i32,
        );
        if self
            .inner
            .inflight
            .lock()
            .expect("inflight lock")
            .contains_key(&key)
        {
            return;
        }
        let fleet = self.clone();
        let (deployment_id, agent, app, why) = (
            deployment_id.to_string(),
            agent.to_string(),
            app.to_string(),
            why.to_string(),
        );
        tokio::spawn(async move {
            let store = fleet.service().store();
            match store.newer_dispatch_on(&deployment_id, &agent).await {
                Ok(false) => {}
                Ok(true) => return,
                Err(e) => {
                    tracing::error!(deployment = %deployment_id, %agent, error = %e, "cannot decide on a rollback");
                    return;
                }
            }
            let _ = store
                .add_deployment_event(
                    &deployment_id,
                    None,
                    "rollback",
                    &format!("rolling back {agent}: {why}"),
                )
                .await;
            let msg = pb::ControlMessage {
                msg: Some(pb::control_message::Msg::Rollback(pb::RollbackCommand {
                    deployment_id: deployment_id.clone(),
                    app,
                })),
            };
            let outcome = fleet
                .dispatch(&deployment_id, &agent, pb::CommandKind::Rollback, msg, true)
                .await;
            let note = match outcome {
                Ok(Dispatched::Answered(r)) if r.rolled_back || r.error.is_empty() => {
                    format!("{agent} rolled back")
                }
                Ok(Dispatched::Answered(r)) => format!("rollback of {agent}: {}", r.error),
                Ok(Dispatched::TimedOut(why) | Dispatched::NotConnected(why)) => {
                    format!("rollback of {agent} failed: {why}")
                }
                Err(e) => format!("rollback of {agent} failed: {e}"),
            };
            let _ = store
                .add_deployment_event(&deployment_id, None, "rollback", &note)
                .await;
            fleet.inner.changed.notify_waiters();
        });
    }

    /// Sends one command to one agent and waits for its result. The command is re-sent when
    /// the agent reconnects (agents run a deployment id once and answer re-sends with the
    /// recorded result).
    async fn dispatch(
        &self,
        deployment_id: &str,
        agent: &str,
        kind: pb::CommandKind,
        msg: pb::ControlMessage,
        record: bool,
    ) -> Result<Dispatched> {
        let store = self.service().store();
        let waited = self.wait_connected(agent).await;
        if !waited {
            return Ok(Dispatched::NotConnected(format!(
                "agent {agent} is not connected"
            )));
        }
        let (tx, rx) = oneshot::channel();
        let key = (deployment_id.to_string(), agent.to_string(), kind as i32);
        self.inner
            .waiters
            .lock()
            .expect("waiters lock")
            .insert(key.clone(), tx);
        self.inner
            .inflight
            .lock()
            .expect("inflight lock")
            .insert(key.clone(), msg.clone());
        if record {
            store
                .dispatch_targets(
                    deployment_id,
                    &[agent.to_string()],
                    kind == pb::CommandKind::Deploy,
                    command_word(kind),
                )
                .await?;
        }
        self.inner.changed.notify_waiters();
        self.send(agent, msg);
        let outcome = tokio::time::timeout(self.inner.config.rollout.result_timeout, rx).await;
        self.inner
            .inflight
            .lock()
            .expect("inflight lock")
            .remove(&key);
        self.inner
            .waiters
            .lock()
            .expect("waiters lock")
            .remove(&key);
        match outcome {
            Ok(Ok(result)) => Ok(Dispatched::Answered(result)),
            Ok(Err(_)) => Err(Error::Internal("result channel closed".into())),
            Err(_) => Ok(Dispatched::TimedOut(format!(
                "no result from agent {agent} within {:?}",
                self.inner.config.rollout.result_timeout
            ))),
        }
    }

    async fn wait_connected(&self, agent: &str) -> bool {
        let deadline = tokio::time::Instant::now() + self.inner.config.rollout.connect_wait;
        loop {
            let notified = self.inner.connected.notified();
            if self.is_connected(agent) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_connected(agent);
            }
        }
    }

    /// Re-sends every in-flight command of an agent that just (re)connected.
    pub(super) fn resend_inflight(&self, agent: &str) {
        let pending: Vec<pb::ControlMessage> = self
            .inner
            .inflight
            .lock()
            .expect("inflight lock")
            .iter()
            .filter(|((_, a, _), _)| a == agent)
            .map(|(_, m)| m.clone())
            .collect();
        for msg in pending {
            self.send(agent, msg);
        }
    }
}

/// What became of one command sent to one agent.
pub(super) enum Dispatched {
    Answered(pb::DeployResult),
    /// The agent was not connected within `connect_wait`: the command never went out.
    NotConnected(String),
    /// It went out and no result came within `result_timeout`: the agent may still run it.
    TimedOut(String),
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// How a dispatch event names its command (`deploy sent to web-1`), in the words of the
/// CLI, never the proto's `COMMAND_KIND_DEPLOY`.
fn command_word(kind: pb::CommandKind) -> &'static str {
    match kind {
        pb::CommandKind::Deploy => "deploy",
        pb::CommandKind::Commit => "commit",
        pb::CommandKind::Rollback => "rollback",
        pb::CommandKind::Unspecified => "command",
    }
}
