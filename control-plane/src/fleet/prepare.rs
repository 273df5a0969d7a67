//! Preparing a deployment: everything that can refuse it — version, image
//! allowlist, environment resolution, registry credentials, target selection — is decided
//! here, before anything is dispatched, and the deployment is made durable
//! (`deployment_logs` + `deployment_targets`) in one transaction. A refused deployment is
//! still recorded, failed, with its reason.
//!
//! Architecture invariant: nothing reaches an agent from this file; the rollout starts only
//! after `admit_deployment` committed.

use std::time::Duration;

use berth_proto::v1 as pb;
use secrecy::ExposeSecret as _;

use super::failure::{Failure, FailureKind};
use super::Fleet;
use crate::crypto::Aad;
use crate::error::{Error, Result};
use crate::model::{Application, DeploymentLog, Target};
use crate::service::{Actor, Permission};
use crate::store::{FailureText, NewDeployment, Slot};
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
    /// Stop the application's running deployment instead of waiting for it: no further
    /// batch is dispatched, targets already updated are rolled back when others were not
    /// reached, and it ends `superseded` by this one (`berth deploy --cancel-in-progress`).
    pub cancel_in_progress: bool,
}

/// A deployment that nothing refused: its command, its targets, and what its admission
/// records with it.
struct Ready {
    command: pb::DeployCommand,
    targets: Vec<String>,
    batch_size: usize,
    /// A step-log line for the admission (a capped health timeout).
    note: Option<String>,
}

impl Ready {
    /// The targets of the first batch: recorded as dispatched when the deployment takes the
    /// slot, so the rollout sends them their command without another commit.
    fn first_batch(&self) -> &[String] {
        &self.targets[..self.batch_size.min(self.targets.len())]
    }
}

