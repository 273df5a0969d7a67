//! An in-memory [`Executor`] for the fleet simulator and fast tests: thousands of agents, no
//! Docker.
//!
//! It does what the Docker executor does, as the executor contract (`tests/e2e/
//! executor_contract.rs`) checks on both: the same phases (two pull events, and with host
//! ports a second create, start and health for the final container that publishes them), an
//! unknown restart policy refused before anything is touched, superseded containers stopped
//! and kept until a commit removes what the committed deployment superseded (never a newer
//! one), one `cleanup` event per removed container, and a rollback that removes the
//! deployment's container, then starts the newest other one again (so a second rollback
//! answers as the first). A deployment run again replaces its own container. Container ids
//! are `fake-<uuid>`; names are Docker's.
//!
//! It stays cheap: no sleep but the configured delay, a handful of strings per deploy, and
//! per app a short list that commits empty.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::docker::{container_name, image_reference};
use crate::executor::{DeployEvent, DeployOutcome, DeploySpec, EventSink, Executor};

/// A pretend Docker host.
pub struct FakeExecutor {
    /// When set, deploys fail their health gate with this reason.
    failure: Option<Failure>,
    /// How long each deploy takes (spent in the health phase, as real deploys do).
    delay: Duration,
    /// Per app: its containers, oldest first. The order is the one Docker's executor keeps in
    /// the `berth.generation` label: what a commit removes and a rollback restores go by it.
    apps: Mutex<HashMap<String, Vec<FakeContainer>>>,
    /// Deploys run so far, so tests can prove a re-sent command did not run twice.
    deploys: AtomicUsize,
}

struct Failure {
    /// Only this version fails; `None`: every version does.
    version: Option<String>,
    reason: String,
}

struct FakeContainer {
    id: String,
    deployment_id: String,
    version: String,
    /// Serving; a stopped container is a superseded one, kept until commit.
    running: bool,
}

impl FakeContainer {
    /// `name (version)`, as Docker's executor names a container in its messages.
    fn describe(&self, app: &str) -> String {
        format!(
            "{} ({})",
            container_name(app, &self.deployment_id),
            self.version
        )
    }
}

impl FakeExecutor {
    /// Every deploy succeeds at once.
    pub fn new() -> Self {
        Self {
            failure: None,
            delay: Duration::ZERO,
            apps: Mutex::new(HashMap::new()),
            deploys: AtomicUsize::new(0),
        }
    }

    /// Every deploy fails its health gate with `reason`; a previous version keeps serving.
    pub fn failing(reason: impl Into<String>) -> Self {
        Self {
            failure: Some(Failure {
                version: None,
                reason: reason.into(),
            }),
            ..Self::new()
        }
    }

