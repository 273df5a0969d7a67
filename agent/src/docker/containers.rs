//! An app's containers: their names and labels, and the engine calls that list, create, start,
//! stop, start again and remove them.
//!
//! Labels say everything berth needs to find a container again: `berth.app`,
//! `berth.deployment`, `berth.version`, `berth.agent` (the owner, when several agents share an
//! engine), `berth.restart-policy`, the policy to restore when a stopped container serves
//! again (stopping one sets its policy to `no`, so a daemon restart cannot revive a superseded
//! version next to the new one), and `berth.generation`, the deployment's place in the app's
//! order on this host (one more than the highest generation of the app's containers when it
//! started), and `berth.health`, the health check it was created with, which it passes again
//! before a rollback lets it serve once more. Which container is newer, so what a commit removes and what a rollback restores,
//! is decided by that number, never by clocks: the engine lists creation times in whole
//! seconds, and two deployments often start within one.
//!
//! Architecture invariant: the engine is the only state (an agent restart loses nothing), and
//! environment values reach the engine in the create body only.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerUpdateBody, HostConfig, PortBinding,
    RestartPolicy as EngineRestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use secrecy::ExposeSecret;
use tracing::{info, warn};

use super::error::{engine_message, DeployError, EngineError, Request};
use super::health::container_ip;
use super::pull::image_reference;
use super::{emit, DockerExecutor};
use crate::executor::{DeploySpec, EventSink, HealthCheck, PortSpec, RestartPolicy, StopSpec};

const LABEL_APP: &str = "berth.app";
const LABEL_DEPLOYMENT: &str = "berth.deployment";
const LABEL_VERSION: &str = "berth.version";
const LABEL_RESTART_POLICY: &str = "berth.restart-policy";
/// The agent that owns a container, when several agents share one engine.
const LABEL_AGENT: &str = "berth.agent";
const LABEL_GENERATION: &str = "berth.generation";
const LABEL_HEALTH: &str = "berth.health";

/// `berth-<app>-<first 8 characters of the deployment id>`.
pub fn container_name(app: &str, deployment_id: &str) -> String {
    let short: String = deployment_id.chars().take(8).collect();
    format!("berth-{app}-{short}")
}

/// A container of an app, as its labels describe it.
#[derive(Clone, Debug)]
pub struct AppContainer {
    pub id: String,
    pub name: String,
    pub deployment: String,
    pub version: String,
    /// The deployment's place in the app's order on this host; 0 for a container made before
    /// berth labelled it.
    pub generation: u64,
    /// Creation time, Unix seconds: orders containers of one generation (those made before
    /// the label) only.
    pub created: i64,
    pub running: bool,
    /// Whether it binds host ports itself (made by the host-port cut-over, before a host
    /// proxy owned the ports).
    pub publishes: bool,
    /// The policy the deployment asked for (the engine's may have been set to `no`).
    restart_policy: Option<String>,
    /// The health check it was created with (`None`: made before containers carried it).
    pub health: Option<HealthCheck>,
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
            generation: labels
                .get(LABEL_GENERATION)
                .and_then(|g| g.parse().ok())
                .unwrap_or(0),
            created: summary.created.unwrap_or(0),
            running: summary.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
            publishes: summary
                .ports
                .iter()
                .flatten()
                .any(|p| p.public_port.is_some_and(|port| port != 0)),
            restart_policy: labels.get(LABEL_RESTART_POLICY).cloned(),
            health: labels.get(LABEL_HEALTH).and_then(|l| health_from_label(l)),
        })
    }

    /// Newer containers order higher: by generation, then by creation second (which only
    /// tells apart containers made before generations, and never within one second).
    pub fn order(&self) -> (u64, i64) {
        (self.generation, self.created)
    }

    /// A container as the labels of a test describe it.
    #[cfg(test)]
    pub fn labelled(deployment: &str, generation: u64, created: i64, running: bool) -> Self {
        Self {
            id: format!("id-{deployment}"),
            name: format!("berth-web-{deployment}"),
            deployment: deployment.to_owned(),
            version: "v1".to_owned(),
            generation,
            created,
            running,
            publishes: false,
            restart_policy: None,
            health: None,
        }
    }
}

