//! The control calls' logic, behind the gRPC handlers: set and remove a route, list, drain,
//! ACME challenges. Knows nothing of tonic.
//!
//! Architecture invariant: control calls run one at a time (the ports mutex); a change is
//! validated, its new ports bound and the state file written before the snapshot is swapped,
//! and any failure before the swap leaves the table, the file and the bound ports unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::connections::DrainOutcome;
use super::error::ProxyError;
use super::route::{Backend, Route};
use super::state::StateFile;
use super::table::{RouteEntry, Snapshot};
use super::tcp::{self, ServedPort};
use super::{tls, DataPath};

/// The previous backend of an app a route was set for, and its open connections then.
#[derive(Debug, Clone)]
pub struct SetRouteOutcome {
    pub previous: Option<Backend>,
    pub previous_connections: u64,
}

/// A route and its open connections per container id.
#[derive(Debug, Clone)]
pub struct RouteStatus {
    pub route: Route,
    pub connections: BTreeMap<String, u64>,
}

pub struct ProxyService {
    data: Arc<DataPath>,
    state: StateFile,
    port_bind_ip: IpAddr,
    /// The served host ports; its lock is the one every control call that changes the table
    /// holds from its first check to its last step.
    ports: Mutex<BTreeMap<u16, ServedPort>>,
    /// The proxy's own HTTP/HTTPS listener ports: no app may publish them.
    reserved: std::sync::Mutex<BTreeMap<u16, &'static str>>,
}

impl ProxyService {
    pub fn new(data: Arc<DataPath>, state: StateFile, port_bind_ip: IpAddr) -> Self {
        Self {
            data,
            state,
            port_bind_ip,
            ports: Mutex::new(BTreeMap::new()),
            reserved: std::sync::Mutex::default(),
        }
    }