    /// Deploys of `version` fail with `reason`; others succeed.
    pub fn failing_version(version: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            failure: Some(Failure {
                version: Some(version.into()),
                reason: reason.into(),
            }),
            ..Self::new()
        }
    }

    /// Each deploy takes `delay`.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The container serving `app`, if any.
    pub fn current(&self, app: &str) -> Option<String> {
        self.serving(app, |c| c.id.clone())
    }

    /// The version serving `app`, if any.
    pub fn current_version(&self, app: &str) -> Option<String> {
        self.serving(app, |c| c.version.clone())
    }

    /// The superseded containers of `app` still kept for a rollback, oldest first.
    pub fn previous(&self, app: &str) -> Vec<String> {
        self.apps()
            .get(app)
            .map(|containers| {
                containers
                    .iter()
                    .filter(|c| !c.running)
                    .map(|c| c.id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many deploys ran.
    pub fn deploy_count(&self) -> usize {
        self.deploys.load(Ordering::Relaxed)
    }

    fn serving<T>(&self, app: &str, what: impl FnOnce(&FakeContainer) -> T) -> Option<T> {
        self.apps()
            .get(app)
            .and_then(|containers| newest_running(containers, None))
            .map(what)
    }

    fn apps(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<FakeContainer>>> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.apps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn failure_for(&self, version: &str) -> Option<&str> {
        let failure = self.failure.as_ref()?;
        match &failure.version {
            Some(v) if v != version => None,
            _ => Some(&failure.reason),
        }
    }
}

impl Default for FakeExecutor {
    fn default() -> Self {
        Self::new()
    }
}

/// The newest running container, other than `deployment_id`'s: what serves while a deploy of
/// it runs.
fn newest_running<'a>(
    containers: &'a [FakeContainer],
    deployment_id: Option<&str>,
) -> Option<&'a FakeContainer> {
    containers
        .iter()
        .rev()
        .find(|c| c.running && Some(c.deployment_id.as_str()) != deployment_id)
}

#[async_trait::async_trait]
impl Executor for FakeExecutor {
    async fn deploy(&self, spec: &DeploySpec, events: &EventSink) -> DeployOutcome {
        self.deploys.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = spec.restart_policy() {
            let serving = self
                .apps()
                .get(&spec.app)
                .and_then(|containers| newest_running(containers, Some(&spec.deployment_id)))
                .map(|c| c.id.clone());
            return failed(events, error.to_string(), serving);
        }

        let reference = image_reference(spec);
        let name = container_name(&spec.app, &spec.deployment_id);
        // With host ports, the candidate runs without them under a name of its own, and a
        // final container publishes them once the previous ones stopped (Docker's cut-over).
        let publishes = spec.ports.iter().any(|p| p.host != 0);
        let candidate = if publishes {
            format!("{name}-candidate")
        } else {
            name.clone()
        };
        emit(events, "pull", format!("pulling {reference}"));
        emit(events, "pull", format!("pulled {reference}"));
        emit(
            events,
            "create",
            format!("creating {candidate} from {reference}"),
        );
        emit(events, "start", format!("starting {candidate}"));
        emit(events, "health", format!("checking {candidate}"));
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }

        let mut apps = self.apps();
        let containers = apps.entry(spec.app.clone()).or_default();
        if let Some(reason) = self.failure_for(&spec.version) {
            let error = format!("health check failed: {reason}");
            let serving = newest_running(containers, Some(&spec.deployment_id));
            let note = serving
                .map(|c| format!("; {} kept serving", c.describe(&spec.app)))
                .unwrap_or_default();
            emit(events, "failed", format!("{error}{note}"));
            return DeployOutcome {
                success: false,
                rolled_back: serving.is_some(),
                container_id: serving.map(|c| c.id.clone()),
                error: Some(error),
            };
        }

        // The previous containers: every running one of another deployment.
        let mut previous = containers
            .iter()
            .filter(|c| c.running && c.deployment_id != spec.deployment_id);
        let first = previous.next();
        let superseded = first.map_or(0, |_| 1 + previous.count());
        let stopping = match first {
            None => "no previous container to stop".to_owned(),
            Some(one) if superseded == 1 => format!("stopping {}", one.describe(&spec.app)),
            Some(_) => format!("stopping {superseded} previous containers"),
        };
        if publishes {
            emit(
                events,
                "swap",
                format!("{candidate} is healthy; {stopping}, then publishing the host ports"),
            );
            emit(events, "create", format!("creating {name} with host ports"));
            emit(events, "start", format!("starting {name}"));
            emit(events, "health", format!("checking {name}"));
        } else {
            emit(
                events,
                "swap",
                format!("{candidate} is healthy; {stopping}"),
            );
        }

        // A deployment has one container at most: a run again replaces its own.
        containers.retain(|c| c.deployment_id != spec.deployment_id);
        for container in containers.iter_mut() {
            container.running = false;
        }
        let id = format!("fake-{}", uuid::Uuid::new_v4().simple());
        containers.push(FakeContainer {
            id: id.clone(),
            deployment_id: spec.deployment_id.clone(),
            version: spec.version.clone(),
            running: true,
        });
        let kept = if superseded == 0 {
            String::new()
        } else {
            format!("; {superseded} previous container(s) stopped, kept until commit")
        };
        emit(events, "done", format!("{name} serves {reference}{kept}"));
        DeployOutcome {
            success: true,
            container_id: Some(id),
            error: None,
            rolled_back: false,
        }
    }

    async fn commit(&self, app: &str, deployment_id: &str, events: &EventSink) {
        let mut apps = self.apps();
        let committed = apps.get_mut(app).and_then(|containers| {
            let at = containers
                .iter()
                .position(|c| c.deployment_id == deployment_id)?;
            Some((containers, at))
        });
        let Some((containers, at)) = committed else {
            emit(
                events,
                "cleanup",
                format!("no container of deployment {deployment_id}; nothing removed"),
            );
            return;
        };
        // Everything older than the deployment's container is what it superseded; anything
        // newer (a commit arriving late) stays.
        if at == 0 {
            emit(
                events,
                "cleanup",
                "no previous container to remove".to_owned(),
            );
        }
        for container in containers.drain(..at) {
            emit(
                events,
                "cleanup",
                format!("removed {}", container.describe(app)),
            );
        }
    }

    async fn rollback(&self, app: &str, deployment_id: &str, events: &EventSink) -> DeployOutcome {
        let mut apps = self.apps();
        let Some(containers) = apps.get_mut(app) else {
            return nothing_to_restore(events, app);
        };
        // The deployment's container first (in Docker it frees the host ports), then the
        // newest other container serves again: again the same one if this runs twice.
        containers.retain(|c| {
            let ours = c.deployment_id == deployment_id;
            if ours {
                emit(events, "rollback", format!("removed {}", c.describe(app)));
            }
            !ours
        });
        let Some(previous) = containers.last_mut() else {
            return nothing_to_restore(events, app);
        };
        previous.running = true;
        emit(
            events,
            "rollback",
            format!("{} serves again", previous.describe(app)),
        );
        DeployOutcome {
            success: false,
            container_id: Some(previous.id.clone()),
            error: Some(format!("deployment {deployment_id} rolled back")),
            rolled_back: true,
        }
    }

    async fn runtime_version(&self) -> String {
        "fake".to_owned()
    }
}

fn nothing_to_restore(events: &EventSink, app: &str) -> DeployOutcome {
    failed(
        events,
        format!("rollback failed: no previous container of {app} to restore"),
        None,
    )
}

/// Reports a failure that touched nothing as the last event and as the outcome.
fn failed(events: &EventSink, error: String, serving: Option<String>) -> DeployOutcome {
    emit(events, "failed", error.clone());
    DeployOutcome {
        success: false,
        container_id: serving,
        error: Some(error),
        rolled_back: false,
    }
}

fn emit(events: &EventSink, phase: &str, message: String) {
    let _ = events.send(DeployEvent {
        phase: phase.to_owned(),
        message,
    });
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::sync::mpsc;

    use super::*;
    use crate::executor::HealthCheck;

    fn spec(deployment_id: &str, version: &str) -> DeploySpec {
        DeploySpec {
            deployment_id: deployment_id.to_owned(),
            app: "web".to_owned(),
            image: "registry.local/web".to_owned(),
            version: version.to_owned(),
            env: BTreeMap::new(),
            ports: vec![],
            registry_auth: None,
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

    async fn deploy(exec: &FakeExecutor, id: &str, version: &str) -> (DeployOutcome, Vec<String>) {
        deploy_spec(exec, &spec(id, version)).await
    }

    async fn deploy_spec(exec: &FakeExecutor, spec: &DeploySpec) -> (DeployOutcome, Vec<String>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let outcome = exec.deploy(spec, &tx).await;
        drop(tx);
        (outcome, phases(&mut rx))
    }

    fn phases(rx: &mut mpsc::UnboundedReceiver<DeployEvent>) -> Vec<String> {
        let mut phases = Vec::new();
        while let Ok(event) = rx.try_recv() {
            phases.push(event.phase);
        }
        phases
    }

    #[tokio::test]
    async fn success_reports_every_phase_and_supersedes_the_previous() {
        let exec = FakeExecutor::new();
        let (first, phases) = deploy(&exec, "d1", "v1").await;
        assert!(first.success);
        assert_eq!(
            phases,
            ["pull", "pull", "create", "start", "health", "swap", "done"]
        );

        let (second, _) = deploy(&exec, "d2", "v2").await;
        assert!(second.success);
        assert_eq!(exec.current("web"), second.container_id);
        assert_eq!(exec.current_version("web").as_deref(), Some("v2"));
        assert_eq!(exec.previous("web"), vec![first.container_id.unwrap()]);
        assert_eq!(exec.deploy_count(), 2);
    }

    #[tokio::test]
    async fn failure_keeps_the_previous_version_serving() {
        let exec = FakeExecutor::failing_version("v2", "container exited with code 1");
        let (first, _) = deploy(&exec, "d1", "v1").await;
        let (second, phases) = deploy(&exec, "d2", "v2").await;
        assert!(!second.success);
        assert!(second.rolled_back);
        assert_eq!(second.container_id, first.container_id);
        assert_eq!(
            second.error.as_deref(),
            Some("health check failed: container exited with code 1")
        );
        assert_eq!(phases.last().map(String::as_str), Some("failed"));
        assert_eq!(exec.current_version("web").as_deref(), Some("v1"));

        let first_deploy_fails = FakeExecutor::failing("boom");
        let (outcome, _) = deploy(&first_deploy_fails, "d1", "v1").await;
        assert!(!outcome.success && !outcome.rolled_back && outcome.container_id.is_none());
    }

    #[tokio::test]
    async fn commit_removes_what_was_superseded_and_rollback_restores_it() {
        let exec = FakeExecutor::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (v1, _) = deploy(&exec, "d1", "v1").await;
        let (v2, _) = deploy(&exec, "d2", "v2").await;
        let (v3, _) = deploy(&exec, "d3", "v3").await;

        // A late commit removes what its deployment superseded, never the newer one.
        exec.commit("web", "d2", &tx).await;
        assert_eq!(phases(&mut rx), ["cleanup"]);
        assert_eq!(exec.previous("web"), vec![v2.container_id.clone().unwrap()]);
        assert_eq!(exec.current("web"), v3.container_id);

        // A rollback removes the deployment's container, then the previous one serves; a
        // second one answers the same.
        let restored = exec.rollback("web", "d3", &tx).await;
        assert!(!restored.success && restored.rolled_back);
        assert_eq!(restored.container_id, v2.container_id);
        assert_eq!(phases(&mut rx), ["rollback", "rollback"]);
        assert_eq!(exec.rollback("web", "d3", &tx).await, restored);
        assert_eq!(phases(&mut rx), ["rollback"]);
        assert_eq!(exec.current_version("web").as_deref(), Some("v2"));

        exec.commit("web", "d2", &tx).await;
        assert!(exec.previous("web").is_empty());
        let nothing_left = exec.rollback("web", "d2", &tx).await;
        assert!(!nothing_left.rolled_back);
        assert_eq!(exec.current("web"), None);
        assert_ne!(v1.container_id, None);
    }

    #[tokio::test]
    async fn host_ports_add_a_final_container_and_a_bad_policy_touches_nothing() {
        let exec = FakeExecutor::new();
        let (v1, _) = deploy(&exec, "d1", "v1").await;
        let published = DeploySpec {
            ports: vec![crate::executor::PortSpec {
                host: 8080,
                container: 80,
                protocol: "tcp".to_owned(),
            }],
            ..spec("d2", "v2")
        };
        let (_, phases) = deploy_spec(&exec, &published).await;
        assert_eq!(
            phases,
            [
                "pull", "pull", "create", "start", "health", "swap", "create", "start", "health",
                "done"
            ]
        );

        let refused = DeploySpec {
            restart_policy: "sometimes".to_owned(),
            ..spec("d3", "v3")
        };
        let before = (exec.current("web"), exec.previous("web"));
        let (outcome, phases) = deploy_spec(&exec, &refused).await;
        assert!(!outcome.success && !outcome.rolled_back);
        assert_eq!(outcome.container_id, before.0);
        assert_eq!(phases, ["failed"]);
        assert_eq!((exec.current("web"), exec.previous("web")), before);
        assert_eq!(exec.previous("web"), vec![v1.container_id.unwrap()]);
    }

    #[tokio::test]
    async fn a_deployment_run_again_replaces_its_own_container() {
        let exec = FakeExecutor::new();
        let (v1, _) = deploy(&exec, "d1", "v1").await;
        deploy(&exec, "d2", "v2").await;
        let (again, _) = deploy(&exec, "d2", "v2").await;
        assert_eq!(exec.current("web"), again.container_id);
        assert_eq!(exec.previous("web"), vec![v1.container_id.unwrap()]);
    }

    #[tokio::test]
    async fn delay_makes_deploys_take_time() {
        let exec = FakeExecutor::new().with_delay(Duration::from_millis(30));
        let started = std::time::Instant::now();
        deploy(&exec, "d1", "v1").await;
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(exec.runtime_version().await, "fake");
    }
}
