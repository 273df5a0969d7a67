//! The Docker implementation of [`Executor`]: the local engine, driven through bollard.
//!
//! A deploy never stops the running version before the new one has proved healthy: the new
//! version first runs as a *candidate*, is health-checked on its bridge address, and only then
//! does a cut-over make it serve in place of the previous containers (stopped, kept until
//! [`Executor::commit`], so [`Executor::rollback`] can put them back).
//!
//! The steps live one per module, so a second cut-over can sit beside today's:
//!
//! - `pull` — the image reference, registry credentials, the pull and its local-copy fallback.
//! - `containers` — naming, labels, and the engine calls on an app's containers.
//! - `health` — the health gate: the image's HEALTHCHECK, HTTP and TCP probes.
//! - `cutover` — how a healthy candidate takes over, and how that is undone (today: host
//!   ports move from the previous containers to a final one).
//! - `deploy` — one deployment strung together from the above, and its commit.
//! - `error` — typed engine and pull errors, and the redaction of their messages.
//!
//! The engine is the only state: containers are found again by their labels, so an agent
//! restart loses nothing.
//!
//! Architecture invariant: environment values reach the engine in the create body and go
//! nowhere else; every message built from an engine error of a deployment's requests is passed
//! through `redact` (see `error`). (bollard itself logs request bodies at `debug`/`trace`
//! through the `log` crate: the agent's log filter must keep `bollard` at `info` or quieter.)

mod containers;
mod cutover;
mod deploy;
mod error;
mod health;
mod pull;

use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::Docker;
use tracing::{info, instrument, warn};

pub use self::containers::container_name;
pub use self::pull::image_reference;

use self::cutover::{CutOver, ProxyLink};
use self::deploy::Deploy;
use crate::executor::{DeployEvent, DeployOutcome, DeploySpec, Domain, EventSink, Executor};

/// One request to the engine may take this long: pulls of large images are single requests.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs deployments on a Docker Engine.
#[derive(Clone)]
pub struct DockerExecutor {
    /// The engine client. Its API version must be one the engine speaks: bollard defaults to
    /// a newer one than Docker 20.10 accepts, which [`DockerExecutor::connect`] negotiates.
    docker: Docker,
    /// How long `docker stop` gives a superseded container before SIGKILL.
    stop_timeout: Duration,
    /// Pause between two looks at a container during a health gate.
    poll_interval: Duration,
    /// The agent's name: its containers are labelled `berth.agent=<name>` and named after it,
    /// and it only ever sees its own, so several agents can share one engine.
    scope: Option<String>,
    /// How a healthy candidate takes over from the previous version, and how that is undone.
    /// One per executor, because a rollback must undo what the deploy did.
    cut_over: CutOver,
}

impl DockerExecutor {
    /// Wraps a client whose API version is already one the engine speaks.
    pub fn new(docker: Docker) -> Self {
        Self {
            docker,
            stop_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(200),
            scope: None,
            cut_over: CutOver::HostPorts,
        }
    }

    /// Connects to the local engine (`DOCKER_HOST=unix://…` or the default socket) and
    /// negotiates the API version down to the engine's.
    pub async fn connect() -> Result<Self, DockerError> {
        let docker = Docker::connect_with_local_defaults()?
            .with_timeout(ENGINE_TIMEOUT)
            .negotiate_version()
            .await?;
        Ok(Self::new(docker))
    }

    /// Scopes every container to one agent (see the `scope` field).
    pub fn with_scope(mut self, agent: impl Into<String>) -> Self {
        self.scope = Some(agent.into());
        self
    }

    /// How long a superseded container may take to stop before it is killed.
    pub fn with_stop_timeout(mut self, stop_timeout: Duration) -> Self {
        self.stop_timeout = stop_timeout;
        self
    }

    /// Hands the app's host ports and domains to the host proxy listening on `socket`
    /// (`berth-proxy`): deploys switch a route instead of moving host ports.
    pub fn with_proxy(mut self, socket: impl Into<std::path::PathBuf>) -> Self {
        self.cut_over = CutOver::Proxy(std::sync::Arc::new(ProxyLink::new(socket)));
        self
    }

