//! The proxy at its boundary: started in process with [`super::start`] on loopback, driven
//! through its control socket with [`super::client::connect`], with tiny TCP and HTTP
//! backends that answer with their own name. No Docker; every wait is bounded, nothing
//! asserts on timing.

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

mod http_fixture;

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

#[tokio::test]
async fn a_switch_sends_new_connections_to_the_new_backend_and_drain_closes_the_old() {
    let (a, b) = (tcp_backend("a").await, tcp_backend("b").await);
    let port = free_port();
    let mut fx = Fixture::start().await;
    let reply = fx
        .set_route(tcp_route("web", &a, &[port]))
        .await
        .expect("route to a");
    assert!(reply.previous.is_none());

    let mut on_a = connect(port).await;
    assert_eq!(on_a.backend, "a");

    let reply = fx
        .set_route(tcp_route("web", &b, &[port]))
        .await
        .expect("switch to b");
    assert_eq!(reply.previous.expect("previous").container_id, "id-a");
    assert_eq!(reply.previous_connections, 1);
    let on_b = connect(port).await;
    assert_eq!(on_b.backend, "b");
    // The established connection still goes to a.
    assert_eq!(on_a.echo("still here").await, "still here");

    let routes = fx.list().await;
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].connections.get("id-a"), Some(&1));
    assert_eq!(routes[0].connections.get("id-b"), Some(&1));

    // b is routed: draining it is refused.
    assert_status(
        fx.drain("id-b", 10).await,
        tonic::Code::FailedPrecondition,
        "app web still routes to container id-b",
    );
    // a's connection does not end by itself: closed at the timeout.
    let reply = fx.drain("id-a", 50).await.expect("drain a");
    assert_eq!((reply.finished, reply.closed), (0, 1));
    assert!(
        on_a.closed_by_peer().await,
        "the drained connection is still open"
    );
    let mut on_b = on_b;
    assert_eq!(on_b.echo("b lives").await, "b lives");
}

