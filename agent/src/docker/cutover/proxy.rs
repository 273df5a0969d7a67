//! The host-proxy cut-over. `berth-proxy` owns the app's host ports and domains; the
//! containers publish none. The candidate is the final container: once it passed its health
//! gate, one `SetRoute` call points the app's ports and domains at it, and the deployment has
//! succeeded. The containers it replaced are *retired* off the critical path: their open
//! connections get the app's drain time to end, then they are stopped with the app's grace and
//! signal, and kept (stopped) until the commit, so a rollback can start them again. The
//! retirement is logged by the agent, not reported as deployment events: the deployment's
//! result never waits for the old version to stop.
//!
//! A rollback is a route switch back: the previous container is kept from retiring (or started
//! again if it already stopped), the route points at it, and the undone container retires in
//! its place and is removed.
//!
//! Architecture invariant: a route only ever points at a container that is running and passed
//! its health gate; a container is stopped only once no route points at it and its drain is
//! over (the proxy refuses to drain a routed container), and removed only once stopped.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::v1 as pb;
use berth_proto::v1::proxy_control_client::ProxyControlClient;
use secrecy::ExposeSecret as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tracing::{info, warn};

use super::{no_previous, Candidate};
use crate::docker::containers::AppContainer;
use crate::docker::deploy::Deploy;
use crate::docker::error::DeployError;
use crate::docker::{emit, failed, DockerExecutor};
use crate::executor::{DeployOutcome, DeploySpec, Domain, EventSink, StopSpec};

/// How long a container undone by a rollback may drain (a rollback carries no stop settings).
const ROLLBACK_DRAIN: Duration = Duration::from_secs(5);

/// The agent's link to the host's `berth-proxy`, and the containers being retired.
pub struct ProxyLink {
    socket: PathBuf,
    client: tokio::sync::Mutex<Option<ProxyControlClient<Channel>>>,
    /// Containers retiring, by id. Only their own task removes an entry.
    retiring: Mutex<HashMap<String, Retiring>>,
}