    /// Puts the host back in order after the agent stopped mid-deploy (with a host proxy:
    /// candidates that were never routed are removed, interrupted retirements finished).
    pub async fn repair(&self) -> Result<(), String> {
        self.cut_over.repair(self).await.map_err(|e| e.to_string())
    }

    /// The engine client, for callers that need more than deployments (e.g. status queries).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }
}

#[async_trait::async_trait]
impl Executor for DockerExecutor {
    #[instrument(skip_all, fields(app = %spec.app, deployment_id = %spec.deployment_id))]
    async fn deploy(&self, spec: &DeploySpec, events: &EventSink) -> DeployOutcome {
        Deploy {
            exec: self,
            spec,
            events,
        }
        .run()
        .await
    }

    #[instrument(skip_all, fields(app = %app, deployment_id = %deployment_id))]
    async fn commit(&self, app: &str, deployment_id: &str, events: &EventSink) {
        deploy::commit(self, app, deployment_id, events).await
    }

    #[instrument(skip_all, fields(app = %app, deployment_id = %deployment_id))]
    async fn rollback(&self, app: &str, deployment_id: &str, events: &EventSink) -> DeployOutcome {
        self.cut_over
            .rollback(self, app, deployment_id, events)
            .await
    }

    async fn set_domains(&self, app: &str, domains: &[Domain]) -> Result<(), String> {
        self.cut_over.set_domains(app, domains).await
    }

    async fn set_challenge(
        &self,
        token: &str,
        key_authorization: &secrecy::SecretString,
        ttl: std::time::Duration,
    ) -> Result<(), String> {
        self.cut_over
            .set_challenge(token, key_authorization, ttl)
            .await
    }

    async fn recover(&self, app: &str, deployment_id: &str) -> Option<DeployOutcome> {
        self.cut_over.recover(self, app, deployment_id).await
    }

    async fn runtime_version(&self) -> String {
        match self.docker.version().await {
            Ok(version) => version.version.unwrap_or_else(|| "unknown".to_owned()),
            Err(e) => {
                warn!(error = %e, "docker version unavailable");
                "unknown".to_owned()
            }
        }
    }
}

/// Reports a failure as the last event and as the outcome.
fn failed(
    events: &EventSink,
    error: String,
    serving: Option<String>,
    rolled_back: bool,
) -> DeployOutcome {
    emit(events, "failed", error.clone());
    DeployOutcome {
        success: false,
        container_id: serving,
        error: Some(error),
        rolled_back,
    }
}

fn emit(events: &EventSink, phase: &str, message: String) {
    info!(phase, %message, "deploy step");
    // The receiver may be gone (stream dropped): the deploy still runs to a final state.
    let _ = events.send(DeployEvent {
        phase: phase.to_owned(),
        message,
    });
}

/// A deployment whose messages the unit tests of every step check: it carries an environment
/// value and a registry password that must never show.
#[cfg(test)]
fn test_spec(version: &str) -> DeploySpec {
    use std::collections::BTreeMap;

    use secrecy::SecretString;

    use crate::executor::{HealthCheck, RegistryAuth};

    DeploySpec {
        deployment_id: "0123456789abcdef".to_owned(),
        app: "web".to_owned(),
        image: "127.0.0.1:5000/team/web".to_owned(),
        version: version.to_owned(),
        env: BTreeMap::from([(
            "DATABASE_URL".to_owned(),
            SecretString::from("postgres://u:hunter22@db"),
        )]),
        ports: vec![],
        registry_auth: Some(RegistryAuth {
            server: "127.0.0.1:5000".to_owned(),
            username: "ci".to_owned(),
            password: SecretString::from("registry-pass"),
        }),
        health_check: HealthCheck::Tcp {
            port: 80,
            timeout: Duration::from_secs(1),
        },
        restart_policy: "no".to_owned(),
        command: vec![],
        domains: vec![],
        stop: Default::default(),
    }
}
