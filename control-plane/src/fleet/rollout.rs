//! Deployments across targets: prepare (resolve env, allowlist, targets,
//! registry credentials) before anything is dispatched, then roll out batch by batch,
//! stopping and rolling back on the first failed target. A restarted control plane
//! reconciles what its predecessor left unfinished.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use berth_proto::v1 as pb;
use secrecy::ExposeSecret as _;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::Fleet;
use crate::crypto::Aad;
use crate::error::{Error, Result};
use crate::model::{Application, DeploymentLog, Target};
use crate::service::{Actor, Permission};
use crate::store::NewDeployment;
use crate::validate;

#[derive(Debug, Clone)]
pub struct RolloutConfig {
    /// How long a target may take to be connected before it counts as failed.
    pub connect_wait: Duration,
    /// How long one command may take on an agent (pull + health gate included).
    pub result_timeout: Duration,
    /// After a restart, how long to wait for agents to report unfinished deployments.
    pub reconcile_timeout: Duration,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            connect_wait: Duration::from_secs(15),
            result_timeout: Duration::from_secs(15 * 60),
            reconcile_timeout: Duration::from_secs(120),
        }
    }
}

/// Who asked for a deployment, for `deployment_logs.trigger_type/trigger_source`.
#[derive(Debug, Clone)]
pub struct DeployTrigger {
    /// `manual`, `api`, `webhook`, `registry` or `scheduled`.
    pub trigger_type: &'static str,
    /// Client IP, API key name, …
    pub source: Option<String>,
}

impl Fleet {
    /// Starts a deployment and returns its id at once; the rollout runs in the background.
    /// Failures found before dispatch (bad version, allowlist, unresolvable env, no targets)
    /// still leave a failed `deployment_logs` row with the reason, except an unknown app.
    pub async fn deploy(
        &self,
        actor: &Actor,
        app: &str,
        version: &str,
        trigger: DeployTrigger,
    ) -> Result<String> {
        actor.require(Permission::Deploy)?;
        validate::version(version)?;
        let app = self.service().store().application(app).await?;
        self.start_deployment(&actor.name, app, version, trigger)
            .await
    }

    /// The deployment itself, for callers that authorized it their own way (the webhook).
    pub(crate) async fn start_deployment(
        &self,
        actor_name: &str,
        app: Application,
        version: &str,
        trigger: DeployTrigger,
    ) -> Result<String> {
        validate::version(version)?;
        let store = self.service().store();
        let deployment_id = uuid::Uuid::new_v4().to_string();
        // Everything that can refuse a deployment is decided before anything is dispatched:
        // the allowlist and the environment first, then the targets.
        let mut prepared = self.prepare_command(&app, version, &deployment_id).await;
        let targets = match &prepared {
            Ok(_) => match self.select_targets(&app).await {
                Ok(targets) => targets,
                Err(e) => {
                    prepared = Err(e);
                    Vec::new()
                }
            },
            Err(_) => Vec::new(),
        };
        store
            .insert_deployment(&NewDeployment {
                deployment_id: &deployment_id,
                application_id: app.id,
                version,
                trigger_type: trigger.trigger_type,
                trigger_source: trigger.source.as_deref(),
                targets: &targets,
                actor: actor_name,
            })
            .await?;
        match prepared {
            Ok(command) => {
                let fleet = self.clone();
                let id = deployment_id.clone();
                tokio::spawn(async move { fleet.run_rollout(id, app, command, targets).await });
            }
            Err(e) => {
                // Refused before dispatch: recorded, audited, nothing reached an agent.
                let reason = e.to_string();
                store
                    .add_deployment_event(&deployment_id, None, "failed", &reason)
                    .await?;
                for agent in &targets {
                    store
                        .finish_target(&deployment_id, agent, "skipped", None, None)
                        .await?;
                }
                store
                    .finish_deployment(&deployment_id, false, Some(&reason))
                    .await?;
                store
                    .audit(actor_name, "deployment.refused", &app.name, Some(&reason))
                    .await?;
                self.inner.changed.notify_waiters();
                self.notify_finished(&deployment_id).await;
            }
        }
        Ok(deployment_id)
    }

