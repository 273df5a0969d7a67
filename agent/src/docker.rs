//! The Docker implementation of [`Executor`]: the local engine, driven through bollard.
//!
//! A deploy never stops the running version before the new one has proved healthy. Two
//! containers cannot publish the same host port, so the new version first runs as a
//! *candidate* without host ports and is health-checked on its bridge address; only then are
//! the previous containers stopped (kept, not removed, until [`Executor::commit`]) and a final
//! container created with the host ports. If that one fails, the previous containers are
//! started again. An app without host ports skips the second container: its candidate is
//! already the final one.
//!
//! The engine is the only state: containers are found again by their labels, so an agent
//! restart loses nothing. `berth.app`, `berth.deployment`, `berth.version`, and
//! `berth.restart-policy`, the policy to restore when a stopped container serves again
//! (stopping one sets its policy to `no`, so a daemon restart cannot revive a superseded
//! version next to the new one).
//!
//! Architecture invariant: environment values reach the engine in the create body and go
//! nowhere else; every message built from an engine error is passed through `redact`.
//! (bollard itself logs request bodies at `debug`/`trace` through the `log` crate: the
//! agent's log filter must keep `bollard` at `info` or quieter.)

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, ContainerUpdateBody,
    HealthStatusEnum, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, Instant};
use tracing::{info, instrument, warn};

use crate::executor::{
    DeployEvent, DeployOutcome, DeploySpec, EventSink, Executor, HealthCheck, PortSpec,
};

const LABEL_APP: &str = "berth.app";
const LABEL_DEPLOYMENT: &str = "berth.deployment";
const LABEL_VERSION: &str = "berth.version";
const LABEL_RESTART_POLICY: &str = "berth.restart-policy";
/// The agent that owns a container, when several agents share one engine.
const LABEL_AGENT: &str = "berth.agent";

/// One request to the engine may take this long: pulls of large images are single requests.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(600);
/// One HTTP or TCP probe gives up after this long (the overall health timeout still rules).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs deployments on a Docker Engine.
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
}

impl DockerExecutor {
    /// Wraps a client whose API version is already one the engine speaks.
    pub fn new(docker: Docker) -> Self {
        Self {
            docker,
            stop_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(200),
            scope: None,
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

    fn container_name(&self, app: &str, deployment_id: &str) -> String {
        match &self.scope {
            Some(agent) => container_name(&format!("{agent}-{app}"), deployment_id),
            None => container_name(app, deployment_id),
        }
    }

    /// How long a superseded container may take to stop before it is killed.
    pub fn with_stop_timeout(mut self, stop_timeout: Duration) -> Self {
        self.stop_timeout = stop_timeout;
        self
    }

    /// The engine client, for callers that need more than deployments (e.g. status queries).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Every container of `app` (running or not), newest first.
    async fn app_containers(&self, app: &str, all: bool) -> Result<Vec<AppContainer>, String> {
        let mut labels = vec![format!("{LABEL_APP}={app}")];
        if let Some(agent) = &self.scope {
            labels.push(format!("{LABEL_AGENT}={agent}"));
        }
        let filters = HashMap::from([("label", labels)]);
        let options = ListContainersOptionsBuilder::new()
            .all(all)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| format!("listing containers of {app} failed: {}", engine_message(&e)))?;
        let mut containers: Vec<_> = summaries
            .into_iter()
            .filter_map(AppContainer::from_summary)
            .collect();
        containers.sort_by_key(|c| std::cmp::Reverse(c.created));
        Ok(containers)
    }

    async fn remove(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            other => other,
        }
    }

