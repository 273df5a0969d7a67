//! The host-port cut-over. Two containers cannot publish the same host port, so a candidate
//! of an app with host ports runs without them (`<name>-candidate`); once it is healthy the
//! previous containers are stopped (kept, not removed, until commit), the candidate is
//! removed, and a final container is created with the host ports and health-gated again. An
//! app without host ports skips the second container: its candidate is already the final one,
//! and the previous containers are simply stopped.
//!
//! Architecture invariant: the host ports are only ever bound by one container of the app at a
//! time, and a failure after a previous container was stopped starts it again (its own restart
//! policy restored) before the deployment reports failure.

use super::{no_previous, Candidate};
use crate::docker::containers::{host_ports, AppContainer};
use crate::docker::deploy::Deploy;
use crate::docker::error::DeployError;
use crate::docker::health::{describe, Gate};
use crate::docker::{emit, failed, DockerExecutor};
use crate::executor::{DeployOutcome, DeploySpec, EventSink};

/// Whether any port is published on the host: only then must the ports change hands.
fn publishes(spec: &DeploySpec) -> bool {
    spec.ports.iter().any(|p| p.host != 0)
}

pub(super) fn candidate_name(spec: &DeploySpec, final_name: &str) -> String {
    if publishes(spec) {
        format!("{final_name}-candidate")
    } else {
        final_name.to_owned()
    }
}

pub(super) async fn serve(
    deploy: &Deploy<'_>,
    candidate: Candidate,
    final_name: &str,
    previous: &[AppContainer],
) -> DeployOutcome {
    let (exec, spec) = (deploy.exec, deploy.spec);
    if !publishes(spec) {
        deploy.emit(
            "swap",
            format!("{} is healthy; {}", candidate.name, stopping(previous)),
        );
        // Nothing else can take the candidate's place: a container that will not stop is
        // reported, and the new version serves anyway.
        for container in previous {
            if let Err(error) = exec.stop_superseded(container).await {
                deploy.emit("swap", error.to_string());
            }
        }
        return deploy.succeed(candidate.id, &candidate.name, kept(previous.len()));
    }

    deploy.emit(
        "swap",
        format!(
            "{} is healthy; {}, then publishing the host ports",
            candidate.name,
            stopping(previous)
        ),
    );
    let mut stopped = Vec::new();
    for container in previous {
        if let Err(error) = exec.stop_superseded(container).await {
            exec.remove_quietly(&candidate.id).await;
            return put_back(deploy, &stopped, error.into(), previous).await;
        }
        stopped.push(container.clone());
    }
    exec.remove_quietly(&candidate.id).await;

    deploy.emit(
        "create",
        format!(
            "creating {final_name} with host ports {}",
            host_ports(&spec.ports)
        ),
    );
    let final_id = match exec
        .create(spec, final_name, candidate.generation, true)
        .await
    {
        Ok(id) => id,
        Err(error) => return put_back(deploy, previous, error, previous).await,
    };
    deploy.emit("start", format!("starting {final_name}"));
    if let Err(error) = exec.start(spec, &final_id, final_name).await {
        exec.remove_quietly(&final_id).await;
        return put_back(deploy, previous, error.into(), previous).await;
    }
    deploy.emit(
        "health",
        format!("checking {final_name}: {}", describe(&spec.health_check)),
    );
    if let Err(error) = exec.check_health(spec, &final_id, Gate::Final).await {
        exec.remove_quietly(&final_id).await;
        return put_back(deploy, previous, error.into(), previous).await;
    }
    deploy.succeed(final_id, final_name, kept(previous.len()))
}

/// The swap failed after `stopped` were stopped: start them again.
async fn put_back(
    deploy: &Deploy<'_>,
    stopped: &[AppContainer],
    error: DeployError,
    previous: &[AppContainer],
) -> DeployOutcome {
    let mut restart_errors = Vec::new();
    for container in stopped {
        match deploy.exec.restart(container).await {
            Ok(()) => deploy.emit(
                "rollback",
                format!("{} ({}) serves again", container.name, container.version),
            ),
            Err(e) => restart_errors.push(e.to_string()),
        }
    }
    let serving = previous.first().map(|c| c.id.clone());
    if restart_errors.is_empty() {
        let error = error.to_string();
        deploy.emit("failed", error.clone());
        return DeployOutcome {
            success: false,
            container_id: serving,
            error: Some(error),
            rolled_back: !previous.is_empty(),
        };
    }
    let error = format!("{error}; rollback failed: {}", restart_errors.join("; "));
    deploy.emit("failed", error.clone());
    DeployOutcome {
        success: false,
        container_id: None,
        error: Some(error),
        rolled_back: false,
    }
}

/// Removes the containers of `deployment_id`, then starts the newest other container of `app`
/// again.
pub(super) async fn rollback(
    exec: &DockerExecutor,
    app: &str,
    deployment_id: &str,
    events: &EventSink,
) -> DeployOutcome {
    let containers = match exec.app_containers(app, true).await {
        Ok(containers) => containers,
        Err(error) => return failed(events, format!("rollback failed: {error}"), None, false),
    };
    let (ours, others): (Vec<_>, Vec<_>) = containers
        .into_iter()
        .partition(|c| c.deployment == deployment_id);
    // Ours first: the host ports must be free before the previous container starts.
    for container in &ours {
        if let Err(error) = exec.remove(&container.id, &container.name).await {
            let error = format!("rollback failed: {error}");
            return failed(events, error, Some(container.id.clone()), false);
        }
        emit(
            events,
            "rollback",
            format!("removed {} ({})", container.name, container.version),
        );
    }
    // The newest previous container that passes its own health check again: a stopped one
    // may be a candidate that never passed its gate (left by an interrupted deployment).
    let mut refused = Vec::new();
    let mut restored = None;
    for candidate in others {
        let running = candidate.running;
        match exec.bring_back(&candidate, running, events).await {
            Ok(()) => {
                restored = Some(candidate);
                break;
            }
            Err(why) => refused.push(why),
        }
    }
    let Some(previous) = restored else {
        return failed(events, no_previous(app, &refused), None, false);
    };
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

/// What became of the previous containers, for the `done` event.
fn kept(superseded: usize) -> String {
    if superseded == 0 {
        String::new()
    } else {
        format!("; {superseded} previous container(s) stopped, kept until commit")
    }
}

fn stopping(previous: &[AppContainer]) -> String {
    match previous {
        [] => "no previous container to stop".to_owned(),
        [one] => format!("stopping {} ({})", one.name, one.version),
        many => format!("stopping {} previous containers", many.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::test_spec;
    use crate::executor::PortSpec;

    #[test]
    fn only_published_ports_need_a_second_container() {
        let internal = test_spec("v1");
        assert_eq!(
            candidate_name(&internal, "berth-web-01234567"),
            "berth-web-01234567"
        );
        let published = DeploySpec {
            ports: vec![PortSpec {
                host: 8080,
                container: 80,
                protocol: "tcp".to_owned(),
            }],
            ..test_spec("v1")
        };
        assert_eq!(
            candidate_name(&published, "berth-web-01234567"),
            "berth-web-01234567-candidate"
        );
    }
}