#[tokio::test]
async fn a_drain_returns_when_the_old_connections_end_by_themselves() {
    let (a, b) = (tcp_backend("a").await, tcp_backend("b").await);
    let port = free_port();
    let mut fx = Fixture::start().await;
    fx.set_route(tcp_route("web", &a, &[port]))
        .await
        .expect("route to a");
    let on_a = connect(port).await;
    fx.set_route(tcp_route("web", &b, &[port]))
        .await
        .expect("switch to b");

    let mut control = fx.control.clone();
    let drain = tokio::spawn(async move {
        control
            .drain(pb::DrainRequest {
                container_id: "id-a".into(),
                // Far longer than the test may run: the drain must end because a did.
                timeout_ms: 3_600_000,
            })
            .await
    });
    let connections = fx.proxy().data.connections.clone();
    bounded("drain registered", async {
        while connections.draining("id-a") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    drop(on_a);
    let reply = bounded("drain", drain)
        .await
        .expect("task")
        .expect("drain")
        .into_inner();
    assert_eq!((reply.finished, reply.closed), (1, 0));
}

#[tokio::test]
async fn a_restarted_proxy_serves_its_routes_before_any_control_call() {
    let a = tcp_backend("a").await;
    let (port, other) = (free_port(), free_port());
    let mut fx = Fixture::start().await;
    fx.set_route(tcp_route("web", &a, &[port, other]))
        .await
        .expect("route");
    let Fixture { dir, proxy, .. } = fx;
    let proxy = proxy.expect("running");
    let socket = proxy.socket_path().to_path_buf();
    proxy.shutdown().await;
    assert!(!socket.exists(), "the socket outlived the proxy");
    assert!(
        TcpStream::connect((LOCALHOST, port)).await.is_err(),
        "port served after shutdown"
    );

    let proxy = start(config(dir.path())).await.expect("restart");
    // No control call yet: the persisted route is served.
    assert_eq!(connect(port).await.backend, "a");
    assert_eq!(connect(other).await.backend, "a");
    let mut control = client::connect(proxy.socket_path()).await.expect("control");
    let routes = control
        .list_routes(pb::ListRoutesRequest {})
        .await
        .expect("list")
        .into_inner()
        .routes;
    let route = routes[0].route.as_ref().expect("route");
    assert_eq!(
        (route.app.as_str(), route.deployment_id.as_str()),
        ("web", "deploy-a")
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_port_routed_to_another_app_is_refused_and_nothing_changes() {
    let (a, b) = (tcp_backend("a").await, tcp_backend("b").await);
    let (shared, own) = (free_port(), free_port());
    let mut fx = Fixture::start().await;
    fx.set_route(tcp_route("web", &a, &[shared]))
        .await
        .expect("route web");
    let before = std::fs::read(fx.state_file()).expect("state");

    let refused = fx.set_route(tcp_route("api", &b, &[own, shared])).await;
    assert_status(
        refused,
        tonic::Code::FailedPrecondition,
        &format!("host port {shared} is already routed to app web"),
    );
    assert_eq!(connect(shared).await.backend, "a");
    // api's other port was not bound: the OS lets us take it.
    std::net::TcpListener::bind((LOCALHOST, own)).expect("the refused route's port stayed bound");
    assert_eq!(fx.list().await.len(), 1);
    assert_eq!(std::fs::read(fx.state_file()).expect("state"), before);
}

#[tokio::test]
async fn a_port_another_process_holds_is_refused_and_nothing_changes() {
    let (a, b) = (tcp_backend("a").await, tcp_backend("b").await);
    let (port, own) = (free_port(), free_port());
    let held = std::net::TcpListener::bind((LOCALHOST, 0)).expect("bind");
    let held_port = held.local_addr().expect("addr").port();
    let mut fx = Fixture::start().await;
    fx.set_route(tcp_route("web", &a, &[port]))
        .await
        .expect("route web");

    let refused = fx
        .set_route(tcp_route("web", &b, &[port, own, held_port]))
        .await;
    assert_status(
        refused,
        tonic::Code::FailedPrecondition,
        &format!("another process holds port {held_port}"),
    );
    assert_eq!(
        connect(port).await.backend,
        "a",
        "the refused switch changed the backend"
    );
    std::net::TcpListener::bind((LOCALHOST, own))
        .expect("a port of the refused route stayed bound");
    let routes = fx.list().await;
    assert_eq!(
        routes[0]
            .route
            .as_ref()
            .expect("route")
            .backend
            .as_ref()
            .expect("backend")
            .container_id,
        "id-a"
    );
}

#[tokio::test]
async fn a_port_no_longer_published_is_closed_and_a_removed_route_frees_its_ports() {
    let a = tcp_backend("a").await;
    let (kept, dropped) = (free_port(), free_port());
    let mut fx = Fixture::start().await;
    fx.set_route(tcp_route("web", &a, &[kept, dropped]))
        .await
        .expect("route");
    fx.set_route(tcp_route("web", &a, &[kept]))
        .await
        .expect("fewer ports");
    std::net::TcpListener::bind((LOCALHOST, dropped)).expect("the dropped port is still bound");
    assert_eq!(connect(kept).await.backend, "a");

    let removed = fx
        .control
        .remove_route(pb::RemoveRouteRequest { app: "web".into() })
        .await
        .expect("remove");
    assert!(removed.into_inner().removed);
    std::net::TcpListener::bind((LOCALHOST, kept))
        .expect("the removed route's port is still bound");
    let again = fx
        .control
        .remove_route(pb::RemoveRouteRequest { app: "web".into() })
        .await
        .expect("remove");
    assert!(!again.into_inner().removed);
    assert!(fx.list().await.is_empty());
}

#[tokio::test]
async fn invalid_routes_are_refused_with_what_to_do() {
    let a = tcp_backend("a").await;
    let port = free_port();
    let mut fx = Fixture::start().await;
    let valid = || tcp_route("web", &a, &[port]);

    let mut udp = valid();
    udp.ports[0].protocol = "udp".into();
    assert_status(
        fx.set_route(udp).await,
        tonic::Code::InvalidArgument,
        &format!("udp port {port} is not proxied: publish it from a host-network app or remove it"),
    );

    let mut no_app = valid();
    no_app.app = String::new();
    assert_status(
        fx.set_route(no_app).await,
        tonic::Code::InvalidArgument,
        "no app",
    );

    let mut by_name = valid();
    by_name.backend.as_mut().expect("backend").address = "web-a".into();
    assert_status(
        fx.set_route(by_name).await,
        tonic::Code::InvalidArgument,
        "is not an IP address",
    );

    let mut zero = valid();
    zero.ports[0].host_port = 0;
    assert_status(
        fx.set_route(zero).await,
        tonic::Code::InvalidArgument,
        "port 0",
    );

    let mut bad_host = valid();
    bad_host.domains.push(pb::ProxyDomain {
        host: "Shop.Example".into(),
        ..Default::default()
    });
    assert_status(
        fx.set_route(bad_host).await,
        tonic::Code::InvalidArgument,
        "invalid host name \"Shop.Example\"",
    );

    assert!(fx.list().await.is_empty());
    std::net::TcpListener::bind((LOCALHOST, port)).expect("a refused route bound its port");
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

#[tokio::test]
async fn unusable_certificates_are_refused_naming_the_host() {
    let a = tcp_backend("a").await;
    let mut fx = Fixture::start().await;
    let with = |d: pb::ProxyDomain| {
        let mut route = tcp_route("web", &a, &[free_port()]);
        route.domains.push(d);
        route
    };
    let (cert, key) = self_signed("shop.test");
    let (_, other_key) = self_signed("shop.test");

    let garbage = domain("shop.test", Some(("not a pem".into(), key.clone())));
    assert_status(
        fx.set_route(with(garbage)).await,
        tonic::Code::InvalidArgument,
        "TLS of shop.test: the certificate holds no PEM CERTIFICATE block",
    );
    let no_key = domain(
        "shop.test",
        Some((cert.clone(), "-----BEGIN NOTHING-----".into())),
    );
    assert_status(
        fx.set_route(with(no_key)).await,
        tonic::Code::InvalidArgument,
        "TLS of shop.test",
    );
    let mismatch = domain("shop.test", Some((cert.clone(), other_key)));
    assert_status(
        fx.set_route(with(mismatch)).await,
        tonic::Code::InvalidArgument,
        "TLS of shop.test: the key does not match the certificate",
    );
    let half = domain("shop.test", Some((cert, String::new())));
    assert_status(
        fx.set_route(with(half)).await,
        tonic::Code::InvalidArgument,
        "a certificate or a key but not both",
    );
    assert!(fx.list().await.is_empty());
}

#[tokio::test]
async fn a_corrupt_routes_file_refuses_the_start_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    std::fs::create_dir_all(&config.state_dir).expect("state dir");
    let file = config.state_dir.join("routes.json");
    std::fs::write(&file, b"{\"version\":1,\"routes\":[{\"app\":").expect("write");
    let error = start(config)
        .await
        .err()
        .expect("a corrupt file must refuse the start");
    let message = format!("{error:#}");
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.contains("is corrupt"), "{message}");
}

#[tokio::test]
async fn a_second_proxy_on_the_same_socket_is_refused() {
    let fx = Fixture::start().await;
    let mut second = config(fx.dir.path());
    second.state_dir = fx.dir.path().join("other-state");
    let error = start(second)
        .await
        .err()
        .expect("a live socket must not be taken over");
    assert!(
        format!("{error:#}").contains("another berth-proxy answers on"),
        "{error:#}"
    );
    // A stale socket file (no proxy behind it) is replaced.
    let stale_dir = tempfile::tempdir().expect("tempdir");
    let stale = config(stale_dir.path());
    std::fs::create_dir_all(stale.socket_path.parent().expect("parent")).expect("dir");
    drop(std::os::unix::net::UnixListener::bind(&stale.socket_path).expect("bind"));
    let proxy = start(stale).await.expect("start over a stale socket");
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_state_is_private_and_keys_are_never_logged() {
    let logs = http_fixture::capture_logs();
    let a = tcp_backend("a").await;
    let mut fx = Fixture::start().await;
    let (cert, key) = self_signed("shop.test");
    let mut route = tcp_route("web", &a, &[free_port()]);
    route
        .domains
        .push(domain("shop.test", Some((cert.clone(), key.clone()))));
    fx.set_route(route.clone()).await.expect("route with tls");
    // A refused call with the same key (the other app owns the port and the domain).
    route.app = "api".into();
    let refused = fx.set_route(route).await;
    assert!(refused.is_err());

    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&fx.state_file()), 0o600);
    assert_eq!(mode(&fx.dir.path().join("state")), 0o700);
    assert_eq!(mode(fx.proxy().socket_path()), 0o600);
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(std::fs::read_to_string(fx.state_file())
        .expect("state")
        .contains(key.lines().nth(1).expect("key line")));

    // Listed without the key.
    let listed = fx.list().await;
    let listed_domain = &listed[0].route.as_ref().expect("route").domains[0];
    assert_eq!(listed_domain.tls_cert_pem, cert);
    // Container port 0: the app's first port.
    assert_eq!(listed_domain.container_port, u32::from(a.addr.port()));
    assert!(listed_domain.tls_key_pem.is_empty());
    let snapshot = fx.proxy().data.table.load();
    let debug = format!("{snapshot:?}");
    assert!(debug.contains("shop.test"), "{debug}");
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!debug.contains(line), "the table's Debug printed the key");
    }
    drop(snapshot);
    let proxy = fx.proxy.take().expect("running");
    proxy.shutdown().await;
    let logged = logs.text();
    assert!(
        logged.contains("route set"),
        "the capture saw no log: {logged}"
    );
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!logged.contains(line), "a log line holds the key");
    }
    assert!(!key_body.is_empty());
}

