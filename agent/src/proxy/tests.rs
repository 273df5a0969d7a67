//! The proxy at its boundary: started in process with [`super::start`] on loopback, driven
//! through its control socket with [`super::client::connect`], with tiny TCP and HTTP
//! backends that answer with their own name. No Docker; every wait is bounded, nothing
//! asserts on timing. This file is the fixture; `tcp.rs`, `http.rs` and `control.rs` the
//! behaviours.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::v1 as pb;
use berth_proto::v1::proxy_control_client::ProxyControlClient;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;

use super::{client, start, ProxyConfig, RunningProxy};

mod control;
mod http;
mod http_fixture;
mod logs;
mod tcp;

/// Every wait in these tests is bounded by this, far above what any step takes.
const WAIT: Duration = Duration::from_secs(10);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {WAIT:?}"))
}

/// A TCP backend: sends its name and a newline, then echoes until the client closes.
struct TcpBackend {
    name: &'static str,
    addr: SocketAddr,
}

async fn tcp_backend(name: &'static str) -> TcpBackend {
    let listener = TcpListener::bind((LOCALHOST, 0))
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                stream.write_all(format!("{name}\n").as_bytes()).await?;
                let mut buf = [0u8; 1024];
                loop {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    stream.write_all(&buf[..n]).await?;
                }
            });
        }
    });
    TcpBackend { name, addr }
}

/// A port nobody listens on now (the OS picks it; the tests then ask the proxy to bind it).
fn free_port() -> u16 {
    std::net::TcpListener::bind((LOCALHOST, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A client connection through the proxy: it has read the backend's name.
struct Conn {
    stream: BufReader<TcpStream>,
    backend: String,
}

async fn connect(port: u16) -> Conn {
    let stream = bounded("connect", TcpStream::connect((LOCALHOST, port)))
        .await
        .unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    bounded("backend greeting", stream.read_line(&mut line))
        .await
        .expect("read greeting");
    Conn {
        stream,
        backend: line.trim_end().to_owned(),
    }
}

impl Conn {
    /// Sends `text` and reads it back through the backend.
    async fn echo(&mut self, text: &str) -> String {
        self.stream
            .get_mut()
            .write_all(format!("{text}\n").as_bytes())
            .await
            .expect("write");
        let mut line = String::new();
        bounded("echo", self.stream.read_line(&mut line))
            .await
            .expect("read echo");
        line.trim_end().to_owned()
    }

    /// True once the proxy closed the connection.
    async fn closed_by_peer(&mut self) -> bool {
        let mut buf = [0u8; 16];
        matches!(
            bounded("close", self.stream.read(&mut buf)).await,
            Ok(0) | Err(_)
        )
    }
}

/// A running proxy in a temporary directory, and a control client.
struct Fixture {
    dir: tempfile::TempDir,
    proxy: Option<RunningProxy>,
    control: ProxyControlClient<Channel>,
}

fn config(dir: &Path) -> ProxyConfig {
    ProxyConfig {
        state_dir: dir.join("state"),
        socket_path: dir.join("run/proxy.sock"),
        http_listen: None,
        https_listen: None,
        port_bind_ip: LOCALHOST,
        socket_group_access: false,
    }
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, config).await
    }

    async fn start_in(dir: tempfile::TempDir, make: fn(&Path) -> ProxyConfig) -> Fixture {
        let proxy = start(make(dir.path())).await.expect("start proxy");
        let control = client::connect(proxy.socket_path())
            .await
            .expect("connect control");
        Fixture {
            dir,
            proxy: Some(proxy),
            control,
        }
    }

    fn proxy(&self) -> &RunningProxy {
        self.proxy.as_ref().expect("running")
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("state/routes.json")
    }

    async fn set_route(
        &mut self,
        route: pb::ProxyRoute,
    ) -> Result<pb::SetRouteReply, tonic::Status> {
        self.control
            .set_route(pb::SetRouteRequest { route: Some(route) })
            .await
            .map(|r| r.into_inner())
    }

    async fn list(&mut self) -> Vec<pb::RouteStatus> {
        self.control
            .list_routes(pb::ListRoutesRequest {})
            .await
            .expect("list routes")
            .into_inner()
            .routes
    }

    async fn drain(
        &mut self,
        container_id: &str,
        timeout_ms: u64,
    ) -> Result<pb::DrainReply, tonic::Status> {
        bounded(
            "drain",
            self.control.drain(pb::DrainRequest {
                container_id: container_id.into(),
                timeout_ms,
            }),
        )
        .await
        .map(|r| r.into_inner())
    }
}

fn backend(name: &str, addr: SocketAddr) -> pb::ProxyBackend {
    pb::ProxyBackend {
        container_id: format!("id-{name}"),
        container_name: format!("berth-web-{name}"),
        version: format!("v-{name}"),
        address: addr.ip().to_string(),
    }
}

/// `app`'s route to `to`, publishing each host port to the backend's port.
fn tcp_route(app: &str, to: &TcpBackend, host_ports: &[u16]) -> pb::ProxyRoute {
    pb::ProxyRoute {
        app: app.into(),
        backend: Some(backend(to.name, to.addr)),
        ports: host_ports
            .iter()
            .map(|&host_port| pb::ProxyPort {
                host_port: host_port.into(),
                container_port: to.addr.port().into(),
                protocol: "tcp".into(),
            })
            .collect(),
        domains: vec![],
        deployment_id: format!("deploy-{}", to.name),
    }
}

fn assert_status(
    result: Result<impl std::fmt::Debug, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) {
    let status = result.expect_err("the call should be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "{:?} does not say {needle:?}",
        status.message()
    );
}

/// An rcgen self-signed certificate for `host`: (cert PEM, key PEM).
fn self_signed(host: &str) -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec![host.to_owned()]).expect("rcgen");
    (certified.cert.pem(), certified.key_pair.serialize_pem())
}