    /// Stops a superseded container, first setting its restart policy to `no` so that a
    /// daemon restart does not bring it back next to its successor.
    async fn stop_superseded(&self, container: &AppContainer) -> Result<(), String> {
        let update = ContainerUpdateBody {
            restart_policy: Some(restart_policy(RestartPolicyNameEnum::NO)),
            ..Default::default()
        };
        if let Err(e) = self.docker.update_container(&container.id, update).await {
            warn!(container = %container.name, error = %engine_message(&e), "could not clear restart policy");
        }
        let seconds = i32::try_from(self.stop_timeout.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(seconds).build();
        self.docker
            .stop_container(&container.id, Some(options))
            .await
            .map_err(|e| format!("stopping {} failed: {}", container.name, engine_message(&e)))
    }

    /// Starts a stopped container again and gives it back its own restart policy.
    async fn restart(&self, container: &AppContainer) -> Result<(), String> {
        self.docker
            .start_container(&container.id, None)
            .await
            .map_err(|e| {
                format!(
                    "starting {} again failed: {}",
                    container.name,
                    engine_message(&e)
                )
            })?;
        if let Some(policy) = container
            .restart_policy
            .as_deref()
            .and_then(|p| parse_restart_policy(p).ok())
        {
            let update = ContainerUpdateBody {
                restart_policy: Some(restart_policy(policy)),
                ..Default::default()
            };
            if let Err(e) = self.docker.update_container(&container.id, update).await {
                warn!(container = %container.name, error = %engine_message(&e), "could not restore restart policy");
            }
        }
        Ok(())
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
        let containers = match self.app_containers(app, true).await {
            Ok(containers) => containers,
            Err(error) => {
                warn!(%error, "cleanup failed");
                emit(events, "cleanup", format!("cleanup failed: {error}"));
                return;
            }
        };
        // Only what this deployment superseded: never a container created after it (a commit
        // arriving late must not remove a newer deployment).
        let Some(current) = containers.iter().find(|c| c.deployment == deployment_id) else {
            emit(
                events,
                "cleanup",
                format!("no container of deployment {deployment_id}; nothing removed"),
            );
            return;
        };
        let superseded: Vec<_> = containers
            .iter()
            .filter(|c| c.deployment != deployment_id && c.created <= current.created)
            .collect();
        if superseded.is_empty() {
            emit(
                events,
                "cleanup",
                "no previous container to remove".to_owned(),
            );
        }
        for container in superseded {
            let message = match self.remove(&container.id).await {
                Ok(()) => format!("removed {} ({})", container.name, container.version),
                Err(e) => format!("removing {} failed: {}", container.name, engine_message(&e)),
            };
            emit(events, "cleanup", message);
        }
    }

    #[instrument(skip_all, fields(app = %app, deployment_id = %deployment_id))]
    async fn rollback(&self, app: &str, deployment_id: &str, events: &EventSink) -> DeployOutcome {
        let containers = match self.app_containers(app, true).await {
            Ok(containers) => containers,
            Err(error) => return failed(events, format!("rollback failed: {error}"), None, false),
        };
        let (ours, others): (Vec<_>, Vec<_>) = containers
            .into_iter()
            .partition(|c| c.deployment == deployment_id);
        // Ours first: the host ports must be free before the previous container starts.
        for container in &ours {
            if let Err(e) = self.remove(&container.id).await {
                let error = format!(
                    "rollback failed: removing {} failed: {}",
                    container.name,
                    engine_message(&e)
                );
                return failed(events, error, Some(container.id.clone()), false);
            }
            emit(
                events,
                "rollback",
                format!("removed {} ({})", container.name, container.version),
            );
        }
        let Some(previous) = others.into_iter().next() else {
            return failed(
                events,
                format!("rollback failed: no previous container of {app} to restore"),
                None,
                false,
            );
        };
        if !previous.running {
            if let Err(error) = self.restart(&previous).await {
                return failed(events, format!("rollback failed: {error}"), None, false);
            }
        }
        emit(
            events,
            "rollback",
            format!("{} ({}) serves again", previous.name, previous.version),
        );
        DeployOutcome {
            success: false,
            container_id: Some(previous.id),
            error: Some(format!("deployment {deployment_id} rolled back")),
            rolled_back: true,
        }
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

/// One run of [`Executor::deploy`].
struct Deploy<'a> {
    exec: &'a DockerExecutor,
    spec: &'a DeploySpec,
    events: &'a EventSink,
}

/// Which container a health gate is looking at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// The new version on its bridge address, the previous version still serving.
    Candidate,
    /// The container holding the host ports, after the candidate passed: a shorter grace.
    Final,
}

impl Deploy<'_> {
    async fn run(&self) -> DeployOutcome {
        let spec = self.spec;
        if let Err(error) = parse_restart_policy(&spec.restart_policy) {
            return failed(self.events, error, None, false);
        }
        let previous: Vec<_> = match self.exec.app_containers(&spec.app, false).await {
            Ok(running) => running
                .into_iter()
                .filter(|c| c.deployment != spec.deployment_id)
                .collect(),
            Err(error) => return failed(self.events, error, None, false),
        };
        let serving = previous.first().map(|c| c.id.clone());

        // Nothing is touched before the image is here: a failed pull changes nothing.
        if let Err(error) = self.pull().await {
            return failed(self.events, error, serving, false);
        }

        let publishes = spec.ports.iter().any(|p| p.host != 0);
        let final_name = self.exec.container_name(&spec.app, &spec.deployment_id);
        let candidate_name = if publishes {
            format!("{final_name}-candidate")
        } else {
            final_name.clone()
        };

        self.emit(
            "create",
            format!("creating {candidate_name} from {}", image_reference(spec)),
        );
        let candidate = match self.create(&candidate_name, false).await {
            Ok(id) => id,
            Err(error) => return self.abandon(None, error, &previous).await,
        };
        self.emit("start", format!("starting {candidate_name}"));
        if let Err(e) = self.exec.docker.start_container(&candidate, None).await {
            let error = format!(
                "starting {candidate_name} failed: {}",
                self.redact(engine_message(&e))
            );
            return self.abandon(Some(&candidate), error, &previous).await;
        }
        self.emit(
            "health",
            format!(
                "checking {candidate_name}: {}",
                describe(&spec.health_check)
            ),
        );
        if let Err(error) = self.check_health(&candidate, Gate::Candidate).await {
            return self.abandon(Some(&candidate), error, &previous).await;
        }

        if !publishes {
            self.emit(
                "swap",
                format!("{candidate_name} is healthy; {}", stopping(&previous)),
            );
            for container in &previous {
                if let Err(error) = self.exec.stop_superseded(container).await {
                    self.emit("swap", error);
                }
            }
            return self.succeed(candidate, &final_name, previous.len());
        }

        self.emit(
            "swap",
            format!(
                "{candidate_name} is healthy; {}, then publishing the host ports",
                stopping(&previous)
            ),
        );
        let mut stopped = Vec::new();
        for container in &previous {
            if let Err(error) = self.exec.stop_superseded(container).await {
                self.remove_quietly(&candidate).await;
                return self.put_back(&stopped, error, &previous).await;
            }
            stopped.push(container.clone());
        }
        self.remove_quietly(&candidate).await;

        self.emit(
            "create",
            format!(
                "creating {final_name} with host ports {}",
                host_ports(&spec.ports)
            ),
        );
        let final_id = match self.create(&final_name, true).await {
            Ok(id) => id,
            Err(error) => return self.put_back(&previous, error, &previous).await,
        };
        self.emit("start", format!("starting {final_name}"));
        if let Err(e) = self.exec.docker.start_container(&final_id, None).await {
            self.remove_quietly(&final_id).await;
            let error = format!(
                "starting {final_name} failed: {}",
                self.redact(engine_message(&e))
            );
            return self.put_back(&previous, error, &previous).await;
        }
        self.emit(
            "health",
            format!("checking {final_name}: {}", describe(&spec.health_check)),
        );
        if let Err(error) = self.check_health(&final_id, Gate::Final).await {
            self.remove_quietly(&final_id).await;
            return self.put_back(&previous, error, &previous).await;
        }
        self.succeed(final_id, &final_name, previous.len())
    }