use http_fixture::{get, http_backend, http_conn, send, tls_stream};

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

#[tokio::test]
async fn one_http_listener_serves_two_apps_by_host_and_404s_the_rest() {
    let (shop, blog) = (http_backend("shop").await, http_backend("blog").await);
    let mut fx = Fixture::start_with_http().await;
    fx.set_route(http_route("shop", &shop, vec![domain("shop.test", None)]))
        .await
        .expect("shop");
    fx.set_route(http_route("blog", &blog, vec![domain("blog.test", None)]))
        .await
        .expect("blog");
    let mut conn = http_conn(fx.http_addr()).await;

    let shop_answer = get(&mut conn, "Shop.Test:8080", "/cart?x=1").await;
    assert_eq!(shop_answer.status, 200);
    assert_eq!(
        shop_answer.body,
        "shop|127.0.0.1|http|Shop.Test:8080|/cart?x=1"
    );
    let mut forwarded = http_fixture::request("blog.test", "/");
    forwarded.headers_mut().insert(
        "x-forwarded-for",
        http::HeaderValue::from_static("203.0.113.9"),
    );
    assert_eq!(
        send(&mut conn, forwarded).await.body,
        "blog|203.0.113.9, 127.0.0.1|http|blog.test|/"
    );

    // The proxy's own listener port cannot be published by an app.
    let http_port = fx.http_addr().port();
    let mut on_80 = http_route("shop", &shop, vec![domain("shop.test", None)]);
    on_80.ports.push(pb::ProxyPort {
        host_port: http_port.into(),
        container_port: shop.addr.port().into(),
        protocol: "tcp".into(),
    });
    assert_status(
        fx.set_route(on_80).await,
        tonic::Code::FailedPrecondition,
        &format!("host port {http_port} is berth-proxy's HTTP listener"),
    );
    let unknown = get(&mut conn, "nobody.test", "/").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.body, "no app serves nobody.test\n");
    // A domain of another app is refused, naming it.
    let taken = fx
        .set_route(http_route("blog", &blog, vec![domain("shop.test", None)]))
        .await;
    assert_status(
        taken,
        tonic::Code::FailedPrecondition,
        "domain shop.test is already routed to app shop",
    );
}