fn domain(host: &str, tls: Option<(String, String)>) -> pb::ProxyDomain {
    let (tls_cert_pem, tls_key_pem) = tls.unwrap_or_default();
    pb::ProxyDomain {
        host: host.into(),
        container_port: 0,
        tls_cert_pem,
        tls_key_pem,
    }
}

fn config_with_http(dir: &Path) -> ProxyConfig {
    ProxyConfig {
        http_listen: Some(SocketAddr::new(LOCALHOST, 0)),
        https_listen: Some(SocketAddr::new(LOCALHOST, 0)),
        ..config(dir)
    }
}

impl Fixture {
    async fn start_with_http() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, config_with_http).await
    }

    fn http_addr(&self) -> SocketAddr {
        self.proxy().http_addr().expect("http listener")
    }

    fn https_addr(&self) -> SocketAddr {
        self.proxy().https_addr().expect("https listener")
    }

    async fn set_challenge(
        &mut self,
        token: &str,
        key_authorization: &str,
        ttl_seconds: u32,
    ) -> Result<(), tonic::Status> {
        self.control
            .set_challenge(pb::SetChallengeRequest {
                token: token.into(),
                key_authorization: key_authorization.into(),
                ttl_seconds,
            })
            .await
            .map(|_| ())
    }
}

/// `app`'s route to `to`, serving `domains` (no host port).
fn http_route(app: &str, to: &TcpBackend, domains: Vec<pb::ProxyDomain>) -> pb::ProxyRoute {
    pb::ProxyRoute {
        app: app.into(),
        backend: Some(backend(to.name, to.addr)),
        ports: vec![],
        domains: domains
            .into_iter()
            .map(|d| pb::ProxyDomain {
                container_port: to.addr.port().into(),
                ..d
            })
            .collect(),
        deployment_id: format!("deploy-{}", to.name),
    }
}
