//! berth-proxy, the host-local data plane: it owns each application's published host
//! ports (TCP, forwarded at layer 4) and its domains (HTTP/HTTPS, routed per request by Host
//! and SNI), and points them at the app's current container. The agent switches a route with
//! one `SetRoute` call on a local Unix socket ([`client::connect`]).
//!
//! Architecture invariant: a route change is all or nothing and is persisted before it takes
//! effect; connections already open keep their backend until they end or are drained.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub mod client;

/// Where berth-proxy keeps its state and listens.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Holds `routes.json` (mode 0600: it carries TLS keys); created 0700.
    pub state_dir: PathBuf,
    /// The control socket (mode 0600) the agent calls `ProxyControl` on.
    pub socket_path: PathBuf,
    /// The HTTP listener for domains (and ACME HTTP-01); `None`: no HTTP. Port 0 picks one.
    pub http_listen: Option<SocketAddr>,
    /// The HTTPS listener for domains with a certificate; `None`: no HTTPS. Port 0 picks one.
    pub https_listen: Option<SocketAddr>,
    /// The address every published host port is bound on.
    pub port_bind_ip: IpAddr,
}

/// A started proxy: its listeners serve until [`RunningProxy::shutdown`].
pub struct RunningProxy {
    http_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
    socket_path: PathBuf,
}

impl RunningProxy {
    /// The bound HTTP address (the real port when the config said 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The bound HTTPS address (the real port when the config said 0).
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The control socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Stops accepting, closes every connection and removes the control socket.
    pub async fn shutdown(self) {}
}

/// Loads the persisted routes, binds their host ports, then the HTTP/HTTPS listeners, then the
/// control socket, so persisted routes are served before the first control call.
pub async fn start(config: ProxyConfig) -> anyhow::Result<RunningProxy> {
    anyhow::bail!(
        "berth-proxy's data plane is not in this build yet ({}): build a later commit of branch proxy-dp",
        config.socket_path.display()
    )
}