#[tokio::test]
async fn a_keep_alive_client_connection_follows_a_switch() {
    let (a, b) = (http_backend("a").await, http_backend("b").await);
    let mut fx = Fixture::start_with_http().await;
    fx.set_route(http_route("web", &a, vec![domain("web.test", None)]))
        .await
        .expect("to a");
    let mut conn = http_conn(fx.http_addr()).await;
    assert!(get(&mut conn, "web.test", "/").await.body.starts_with("a|"));
    fx.set_route(http_route("web", &b, vec![domain("web.test", None)]))
        .await
        .expect("to b");
    // The same client connection (one handshake, kept alive): its next request goes to b.
    assert!(get(&mut conn, "web.test", "/").await.body.starts_with("b|"));
    let drained = fx.drain("id-a", 10_000).await.expect("drain a");
    assert_eq!(drained.closed, 0, "a finished request was still counted");
}

#[tokio::test]
async fn an_unreachable_backend_is_a_502() {
    let gone = TcpBackend {
        name: "gone",
        addr: SocketAddr::new(LOCALHOST, free_port()),
    };
    let mut fx = Fixture::start_with_http().await;
    fx.set_route(http_route("web", &gone, vec![domain("web.test", None)]))
        .await
        .expect("route");
    let answer = get(&mut http_conn(fx.http_addr()).await, "web.test", "/").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.body, "the backend of web.test is unreachable\n");
}