/// How many targets a rolling deploy of `app` updates at once (at least one).
pub(super) fn batch_size(app: &Application) -> usize {
    usize::try_from(app.deploy_batch_size.max(1)).unwrap_or(1)
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
        let log = self
            .start_deployment(&actor.name, app, version, trigger)
            .await?;
        Ok(log.deployment_id)
    }

    /// The deployment itself, for callers that authorized it their own way (the webhook).
    /// One deployment per application runs at a time: while another holds the slot, this one
    /// is queued (and supersedes an older queued one); it starts when the slot frees. The
    /// store decides which, in the writer's transaction ([`Store::admit_deployment`]): no lock
    /// is held across a commit, so deploys of one application share commits like any others.
    ///
    /// Returns the deployment's row as of its answer: as admitted (queued, or pending with
    /// its rollout started), or final when it was refused before dispatch.
    ///
    /// [`Store::admit_deployment`]: crate::store::Store::admit_deployment
    pub(crate) async fn start_deployment(
        &self,
        actor_name: &str,
        app: Application,
        version: &str,
        trigger: DeployTrigger,
    ) -> Result<DeploymentLog> {
        validate::version(version)?;
        let store = self.service().store();
        let deployment_id = uuid::Uuid::new_v4().to_string();
        // A hint, not the decision: when a deployment holds the slot this one will most likely
        // queue, and a queued deployment is prepared when it starts (against the environment
        // of then). Otherwise everything that can refuse it is decided before anything is
        // dispatched, and its targets are recorded with it in one commit.
        let prepared = match store.active_deployment(app.id).await? {
            Some(_) => None,
            None => Some(self.prepare(&app, version, &deployment_id).await),
        };
        let ready = prepared.as_ref().and_then(|p| p.as_ref().ok());
        let cancel = trigger.cancel_in_progress || app.cancel_in_progress;
        let admission = store
            .admit_deployment(
                &NewDeployment {
                    deployment_id: &deployment_id,
                    application_id: app.id,
                    version,
                    trigger_type: trigger.trigger_type,
                    trigger_source: trigger.source.as_deref(),
                    targets: ready.map_or(&[][..], |r| r.targets.as_slice()),
                    first_batch: ready.map_or(&[][..], Ready::first_batch),
                    note: ready.and_then(|r| r.note.as_deref()),
                    actor: actor_name,
                },
                cancel,
            )
            .await?;
        for log in &admission.superseded {
            self.notify_finished(log, &app.name);
        }
        match admission.slot {
            Slot::QueuedBehind(behind) => {
                tracing::info!(deployment = %deployment_id, app = %app.name, %behind, "deployment queued");
                // The app's own setting (issue 14) makes every deploy of it ask.
                if cancel {
                    self.request_cancel(&behind, &deployment_id);
                }
                self.inner.changed.notify_waiters();
                Ok(admission.log)
            }
            Slot::Holds => match prepared {
                Some(Ok(ready)) => {
                    self.launch(actor_name, app, &deployment_id, Ok(ready))
                        .await?;
                    Ok(admission.log)
                }
                // Refused before dispatch: the answer is the final row, with the reason.
                Some(Err(failure)) => {
                    self.launch(actor_name, app, &deployment_id, Err(failure))
                        .await?;
                    Ok(store.deployment(&deployment_id).await?.0)
                }
                // The deployment seen a moment ago has finished since: this one was admitted
                // unprepared, and is prepared now as a dequeued one is.
                None => {
                    self.prepare_and_launch(actor_name, app, version, &deployment_id)
                        .await?;
                    Ok(store.deployment(&deployment_id).await?.0)
                }
            },
        }
    }

    /// After a deployment of an application finished: the newest queued one takes the slot
    /// (the older queued ones are superseded by it). Runs in a task of its own: the caller may
    /// hold nothing of the application's.
    pub(super) fn start_next(&self, application_id: i64) {
        let fleet = self.clone();
        tokio::spawn(async move {
            if let Err(e) = fleet.start_next_now(application_id).await {
                tracing::error!(application_id, error = %e, "cannot start the next queued deployment");
            }
        });
    }

    async fn start_next_now(&self, application_id: i64) -> Result<()> {
        let store = self.service().store();
        // `None` as well when a deployment admitted since holds the slot.
        let Some((log, superseded)) = store.take_next_queued(application_id).await? else {
            return Ok(());
        };
        let app = store.application_by_id(application_id).await?;
        for log in &superseded {
            self.notify_finished(log, &app.name);
        }
        tracing::info!(deployment = %log.deployment_id, app = %app.name, "queued deployment starts");
        let actor = log
            .trigger_source
            .clone()
            .unwrap_or_else(|| log.trigger_type.clone());
        self.prepare_and_launch(&actor, app, &log.version, &log.deployment_id)
            .await
    }

    /// Prepares a deployment that already holds the slot, records its targets (and its first
    /// batch as dispatched), and launches it.
    async fn prepare_and_launch(
        &self,
        actor: &str,
        app: Application,
        version: &str,
        deployment_id: &str,
    ) -> Result<()> {
        let prepared = self.prepare(&app, version, deployment_id).await;
        if let Ok(ready) = &prepared {
            self.service()
                .store()
                .add_targets(
                    deployment_id,
                    &ready.targets,
                    ready.first_batch(),
                    ready.note.as_deref(),
                )
                .await?;
        }
        self.launch(actor, app, deployment_id, prepared).await
    }

    /// The command and the targets, or why the deployment is refused.
    async fn prepare(
        &self,
        app: &Application,
        version: &str,
        deployment_id: &str,
    ) -> Result<Ready, Failure> {
        let command = self.prepare_command(app, version, deployment_id).await?;
        let targets = self
            .select_targets(app)
            .await
            .map_err(Failure::of(FailureKind::NoTargets))?;
        let asked = app
            .health_check
            .as_ref()
            .and_then(|h| h.timeout_s)
            .unwrap_or(DEFAULT_HEALTH_TIMEOUT_S);
        let gate = command
            .health_check
            .as_ref()
            .map_or(asked, |h| h.timeout_seconds);
        let note = (gate < asked).then(|| {
            format!(
                "health timeout capped at {gate}s (asked {asked}s): a target must answer within the control plane's result timeout of {}s",
                self.inner.config.rollout.result_timeout.as_secs()
            )
        });
        Ok(Ready {
            command,
            targets,
            batch_size: batch_size(app),
            note,
        })
    }

    /// Starts the rollout of a recorded deployment (its first batch recorded as dispatched),
    /// or records why it was refused (nothing reached an agent) and hands the slot on.
    async fn launch(
        &self,
        actor_name: &str,
        app: Application,
        deployment_id: &str,
        prepared: Result<Ready, Failure>,
    ) -> Result<()> {
        let store = self.service().store();
        match prepared {
            Ok(ready) => {
                let fleet = self.clone();
                let id = deployment_id.to_string();
                tokio::spawn(async move {
                    fleet
                        .run_rollout(id, app, ready.command, ready.targets)
                        .await
                });
            }
            Err(failure) => {
                // Refused before dispatch: recorded, audited, nothing reached an agent (a
                // refused deployment has no target rows).
                let reason = failure.detail.clone();
                let public_reason = failure.public_reason();
                let ended = store
                    .finish_deployment(
                        deployment_id,
                        false,
                        Some(&FailureText {
                            detail: &reason,
                            public_reason: &public_reason,
                        }),
                        ("failed", &reason),
                    )
                    .await?;
                store
                    .audit(actor_name, "deploy.refused", &app.name, Some(&reason))
                    .await?;
                self.inner.changed.notify_waiters();
                if let Some(log) = ended {
                    self.notify_finished(&log, &app.name);
                }
                self.start_next(app.id);
            }
        }
        Ok(())
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

    /// Builds the command: allowlist, resolved environment, registry credentials. Each step's
    /// error is classified here, with its public category.
    async fn prepare_command(
        &self,
        app: &Application,
        version: &str,
        deployment_id: &str,
    ) -> Result<pb::DeployCommand, Failure> {
        let store = self.service().store();
        let mut image = app.image.clone();
        let mut registry = None;
        if let Some(repo_name) = &app.repository {
            let repo = store
                .repository(repo_name)
                .await
                .map_err(Failure::of(FailureKind::Registry))?;
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
                    .decrypt_repository_password(&repo.name, ciphertext)
                    .map_err(Failure::of(FailureKind::Registry))?
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
        let allowed = self
            .service()
            .image_allowed(&image)
            .await
            .map_err(Failure::of(FailureKind::Refused))?;
        if !allowed {
            return Err(Failure::new(
                FailureKind::ImageNotAllowed,
                format!("image {image} is not on the image allowlist"),
            ));
        }
        let env = self
            .service()
            .resolve_environment(app.id)
            .await
            .map_err(Failure::of(FailureKind::Environment))?;
        crate::validate::environment_size(
            &app.name,
            env.iter()
                .map(|(k, v)| (k.as_str(), v.expose_secret().len())),
        )
        .map_err(Failure::of(FailureKind::EnvironmentTooLarge))?;
        let mut health_check = match &app.health_check {
            Some(h) => pb::HealthCheckSpec {
                kind: h.kind.clone(),
                port: h.port.into(),
                path: h.path.clone().unwrap_or_else(|| "/".to_string()),
                timeout_seconds: h.timeout_s.unwrap_or(DEFAULT_HEALTH_TIMEOUT_S),
                grace_seconds: 0,
            },
            None => pb::HealthCheckSpec {
                kind: "default".into(),
                port: 0,
                path: String::new(),
                timeout_seconds: DEFAULT_HEALTH_TIMEOUT_S,
                grace_seconds: 3,
            },
        };
        // The health gate must end (and the agent answer) before the control plane stops
        // waiting for the result; the rest of the result timeout is left for the pull.
        // (`launch` records the cap in the deployment's log.)
        let limit = health_timeout_limit(self.inner.config.rollout.result_timeout);
        health_check.timeout_seconds = health_check.timeout_seconds.min(limit);
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
            domains: self
                .proxy_domains(app)
                .await
                .map_err(Failure::of(FailureKind::Refused))?,
            stop: Some(pb::StopSpec {
                drain_seconds: app.stop.drain_timeout_s,
                timeout_seconds: app.stop.stop_timeout_s,
                signal: app.stop.stop_signal.clone(),
            }),
        })
    }
}

/// How long a health gate waits when the app does not say.
const DEFAULT_HEALTH_TIMEOUT_S: u32 = 60;

/// The longest health gate a command may carry: half the result timeout (at least 1 s),
/// so a target's answer always comes before the control plane gives up on it.
pub(super) fn health_timeout_limit(result_timeout: Duration) -> u32 {
    u32::try_from(result_timeout.as_secs() / 2)
        .unwrap_or(u32::MAX)
        .max(1)
}

impl crate::service::Service {
    /// Decrypts a registry password for a deploy command (never logged, never stored again).
    pub(crate) fn decrypt_repository_password(
        &self,
        name: &str,
        ciphertext: &str,
    ) -> Result<secrecy::SecretString> {
        self.key()
            .decrypt_string(ciphertext, &Aad::repository_password(name))
    }
}