    async fn pull(&self) -> Result<(), String> {
        let spec = self.spec;
        let reference = image_reference(spec);
        let with = spec
            .registry_auth
            .as_ref()
            .map(|a| format!(" as {} on {}", a.username, a.server))
            .unwrap_or_default();
        self.emit("pull", format!("pulling {reference}{with}"));

        let options = CreateImageOptionsBuilder::new()
            .from_image(&spec.image)
            .tag(&spec.version)
            .build();
        let credentials = spec.registry_auth.as_ref().map(|auth| DockerCredentials {
            username: Some(auth.username.clone()),
            password: Some(auth.password.expose_secret().to_owned()),
            serveraddress: Some(auth.server.clone()),
            ..Default::default()
        });
        let mut progress = self
            .exec
            .docker
            .create_image(Some(options), None, credentials);
        let mut digest = None;
        let mut failure = None;
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => {
                    if let Some(d) = info
                        .status
                        .as_deref()
                        .and_then(|s| s.strip_prefix("Digest: "))
                    {
                        digest = Some(d.to_owned());
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let Some(e) = failure else {
            self.emit(
                "pull",
                format!(
                    "pulled {reference}{}",
                    digest.map(|d| format!(" ({d})")).unwrap_or_default()
                ),
            );
            return Ok(());
        };
        let error = format!(
            "pull {reference} failed: {}",
            self.redact(engine_message(&e))
        );
        // A tag may have moved on the registry, so a local copy of it is no answer; a digest
        // cannot have, so a local copy of it is exactly the image asked for when the registry
        // is out of reach. Refused credentials still fail: they must be fixed, not bypassed.
        // An application without a registry of its own (no credentials) may run an image
        // built on this host, as `docker run` would when the pull fails.
        if spec.registry_auth.is_none()
            && !is_refusal(&error)
            && self.exec.docker.inspect_image(&reference).await.is_ok()
        {
            self.emit(
                "pull",
                format!("{error}; using the image present on this host"),
            );
            return Ok(());
        }
        if is_digest(&spec.version)
            && !is_refusal(&error)
            && self.exec.docker.inspect_image(&reference).await.is_ok()
        {
            self.emit(
                "pull",
                format!("{error}; using the local copy of this digest"),
            );
            return Ok(());
        }
        Err(error)
    }

    /// Creates a container of this deployment; with `publish`, it binds the host ports.
    async fn create(&self, name: &str, publish: bool) -> Result<String, String> {
        let spec = self.spec;
        self.remove_leftover(name).await;

        let env = spec
            .env
            .iter()
            .map(|(key, value)| format!("{key}={}", value.expose_secret()))
            .collect();
        let mut labels = HashMap::from([
            (LABEL_APP.to_owned(), spec.app.clone()),
            (LABEL_DEPLOYMENT.to_owned(), spec.deployment_id.clone()),
            (LABEL_VERSION.to_owned(), spec.version.clone()),
            (LABEL_RESTART_POLICY.to_owned(), spec.restart_policy.clone()),
        ]);
        if let Some(agent) = &self.exec.scope {
            labels.insert(LABEL_AGENT.to_owned(), agent.clone());
        }
        let exposed: BTreeSet<String> = spec.ports.iter().map(port_key).collect();
        let port_bindings = publish.then(|| {
            let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
            for port in spec.ports.iter().filter(|p| p.host != 0) {
                let binding = PortBinding {
                    host_ip: None,
                    host_port: Some(port.host.to_string()),
                };
                bindings
                    .entry(port_key(port))
                    .or_insert_with(|| Some(Vec::new()))
                    .get_or_insert_with(Vec::new)
                    .push(binding);
            }
            bindings
        });
        let policy = parse_restart_policy(&spec.restart_policy)?;
        let body = ContainerCreateBody {
            image: Some(image_reference(spec)),
            env: Some(env),
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then(|| exposed.into_iter().collect()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            host_config: Some(HostConfig {
                port_bindings,
                restart_policy: Some(restart_policy(policy)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        match self.exec.docker.create_container(Some(options), body).await {
            Ok(created) => Ok(created.id),
            Err(e) => Err(format!(
                "creating {name} failed: {}",
                self.redact(engine_message(&e))
            )),
        }
    }

    /// Removes a container of this very deployment left under `name` by an interrupted
    /// attempt; a container of anything else makes the create fail with a name conflict.
    async fn remove_leftover(&self, name: &str) {
        let Ok(info) = self.exec.docker.inspect_container(name, None).await else {
            return;
        };
        let deployment = info
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_DEPLOYMENT));
        if deployment == Some(&self.spec.deployment_id) {
            if let Some(id) = info.id {
                info!(
                    container = name,
                    "removing leftover of an interrupted attempt"
                );
                self.remove_quietly(&id).await;
            }
        }
    }

    async fn remove_quietly(&self, id: &str) {
        if let Err(e) = self.exec.remove(id).await {
            warn!(container = id, error = %engine_message(&e), "could not remove container");
        }
    }

    /// The new version failed before any previous container was touched: they kept serving.
    async fn abandon(
        &self,
        candidate: Option<&str>,
        error: String,
        previous: &[AppContainer],
    ) -> DeployOutcome {
        if let Some(id) = candidate {
            self.remove_quietly(id).await;
        }
        let (serving, note) = match previous.first() {
            Some(c) => (
                Some(c.id.clone()),
                format!("; {} ({}) kept serving", c.name, c.version),
            ),
            None => (None, String::new()),
        };
        self.emit("failed", format!("{error}{note}"));
        DeployOutcome {
            success: false,
            container_id: serving,
            error: Some(error),
            rolled_back: !previous.is_empty(),
        }
    }

    /// The swap failed after `stopped` were stopped: start them again.
    async fn put_back(
        &self,
        stopped: &[AppContainer],
        error: String,
        previous: &[AppContainer],
    ) -> DeployOutcome {
        let mut restart_errors = Vec::new();
        for container in stopped {
            match self.exec.restart(container).await {
                Ok(()) => self.emit(
                    "rollback",
                    format!("{} ({}) serves again", container.name, container.version),
                ),
                Err(e) => restart_errors.push(e),
            }
        }
        let serving = previous.first().map(|c| c.id.clone());
        if restart_errors.is_empty() {
            self.emit("failed", error.clone());
            return DeployOutcome {
                success: false,
                container_id: serving,
                error: Some(error),
                rolled_back: !previous.is_empty(),
            };
        }
        let error = format!("{error}; rollback failed: {}", restart_errors.join("; "));
        self.emit("failed", error.clone());
        DeployOutcome {
            success: false,
            container_id: None,
            error: Some(error),
            rolled_back: false,
        }
    }

    fn succeed(&self, id: String, name: &str, superseded: usize) -> DeployOutcome {
        let kept = if superseded == 0 {
            String::new()
        } else {
            format!("; {superseded} previous container(s) stopped, kept until commit")
        };
        self.emit(
            "done",
            format!("{name} serves {}{kept}", image_reference(self.spec)),
        );
        DeployOutcome {
            success: true,
            container_id: Some(id),
            error: None,
            rolled_back: false,
        }
    }

    async fn check_health(&self, id: &str, gate: Gate) -> Result<(), String> {
        let result = match &self.spec.health_check {
            HealthCheck::Default { timeout, grace } => {
                let info = self.inspect(id).await?;
                if has_docker_healthcheck(&info) {
                    self.wait_healthy(id, *timeout).await
                } else {
                    let grace = if gate == Gate::Final {
                        *grace / 2
                    } else {
                        *grace
                    };
                    self.wait_running(id, grace).await
                }
            }
            HealthCheck::Http {
                port,
                path,
                timeout,
            } => {
                self.wait_probe(id, *timeout, Probe::Http { port: *port, path })
                    .await
            }
            HealthCheck::Tcp { port, timeout } => {
                self.wait_probe(id, *timeout, Probe::Tcp { port: *port })
                    .await
            }
        };
        result.map_err(|e| format!("health check failed: {e}"))
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse, String> {
        self.exec
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| format!("inspect failed: {}", self.redact(engine_message(&e))))
    }

    /// The image's own HEALTHCHECK decides.
    async fn wait_healthy(&self, id: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.inspect(id).await?;
            still_running(&info)?;
            let health = info.state.as_ref().and_then(|s| s.health.as_ref());
            match health.and_then(|h| h.status) {
                Some(HealthStatusEnum::HEALTHY) => return Ok(()),
                Some(HealthStatusEnum::UNHEALTHY) => {
                    let code = health
                        .and_then(|h| h.log.as_ref())
                        .and_then(|l| l.last())
                        .and_then(|r| r.exit_code);
                    let probe = code
                        .map(|c| format!(" (last probe exited with code {c})"))
                        .unwrap_or_default();
                    return Err(format!("docker HEALTHCHECK reports unhealthy{probe}"));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "docker HEALTHCHECK not healthy after {}",
                    seconds(timeout)
                ));
            }
            sleep(self.exec.poll_interval).await;
        }
    }

    /// No check to run: the container must still be running after `grace`.
    async fn wait_running(&self, id: &str, grace: Duration) -> Result<(), String> {
        let deadline = Instant::now() + grace;
        loop {
            still_running(&self.inspect(id).await?)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            sleep(left.min(self.exec.poll_interval)).await;
        }
    }

    /// Probes the container's bridge address until it answers, it dies, or `timeout` passes.
    async fn wait_probe(
        &self,
        id: &str,
        timeout: Duration,
        probe: Probe<'_>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last = format!("{probe}: no answer within {}", seconds(timeout));
        loop {
            let info = self.inspect(id).await?;
            still_running(&info)?;
            let ip = container_ip(&info)
                .ok_or_else(|| "the container has no address on a docker network".to_owned())?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(last);
            }
            match tokio::time::timeout(left.min(PROBE_TIMEOUT), probe.run(ip)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(error)) => last = error,
                Err(_) => {
                    last = format!(
                        "{probe}: no answer within {}",
                        seconds(left.min(PROBE_TIMEOUT))
                    )
                }
            }
            sleep(
                self.exec
                    .poll_interval
                    .min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }

    fn redact(&self, message: String) -> String {
        redact(self.spec, message)
    }

    fn emit(&self, phase: &str, message: String) {
        emit(self.events, phase, message);
    }
}

/// A container of an app, as its labels describe it.
#[derive(Clone, Debug)]
struct AppContainer {
    id: String,
    name: String,
    deployment: String,
    version: String,
    /// Creation time, Unix seconds.
    created: i64,
    running: bool,
    /// The policy the deployment asked for (the engine's may have been set to `no`).
    restart_policy: Option<String>,
}

impl AppContainer {
    fn from_summary(summary: ContainerSummary) -> Option<Self> {
        let labels = summary.labels.unwrap_or_default();
        let id = summary.id?;
        let name = summary
            .names
            .and_then(|n| n.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_owned());
        Some(Self {
            name: name.unwrap_or_else(|| id.chars().take(12).collect()),
            id,
            deployment: labels.get(LABEL_DEPLOYMENT).cloned().unwrap_or_default(),
            version: labels.get(LABEL_VERSION).cloned().unwrap_or_default(),
            created: summary.created.unwrap_or(0),
            running: summary.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
            restart_policy: labels.get(LABEL_RESTART_POLICY).cloned(),
        })
    }
}

/// An HTTP GET or a TCP connect to the container, written by hand: one request line needs
/// no HTTP client.
#[derive(Clone, Copy)]
enum Probe<'a> {
    Http { port: u16, path: &'a str },
    Tcp { port: u16 },
}

impl Probe<'_> {
    async fn run(&self, ip: IpAddr) -> Result<(), String> {
        match *self {
            Probe::Tcp { port } => TcpStream::connect((ip, port))
                .await
                .map(drop)
                .map_err(|e| format!("{self} failed: {}", e.kind())),
            Probe::Http { port, path } => match http_status(ip, port, path).await {
                Ok(status) if (200..400).contains(&status) => Ok(()),
                Ok(status) => Err(format!("{self} answered {status}")),
                Err(e) => Err(format!("{self} failed: {}", e.kind())),
            },
        }
    }
}

impl std::fmt::Display for Probe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Http { port, path } => write!(f, "http GET :{port}{}", normalized_path(path)),
            Probe::Tcp { port } => write!(f, "tcp connect :{port}"),
        }
    }
}

