//! One deployment, strung together: find what serves, check the spec, pull, create and start
//! a candidate, health-gate it, and hand it to the executor's cut-over; and the commit that
//! later removes what a deployment superseded.
//!
//! Architecture invariant: nothing of the previous version is touched before the candidate
//! passed its health gate; a failure before that removes only the candidate, and the previous
//! containers keep serving.

use tracing::warn;

use super::containers::{next_generation, AppContainer};
use super::cutover::Candidate;
use super::error::DeployError;
use super::health::{describe, Gate};
use super::pull::image_reference;
use super::{emit, failed, DockerExecutor};
use crate::executor::{DeployOutcome, DeploySpec, EventSink};

/// One run of [`Executor::deploy`](crate::executor::Executor::deploy).
pub struct Deploy<'a> {
    pub exec: &'a DockerExecutor,
    pub spec: &'a DeploySpec,
    pub events: &'a EventSink,
}

impl Deploy<'_> {
    pub async fn run(&self) -> DeployOutcome {
        let (exec, spec) = (self.exec, self.spec);
        let containers = match exec.app_containers(&spec.app, true).await {
            Ok(containers) => containers,
            Err(error) => return failed(self.events, error.to_string(), None, false),
        };
        // Newer than every container of the app, kept or not: what its commit may remove.
        let generation = next_generation(&containers);
        let previous: Vec<_> = containers
            .into_iter()
            .filter(|c| c.running && c.deployment != spec.deployment_id)
            .collect();
        let serving = previous.first().map(|c| c.id.clone());

        if let Err(error) = spec.restart_policy() {
            return failed(self.events, error.to_string(), serving, false);
        }
        if let Err(error) = exec.cut_over.check(spec) {
            return failed(self.events, error.to_string(), serving, false);
        }

        // Nothing is touched before the image is here: a failed pull changes nothing.
        if let Err(error) = exec.pull(spec, self.events).await {
            return failed(self.events, error.to_string(), serving, false);
        }

        let cut_over = &exec.cut_over;
        let final_name = exec.container_name(&spec.app, &spec.deployment_id);
        let candidate_name = cut_over.candidate_name(spec, &final_name);

        self.emit(
            "create",
            format!("creating {candidate_name} from {}", image_reference(spec)),
        );
        let candidate = match exec.create(spec, &candidate_name, generation, false).await {
            Ok(id) => id,
            Err(error) => return self.abandon(None, error, &previous).await,
        };
        self.emit("start", format!("starting {candidate_name}"));
        if let Err(error) = exec.start(spec, &candidate, &candidate_name).await {
            return self
                .abandon(Some(&candidate), error.into(), &previous)
                .await;
        }
        self.emit(
            "health",
            format!(
                "checking {candidate_name}: {}",
                describe(&spec.health_check)
            ),
        );
        if let Err(error) = exec.check_health(spec, &candidate, Gate::Candidate).await {
            return self
                .abandon(Some(&candidate), error.into(), &previous)
                .await;
        }

        let candidate = Candidate {
            id: candidate,
            name: candidate_name,
            generation,
        };
        cut_over
            .serve(self, candidate, &final_name, &previous)
            .await
    }

    /// The new version failed before any previous container was touched: they kept serving.
    pub(in crate::docker) async fn abandon(
        &self,
        candidate: Option<&str>,
        error: DeployError,
        previous: &[AppContainer],
    ) -> DeployOutcome {
        if let Some(id) = candidate {
            self.exec.remove_quietly(id).await;
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
            error: Some(error.to_string()),
            rolled_back: !previous.is_empty(),
        }
    }

    /// Container `id`, named `name`, serves the new version; `note` says what became of the
    /// previous containers (empty: nothing to say).
    pub fn succeed(&self, id: String, name: &str, note: String) -> DeployOutcome {
        self.emit(
            "done",
            format!("{name} serves {}{note}", image_reference(self.spec)),
        );
        DeployOutcome {
            success: true,
            container_id: Some(id),
            error: None,
            rolled_back: false,
        }
    }

    pub fn emit(&self, phase: &str, message: String) {
        emit(self.events, phase, message);
    }
}

/// Makes a successful deployment final: removes the containers of `app` that `deployment_id`
/// superseded.
pub async fn commit(exec: &DockerExecutor, app: &str, deployment_id: &str, events: &EventSink) {
    let containers = match exec.app_containers(app, true).await {
        Ok(containers) => containers,
        Err(error) => {
            warn!(%error, "cleanup failed");
            emit(events, "cleanup", format!("cleanup failed: {error}"));
            return;
        }
    };
    let Some(superseded) = superseded(&containers, deployment_id) else {
        emit(
            events,
            "cleanup",
            format!("no container of deployment {deployment_id}; nothing removed"),
        );
        return;
    };
    if superseded.is_empty() {
        emit(
            events,
            "cleanup",
            "no previous container to remove".to_owned(),
        );
    }
    for container in superseded {
        if exec.cut_over.remove_when_stopped(&container.id) {
            emit(
                events,
                "cleanup",
                format!(
                    "{} ({}) still drains: removed once stopped",
                    container.name, container.version
                ),
            );
            continue;
        }
        let message = match exec.remove(&container.id, &container.name).await {
            Ok(()) => format!("removed {} ({})", container.name, container.version),
            Err(error) => error.to_string(),
        };
        emit(events, "cleanup", message);
    }
}

/// What committing `deployment_id` removes of `containers` (all of the app's): the containers
/// older than the deployment's own, i.e. those it superseded. Never a newer deployment's, so a
/// commit arriving late removes nothing that replaced it. `None` when the deployment has no
/// container here.
fn superseded<'a>(
    containers: &'a [AppContainer],
    deployment_id: &str,
) -> Option<Vec<&'a AppContainer>> {
    let committed = containers
        .iter()
        .filter(|c| c.deployment == deployment_id)
        .map(AppContainer::order)
        .max()?;
    Some(
        containers
            .iter()
            .filter(|c| c.deployment != deployment_id && c.order() < committed)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployments(containers: Option<Vec<&AppContainer>>) -> Option<Vec<&str>> {
        containers.map(|cs| cs.iter().map(|c| c.deployment.as_str()).collect())
    }

    #[test]
    fn a_commit_removes_what_its_deployment_superseded_and_nothing_newer() {
        // d1, d2, d3 started within one second: only generations tell them apart.
        let containers = [
            AppContainer::labelled("d3", 3, 100, true),
            AppContainer::labelled("d2", 2, 100, false),
            AppContainer::labelled("d1", 1, 100, false),
            AppContainer::labelled("d0", 0, 50, false),
        ];
        assert_eq!(
            deployments(superseded(&containers, "d2")),
            Some(vec!["d1", "d0"])
        );
        assert_eq!(
            deployments(superseded(&containers, "d3")),
            Some(vec!["d2", "d1", "d0"])
        );
        assert_eq!(deployments(superseded(&containers, "d0")), Some(vec![]));
        assert_eq!(deployments(superseded(&containers, "unknown")), None);
    }

    #[test]
    fn containers_from_before_generations_are_ordered_by_creation_second() {
        let containers = [
            AppContainer::labelled("new", 0, 101, true),
            AppContainer::labelled("same-second", 0, 100, false),
            AppContainer::labelled("old", 0, 100, false),
        ];
        assert_eq!(
            deployments(superseded(&containers, "new")),
            Some(vec!["same-second", "old"])
        );
        // Within one second nothing is known to be older: nothing is removed.
        assert_eq!(deployments(superseded(&containers, "old")), Some(vec![]));
    }
}
