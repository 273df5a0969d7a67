//! The control socket and the state file: what is refused, what is stored, what is never printed.

use super::*;

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
    let logs = logs::capture_logs();
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

#[tokio::test]
async fn the_client_names_a_missing_socket_and_says_to_start_the_proxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("proxy.sock");
    let Err(error) = client::connect(&socket).await else {
        panic!("connected although no proxy listens there");
    };
    let message = format!("{error:#}");
    assert!(message.contains(&socket.display().to_string()), "{message}");
    assert!(message.contains("start it"), "{message}");
}