/// `berth.health`: `default;<timeout ms>;<grace ms>`, `http;<port>;<timeout ms>;<path>` or
/// `tcp;<port>;<timeout ms>` (the path last: it may hold anything but a newline).
fn health_label(check: &HealthCheck) -> String {
    match check {
        HealthCheck::Default { timeout, grace } => {
            format!("default;{};{}", timeout.as_millis(), grace.as_millis())
        }
        HealthCheck::Http {
            port,
            path,
            timeout,
        } => format!("http;{port};{};{path}", timeout.as_millis()),
        HealthCheck::Tcp { port, timeout } => format!("tcp;{port};{}", timeout.as_millis()),
    }
}

/// The check a `berth.health` label describes; `None` for anything else.
fn health_from_label(label: &str) -> Option<HealthCheck> {
    let ms = |s: &str| s.parse().ok().map(std::time::Duration::from_millis);
    let mut parts = label.splitn(4, ';');
    let check = match (parts.next()?, parts.next()?, parts.next()?, parts.next()) {
        ("default", timeout, grace, None) => HealthCheck::Default {
            timeout: ms(timeout)?,
            grace: ms(grace)?,
        },
        ("http", port, timeout, Some(path)) => HealthCheck::Http {
            port: port.parse().ok()?,
            path: path.to_owned(),
            timeout: ms(timeout)?,
        },
        ("tcp", port, timeout, None) => HealthCheck::Tcp {
            port: port.parse().ok()?,
            timeout: ms(timeout)?,
        },
        _ => return None,
    };
    Some(check)
}

/// The generation of a deployment that starts among `containers` (all of the app's).
pub fn next_generation(containers: &[AppContainer]) -> u64 {
    containers.iter().map(|c| c.generation).max().unwrap_or(0) + 1
}

impl DockerExecutor {
    /// The name of `app`'s container for `deployment_id`, prefixed with the agent's name when
    /// the executor is scoped to one.
    pub(super) fn container_name(&self, app: &str, deployment_id: &str) -> String {
        match &self.scope {
            Some(agent) => container_name(&format!("{agent}-{app}"), deployment_id),
            None => container_name(app, deployment_id),
        }
    }

    /// Every container of `app` (running ones only unless `all`), newest first (see
    /// [`AppContainer::order`]).
    pub(super) async fn app_containers(
        &self,
        app: &str,
        all: bool,
    ) -> Result<Vec<AppContainer>, EngineError> {
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
            .map_err(|e| {
                EngineError::new(
                    Request::List {
                        app: app.to_owned(),
                    },
                    &e,
                )
            })?;
        let mut containers: Vec<_> = summaries
            .into_iter()
            .filter_map(AppContainer::from_summary)
            .collect();
        containers.sort_by_key(|c| std::cmp::Reverse(c.order()));
        Ok(containers)
    }

