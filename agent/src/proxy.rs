//! berth-proxy, the host-local data plane: it owns each application's published host
//! ports (TCP, forwarded at layer 4) and its domains (HTTP/HTTPS, routed per request by Host
//! and SNI), and points them at the app's current container. The agent switches a route with
//! one `SetRoute` call on a local Unix socket ([`client::connect`]).
//!
//! Architecture invariant: a route change is all or nothing and is persisted before it takes
//! effect; connections already open keep their backend until they end or are drained.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod challenge;
pub mod client;
mod connections;
mod control;
mod error;
mod http;
mod route;
mod service;
mod state;
mod table;
mod tcp;
#[cfg(test)]
mod tests;
mod tls;
use service::ProxyService;

/// How long connections get to finish at shutdown before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
    /// Members of the proxy's group may use the control socket too (mode 0660 instead of
    /// 0600): for an agent that runs as another user in that group (the systemd units: the
    /// agent's dynamic user and the proxy share the `docker` group, which is root-equivalent
    /// on the host already).
    pub socket_group_access: bool,
}

impl ProxyConfig {
    fn socket_mode(&self) -> u32 {
        if self.socket_group_access {
            0o660
        } else {
            0o600
        }
    }
}

/// What the data path (listeners and the connections they spawn) shares.
#[derive(Debug, Default)]
struct DataPath {
    table: Arc<table::RouteTable>,
    connections: Arc<connections::Connections>,
    challenges: challenge::Challenges,
    /// Every forwarded connection's task, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Cancelled at shutdown: listeners stop accepting, connections are cut.
    shutdown: CancellationToken,
}

/// A started proxy: its listeners serve until [`RunningProxy::shutdown`].
pub struct RunningProxy {
    http_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
    socket_path: PathBuf,
    data: Arc<DataPath>,
    service: Arc<ProxyService>,
    /// The control server and the HTTP/HTTPS accept loops.
    servers: Vec<JoinHandle<()>>,
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

    /// Stops accepting (control socket, HTTP/HTTPS, host ports), gives open connections
    /// [`SHUTDOWN_GRACE`] to finish, cuts the rest and removes the control socket. Routes
    /// stay persisted for the next start.
    pub async fn shutdown(self) {
        self.data.shutdown.cancel();
        for mut server in self.servers {
            // The control server waits for RPCs in flight; a long Drain ends once the
            // connections it waits for are cut below, but do not wait on it forever.
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
        self.service.close_ports().await;
        self.data.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.data.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.data.tasks.len(),
                "connections still open after the shutdown grace: cut"
            );
        }
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

/// Loads the persisted routes, binds their host ports, then the HTTP/HTTPS listeners, then the
/// control socket, so persisted routes are served before the first control call.
pub async fn start(config: ProxyConfig) -> anyhow::Result<RunningProxy> {
    let state = state::StateFile::open(&config.state_dir)?;
    let routes = state.load()?;
    let data = Arc::new(DataPath::default());
    let service = Arc::new(ProxyService::new(data.clone(), state, config.port_bind_ip));
    let restored = routes.len();
    service.restore(routes).await?;
    let listeners = match bind_http_listeners(&config).await {
        Ok(listeners) => listeners,
        Err(e) => {
            service.close_ports().await;
            return Err(e);
        }
    };
    let control_listener =
        match control::bind_socket(&config.socket_path, config.socket_mode()).await {
            Ok(listener) => listener,
            Err(e) => {
                service.close_ports().await;
                return Err(e);
            }
        };
    let (http, https) = listeners;
    let (http_addr, https_addr) = (
        http.as_ref().and_then(|l| l.local_addr().ok()),
        https.as_ref().and_then(|l| l.local_addr().ok()),
    );
    service.reserve_ports(
        [(http_addr, "HTTP"), (https_addr, "HTTPS")]
            .into_iter()
            .filter_map(|(addr, what)| Some((addr?.port(), what))),
    );
    let mut servers = Vec::new();
    let client = http::backend_client();
    if let Some(listener) = http {
        let scheme = http::Scheme::Http {
            https_port: https_addr.map(|a| a.port()),
        };
        servers.push(http::serve(listener, scheme, data.clone(), client.clone()));
    }
    if let Some(listener) = https {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(data.table.clone())?);
        servers.push(http::serve(
            listener,
            http::Scheme::Https(acceptor),
            data.clone(),
            client,
        ));
    }
    let shutdown = data.shutdown.clone();
    let control_service = service.clone();
    let control_server = tokio::spawn(async move {
        if let Err(e) = control::serve(
            control_listener,
            control_service,
            shutdown.cancelled_owned(),
        )
        .await
        {
            tracing::error!(error = %e, "the control socket stopped serving");
        }
    });
    servers.push(control_server);
    tracing::info!(
        routes = restored,
        http = ?http_addr,
        https = ?https_addr,
        socket = %config.socket_path.display(),
        "berth-proxy started"
    );
    Ok(RunningProxy {
        http_addr,
        https_addr,
        socket_path: config.socket_path,
        data,
        service,
        servers,
    })
}

/// The HTTP and HTTPS listeners the config asks for.
async fn bind_http_listeners(
    config: &ProxyConfig,
) -> anyhow::Result<(Option<TcpListener>, Option<TcpListener>)> {
    async fn bind(
        addr: Option<SocketAddr>,
        what: &str,
        flag: &str,
    ) -> anyhow::Result<Option<TcpListener>> {
        let Some(addr) = addr else { return Ok(None) };
        TcpListener::bind(addr).await.map(Some).map_err(|e| {
            anyhow::anyhow!("cannot listen for {what} on {addr}: {e}: free the port, or pass {flag} with another address or none")
        })
    }
    let http = bind(config.http_listen, "HTTP", "--http-listen").await?;
    let https = bind(config.https_listen, "HTTPS", "--https-listen").await?;
    Ok((http, https))
}
