//! The `ProxyControl` gRPC service on the control socket: thin handlers that convert proto
//! messages to routes, call [`ProxyService`] and map its errors.
//!
//! Architecture invariant: only this module knows tonic's server side; the socket is created
//! mode 0600 (bound in a private directory, then moved into place), and a socket file left by
//! a dead proxy is replaced while a live one is never taken over.

use std::future::Future;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth_proto::v1 as pb;
use berth_proto::v1::proxy_control_server::{ProxyControl, ProxyControlServer};
use secrecy::SecretString;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use super::route::{Backend, DomainRoute, PortMapping, Route, TlsPem};
use super::service::ProxyService;

/// Binds the control socket at `path` (mode 0600), after checking no proxy answers there.
pub async fn bind_socket(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .with_context(|| format!("cannot create the socket directory {}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                anyhow::bail!(
                    "another berth-proxy answers on {}: stop it, or pass another --socket",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket: move it away or pass another --socket",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    // Bound in a directory only we can enter, made 0600, then renamed into place: nobody can
    // connect to it before its mode is set.
    let parent = path.parent().unwrap_or(Path::new("."));
    let private = parent.join(format!(".berth-proxy-{}.d", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("cannot create {}", private.display()))?;
    let bound = (|| {
        let temp = private.join("proxy.sock");
        let listener = UnixListener::bind(&temp)?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&temp, path)?;
        Ok::<_, std::io::Error>(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound.with_context(|| format!("cannot listen on the control socket {}", path.display()))
}

/// Serves `ProxyControl` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: UnixListener,
    service: Arc<ProxyService>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(ProxyControlServer::new(ControlHandlers { service }))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
}

struct ControlHandlers {
    service: Arc<ProxyService>,
}

#[tonic::async_trait]
impl ProxyControl for ControlHandlers {
    async fn set_route(
        &self,
        request: Request<pb::SetRouteRequest>,
    ) -> Result<Response<pb::SetRouteReply>, Status> {
        let route = request
            .into_inner()
            .route
            .ok_or_else(|| Status::invalid_argument("SetRoute needs a route"))?;
        let outcome = self.service.set_route(route_from_proto(route)?).await?;
        Ok(Response::new(pb::SetRouteReply {
            previous: outcome.previous.map(backend_to_proto),
            previous_connections: outcome.previous_connections,
        }))
    }

    async fn remove_route(
        &self,
        request: Request<pb::RemoveRouteRequest>,
    ) -> Result<Response<pb::RemoveRouteReply>, Status> {
        let app = request.into_inner().app;
        if app.trim().is_empty() {
            return Err(Status::invalid_argument(
                "RemoveRoute needs an app: name the application",
            ));
        }
        let removed = self.service.remove_route(&app).await?;
        Ok(Response::new(pb::RemoveRouteReply { removed }))
    }

    async fn list_routes(
        &self,
        _request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesReply>, Status> {
        let routes = self
            .service
            .list_routes()
            .into_iter()
            .map(|status| pb::RouteStatus {
                route: Some(route_to_proto(status.route)),
                connections: status.connections.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(pb::ListRoutesReply { routes }))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainReply>, Status> {
        let request = request.into_inner();
        let outcome = self
            .service
            .drain(
                &request.container_id,
                Duration::from_millis(request.timeout_ms),
            )
            .await?;
        Ok(Response::new(pb::DrainReply {
            finished: outcome.finished,
            closed: outcome.closed,
        }))
    }

    async fn set_challenge(
        &self,
        request: Request<pb::SetChallengeRequest>,
    ) -> Result<Response<pb::SetChallengeReply>, Status> {
        let request = request.into_inner();
        self.service.set_challenge(
            &request.token,
            &request.key_authorization,
            Duration::from_secs(request.ttl_seconds.into()),
        )?;
        Ok(Response::new(pb::SetChallengeReply {}))
    }
}

fn route_from_proto(route: pb::ProxyRoute) -> Result<Route, Status> {
    let app = route.app;
    let backend = route.backend.ok_or_else(|| {
        Status::invalid_argument(format!("the route of app {app} has no backend"))
    })?;
    let address: IpAddr = backend.address.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "backend address {:?} of app {app} is not an IP address: pass the container's IP on its network",
            backend.address
        ))
    })?;
    let port_number = |n: u32, what: &str| {
        u16::try_from(n).map_err(|_| {
            Status::invalid_argument(format!("{what} {n} of app {app} is not a port (1-65535)"))
        })
    };
    let mut ports = Vec::with_capacity(route.ports.len());
    for port in route.ports {
        match port.protocol.to_ascii_lowercase().as_str() {
            "" | "tcp" => {}
            "udp" => {
                return Err(Status::invalid_argument(format!(
                    "udp port {} is not proxied: publish it from a host-network app or remove it",
                    port.host_port
                )))
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "protocol {other:?} of port {} of app {app} is not tcp",
                    port.host_port
                )))
            }
        }
        ports.push(PortMapping {
            host_port: port_number(port.host_port, "host port")?,
            container_port: port_number(port.container_port, "container port")?,
        });
    }
    let mut domains = Vec::with_capacity(route.domains.len());
    for domain in route.domains {
        let tls = match (domain.tls_cert_pem.is_empty(), domain.tls_key_pem.is_empty()) {
            (true, true) => None,
            (false, false) => Some(TlsPem {
                cert_pem: domain.tls_cert_pem,
                key_pem: SecretString::from(domain.tls_key_pem),
            }),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "domain {} of app {app} has a certificate or a key but not both: give both or neither",
                    domain.host
                )))
            }
        };
        domains.push(DomainRoute {
            container_port: port_number(domain.container_port, "container port")?,
            host: domain.host,
            tls,
        });
    }
    Ok(Route {
        backend: Backend {
            container_id: backend.container_id,
            container_name: backend.container_name,
            version: backend.version,
            address,
        },
        app,
        ports,
        domains,
        deployment_id: route.deployment_id,
    })
}

fn backend_to_proto(backend: Backend) -> pb::ProxyBackend {
    pb::ProxyBackend {
        container_id: backend.container_id,
        container_name: backend.container_name,
        version: backend.version,
        address: backend.address.to_string(),
    }
}

/// As persisted, except the TLS keys: they never leave the proxy again (a domain with TLS
/// is listed with its certificate and an empty key).
fn route_to_proto(route: Route) -> pb::ProxyRoute {
    pb::ProxyRoute {
        app: route.app,
        backend: Some(backend_to_proto(route.backend)),
        ports: route
            .ports
            .into_iter()
            .map(|p| pb::ProxyPort {
                host_port: p.host_port.into(),
                container_port: p.container_port.into(),
                protocol: "tcp".into(),
            })
            .collect(),
        domains: route
            .domains
            .into_iter()
            .map(|d| pb::ProxyDomain {
                host: d.host,
                container_port: d.container_port.into(),
                tls_cert_pem: d.tls.map(|tls| tls.cert_pem).unwrap_or_default(),
                tls_key_pem: String::new(),
            })
            .collect(),
        deployment_id: route.deployment_id,
    }
}