    /// Creates a container of `spec` named `name`, labelled with the deployment's
    /// `generation`; with `publish`, it binds the host ports.
    pub(super) async fn create(
        &self,
        spec: &DeploySpec,
        name: &str,
        generation: u64,
        publish: bool,
    ) -> Result<String, DeployError> {
        self.remove_leftover(spec, name).await;

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
            (LABEL_GENERATION.to_owned(), generation.to_string()),
            (LABEL_HEALTH.to_owned(), health_label(&spec.health_check)),
        ]);
        if let Some(agent) = &self.scope {
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
        let policy = spec.restart_policy()?;
        let body = ContainerCreateBody {
            image: Some(image_reference(spec)),
            env: Some(env),
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then(|| exposed.into_iter().collect()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            host_config: Some(HostConfig {
                port_bindings,
                restart_policy: Some(engine_restart_policy(policy)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        match self.docker.create_container(Some(options), body).await {
            Ok(created) => Ok(created.id),
            Err(e) => {
                let request = Request::Create {
                    name: name.to_owned(),
                };
                Err(EngineError::redacted(request, &e, spec).into())
            }
        }
    }

    /// Starts a container of `spec` that was just created.
    pub(super) async fn start(
        &self,
        spec: &DeploySpec,
        id: &str,
        name: &str,
    ) -> Result<(), EngineError> {
        self.docker.start_container(id, None).await.map_err(|e| {
            let request = Request::Start {
                name: name.to_owned(),
            };
            EngineError::redacted(request, &e, spec)
        })
    }

    /// Removes a container of this very deployment left under `name` by an interrupted
    /// attempt; a container of anything else makes the create fail with a name conflict.
    async fn remove_leftover(&self, spec: &DeploySpec, name: &str) {
        let Ok(info) = self.docker.inspect_container(name, None).await else {
            return;
        };
        let deployment = info
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_DEPLOYMENT));
        if deployment == Some(&spec.deployment_id) {
            if let Some(id) = info.id {
                info!(
                    container = name,
                    "removing leftover of an interrupted attempt"
                );
                self.remove_quietly(&id).await;
            }
        }
    }

    /// Removes a container, running or not; one already gone is no error.
    pub(super) async fn remove(&self, id: &str, name: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let request = Request::Remove {
                    name: name.to_owned(),
                };
                let error = EngineError::new(request, &e);
                if error.is_not_found() {
                    Ok(())
                } else {
                    Err(error)
                }
            }
        }
    }

    /// Removes a container this deployment made and no longer needs; a failure is only logged
    /// (the container serves nothing, and a later commit finds it by its labels).
    pub(super) async fn remove_quietly(&self, id: &str) {
        if let Err(e) = self.remove(id, id).await {
            warn!(container = id, error = %e.message(), "could not remove container");
        }
    }

    /// Stops a superseded container, first setting its restart policy to `no` so that a
    /// daemon restart does not bring it back next to its successor.
    pub(super) async fn stop_superseded(
        &self,
        container: &AppContainer,
    ) -> Result<(), EngineError> {
        let update = ContainerUpdateBody {
            restart_policy: Some(engine_restart_policy(RestartPolicy::No)),
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
            .map_err(|e| {
                let request = Request::Stop {
                    name: container.name.clone(),
                };
                EngineError::new(request, &e)
            })
    }

    /// Stops a superseded container like [`Self::stop_superseded`], with the deployment's own
    /// grace period and signal instead of the executor's.
    pub(super) async fn stop_with(
        &self,
        container: &AppContainer,
        stop: &StopSpec,
    ) -> Result<(), EngineError> {
        let update = ContainerUpdateBody {
            restart_policy: Some(engine_restart_policy(RestartPolicy::No)),
            ..Default::default()
        };
        if let Err(e) = self.docker.update_container(&container.id, update).await {
            warn!(container = %container.name, error = %engine_message(&e), "could not clear restart policy");
        }
        let grace = stop.timeout.unwrap_or(self.stop_timeout);
        let mut options = StopContainerOptionsBuilder::new()
            .t(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX));
        if let Some(signal) = &stop.signal {
            options = options.signal(signal);
        }
        self.docker
            .stop_container(&container.id, Some(options.build()))
            .await
            .map_err(|e| {
                let request = Request::Stop {
                    name: container.name.clone(),
                };
                EngineError::new(request, &e)
            })
    }

    /// The container's address on its network (the host proxy forwards to it).
    pub(super) async fn address(&self, id: &str, name: &str) -> Result<IpAddr, DeployError> {
        let info = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| EngineError::new(Request::Inspect, &e))?;
        container_ip(&info).ok_or_else(|| DeployError::NoAddress(name.to_owned()))
    }

    /// Makes `container`, a previous version a rollback wants back, serve-ready: started again
    /// when it is not `running`, then checked with its own health check (a container that
    /// never passed one, such as the candidate of an interrupted deployment, must not serve).
    /// One that does not pass is stopped again unless it was running before (it may be what
    /// serves now) and the reason is returned.
    pub(super) async fn bring_back(
        &self,
        container: &AppContainer,
        running: bool,
        events: &EventSink,
    ) -> Result<(), String> {
        let what = format!("{} ({})", container.name, container.version);
        if !running {
            self.restart(container)
                .await
                .map_err(|e| format!("{what}: {e}"))?;
        }
        match self.check_again(container).await {
            Ok(()) => Ok(()),
            Err(error) => {
                if !running {
                    if let Err(e) = self.stop_with(container, &StopSpec::default()).await {
                        warn!(container = %container.name, error = %e, "could not stop a container that failed its health check again");
                    }
                }
                emit(
                    events,
                    "rollback",
                    format!(
                        "{what} does not pass its health check again: {error}; trying an older one"
                    ),
                );
                Err(format!("{what}: {error}"))
            }
        }
    }

    /// Starts a stopped container again and gives it back its own restart policy.
    pub(super) async fn restart(&self, container: &AppContainer) -> Result<(), EngineError> {
        self.docker
            .start_container(&container.id, None)
            .await
            .map_err(|e| {
                let request = Request::StartAgain {
                    name: container.name.clone(),
                };
                EngineError::new(request, &e)
            })?;
        if let Some(policy) = container
            .restart_policy
            .as_deref()
            .and_then(|p| p.parse().ok())
        {
            let update = ContainerUpdateBody {
                restart_policy: Some(engine_restart_policy(policy)),
                ..Default::default()
            };
            if let Err(e) = self.docker.update_container(&container.id, update).await {
                warn!(container = %container.name, error = %engine_message(&e), "could not restore restart policy");
            }
        }
        Ok(())
    }
}

