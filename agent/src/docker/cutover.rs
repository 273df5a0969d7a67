//! Cut-over: how a candidate that passed its health gate takes over from the previous
//! version, and how a successful deployment is undone ([`Executor::rollback`]).
//!
//! Two ways: [`CutOver::HostPorts`] (`cutover/host_ports.rs`), where the previous containers
//! give up the host ports to a final container (a short gap, two container starts), and
//! [`CutOver::Proxy`] (`cutover/proxy.rs`), where the host's `berth-proxy` owns the ports and
//! domains and one route switch makes the candidate serve (no gap, one start). Each `match`
//! below is a place both answer.
//!
//! Architecture invariant: a cut-over starts only once the candidate passed its health gate,
//! and it is the only code that stops or starts again a previous container; if it fails, the
//! previous version serves again, or the outcome says it could not be put back.
//!
//! [`Executor::rollback`]: crate::executor::Executor::rollback

mod host_ports;
mod proxy;

use std::sync::Arc;

pub use self::proxy::ProxyLink;

use super::containers::AppContainer;
use super::deploy::Deploy;
use super::error::DeployError;
use super::DockerExecutor;
use crate::executor::{DeployOutcome, DeploySpec, Domain, EventSink};

/// How the new version of an app takes over from the previous one.
#[derive(Clone, Debug)]
pub enum CutOver {
    /// Two containers cannot publish the same host port: the previous containers are stopped
    /// and a final container binds the ports the candidate could not.
    HostPorts,
    /// The host proxy owns the ports and domains: a route switch, then the previous
    /// containers drain and stop off the critical path.
    Proxy(Arc<ProxyLink>),
}

/// A started container of the new version that passed its health gate.
#[derive(Debug)]
pub struct Candidate {
    pub id: String,
    pub name: String,
    /// The deployment's generation (see `containers`): the final container is labelled with
    /// it too.
    pub generation: u64,
}

/// Why a rollback of `app` found nothing to put back: no other container, or none that passes
/// its health check again (`refused`, newest first).
fn no_previous(app: &str, refused: &[String]) -> String {
    if refused.is_empty() {
        format!("rollback failed: no previous container of {app} to restore")
    } else {
        format!(
            "rollback failed: no previous container of {app} passes its health check again: {}",
            refused.join("; ")
        )
    }
}

impl CutOver {
    /// Refuses, before anything is pulled or created, what this cut-over cannot serve.
    pub fn check(&self, spec: &DeploySpec) -> Result<(), DeployError> {
        match self {
            CutOver::HostPorts => Ok(()),
            CutOver::Proxy(_) => proxy::check(spec),
        }
    }

    /// The name the candidate runs under, given the name the serving container will have.
    pub fn candidate_name(&self, spec: &DeploySpec, final_name: &str) -> String {
        match self {
            CutOver::HostPorts => host_ports::candidate_name(spec, final_name),
            CutOver::Proxy(_) => final_name.to_owned(),
        }
    }

    /// Makes a healthy `candidate` serve in place of `previous` (newest first), under
    /// `final_name`, and reports how the deployment ended.
    pub async fn serve(
        &self,
        deploy: &Deploy<'_>,
        candidate: Candidate,
        final_name: &str,
        previous: &[AppContainer],
    ) -> DeployOutcome {
        match self {
            CutOver::HostPorts => host_ports::serve(deploy, candidate, final_name, previous).await,
            CutOver::Proxy(link) => proxy::serve(link, deploy, candidate, previous).await,
        }
    }

    /// Undoes a successful deployment `deployment_id` of `app`: the previous version serves
    /// again, the new one is removed.
    pub async fn rollback(
        &self,
        exec: &DockerExecutor,
        app: &str,
        deployment_id: &str,
        events: &EventSink,
    ) -> DeployOutcome {
        match self {
            CutOver::HostPorts => host_ports::rollback(exec, app, deployment_id, events).await,
            CutOver::Proxy(link) => proxy::rollback(link, exec, app, deployment_id, events).await,
        }
    }

    /// A commit wants `container_id` gone: true when it is still retiring (drain, stop) and
    /// will be removed once stopped, so the commit must leave it alone.
    pub fn remove_when_stopped(&self, container_id: &str) -> bool {
        match self {
            CutOver::HostPorts => false,
            CutOver::Proxy(link) => link.remove_when_stopped(container_id),
        }
    }

    /// Routes `app`'s domains on this host (see `Executor::set_domains`).
    pub async fn set_domains(&self, app: &str, domains: &[Domain]) -> Result<(), String> {
        match self {
            CutOver::HostPorts => Err(format!(
                "cannot route the domains of {app}: domains need the host proxy (berth-agent --proxy-socket)"
            )),
            CutOver::Proxy(link) => proxy::set_domains(link, app, domains).await,
        }
    }

    /// Answers an ACME HTTP-01 token on this host (see `Executor::set_challenge`).
    pub async fn set_challenge(
        &self,
        token: &str,
        key_authorization: &secrecy::SecretString,
        ttl: std::time::Duration,
    ) -> Result<(), String> {
        match self {
            CutOver::HostPorts => Err(
                "cannot answer an ACME challenge: it needs the host proxy (berth-agent --proxy-socket)"
                    .to_owned(),
            ),
            CutOver::Proxy(link) => proxy::set_challenge(link, token, key_authorization, ttl).await,
        }
    }

    /// How an interrupted deployment ended, when the host shows it (see `proxy::recover`).
    pub async fn recover(
        &self,
        exec: &DockerExecutor,
        app: &str,
        deployment_id: &str,
    ) -> Option<DeployOutcome> {
        match self {
            CutOver::HostPorts => None,
            CutOver::Proxy(link) => proxy::recover(link, exec, app, deployment_id).await,
        }
    }

    /// Puts the host in order after an interrupted run of the agent (see `proxy::repair`).
    pub async fn repair(&self, exec: &DockerExecutor) -> Result<(), DeployError> {
        match self {
            CutOver::HostPorts => Ok(()),
            CutOver::Proxy(link) => proxy::repair(link, exec).await,
        }
    }
}
