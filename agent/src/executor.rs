//! What the agent runs: a [`DeploySpec`] in, [`DeployEvent`]s and a [`DeployOutcome`] out.
//!
//! The Docker implementation (`docker.rs`) drives the real engine through bollard; the fake
//! (`fake.rs`) lets the fleet simulator and fast tests run thousands of agents without Docker.
//!
//! Architecture invariant: nothing here logs or reports an environment value. Events carry
//! phases and messages built from names, images and ids only.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

/// One application deployment on this host.
#[derive(Clone)]
pub struct DeploySpec {
    /// Idempotency key: a re-sent command with the same id is not run twice.
    pub deployment_id: String,
    /// Application name: containers are named `berth-<app>-<short id>` and labelled
    /// `berth.app=<app>`.
    pub app: String,
    /// Image without tag, e.g. `127.0.0.1:5000/team/web`.
    pub image: String,
    /// Tag or digest.
    pub version: String,
    /// The resolved environment (plaintext secrets inside: never log, never put in events).
    pub env: BTreeMap<String, SecretString>,
    pub ports: Vec<PortSpec>,
    pub registry_auth: Option<RegistryAuth>,
    pub health_check: HealthCheck,
    /// Docker restart policy name: `no`, `always`, `unless-stopped`, `on-failure` (see
    /// [`DeploySpec::restart_policy`]).
    pub restart_policy: String,
    /// Overrides the image's CMD when not empty.
    pub command: Vec<String>,
    /// Host names the host proxy routes to the new container once it serves.
    pub domains: Vec<Domain>,
    /// How the previous container is let go after a proxy switch.
    pub stop: StopSpec,
}

/// A host name routed by the host proxy (HTTP, and HTTPS when it has a certificate).
#[derive(Clone)]
pub struct Domain {
    pub host: String,
    /// Container port the requests go to; 0: the app's first port.
    pub container_port: u16,
    pub tls: Option<TlsPair>,
}

/// A PEM certificate chain and its private key.
#[derive(Clone)]
pub struct TlsPair {
    pub cert_pem: String,
    pub key_pem: SecretString,
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Domain")
            .field("host", &self.host)
            .field("container_port", &self.container_port)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// After a proxy switch the previous container's connections get `drain` to end; then it is
/// stopped with `signal` (the image's STOPSIGNAL when `None`) and `timeout` of grace (the
/// engine's default when `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopSpec {
    pub drain: Duration,
    pub timeout: Option<Duration>,
    pub signal: Option<String>,
}

impl fmt::Debug for DeploySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeploySpec")
            .field("deployment_id", &self.deployment_id)
            .field("app", &self.app)
            .field("image", &self.image)
            .field("version", &self.version)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("ports", &self.ports)
            .field("health_check", &self.health_check)
            .field("domains", &self.domains)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

impl DeploySpec {
    /// The restart policy asked for; an unknown one is refused by every executor before it
    /// touches anything.
    pub fn restart_policy(&self) -> Result<RestartPolicy, UnknownRestartPolicy> {
        self.restart_policy.parse()
    }
}

/// What the host does when a container stops, as Docker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// `no` (also the empty name).
    No,
    Always,
    UnlessStopped,
    OnFailure,
}

impl FromStr for RestartPolicy {
    type Err = UnknownRestartPolicy;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "" | "no" => Ok(RestartPolicy::No),
            "always" => Ok(RestartPolicy::Always),
            "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            other => Err(UnknownRestartPolicy(other.to_owned())),
        }
    }
}

/// A restart policy no executor knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown restart policy {0:?} (expected no, always, unless-stopped or on-failure)")]
pub struct UnknownRestartPolicy(String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub host: u16,
    pub container: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

#[derive(Clone)]
pub struct RegistryAuth {
    /// Registry host[:port], as Docker expects in `serveraddress`.
    pub server: String,
    pub username: String,
    pub password: SecretString,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// How to decide that a new container is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// The image's own Docker HEALTHCHECK when it has one; otherwise the container must stay
    /// running for `grace`.
    Default { timeout: Duration, grace: Duration },
    /// HTTP GET `http://<container-ip>:<port><path>` must answer 2xx or 3xx.
    Http {
        port: u16,
        path: String,
        timeout: Duration,
    },
    /// A TCP connect to `<container-ip>:<port>` must succeed.
    Tcp { port: u16, timeout: Duration },
}

/// A step of a deployment, reported to the control plane as a `deployment_events` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployEvent {
    /// `pull`, `create`, `start`, `health`, `swap`, `cleanup`, `rollback`, `done`, `failed`.
    pub phase: String,
    pub message: String,
}

/// How a deployment ended on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployOutcome {
    pub success: bool,
    /// The container now serving the application (the new one on success, the previous one
    /// after a rollback), if any.
    pub container_id: Option<String>,
    /// Why it failed; names, never values.
    pub error: Option<String>,
    /// True when the previous container was put back.
    pub rolled_back: bool,
}

/// Receives events as they happen.
pub type EventSink = tokio::sync::mpsc::UnboundedSender<DeployEvent>;

#[async_trait::async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Runs one deployment: pull, create, start, health-gate, swap, clean up; on any failure
    /// after the previous container was touched, put it back. Never returns before the host is
    /// in a final state.
    async fn deploy(&self, spec: &DeploySpec, events: &EventSink) -> DeployOutcome;

    /// Makes a successful deployment final: removes the previous container(s) of `app` that
    /// `deployment_id` superseded. Until then they are kept stopped, for [`Executor::rollback`].
    async fn commit(&self, app: &str, deployment_id: &str, events: &EventSink);

    /// Undoes a *successful* deployment `deployment_id` of `app` (a later target of the same
    /// rolling deploy failed): the previous container serves again, the new one is removed.
    async fn rollback(&self, app: &str, deployment_id: &str, events: &EventSink) -> DeployOutcome;

    /// Routes `domains` (all of them: the set replaces the app's) to the container serving
    /// `app` here. Only an executor with a host proxy can; the others refuse.
    async fn set_domains(&self, app: &str, domains: &[Domain]) -> Result<(), String> {
        let _ = (app, domains);
        Err("domains need the host proxy (berth-agent --proxy-socket)".to_owned())
    }

    /// ACME HTTP-01: the host proxy answers `GET /.well-known/acme-challenge/TOKEN` with
    /// `key_authorization` for `ttl` (zero removes it), for any Host. Only an executor with a
    /// host proxy can; the others refuse. The key authorization is never logged.
    async fn set_challenge(
        &self,
        token: &str,
        key_authorization: &SecretString,
        ttl: Duration,
    ) -> Result<(), String> {
        let _ = (token, key_authorization, ttl);
        Err("ACME challenges need the host proxy (berth-agent --proxy-socket)".to_owned())
    }

    /// After a restart of the agent, how deployment `deployment_id` of `app`, interrupted
    /// mid-way, ended on this host, when the host shows it (with the host proxy: the app's route
    /// points at its container, so it serves). `None`: unknown, reported failed.
    async fn recover(&self, app: &str, deployment_id: &str) -> Option<DeployOutcome> {
        let _ = (app, deployment_id);
        None
    }

    /// `Docker version` string for `berth agent list`.
    async fn runtime_version(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies() {
        assert_eq!("unless-stopped".parse(), Ok(RestartPolicy::UnlessStopped));
        assert_eq!("".parse(), Ok(RestartPolicy::No));
        assert_eq!(
            "sometimes"
                .parse::<RestartPolicy>()
                .unwrap_err()
                .to_string(),
            "unknown restart policy \"sometimes\" (expected no, always, unless-stopped or on-failure)"
        );
    }
}
