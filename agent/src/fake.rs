//! An in-memory [`Executor`] for the fleet simulator and fast tests: thousands of agents, no
//! Docker.
//!
//! It reports the same phases as the Docker executor and keeps, per app, the serving
//! container and the superseded ones (stopped, kept until commit), so commit and rollback
//! behave as on a real host. Container ids are `fake-<uuid>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::executor::{DeployEvent, DeployOutcome, DeploySpec, EventSink, Executor};

/// A pretend Docker host.
pub struct FakeExecutor {
    /// When set, deploys fail their health gate with this reason.
    failure: Option<Failure>,
    /// How long each deploy takes (spent in the health phase, as real deploys do).
    delay: Duration,
    /// Per app: what serves and what was superseded.
    apps: Mutex<HashMap<String, AppState>>,
    /// Deploys run so far, so tests can prove a re-sent command did not run twice.
    deploys: AtomicUsize,
}

struct Failure {
    /// Only this version fails; `None`: every version does.
    version: Option<String>,
    reason: String,
}

#[derive(Default)]
struct AppState {
    current: Option<FakeContainer>,
    /// Superseded containers, oldest first.
    previous: Vec<FakeContainer>,
}

#[derive(Clone)]
struct FakeContainer {
    id: String,
    deployment_id: String,
    version: String,
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
        self.apps()
            .get(app)
            .and_then(|s| s.current.as_ref())
            .map(|c| c.id.clone())
    }

    /// The version serving `app`, if any.
    pub fn current_version(&self, app: &str) -> Option<String> {
        self.apps()
            .get(app)
            .and_then(|s| s.current.as_ref())
            .map(|c| c.version.clone())
    }

    /// The superseded containers of `app` still kept for a rollback, oldest first.
    pub fn previous(&self, app: &str) -> Vec<String> {
        self.apps()
            .get(app)
            .map(|s| s.previous.iter().map(|c| c.id.clone()).collect())
            .unwrap_or_default()
    }

    /// How many deploys ran.
    pub fn deploy_count(&self) -> usize {
        self.deploys.load(Ordering::Relaxed)
    }

    fn apps(&self) -> std::sync::MutexGuard<'_, HashMap<String, AppState>> {
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

#[async_trait::async_trait]
impl Executor for FakeExecutor {
    async fn deploy(&self, spec: &DeploySpec, events: &EventSink) -> DeployOutcome {
        self.deploys.fetch_add(1, Ordering::Relaxed);
        let reference = format!("{}:{}", spec.image, spec.version);
        let name = format!(
            "berth-{}-{}",
            spec.app,
            spec.deployment_id.chars().take(8).collect::<String>()
        );
        emit(events, "pull", format!("pulled {reference}"));
        emit(
            events,
            "create",
            format!("creating {name} from {reference}"),
        );
        emit(events, "start", format!("starting {name}"));
        emit(events, "health", format!("checking {name}"));
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }

        let mut apps = self.apps();
        let state = apps.entry(spec.app.clone()).or_default();
        let serving = state.current.as_ref().map(|c| c.id.clone());
        if let Some(reason) = self.failure_for(&spec.version) {
            let error = format!("health check failed: {reason}");
            emit(events, "failed", error.clone());
            return DeployOutcome {
                success: false,
                rolled_back: serving.is_some(),
                container_id: serving,
                error: Some(error),
            };
        }
        let container = FakeContainer {
            id: format!("fake-{}", uuid::Uuid::new_v4().simple()),
            deployment_id: spec.deployment_id.clone(),
            version: spec.version.clone(),
        };
        let superseded = state.current.replace(container.clone());
        emit(
            events,
            "swap",
            format!(
                "{name} is healthy; stopping {} previous container(s)",
                usize::from(superseded.is_some())
            ),
        );
        state.previous.extend(superseded);
        emit(events, "done", format!("{name} serves {reference}"));
        DeployOutcome {
            success: true,
            container_id: Some(container.id),
            error: None,
            rolled_back: false,
        }
    }

    async fn commit(&self, app: &str, deployment_id: &str, events: &EventSink) {
        let mut apps = self.apps();
        let state = apps.entry(app.to_owned()).or_default();
        if state
            .current
            .as_ref()
            .is_some_and(|c| c.deployment_id == deployment_id)
        {
            let removed = std::mem::take(&mut state.previous);
            emit(
                events,
                "cleanup",
                format!("removed {} previous container(s)", removed.len()),
            );
        } else {
            emit(
                events,
                "cleanup",
                format!("no container of deployment {deployment_id}; nothing removed"),
            );
        }
    }

    async fn rollback(&self, app: &str, deployment_id: &str, events: &EventSink) -> DeployOutcome {
        let mut apps = self.apps();
        let state = apps.entry(app.to_owned()).or_default();
        if state
            .current
            .as_ref()
            .is_none_or(|c| c.deployment_id != deployment_id)
        {
            let error = format!("rollback failed: deployment {deployment_id} does not serve {app}");
            emit(events, "failed", error.clone());
            let serving = state.current.as_ref().map(|c| c.id.clone());
            return DeployOutcome {
                success: false,
                container_id: serving,
                error: Some(error),
                rolled_back: false,
            };
        }
        state.current = state.previous.pop();
        match &state.current {
            Some(container) => {
                emit(
                    events,
                    "rollback",
                    format!("{} ({}) serves again", container.id, container.version),
                );
                DeployOutcome {
                    success: false,
                    container_id: Some(container.id.clone()),
                    error: Some(format!("deployment {deployment_id} rolled back")),
                    rolled_back: true,
                }
            }
            None => {
                let error = format!("rollback failed: no previous container of {app} to restore");
                emit(events, "failed", error.clone());
                DeployOutcome {
                    success: false,
                    container_id: None,
                    error: Some(error),
                    rolled_back: false,
                }
            }
        }
    }

    async fn runtime_version(&self) -> String {
        "fake".to_owned()
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
        }
    }

    async fn deploy(exec: &FakeExecutor, id: &str, version: &str) -> (DeployOutcome, Vec<String>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let outcome = exec.deploy(&spec(id, version), &tx).await;
        drop(tx);
        let mut phases = Vec::new();
        while let Some(event) = rx.recv().await {
            phases.push(event.phase);
        }
        (outcome, phases)
    }

    #[tokio::test]
    async fn success_reports_every_phase_and_supersedes_the_previous() {
        let exec = FakeExecutor::new();
        let (first, phases) = deploy(&exec, "d1", "v1").await;
        assert!(first.success);
        assert_eq!(
            phases,
            ["pull", "create", "start", "health", "swap", "done"]
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
    async fn commit_removes_superseded_and_rollback_restores_them() {
        let exec = FakeExecutor::new();
        let (tx, _rx) = mpsc::unbounded_channel();
        let (v1, _) = deploy(&exec, "d1", "v1").await;
        deploy(&exec, "d2", "v2").await;
        deploy(&exec, "d3", "v3").await;

        // A commit of a deployment that no longer serves changes nothing.
        exec.commit("web", "d2", &tx).await;
        assert_eq!(exec.previous("web").len(), 2);

        let restored = exec.rollback("web", "d3", &tx).await;
        assert!(!restored.success && restored.rolled_back);
        assert_eq!(exec.current_version("web").as_deref(), Some("v2"));

        exec.commit("web", "d2", &tx).await;
        assert!(exec.previous("web").is_empty());
        let nothing_left = exec.rollback("web", "d2", &tx).await;
        assert!(!nothing_left.rolled_back);
        assert_eq!(exec.current("web"), None);
        assert_ne!(v1.container_id, None);
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