fn engine_restart_policy(policy: RestartPolicy) -> EngineRestartPolicy {
    let name = match policy {
        RestartPolicy::No => RestartPolicyNameEnum::NO,
        RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
        RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
    };
    EngineRestartPolicy {
        name: Some(name),
        maximum_retry_count: None,
    }
}

/// `<container port>/<protocol>`, as the engine keys ports.
fn port_key(port: &PortSpec) -> String {
    let protocol = if port.protocol.is_empty() {
        "tcp"
    } else {
        port.protocol.as_str()
    };
    format!("{}/{protocol}", port.container)
}

/// The published ports, `host->container/protocol`, for messages.
pub fn host_ports(ports: &[PortSpec]) -> String {
    let mapped: Vec<_> = ports
        .iter()
        .filter(|p| p.host != 0)
        .map(|p| format!("{}->{}", p.host, port_key(p)))
        .collect();
    mapped.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_health_check_survives_its_label() {
        use std::time::Duration;
        for check in [
            HealthCheck::Default {
                timeout: Duration::from_secs(60),
                grace: Duration::from_millis(1500),
            },
            HealthCheck::Http {
                port: 8080,
                path: "/health;x?a=b c".to_owned(),
                timeout: Duration::from_secs(7),
            },
            HealthCheck::Tcp {
                port: 5432,
                timeout: Duration::from_millis(250),
            },
        ] {
            assert_eq!(health_from_label(&health_label(&check)), Some(check));
        }
        for bad in [
            "",
            "http;80;1000",
            "tcp;x;1",
            "default;1",
            "ping;1;2",
            "tcp;1;2;3",
        ] {
            assert_eq!(health_from_label(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_and_ports() {
        assert_eq!(
            container_name("web", "0123456789abcdef"),
            "berth-web-01234567"
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
    fn newer_is_decided_by_generation_then_by_creation() {
        // Generations decide, whatever the clock says; containers from before the label
        // (generation 0) are older than every labelled one.
        let legacy = AppContainer::labelled("d0", 0, 200, false);
        let first = AppContainer::labelled("d1", 1, 300, false);
        let second = AppContainer::labelled("d2", 2, 100, true);
        assert!(legacy.order() < first.order() && first.order() < second.order());
        assert!(AppContainer::labelled("d", 0, 100, false).order() < legacy.order());

        assert_eq!(next_generation(&[]), 1);
        assert_eq!(next_generation(std::slice::from_ref(&legacy)), 1);
        assert_eq!(next_generation(&[second, legacy, first]), 3);
    }
}
