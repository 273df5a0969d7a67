//! Cut-over: how a candidate that passed its health gate takes over from the previous
//! version, and how a successful deployment is undone ([`Executor::rollback`]).
//!
//! Today there is one way, [`CutOver::HostPorts`] (`cutover/host_ports.rs`): the previous
//! containers give up the host ports to a final container. A route switch in a host proxy (the
//! candidate serves as it is, the proxy points at it) is meant to sit beside it as a second
//! variant with its own module; each `match` below is a place it must answer.
//!
//! Architecture invariant: a cut-over starts only once the candidate passed its health gate,
//! and it is the only code that stops or starts again a previous container; if it fails, the
//! previous version serves again, or the outcome says it could not be put back.
//!
//! [`Executor::rollback`]: crate::executor::Executor::rollback

mod host_ports;

use super::containers::AppContainer;
use super::deploy::Deploy;
use super::DockerExecutor;
use crate::executor::{DeployOutcome, DeploySpec, EventSink};

/// How the new version of an app takes over from the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutOver {
    /// Two containers cannot publish the same host port: the previous containers are stopped
    /// and a final container binds the ports the candidate could not.
    HostPorts,
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

impl CutOver {
    /// The name the candidate runs under, given the name the serving container will have.
    pub fn candidate_name(self, spec: &DeploySpec, final_name: &str) -> String {
        match self {
            CutOver::HostPorts => host_ports::candidate_name(spec, final_name),
        }
    }

    /// Makes a healthy `candidate` serve in place of `previous` (newest first), under
    /// `final_name`, and reports how the deployment ended.
    pub async fn serve(
        self,
        deploy: &Deploy<'_>,
        candidate: Candidate,
        final_name: &str,
        previous: &[AppContainer],
    ) -> DeployOutcome {
        match self {
            CutOver::HostPorts => host_ports::serve(deploy, candidate, final_name, previous).await,
        }
    }

    /// Undoes a successful deployment `deployment_id` of `app`: the previous version serves
    /// again, the new one is removed.
    pub async fn rollback(
        self,
        exec: &DockerExecutor,
        app: &str,
        deployment_id: &str,
        events: &EventSink,
    ) -> DeployOutcome {
        match self {
            CutOver::HostPorts => host_ports::rollback(exec, app, deployment_id, events).await,
        }
    }
}