/// The status code of `GET path` over HTTP/1.0.
async fn http_status(ip: IpAddr, port: u16, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect((ip, port)).await?;
    let host = if ip.is_ipv6() {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: berth-agent\r\nConnection: close\r\n\r\n",
        normalized_path(path)
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status_line(&head)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an http response"))
}

fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

fn normalized_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

/// `Err` with the reason when the container no longer runs, or crashed and is restarting.
fn still_running(info: &ContainerInspectResponse) -> Result<(), String> {
    let Some(state) = info.state.as_ref() else {
        return Err("the container has no state".to_owned());
    };
    let code = state.exit_code.unwrap_or(0);
    if state.oom_killed == Some(true) {
        return Err("container was killed: out of memory".to_owned());
    }
    if state.running != Some(true) {
        return Err(format!("container exited with code {code}"));
    }
    if state.restarting == Some(true) || info.restart_count.unwrap_or(0) > 0 {
        return Err(format!(
            "container exited with code {code} and is being restarted"
        ));
    }
    Ok(())
}

fn has_docker_healthcheck(info: &ContainerInspectResponse) -> bool {
    let test = info
        .config
        .as_ref()
        .and_then(|c| c.healthcheck.as_ref())
        .and_then(|h| h.test.as_ref());
    let declared = test.is_some_and(|t| !t.is_empty() && t[0] != "NONE");
    declared || info.state.as_ref().is_some_and(|s| s.health.is_some())
}

fn container_ip(info: &ContainerInspectResponse) -> Option<IpAddr> {
    let networks = info.network_settings.as_ref()?.networks.as_ref()?;
    networks
        .values()
        .filter_map(|n| n.ip_address.as_deref())
        .find(|ip| !ip.is_empty())?
        .parse()
        .ok()
}

/// `berth-<app>-<first 8 characters of the deployment id>`.
pub fn container_name(app: &str, deployment_id: &str) -> String {
    let short: String = deployment_id.chars().take(8).collect();
    format!("berth-{app}-{short}")
}

/// `image:tag`, or `image@sha256:…` when the version is a digest.
pub fn image_reference(spec: &DeploySpec) -> String {
    if is_digest(&spec.version) {
        format!("{}@{}", spec.image, spec.version)
    } else {
        format!("{}:{}", spec.image, spec.version)
    }
}

/// Tags cannot contain `:`; digests (`sha256:…`) always do.
fn is_digest(version: &str) -> bool {
    version.contains(':')
}

/// The registry refused the credentials (as opposed to being out of reach).
fn is_refusal(error: &str) -> bool {
    let error = error.to_lowercase();
    [
        "unauthorized",
        "authentication required",
        "denied",
        "no basic auth credentials",
    ]
    .iter()
    .any(|m| error.contains(m))
}

fn stopping(previous: &[AppContainer]) -> String {
    match previous {
        [] => "no previous container to stop".to_owned(),
        [one] => format!("stopping {} ({})", one.name, one.version),
        many => format!("stopping {} previous containers", many.len()),
    }
}

fn port_key(port: &PortSpec) -> String {
    let protocol = if port.protocol.is_empty() {
        "tcp"
    } else {
        port.protocol.as_str()
    };
    format!("{}/{protocol}", port.container)
}

fn host_ports(ports: &[PortSpec]) -> String {
    let mapped: Vec<_> = ports
        .iter()
        .filter(|p| p.host != 0)
        .map(|p| format!("{}->{}", p.host, port_key(p)))
        .collect();
    mapped.join(", ")
}

fn parse_restart_policy(name: &str) -> Result<RestartPolicyNameEnum, String> {
    match name {
        "" | "no" => Ok(RestartPolicyNameEnum::NO),
        "always" => Ok(RestartPolicyNameEnum::ALWAYS),
        "unless-stopped" => Ok(RestartPolicyNameEnum::UNLESS_STOPPED),
        "on-failure" => Ok(RestartPolicyNameEnum::ON_FAILURE),
        other => Err(format!(
            "unknown restart policy {other:?} (expected no, always, unless-stopped or on-failure)"
        )),
    }
}

fn restart_policy(name: RestartPolicyNameEnum) -> RestartPolicy {
    RestartPolicy {
        name: Some(name),
        maximum_retry_count: None,
    }
}

fn describe(check: &HealthCheck) -> String {
    match check {
        HealthCheck::Default { timeout, grace } => {
            format!(
                "docker HEALTHCHECK within {}, else still running after {}",
                seconds(*timeout),
                seconds(*grace)
            )
        }
        HealthCheck::Http {
            port,
            path,
            timeout,
        } => format!(
            "{} within {}",
            Probe::Http { port: *port, path },
            seconds(*timeout)
        ),
        HealthCheck::Tcp { port, timeout } => format!(
            "{} within {}",
            Probe::Tcp { port: *port },
            seconds(*timeout)
        ),
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

/// The engine's own words: bollard wraps them in a prefix that says nothing more.
fn engine_message(error: &DockerError) -> String {
    match error {
        DockerError::DockerResponseServerError { message, .. } => message.trim().to_owned(),
        DockerError::DockerStreamError { error } => error.trim().to_owned(),
        other => other.to_string(),
    }
}

/// Replaces any environment value or registry password quoted in `message` (an engine error
/// could echo part of a request). Values shorter than 4 characters are left alone: they would
/// mangle every message and are no secret anyway.
fn redact(spec: &DeploySpec, mut message: String) -> String {
    let values = spec
        .env
        .values()
        .chain(spec.registry_auth.as_ref().map(|a| &a.password));
    for value in values {
        let value = value.expose_secret();
        if value.len() >= 4 && message.contains(value) {
            message = message.replace(value, "[redacted]");
        }
    }
    message
}

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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use secrecy::SecretString;

    use super::*;
    use crate::executor::RegistryAuth;

    fn spec(version: &str) -> DeploySpec {
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
        }
    }

    #[test]
    fn names_and_references() {
        assert_eq!(
            container_name("web", "0123456789abcdef"),
            "berth-web-01234567"
        );
        assert_eq!(image_reference(&spec("v1")), "127.0.0.1:5000/team/web:v1");
        assert_eq!(
            image_reference(&spec("sha256:abc")),
            "127.0.0.1:5000/team/web@sha256:abc"
        );
        let udp = PortSpec {
            host: 53,
            container: 5353,
            protocol: "udp".to_owned(),
        };
        let tcp = PortSpec {
            host: 0,
            container: 80,
            protocol: String::new(),
        };
        assert_eq!(port_key(&udp), "5353/udp");
        assert_eq!(port_key(&tcp), "80/tcp");
        assert_eq!(host_ports(&[udp, tcp]), "53->5353/udp");
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status_line(b"HTTP/1.0 200 OK\r\nServer: x\r\n"),
            Some(200)
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.1 500 Internal Server Error\r\n"),
            Some(500)
        );
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[test]
    fn refused_credentials_are_told_apart_from_an_unreachable_registry() {
        assert!(is_refusal(
            "pull x:v1 failed: unauthorized: authentication required"
        ));
        assert!(is_refusal(
            "pull x:v1 failed: Head \"http://r/v2/x/manifests/v1\": no basic auth credentials"
        ));
        assert!(!is_refusal(
            "pull x@sha256:1 failed: Get \"http://r/v2/\": dial tcp r: connect: connection refused"
        ));
    }

    #[test]
    fn restart_policies() {
        assert_eq!(
            parse_restart_policy("unless-stopped"),
            Ok(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
        assert_eq!(parse_restart_policy(""), Ok(RestartPolicyNameEnum::NO));
        assert!(parse_restart_policy("sometimes")
            .unwrap_err()
            .contains("sometimes"));
    }

    #[test]
    fn redaction_hides_env_values_and_registry_password() {
        let message = "bad value postgres://u:hunter22@db and registry-pass, code 1".to_owned();
        assert_eq!(
            redact(&spec("v1"), message),
            "bad value [redacted] and [redacted], code 1"
        );
    }

    #[test]
    fn probes_describe_themselves() {
        assert_eq!(
            Probe::Http {
                port: 80,
                path: "health"
            }
            .to_string(),
            "http GET :80/health"
        );
        assert_eq!(Probe::Tcp { port: 5432 }.to_string(), "tcp connect :5432");
    }
}