    /// Marks the proxy's own listener ports (`"HTTP"`, `"HTTPS"`) as not publishable.
    pub fn reserve_ports(&self, ports: impl IntoIterator<Item = (u16, &'static str)>) {
        self.reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(ports);
    }

    /// Puts the persisted routes in the table and serves their ports. A port that cannot be
    /// bound is logged and left unserved (the other apps still are); the next `SetRoute` of
    /// its app binds it again. A route that is invalid now refuses the start.
    pub async fn restore(&self, routes: Vec<Route>) -> anyhow::Result<()> {
        let mut ports = self.ports.lock().await;
        let mut snapshot = Snapshot::default();
        for mut route in routes {
            let app = route.app.clone();
            let refused = |e: ProxyError| {
                anyhow::anyhow!(
                    "the route of app {app} in {} is refused: {e}",
                    self.state.path().display()
                )
            };
            route.validate().map_err(refused)?;
            let certs = tls::route_certs(&route).map_err(refused)?;
            snapshot = snapshot
                .with_route(RouteEntry { route, certs })
                .map_err(refused)?;
        }
        let mut bound = Vec::new();
        for entry in snapshot.routes() {
            for port in &entry.route.ports {
                match tcp::bind(self.port_bind_ip, port.host_port).await {
                    Ok(port) => bound.push(port),
                    Err(e) => tracing::error!(
                        app = %entry.route.app,
                        port = port.host_port,
                        error = %e,
                        "a persisted port cannot be bound: not served until the app's route is set again"
                    ),
                }
            }
        }
        self.data.table.store(snapshot);
        for port in bound {
            ports.insert(port.port(), port.serve(self.data.clone()));
        }
        Ok(())
    }

    pub async fn set_route(&self, mut route: Route) -> Result<SetRouteOutcome, ProxyError> {
        route.validate()?;
        {
            let reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((port, what)) = route
                .ports
                .iter()
                .find_map(|p| reserved.get_key_value(&p.host_port))
            {
                return Err(ProxyError::FailedPrecondition(format!(
                    "host port {port} is berth-proxy's {what} listener: serve the app by domain, or publish another port"
                )));
            }
        }
        let certs = tls::route_certs(&route)?;
        let mut ports = self.ports.lock().await;
        let current = self.data.table.load();
        let previous = current.route(&route.app).map(|e| e.route.clone());
        let app = route.app.clone();
        let next = current.with_route(RouteEntry {
            route: route.clone(),
            certs,
        })?;
        // New ports are bound before anything changes; an error drops (closes) them.
        let mut bound = Vec::new();
        for port in &route.ports {
            if !ports.contains_key(&port.host_port) {
                bound.push(tcp::bind(self.port_bind_ip, port.host_port).await?);
            }
        }
        self.persist(&next).await?;
        self.data.table.store(next);
        for port in bound {
            ports.insert(port.port(), port.serve(self.data.clone()));
        }
        let kept: BTreeSet<u16> = route.ports.iter().map(|p| p.host_port).collect();
        if let Some(previous) = &previous {
            for port in &previous.ports {
                if !kept.contains(&port.host_port) {
                    if let Some(served) = ports.remove(&port.host_port) {
                        served.close().await;
                    }
                }
            }
        }
        let outcome = SetRouteOutcome {
            previous_connections: previous
                .as_ref()
                .map_or(0, |p| self.data.connections.count(&p.backend.container_id)),
            previous: previous.map(|p| p.backend),
        };
        tracing::info!(
            %app,
            container = %route.backend.container_id,
            version = %route.backend.version,
            ports = route.ports.len(),
            domains = route.domains.len(),
            "route set"
        );
        Ok(outcome)
    }

    /// Removes `app`'s route and closes its ports; false if it had none.
    pub async fn remove_route(&self, app: &str) -> Result<bool, ProxyError> {
        let mut ports = self.ports.lock().await;
        let current = self.data.table.load();
        let Some(entry) = current.route(app).cloned() else {
            return Ok(false);
        };
        let next = current.without_route(app);
        self.persist(&next).await?;
        self.data.table.store(next);
        for port in &entry.route.ports {
            if let Some(served) = ports.remove(&port.host_port) {
                served.close().await;
            }
        }
        tracing::info!(%app, "route removed");
        Ok(true)
    }

    pub fn list_routes(&self) -> Vec<RouteStatus> {
        self.data
            .table
            .load()
            .routes()
            .map(|entry| RouteStatus {
                route: entry.route.clone(),
                connections: self.data.connections.counts_of_app(&entry.route.app),
            })
            .collect()
    }

    /// Waits for `container_id`'s connections to end, up to `timeout`, then closes the rest.
    /// Runs outside the control lock: a drain does not hold up other apps' switches.
    pub async fn drain(
        &self,
        container_id: &str,
        timeout: Duration,
    ) -> Result<DrainOutcome, ProxyError> {
        if container_id.is_empty() {
            return Err(ProxyError::InvalidArgument(
                "drain needs a container id".into(),
            ));
        }
        if let Some(app) = self.data.table.load().app_routing_to(container_id) {
            return Err(ProxyError::FailedPrecondition(format!(
                "app {app} still routes to container {container_id}: switch its route to another container (or remove it) before draining"
            )));
        }
        let outcome = self.data.connections.drain(container_id, timeout).await;
        tracing::info!(
            container = %container_id,
            finished = outcome.finished,
            closed = outcome.closed,
            "drained"
        );
        Ok(outcome)
    }

    pub fn set_challenge(
        &self,
        token: &str,
        key_authorization: &str,
        ttl: Duration,
    ) -> Result<(), ProxyError> {
        self.data.challenges.set(token, key_authorization, ttl)
    }

    /// Stops serving every host port (at shutdown).
    pub async fn close_ports(&self) {
        let mut ports = self.ports.lock().await;
        for (_, served) in std::mem::take(&mut *ports) {
            served.close().await;
        }
    }

    async fn persist(&self, snapshot: &Snapshot) -> Result<(), ProxyError> {
        let routes: Vec<Route> = snapshot.routes().map(|e| e.route.clone()).collect();
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.save(routes))
            .await
            .map_err(|e| ProxyError::Internal(format!("writing the routes file failed: {e}")))?
            .map_err(|e| {
                ProxyError::Internal(format!(
                    "cannot write the routes file {}: {e}: check the state directory's disk and permissions",
                    self.state.path().display()
                ))
            })
    }
}
