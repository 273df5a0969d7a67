//! After a restart: every deployment the previous run left pending or running is
//! finished from what the agents report (they replay journaled results on reconnect), or
//! failed with the reason after `reconcile_timeout`; targets that succeeded are rolled back
//! when another failed, exactly as a live rollout would.

use super::failure::{Failure, FailureKind};
use super::Fleet;
use crate::error::Result;
use crate::model::TargetStatus;

impl Fleet {
    /// Every deployment left pending or running is finished from the
    /// agents' reports, or marked failed with the reason after `reconcile_timeout`.
    pub async fn reconcile(&self) -> Result<()> {
        let store = self.service().store();
        // What the crash left unfinished is read first: a queued deployment started below
        // is pending at once, and must not be taken for one the crash left behind.
        let unfinished = store.unfinished_deployments().await?;
        // Queued deployments of applications with nothing running start now; the others
        // start when the deployment being reconciled concludes.
        for application_id in store.apps_with_queued().await? {
            self.start_next(application_id);
        }
        for deployment_id in unfinished {
            let fleet = self.clone();
            tokio::spawn(async move {
                if let Err(e) = fleet.reconcile_one(&deployment_id).await {
                    tracing::error!(deployment = %deployment_id, error = %e, "reconcile failed");
                }
            });
        }
        Ok(())
    }

    pub(super) async fn reconcile_one(&self, deployment_id: &str) -> Result<()> {
        let store = self.service().store();
        store
            .add_deployment_event(
                deployment_id,
                None,
                "reconcile",
                "control plane restarted; waiting for agent reports",
            )
            .await?;
        let deadline = tokio::time::Instant::now() + self.inner.config.rollout.reconcile_timeout;
        loop {
            let notified = self.changed();
            let targets = store.deployment_targets(deployment_id).await?;
            if !targets.iter().any(|t| t.status.is_awaiting_result()) {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let targets = store.deployment_targets(deployment_id).await?;
        let mut succeeded = Vec::new();
        let mut untouched = Vec::new();
        let mut failure = None;
        let mut failed_hosts = 0;
        for t in &targets {
            match t.status {
                TargetStatus::Success => succeeded.push(t.agent_name.clone()),
                TargetStatus::Pending => untouched.push(t.agent_name.clone()),
                TargetStatus::Running => {
                    let why = "no report from the agent after a control plane restart";
                    store
                        .finish_target(
                            deployment_id,
                            &t.agent_name,
                            TargetStatus::Failed,
                            None,
                            Some(why),
                        )
                        .await?;
                    failed_hosts += 1;
                    failure.get_or_insert(format!("target {} failed: {why}", t.agent_name));
                    // It may still be deploying, or its result may come with its next
                    // connection: either way it must not end up serving this version.
                    let (_, app) = store.deployment(deployment_id).await?;
                    self.withdraw(deployment_id, &t.agent_name, &app, why);
                }
                _ => {
                    failed_hosts += 1;
                    failure.get_or_insert(format!(
                        "target {} failed: {}",
                        t.agent_name,
                        t.error_message
                            .clone()
                            .unwrap_or_else(|| t.status.to_string())
                    ));
                }
            }
        }
        let total = targets.len();
        let mut failure = failure.map(|detail| {
            Failure::new(
                FailureKind::Hosts {
                    failed: failed_hosts,
                    total,
                },
                detail,
            )
        });
        if failure.is_none() && !untouched.is_empty() {
            failure = Some(Failure::new(
                FailureKind::Interrupted,
                "control plane restarted before every target was deployed",
            ));
        }
        if targets.is_empty() {
            failure = Some(Failure::new(
                FailureKind::Interrupted,
                "control plane restarted before the deployment was dispatched",
            ));
        }
        self.conclude(deployment_id, &succeeded, &untouched, failure)
            .await
    }
}