struct Retiring {
    /// Set to true to keep the container: it serves again.
    keep: watch::Sender<bool>,
    /// Set when a commit wants the container gone: removed once stopped.
    remove: Arc<std::sync::atomic::AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for ProxyLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyLink")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl ProxyLink {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            client: tokio::sync::Mutex::new(None),
            retiring: Mutex::new(HashMap::new()),
        }
    }

    /// A client on the proxy's socket; connected once, and again after a failed call.
    async fn client(&self) -> Result<ProxyControlClient<Channel>, DeployError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = crate::proxy::client::connect(&self.socket)
            .await
            .map_err(|e| DeployError::Proxy(format!("{e:#}")))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs one call; a transport failure forgets the client so the next call reconnects.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, DeployError>
    where
        F: FnOnce(ProxyControlClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client().await?;
        match f(client).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => {
                if status.code() == tonic::Code::Unavailable
                    || status.code() == tonic::Code::Unknown
                {
                    *self.client.lock().await = None;
                }
                Err(DeployError::Proxy(format!("{what}: {}", status.message())))
            }
        }
    }

    async fn set_route(&self, route: pb::ProxyRoute) -> Result<pb::SetRouteReply, DeployError> {
        self.call("routing", |mut c| async move {
            c.set_route(pb::SetRouteRequest { route: Some(route) })
                .await
        })
        .await
    }

    async fn route_of(&self, app: &str) -> Result<Option<pb::ProxyRoute>, DeployError> {
        let routes = self
            .call("listing routes", |mut c| async move {
                c.list_routes(pb::ListRoutesRequest {}).await
            })
            .await?;
        Ok(routes
            .routes
            .into_iter()
            .filter_map(|r| r.route)
            .find(|r| r.app == app))
    }

    async fn drain(
        &self,
        container_id: &str,
        timeout: Duration,
    ) -> Result<pb::DrainReply, DeployError> {
        let request = pb::DrainRequest {
            container_id: container_id.to_owned(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        self.call("draining", |mut c| async move { c.drain(request).await })
            .await
    }

    /// Keeps `container` from retiring (it is about to serve again) and waits until its retire
    /// task is over: afterwards it is either still running or stopped, never in between.
    async fn keep(&self, container_id: &str) {
        let task = {
            let mut retiring = self.retiring.lock().expect("retiring lock");
            retiring.get_mut(container_id).and_then(|r| {
                let _ = r.keep.send(true);
                r.task.take()
            })
        };
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Whether `container_id` is retiring; if so it is removed once stopped (a commit asked).
    pub(super) fn remove_when_stopped(&self, container_id: &str) -> bool {
        let retiring = self.retiring.lock().expect("retiring lock");
        match retiring.get(container_id) {
            Some(r) => {
                r.remove.store(true, std::sync::atomic::Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Drains, stops and keeps (or, with `remove`, removes) `containers`, in the background.
    fn retire(
        self: &Arc<Self>,
        exec: &DockerExecutor,
        containers: Vec<AppContainer>,
        stop: StopSpec,
        remove: bool,
    ) {
        for container in containers {
            let (keep_tx, keep_rx) = watch::channel(false);
            let remove = Arc::new(std::sync::atomic::AtomicBool::new(remove));
            let mut retiring = self.retiring.lock().expect("retiring lock");
            if retiring.contains_key(&container.id) {
                continue;
            }
            let task = tokio::spawn(retire_one(
                self.clone(),
                exec.clone(),
                container.clone(),
                stop.clone(),
                keep_rx,
                remove.clone(),
            ));
            retiring.insert(
                container.id.clone(),
                Retiring {
                    keep: keep_tx,
                    remove,
                    task: Some(task),
                },
            );
        }
    }
}

async fn retire_one(
    link: Arc<ProxyLink>,
    exec: DockerExecutor,
    container: AppContainer,
    stop: StopSpec,
    mut keep: watch::Receiver<bool>,
    remove: Arc<std::sync::atomic::AtomicBool>,
) {
    // Only logged: the deployment already reported its outcome, and holding its event
    // stream open would hold back its result until the old version stopped.
    let say = |message: String| info!(container = %container.name, %message, "retire");
    let drained = tokio::select! {
        drained = link.drain(&container.id, stop.drain) => Some(drained),
        _ = keep.wait_for(|keep| *keep) => None,
    };
    let kept = *keep.borrow();
    match drained {
        _ if kept => say(format!("{} serves again; not stopped", container.name)),
        Some(Err(error)) => {
            // A route points at it again, or the proxy is gone: stopping it could take an
            // app down. It stays running; the next commit or repair decides.
            say(format!("{} not stopped: {error}", container.name));
        }
        Some(Ok(reply)) => {
            let note = if reply.closed > 0 {
                format!("{} connection(s) closed at the drain timeout", reply.closed)
            } else {
                format!("{} connection(s) ended by themselves", reply.finished)
            };
            match exec.stop_with(&container, &stop).await {
                Ok(()) => say(format!(
                    "{} ({}) drained ({note}) and stopped",
                    container.name, container.version
                )),
                Err(error) => say(format!("{} drained ({note}); {error}", container.name)),
            }
            if remove.load(std::sync::atomic::Ordering::SeqCst) {
                match exec.remove(&container.id, &container.name).await {
                    Ok(()) => say(format!(
                        "removed {} ({})",
                        container.name, container.version
                    )),
                    Err(error) => say(error.to_string()),
                }
            }
        }
        None => {}
    }
    link.retiring
        .lock()
        .expect("retiring lock")
        .remove(&container.id);
}

/// Refuses what the proxy cannot serve, before anything is pulled or created.
pub(super) fn check(spec: &DeploySpec) -> Result<(), DeployError> {
    if let Some(port) = spec
        .ports
        .iter()
        .find(|p| p.host != 0 && p.protocol == "udp")
    {
        return Err(DeployError::Proxy(format!(
            "udp port {} is not proxied: the host proxy forwards tcp only; remove the port or run the app on an agent without --proxy-socket",
            port.host
        )));
    }
    Ok(())
}

/// The route that sends `spec`'s ports and domains to `backend`.
fn route(
    app: &str,
    deployment_id: &str,
    backend: pb::ProxyBackend,
    ports: Vec<pb::ProxyPort>,
    domains: Vec<pb::ProxyDomain>,
) -> pb::ProxyRoute {
    pb::ProxyRoute {
        app: app.to_owned(),
        backend: Some(backend),
        ports,
        domains,
        deployment_id: deployment_id.to_owned(),
    }
}

fn ports_of(spec: &DeploySpec) -> Vec<pb::ProxyPort> {
    spec.ports
        .iter()
        .filter(|p| p.host != 0)
        .map(|p| pb::ProxyPort {
            host_port: p.host.into(),
            container_port: p.container.into(),
            protocol: "tcp".to_owned(),
        })
        .collect()
}

pub(crate) fn domains_to_proto(domains: &[Domain]) -> Vec<pb::ProxyDomain> {
    domains
        .iter()
        .map(|d| pb::ProxyDomain {
            host: d.host.clone(),
            container_port: d.container_port.into(),
            tls_cert_pem: d
                .tls
                .as_ref()
                .map(|t| t.cert_pem.clone())
                .unwrap_or_default(),
            tls_key_pem: d
                .tls
                .as_ref()
                .map(|t| t.key_pem.expose_secret().to_owned())
                .unwrap_or_default(),
        })
        .collect()
}

fn backend(id: &str, name: &str, version: &str, address: IpAddr) -> pb::ProxyBackend {
    pb::ProxyBackend {
        container_id: id.to_owned(),
        container_name: name.to_owned(),
        version: version.to_owned(),
        address: address.to_string(),
    }
}

pub(super) async fn serve(
    link: &Arc<ProxyLink>,
    deploy: &Deploy<'_>,
    candidate: Candidate,
    previous: &[AppContainer],
) -> DeployOutcome {
    let (exec, spec) = (deploy.exec, deploy.spec);
    let address = match exec.address(&candidate.id, &candidate.name).await {
        Ok(address) => address,
        Err(error) => return deploy.abandon(Some(&candidate.id), error, previous).await,
    };
    let new_route = route(
        &spec.app,
        &spec.deployment_id,
        backend(&candidate.id, &candidate.name, &spec.version, address),
        ports_of(spec),
        domains_to_proto(&spec.domains),
    );

    // Containers made before the proxy owned the ports hold them themselves: they must let go
    // first. This is the one cut-over with a gap, once per app, when a host adopts the proxy.
    let holders: Vec<&AppContainer> = previous.iter().filter(|c| c.publishes).collect();
    let mut released = Vec::new();
    if !holders.is_empty() && !new_route.ports.is_empty() {
        deploy.emit(
            "swap",
            format!(
                "{} is healthy; {} container(s) publish the host ports themselves: stopping them so the host proxy can take the ports (a one-time gap)",
                candidate.name,
                holders.len()
            ),
        );
        for container in holders {
            if let Err(error) = exec.stop_with(container, &spec.stop).await {
                deploy.emit("swap", error.to_string());
            }
            released.push(container.clone());
        }
    }

    let reply = match link.set_route(new_route).await {
        Ok(reply) => reply,
        Err(error) => {
            let mut note = Vec::new();
            for container in &released {
                match exec.restart(container).await {
                    Ok(()) => {}
                    Err(e) => note.push(e.to_string()),
                }
            }
            if !note.is_empty() {
                exec.remove_quietly(&candidate.id).await;
                let error = format!(
                    "{error}; putting back the previous container failed: {}",
                    note.join("; ")
                );
                return failed(deploy.events, error, None, false);
            }
            return deploy.abandon(Some(&candidate.id), error, previous).await;
        }
    };
    let from = match reply.previous {
        Some(b) if !b.container_id.is_empty() => format!(
            " from {} ({}, {} connection(s) open)",
            b.container_name, b.version, reply.previous_connections
        ),
        _ => String::new(),
    };
    let retiring: Vec<AppContainer> = previous
        .iter()
        .filter(|c| !released.iter().any(|r| r.id == c.id))
        .cloned()
        .collect();
    let next = if retiring.is_empty() {
        String::new()
    } else {
        format!(
            "; {} previous container(s) drain for {} s, then stop (kept until commit)",
            retiring.len(),
            spec.stop.drain.as_secs()
        )
    };
    deploy.emit(
        "swap",
        format!(
            "routed {}{from} to {}{next}",
            what_routes(spec),
            candidate.name
        ),
    );
    link.retire(exec, retiring, spec.stop.clone(), false);
    deploy.succeed(candidate.id, &candidate.name, String::new())
}

fn what_routes(spec: &DeploySpec) -> String {
    let mut parts: Vec<String> = spec
        .ports
        .iter()
        .filter(|p| p.host != 0)
        .map(|p| format!(":{}", p.host))
        .collect();
    parts.extend(spec.domains.iter().map(|d| d.host.clone()));
    if parts.is_empty() {
        format!("{} (no published port or domain)", spec.app)
    } else {
        parts.join(", ")
    }
}

/// Undoes a successful deployment: the newest other container that passes its own health
/// check again serves again (started again if it already stopped), then the undone one
/// retires and is removed. With none, the route stays where it was.
pub(super) async fn rollback(
    link: &Arc<ProxyLink>,
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
    let current = match link.route_of(app).await {
        Ok(route) => route.unwrap_or_default(),
        Err(error) => return failed(events, format!("rollback failed: {error}"), None, false),
    };
    // The newest previous container that passes its own health check again: a stopped one
    // may be a candidate that never passed its gate (left by an interrupted deployment).
    let mut refused = Vec::new();
    let mut restored = None;
    for candidate in others {
        link.keep(&candidate.id).await;
        // Whether it stopped is known only now that no retire task can touch it.
        let running = match exec.app_containers(app, true).await {
            Ok(now) => now.iter().any(|c| c.id == candidate.id && c.running),
            Err(error) => return failed(events, format!("rollback failed: {error}"), None, false),
        };
        match exec.bring_back(&candidate, running, events).await {
            Ok(()) => {
                if !running {
                    let what = format!("{} ({})", candidate.name, candidate.version);
                    emit(events, "rollback", format!("started {what} again"));
                }
                restored = Some(candidate);
                break;
            }
            Err(why) => refused.push(why),
        }
    }
    let Some(previous) = restored else {
        // The route still points where it did: what served keeps serving.
        return failed(
            events,
            no_previous(app, &refused),
            ours.first().map(|c| c.id.clone()),
            false,
        );
    };
    let address = match exec.address(&previous.id, &previous.name).await {
        Ok(address) => address,
        Err(error) => return failed(events, format!("rollback failed: {error}"), None, false),
    };
    let back = route(
        app,
        &previous.deployment,
        backend(&previous.id, &previous.name, &previous.version, address),
        current.ports,
        current.domains,
    );
    if let Err(error) = link.set_route(back).await {
        return failed(events, format!("rollback failed: {error}"), None, false);
    }
    emit(
        events,
        "rollback",
        format!(
            "routed {app} back to {} ({}); it serves again",
            previous.name, previous.version
        ),
    );
    let undone: Vec<AppContainer> = ours.into_iter().filter(|c| c.running).collect();
    let stop = StopSpec {
        drain: ROLLBACK_DRAIN,
        ..StopSpec::default()
    };
    link.retire(exec, undone, stop, true);
    DeployOutcome {
        success: false,
        container_id: Some(previous.id),
        error: Some(format!("deployment {deployment_id} rolled back")),
        rolled_back: true,
    }
}

/// Routes `domains` to the container serving `app` (its route keeps its backend and ports).
pub(super) async fn set_domains(
    link: &Arc<ProxyLink>,
    app: &str,
    domains: &[Domain],
) -> Result<(), String> {
    let Some(mut current) = link.route_of(app).await.map_err(|e| e.to_string())? else {
        info!(%app, "no container serves the app on this host yet: its next deploy routes its domains");
        return Ok(());
    };
    current.domains = domains_to_proto(domains);
    link.set_route(current).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Has the proxy answer an ACME HTTP-01 `token` for `ttl` (zero removes it).
pub(super) async fn set_challenge(
    link: &Arc<ProxyLink>,
    token: &str,
    key_authorization: &secrecy::SecretString,
    ttl: Duration,
) -> Result<(), String> {
    let request = pb::SetChallengeRequest {
        token: token.to_owned(),
        key_authorization: key_authorization.expose_secret().to_owned(),
        ttl_seconds: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
    };
    link.call("setting the acme challenge", |mut c| async move {
        c.set_challenge(request).await
    })
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Puts the host back in order after the agent stopped in the middle of a deployment (even by
/// `kill -9`): for every routed app, a container newer than the routed one never got the
/// traffic (an interrupted deploy) and is removed, running or not; an older running one was
/// being retired and is stopped. A route whose container is gone points at the newest running one.
pub(super) async fn repair(
    link: &Arc<ProxyLink>,
    exec: &DockerExecutor,
) -> Result<(), DeployError> {
    let routes = link
        .call("listing routes", |mut c| async move {
            c.list_routes(pb::ListRoutesRequest {}).await
        })
        .await?;
    for route in routes.routes.into_iter().filter_map(|r| r.route) {
        let containers = exec.app_containers(&route.app, true).await?;
        let routed_id = route
            .backend
            .as_ref()
            .map(|b| b.container_id.clone())
            .unwrap_or_default();
        let routed = containers
            .iter()
            .find(|c| c.id == routed_id && c.running)
            .cloned();
        let Some(routed) = routed else {
            // The routed container is gone or stopped: the newest running one serves.
            let Some(newest) = containers.iter().find(|c| c.running).cloned() else {
                warn!(app = %route.app, "the routed container is gone and none runs: the next deploy routes the app");
                continue;
            };
            let address = exec.address(&newest.id, &newest.name).await?;
            let repaired = pb::ProxyRoute {
                backend: Some(backend(&newest.id, &newest.name, &newest.version, address)),
                deployment_id: newest.deployment.clone(),
                ..route
            };
            let app = repaired.app.clone();
            link.set_route(repaired).await?;
            warn!(%app, container = %newest.name, "repaired a route to a container that was gone");
            continue;
        };
        for container in containers.iter().filter(|c| c.id != routed.id) {
            if container.order() > routed.order() {
                // Running or not: a stopped one is a candidate that failed its gate (or a
                // rolled-back version) whose removal the crash cut short; a rollback must
                // never find it.
                warn!(container = %container.name, "removing a candidate of an interrupted deployment (never routed)");
                exec.remove_quietly(&container.id).await;
            } else if container.running {
                warn!(container = %container.name, "retiring a container whose retirement was interrupted");
                link.retire(exec, vec![container.clone()], StopSpec::default(), false);
            }
        }
    }
    Ok(())
}

/// How an interrupted deployment ended: it serves when the app's route points at one of its
/// containers (the switch happened before the agent died); otherwise unknown (`None`) — and
/// [`repair`] has removed whatever it left unrouted.
pub(super) async fn recover(
    link: &Arc<ProxyLink>,
    exec: &DockerExecutor,
    app: &str,
    deployment_id: &str,
) -> Option<DeployOutcome> {
    let routed = link.route_of(app).await.ok()??.backend?.container_id;
    let containers = exec.app_containers(app, false).await.ok()?;
    let serving = containers
        .into_iter()
        .find(|c| c.id == routed && c.deployment == deployment_id)?;
    Some(DeployOutcome {
        success: true,
        container_id: Some(serving.id),
        error: None,
        rolled_back: false,
    })
}