    /// The agents an application runs on: named agents and label selectors; with no targets
    /// configured, the only enrolled agent (a single-host install).
    async fn select_targets(&self, app: &Application) -> Result<Vec<String>> {
        let store = self.service().store();
        if app.targets.is_empty() {
            let agents = store.target_agents(None, None).await?;
            return match agents.as_slice() {
                [only] => Ok(vec![only.clone()]),
                [] => Err(Error::FailedPrecondition("no agent is enrolled: enroll one with `berth agent token create`".into())),
                _ => Err(Error::FailedPrecondition(format!(
                    "application {:?} has no targets and several agents are enrolled: set --target agent:NAME or label:k=v",
                    app.name
                ))),
            };
        }
        let mut selected: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for target in &app.targets {
            let (matched, what) = match target {
                Target::Agent(name) => (
                    store.target_agents(Some(name), None).await?,
                    format!("agent {name:?}"),
                ),
                Target::Label { key, value } => (
                    store.target_agents(None, Some((key, value))).await?,
                    format!("label {key}={value}"),
                ),
            };
            if matched.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "target {what} matches no enrolled agent"
                )));
            }
            for name in matched {
                if seen.insert(name.clone()) {
                    selected.push(name);
                }
            }
        }
        Ok(selected)
    }

    /// Builds the command: allowlist, resolved environment, registry credentials.
    async fn prepare_command(
        &self,
        app: &Application,
        version: &str,
        deployment_id: &str,
    ) -> Result<pb::DeployCommand> {
        let store = self.service().store();
        let mut image = app.image.clone();
        let mut registry = None;
        if let Some(repo_name) = &app.repository {
            let repo = store.repository(repo_name).await?;
            let server = repo
                .url
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            if !image.starts_with(&format!("{server}/")) {
                image = format!("{server}/{image}");
            }
            let password = match &repo.password {
                Some(ciphertext) => self
                    .service()
                    .decrypt_repository_password(&repo.name, ciphertext)?
                    .expose_secret()
                    .to_string(),
                None => String::new(),
            };
            registry = Some(pb::RegistryCredentials {
                server,
                username: repo.username.clone().unwrap_or_default(),
                password,
            });
        }
        if !self.service().image_allowed(&image).await? {
            return Err(Error::PermissionDenied(format!(
                "image {image} is not on the image allowlist"
            )));
        }
        let env = self.service().resolve_environment(app.id).await?;
        let health_check = match &app.health_check {
            Some(h) => pb::HealthCheckSpec {
                kind: h.kind.clone(),
                port: h.port.into(),
                path: h.path.clone().unwrap_or_else(|| "/".to_string()),
                timeout_seconds: h.timeout_s.unwrap_or(60),
                grace_seconds: 0,
            },
            None => pb::HealthCheckSpec {
                kind: "default".into(),
                port: 0,
                path: String::new(),
                timeout_seconds: 60,
                grace_seconds: 3,
            },
        };
        Ok(pb::DeployCommand {
            deployment_id: deployment_id.to_string(),
            app: app.name.clone(),
            image,
            version: version.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.clone(), v.expose_secret().to_string()))
                .collect(),
            ports: app
                .ports
                .iter()
                .map(|p| pb::PortMapping {
                    host: p.host.into(),
                    container: p.container.into(),
                    protocol: p.protocol.clone(),
                })
                .collect(),
            registry,
            health_check: Some(health_check),
            restart_policy: app.restart_policy.clone(),
            command: app.command.clone(),
            sent_at_unix_nanos: 0,
        })
    }

    async fn run_rollout(
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
        let batch_size = usize::try_from(app.deploy_batch_size.max(1)).unwrap_or(1);
        let mut succeeded = Vec::new();
        let mut failure: Option<String> = None;
        let mut reached = 0;
        for batch in targets.chunks(batch_size) {
            reached += batch.len();
            // One durable record for the whole batch, then every command goes out at once.
            store
                .dispatch_targets(
                    deployment_id,
                    batch,
                    true,
                    pb::CommandKind::Deploy.as_str_name(),
                )
                .await?;
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
                match result {
                    Ok(r) if r.success => succeeded.push(agent),
                    Ok(r) => {
                        let why = if r.error.is_empty() {
                            "deploy failed".to_string()
                        } else {
                            r.error
                        };
                        failure.get_or_insert(format!("target {agent} failed: {why}"));
                    }
                    Err(e) => {
                        store
                            .finish_target(
                                deployment_id,
                                &agent,
                                "failed",
                                None,
                                Some(&e.to_string()),
                            )
                            .await?;
                        failure.get_or_insert(format!("target {agent} failed: {e}"));
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        self.conclude(deployment_id, &succeeded, &targets[reached..], failure)
            .await
    }

    /// Ends a deployment: rolls back the targets that succeeded when another failed, or
    /// commits them all; then records the aggregate.
    async fn conclude(
        &self,
        deployment_id: &str,
        succeeded: &[String],
        untouched: &[String],
        failure: Option<String>,
    ) -> Result<()> {
        let store = self.service().store();
        let (_, app) = store.deployment(deployment_id).await?;
        for agent in untouched {
            store
                .finish_target(deployment_id, agent, "skipped", None, None)
                .await?;
        }
        match failure {
            Some(reason) => {
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
                    if let Err(e) = self
                        .dispatch(deployment_id, agent, pb::CommandKind::Rollback, msg, true)
                        .await
                    {
                        store
                            .add_deployment_event(
                                deployment_id,
                                None,
                                "rollback",
                                &format!("rollback of {agent} failed: {e}"),
                            )
                            .await?;
                    }
                }
                store
                    .add_deployment_event(deployment_id, None, "failed", &reason)
                    .await?;
                store
                    .finish_deployment(deployment_id, false, Some(&reason))
                    .await?;
                tracing::warn!(deployment = %deployment_id, %app, %reason, "deployment failed");
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
                store
                    .add_deployment_event(
                        deployment_id,
                        None,
                        "done",
                        "deployment succeeded on every target",
                    )
                    .await?;
                store.finish_deployment(deployment_id, true, None).await?;
                tracing::info!(deployment = %deployment_id, %app, "deployment succeeded");
            }
        }
        self.inner.changed.notify_waiters();
        self.notify_finished(deployment_id).await;
        Ok(())
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
    ) -> Result<pb::DeployResult> {
        let store = self.service().store();
        let waited = self.wait_connected(agent).await;
        if !waited {
            return Err(Error::Unavailable(format!(
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
                    kind.as_str_name(),
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
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(Error::Internal("result channel closed".into())),
            Err(_) => Err(Error::Unavailable(format!(
                "no result from agent {agent} within {}s",
                self.inner.config.rollout.result_timeout.as_secs()
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

    /// After a restart: every deployment left pending or running is finished from the
    /// agents' reports, or marked failed with the reason after `reconcile_timeout`.
    pub async fn reconcile(&self) -> Result<()> {
        let store = self.service().store();
        for deployment_id in store.unfinished_deployments().await? {
            let fleet = self.clone();
            tokio::spawn(async move {
                if let Err(e) = fleet.reconcile_one(&deployment_id).await {
                    tracing::error!(deployment = %deployment_id, error = %e, "reconcile failed");
                }
            });
        }
        Ok(())
    }

    async fn reconcile_one(&self, deployment_id: &str) -> Result<()> {
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
            if targets.iter().all(|t| t.status != "running") {
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
        for t in &targets {
            match t.status.as_str() {
                "success" => succeeded.push(t.agent_name.clone()),
                "pending" => untouched.push(t.agent_name.clone()),
                "running" => {
                    let why = "no report from the agent after a control plane restart";
                    store
                        .finish_target(deployment_id, &t.agent_name, "failed", None, Some(why))
                        .await?;
                    failure.get_or_insert(format!("target {} failed: {why}", t.agent_name));
                }
                _ => {
                    failure.get_or_insert(format!(
                        "target {} failed: {}",
                        t.agent_name,
                        t.error_message.clone().unwrap_or_else(|| t.status.clone())
                    ));
                }
            }
        }
        if failure.is_none() && !untouched.is_empty() {
            failure = Some("control plane restarted before every target was deployed".to_string());
        }
        if targets.is_empty() {
            failure =
                Some("control plane restarted before the deployment was dispatched".to_string());
        }
        self.conclude(deployment_id, &succeeded, &untouched, failure)
            .await
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
            if !matches!(log.status.as_str(), "pending" | "running") {
                return Ok(log);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(self.service().store().deployment(deployment_id).await?.0);
            }
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
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl crate::service::Service {
    /// Decrypts a registry password for a deploy command (never logged, never stored again).
    pub(crate) fn decrypt_repository_password(
        &self,
        name: &str,
        ciphertext: &str,
    ) -> Result<secrecy::SecretString> {
        self.key()
            .decrypt_string(ciphertext, &Aad::new("repositories", "password", &[name]))
    }
}
