//! The route table: every app's route with its parsed certificates, indexed by host port and
//! by host name. The data path reads an immutable [`Snapshot`]; a control call builds the next
//! one and swaps it in.
//!
//! Architecture invariant: a snapshot never routes one host port or one host name to two
//! apps; readers hold an `Arc` of a whole snapshot, so a request never sees half a change.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use rustls::sign::CertifiedKey;

use super::error::ProxyError;
use super::route::Route;

/// A route and the certificates of its domains, parsed once when it was set.
#[derive(Debug)]
pub struct RouteEntry {
    pub route: Route,
    /// Host name -> certificate, for the domains that have one.
    pub certs: HashMap<String, Arc<CertifiedKey>>,
}

/// Where one connection or one request goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub entry: Arc<RouteEntry>,
    pub addr: SocketAddr,
}

impl Target {
    pub fn app(&self) -> &str {
        &self.entry.route.app
    }

    pub fn container_id(&self) -> &str {
        &self.entry.route.backend.container_id
    }
}

/// Every route at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    routes: BTreeMap<String, Arc<RouteEntry>>,
    /// Host port -> (app, container port).
    by_port: HashMap<u16, (String, u16)>,
    /// Host name -> (app, container port).
    by_host: HashMap<String, (String, u16)>,
}

impl Snapshot {
    pub fn routes(&self) -> impl Iterator<Item = &Arc<RouteEntry>> {
        self.routes.values()
    }

    pub fn route(&self, app: &str) -> Option<&Arc<RouteEntry>> {
        self.routes.get(app)
    }

    /// The backend a new connection to `host_port` goes to.
    pub fn port_target(&self, host_port: u16) -> Option<Target> {
        let (app, container_port) = self.by_port.get(&host_port)?;
        self.target(app, *container_port)
    }

    /// The backend a request for `host` (lower case, no port) goes to.
    pub fn host_target(&self, host: &str) -> Option<Target> {
        let (app, container_port) = self.by_host.get(host)?;
        self.target(app, *container_port)
    }

    /// The certificate served for `host`, if its domain has one.
    pub fn cert(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let (app, _) = self.by_host.get(host)?;
        self.routes.get(app)?.certs.get(host).cloned()
    }

    /// The app whose route points at `container_id`, if any.
    pub fn app_routing_to(&self, container_id: &str) -> Option<&str> {
        self.routes
            .values()
            .find(|e| e.route.backend.container_id == container_id)
            .map(|e| e.route.app.as_str())
    }

    fn target(&self, app: &str, container_port: u16) -> Option<Target> {
        let entry = self.routes.get(app)?;
        Some(Target {
            addr: entry.route.backend_addr(container_port),
            entry: entry.clone(),
        })
    }

    /// This snapshot with `entry` as its app's route, or why not: a host port or a host
    /// name of it is routed to another app.
    pub fn with_route(&self, entry: RouteEntry) -> Result<Snapshot, ProxyError> {
        let app = entry.route.app.clone();
        for port in &entry.route.ports {
            if let Some((other, _)) = self.by_port.get(&port.host_port) {
                if *other != app {
                    return Err(ProxyError::FailedPrecondition(format!(
                        "host port {} is already routed to app {other}: remove that route or publish another port",
                        port.host_port
                    )));
                }
            }
        }
        for domain in &entry.route.domains {
            if let Some((other, _)) = self.by_host.get(&domain.host) {
                if *other != app {
                    return Err(ProxyError::FailedPrecondition(format!(
                        "domain {} is already routed to app {other}: remove it from that app first",
                        domain.host
                    )));
                }
            }
        }
        let mut routes = self.routes.clone();
        routes.insert(app, Arc::new(entry));
        Ok(Self::index(routes))
    }

    /// This snapshot without `app`'s route.
    pub fn without_route(&self, app: &str) -> Snapshot {
        let mut routes = self.routes.clone();
        routes.remove(app);
        Self::index(routes)
    }

    fn index(routes: BTreeMap<String, Arc<RouteEntry>>) -> Snapshot {
        let mut by_port = HashMap::new();
        let mut by_host = HashMap::new();
        for (app, entry) in &routes {
            for port in &entry.route.ports {
                by_port.insert(port.host_port, (app.clone(), port.container_port));
            }
            for domain in &entry.route.domains {
                by_host.insert(domain.host.clone(), (app.clone(), domain.container_port));
            }
        }
        Snapshot {
            routes,
            by_port,
            by_host,
        }
    }
}

/// The current snapshot, swapped whole.
#[derive(Debug, Default)]
pub struct RouteTable {
    current: RwLock<Arc<Snapshot>>,
}

impl RouteTable {
    /// The current snapshot (a clone of an `Arc`: the lock is held for no longer than that).
    pub fn load(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn store(&self, snapshot: Snapshot) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(snapshot);
    }
}