#[tokio::test]
async fn a_domain_with_a_certificate_is_served_over_https_by_sni_and_redirected_from_http() {
    let shop = http_backend("shop").await;
    let mut fx = Fixture::start_with_http().await;
    let (cert, key) = self_signed("shop.test");
    fx.set_route(http_route(
        "shop",
        &shop,
        vec![domain("shop.test", Some((cert.clone(), key)))],
    ))
    .await
    .expect("route");

    let redirect = get(
        &mut http_conn(fx.http_addr()).await,
        "shop.test",
        "/cart?x=1",
    )
    .await;
    assert_eq!(redirect.status, 308);
    let https_port = fx.https_addr().port();
    assert_eq!(
        redirect.headers["location"],
        format!("https://shop.test:{https_port}/cart?x=1").as_str()
    );

    let tls = tls_stream(fx.https_addr(), "shop.test", &cert)
        .await
        .expect("handshake with SNI shop.test");
    // Offered h2 and http/1.1: the proxy speaks HTTP/1.1 only.
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut conn = http_fixture::handshake(tls).await;
    let answer = get(&mut conn, "shop.test", "/cart").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "shop|127.0.0.1|https|shop.test|/cart");
    // The connection was opened for shop.test: another Host on it is misdirected.
    assert_eq!(get(&mut conn, "blog.test", "/").await.status, 421);

    // No certificate for the name: the handshake is refused (no default certificate).
    assert!(tls_stream(fx.https_addr(), "other.test", &cert)
        .await
        .is_err());
}

#[tokio::test]
async fn an_upgrade_is_spliced_counted_and_drained() {
    let (a, b) = (http_backend("a").await, http_backend("b").await);
    let mut fx = Fixture::start_with_http().await;
    fx.set_route(http_route("web", &a, vec![domain("web.test", None)]))
        .await
        .expect("to a");
    let mut conn = http_conn(fx.http_addr()).await;
    let mut request = http_fixture::request("web.test", "/socket");
    request
        .headers_mut()
        .insert("connection", http::HeaderValue::from_static("upgrade"));
    request
        .headers_mut()
        .insert("upgrade", http::HeaderValue::from_static("echo"));
    bounded("ready", conn.ready()).await.expect("ready");
    let response = bounded("101", conn.send_request(request))
        .await
        .expect("send");
    assert_eq!(response.status(), 101);
    let upgraded = bounded("upgrade", hyper::upgrade::on(response))
        .await
        .expect("upgraded");
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    io.write_all(b"hello through the proxy")
        .await
        .expect("write");
    let mut buf = [0u8; 23];
    bounded("echo", io.read_exact(&mut buf))
        .await
        .expect("read echo");
    assert_eq!(&buf, b"hello through the proxy");

    fx.set_route(http_route("web", &b, vec![domain("web.test", None)]))
        .await
        .expect("to b");
    let routes = fx.list().await;
    assert_eq!(
        routes[0].connections.get("id-a"),
        Some(&1),
        "the upgraded connection is not counted"
    );
    let drained = fx.drain("id-a", 50).await.expect("drain a");
    assert_eq!((drained.finished, drained.closed), (0, 1));
    let mut rest = Vec::new();
    let read = bounded("closed", io.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the drained upgrade is still open: {read:?}"
    );
}

#[tokio::test]
async fn acme_challenges_are_answered_until_removed() {
    let shop = http_backend("shop").await;
    let mut fx = Fixture::start_with_http().await;
    let (cert, key) = self_signed("shop.test");
    fx.set_route(http_route(
        "shop",
        &shop,
        vec![domain("shop.test", Some((cert, key)))],
    ))
    .await
    .expect("route");
    let path = "/.well-known/acme-challenge/tok_EN-1";
    let mut conn = http_conn(fx.http_addr()).await;
    assert_eq!(get(&mut conn, "shop.test", path).await.status, 404);

    fx.set_challenge("tok_EN-1", "tok_EN-1.thumbPRINT_x", 300)
        .await
        .expect("set challenge");
    // Any host, and not redirected to HTTPS although shop.test has a certificate.
    for host in ["shop.test", "unknown.test"] {
        let answer = get(&mut conn, host, path).await;
        assert_eq!(
            (answer.status.as_u16(), answer.body.as_str()),
            (200, "tok_EN-1.thumbPRINT_x")
        );
    }
    fx.set_challenge("tok_EN-1", "", 0)
        .await
        .expect("remove challenge");
    assert_eq!(get(&mut conn, "shop.test", path).await.status, 404);

    assert_status(
        fx.set_challenge("../etc", "x.y", 60).await,
        tonic::Code::InvalidArgument,
        "base64url",
    );
    assert_status(
        fx.set_challenge("tok", "other.thumb", 60).await,
        tonic::Code::InvalidArgument,
        "TOKEN.THUMBPRINT",
    );
}
