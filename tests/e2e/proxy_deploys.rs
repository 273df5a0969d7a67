//! Deploys behind the host proxy, against the real Docker Engine, a real private
//! registry and a `berth-proxy` process: under continuous load, successful deploys and a
//! failing one drop no request; `kill -9` of the agent (mid-deploy and at rest) never takes the
//! app down and leaves a consistent outcome; a restarted proxy serves its routes from its own
//! state before the agent is back.
//!
//! The app is `web:zd1` / `web:zd2` (tests/images/build.sh): a Docker HEALTHCHECK, and a PID 1
//! that ignores SIGTERM, so stopping the previous version takes its whole grace period — which
//! must not be on the deploy's path any more.

use std::time::{Duration, Instant};

use crate::fixture::admin::{
    deploy, register_web_app, status, unique, wait_deployment, wait_deployment_until,
};
use crate::fixture::agent::{wait_connected, AgentProcess};
use crate::fixture::docker::{docker_available, remove_app_containers, running_containers};
use crate::fixture::http;
use crate::fixture::load::{Load, Mode, Report, Target};
use crate::fixture::node::{dirs, ok, DevNode, Dirs};
use crate::fixture::process::free_port;
use crate::fixture::proxy::ProxyProcess;
use crate::fixture::registry;

/// A node, a `berth-proxy`, an agent of its own pointed at the proxy, and `web:zd1` deployed
/// on a published port.
struct Host {
    node: DevNode,
    proxy: ProxyProcess,
    agent: AgentProcess,
    agent_name: String,
    app: String,
    port: u16,
}

async fn host(d: &Dirs, name: &str) -> Host {
    let node = DevNode::start_with_agent_port(d);
    let proxy = ProxyProcess::start(d.logs.path());
    let socket = proxy.socket().display().to_string();
    let agent_name = unique(name);
    let agent = AgentProcess::start_with(
        &node,
        &agent_name,
        &[],
        d.logs.path(),
        &["--proxy-socket", &socket],
    )
    .await;
    wait_connected(&node, &agent_name).await;
    let reg = registry::shared();
    for tag in ["zd1", "zd2"] {
        reg.push(&format!("berth-test/web:{tag}"), &format!("web:{tag}"));
    }
    let app = unique(name);
    let port = free_port();
    register_web_app(&node, &app, Some(port), &reg.password, vec![]).await;
    let host = Host {
        node,
        proxy,
        agent,
        agent_name,
        app,
        port,
    };
    host.deploy_ok("zd1").await;
    host
}

impl Host {
    async fn deploy_ok(&self, version: &str) -> Duration {
        let started = Instant::now();
        let id = deploy(&self.node, &self.app, version).await;
        let detail = wait_deployment(&self.node, &id, Duration::from_secs(180)).await;
        assert_eq!(status(&detail), "success", "{detail:#?}");
        if std::env::var_os("BERTH_DEBUG_EVENTS").is_some() {
            for e in &detail.events {
                eprintln!("{} {} {}", e.at, e.phase, e.message);
            }
        }
        started.elapsed()
    }

    fn load(&self) -> Load {
        let target = |mode| Target {
            port: self.port,
            host: format!("127.0.0.1:{}", self.port),
            mode,
        };
        Load::start(vec![
            target(Mode::NewConnections),
            target(Mode::NewConnections),
            target(Mode::KeepAlive),
        ])
    }

    fn page(&self) -> String {
        http::expect_page(self.port)
    }
}

fn assert_no_failure(report: &Report, versions: &[&str]) {
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed, first: {:?}",
        report.failures.len(),
        report.total() + report.failures.len(),
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(report.total() > 0, "the load loop got answers");
    for version in report.answers.keys() {
        assert!(
            versions.contains(&version.as_str()),
            "an answer from {version}: {report:?}"
        );
    }
}

/// Ten successful deploys in a row and a failing one, under continuous load on the published
/// port (new connections and a keep-alive one): not one request fails, every answer comes from
/// zd1 or zd2, and the failing release never serves.
#[tokio::test(flavor = "multi_thread")]
async fn deploys_behind_the_proxy_drop_no_request() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let host = host(&d, "zd").await;
    assert!(host.page().starts_with("version=zd1"), "{}", host.page());

    let load = host.load();
    let mut took = Vec::new();
    for round in 0..10 {
        let version = if round % 2 == 0 { "zd2" } else { "zd1" };
        took.push(host.deploy_ok(version).await);
        assert!(host.page().starts_with(&format!("version={version}")));
    }
    // A release that fails its health gate never gets the route.
    let id = deploy(&host.node, &host.app, "bad").await;
    let detail = wait_deployment(&host.node, &id, Duration::from_secs(180)).await;
    assert_eq!(status(&detail), "failed", "{detail:#?}");
    assert!(host.page().starts_with("version=zd1"), "{}", host.page());
    let report = load.stop();
    assert_no_failure(&report, &["zd1", "zd2"]);
    // The stop grace of an app that ignores SIGTERM (10 s) is off the critical path.
    let slowest = took.iter().max().unwrap();
    eprintln!(
        "10 deploys behind the proxy: slowest {slowest:?}, all {took:?}; load {:?}, longest gap {:?}",
        report.answers, report.longest_gap
    );

    // The previous versions drain, stop and are removed by the commits: one keeps serving.
    let deadline = Instant::now() + Duration::from_secs(120);
    while running_containers(&host.app).len() > 1 {
        assert!(
            Instant::now() < deadline,
            "retired containers still run: {:?}",
            running_containers(&host.app)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    remove_app_containers(&host.app);
}

/// `kill -9` of the agent in the middle of a deploy and at rest, and a `kill -9` + restart of
/// the proxy while the agent is down: the app answers throughout (but for the proxy's own
/// restart), the interrupted deployment ends consistent with what serves, and the restarted
/// proxy serves its routes before the agent is back.
#[tokio::test(flavor = "multi_thread")]
async fn agent_and_proxy_crashes_never_take_the_app_down() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let mut host = host(&d, "zdkill").await;
    let load = host.load();

    // Mid-deploy: the candidate runs its health gate when the agent dies.
    let id = deploy(&host.node, &host.app, "zd2").await;
    wait_deployment_until(
        &host.node,
        &id,
        Duration::from_secs(60),
        "the health gate",
        |d| d.events.iter().any(|e| e.phase == "health"),
    )
    .await;
    host.agent.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    host.agent.spawn(&[]);
    wait_connected(&host.node, &host.agent_name).await;
    let detail = wait_deployment(&host.node, &id, Duration::from_secs(120)).await;
    let page = host.page();
    match status(&detail) {
        "success" => assert!(page.starts_with("version=zd2"), "{page}"),
        "failed" => assert!(page.starts_with("version=zd1"), "{page}"),
        other => panic!("the interrupted deployment ended {other}: {detail:#?}"),
    }
    // Whatever the outcome, one container serves: a candidate that never got the route was
    // removed by the restarted agent.
    let deadline = Instant::now() + Duration::from_secs(60);
    while running_containers(&host.app).len() > 1 {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            running_containers(&host.app)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // At rest.
    host.agent.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.stop();
    assert_no_failure(&report, &["zd1", "zd2"]);
    let serving = host.page();

    // The proxy dies while the agent is down; started again, it serves from its own state.
    host.proxy.kill();
    host.proxy.spawn();
    assert_eq!(
        http::wait_page(host.port, Duration::from_secs(10)),
        serving,
        "the restarted proxy serves the same route without the agent"
    );

    // The agent comes back to the restarted proxy and deploys through it.
    host.agent.spawn(&[]);
    wait_connected(&host.node, &host.agent_name).await;
    let load = host.load();
    host.deploy_ok("zd1").await;
    host.deploy_ok("zd2").await;
    assert_no_failure(&load.stop(), &["zd1", "zd2"]);
    remove_app_containers(&host.app);
}

/// `GET /` with `Host: host` on the proxy's HTTP port: status, Location, body.
fn get_host(port: u16, host: &str) -> http::Response {
    http::request(port, "GET", "/", &[("Host", host)], b"")
}

/// `GET /` over TLS to 127.0.0.1:port with SNI `host`, trusting only `root_pem`: the body.
async fn get_tls(port: u16, host: &str, root_pem: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut root_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name =
        rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("answered {head:?}"));
    }
    Ok(body.trim().to_owned())
}

/// Domains through `berth dev`'s host proxy: two apps share its HTTP port by Host header; a
/// domain with a certificate from files is served over HTTPS by SNI (plain HTTP redirects
/// there); an unknown Host gets 404 without touching any app; a deploy moves the domain to the
/// new version; a removed domain stops being routed.
#[tokio::test(flavor = "multi_thread")]
async fn domains_route_by_host_and_serve_tls_from_files() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let node = DevNode::start_in(&d);
    wait_connected(&node, "local").await;
    let reg = registry::shared();
    let (shop, blog) = (unique("shop"), unique("blog"));
    register_web_app(&node, &shop, Some(free_port()), &reg.password, vec![]).await;
    register_web_app(&node, &blog, Some(free_port()), &reg.password, vec![]).await;
    for (app, version) in [(&shop, "v1"), (&blog, "v2")] {
        let id = deploy(&node, app, version).await;
        let detail = wait_deployment(&node, &id, Duration::from_secs(180)).await;
        assert_eq!(status(&detail), "success", "{detail:#?}");
    }

    // A certificate for blog.test, from files.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["blog.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (
        d.logs.path().join("blog.crt"),
        d.logs.path().join("blog.key"),
    );
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    ok(node.cli(&["domain", "add", &shop, "shop.test"], None));
    ok(node.cli(
        &[
            "domain",
            "add",
            &blog,
            "blog.test",
            "--tls-cert",
            &cert_file.display().to_string(),
            "--tls-key",
            &key_file.display().to_string(),
        ],
        None,
    ));

    // The routes reach the proxy through the agent, one push per change and app (applied
    // in no set order across apps): wait until both hosts are routed — shop.test serves,
    // blog.test (with a certificate) redirects to https.
    let http_port = node.proxy_http_port;
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_host(http_port, "shop.test").status != 200
        || get_host(http_port, "blog.test").status == 404
    {
        assert!(
            Instant::now() < deadline,
            "shop.test or blog.test never routed: {:?} {:?}\n{}",
            get_host(http_port, "shop.test"),
            get_host(http_port, "blog.test"),
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shop_page = get_host(http_port, "shop.test");
    assert!(shop_page.body.starts_with("version=v1"), "{shop_page:?}");
    let redirect = get_host(http_port, "blog.test");
    assert_eq!(redirect.status, 308, "{redirect:?}");
    assert_eq!(
        redirect.header("location"),
        Some(format!("https://blog.test:{}/", node.proxy_https_port).as_str()),
        "{redirect:?}"
    );
    let page = get_tls(node.proxy_https_port, "blog.test", &cert.pem())
        .await
        .expect("blog.test over HTTPS");
    assert!(page.starts_with("version=v2"), "{page}");
    // Nothing else is served: an unknown host is refused by the proxy itself.
    assert_eq!(get_host(http_port, "nobody.test").status, 404);
    assert!(get_tls(node.proxy_https_port, "nobody.test", &cert.pem())
        .await
        .is_err());

    // A deploy moves the domain with the app.
    let id = deploy(&node, &shop, "v2").await;
    assert_eq!(
        status(&wait_deployment(&node, &id, Duration::from_secs(180)).await),
        "success"
    );
    assert!(get_host(http_port, "shop.test")
        .body
        .starts_with("version=v2"));
    // `app show` says where the app's ports and domains point.
    let show = ok(node.cli(&["app", "show", &shop], None));
    assert!(show.contains("shop.test"), "{show}");
    let serving = show
        .lines()
        .find(|l| l.trim_start().starts_with("local "))
        .unwrap_or_else(|| panic!("no serving line: {show}"));
    assert!(
        serving.contains("→ container")
            && serving.contains(&format!("v2 (deployment {}", &id[..8])),
        "{show}"
    );

    ok(node.cli(&["domain", "remove", "shop.test"], None));
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_host(http_port, "shop.test").status != 404 {
        assert!(
            Instant::now() < deadline,
            "shop.test still routed after remove"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    remove_app_containers(&shop);
    remove_app_containers(&blog);
}

/// A rolling deploy to two hosts behind their own proxies, the second host's proxy down: the
/// second target fails at its route switch (its previous version never stopped serving), and
/// the first, already switched, is rolled back by switching its route back; under load on the
/// first host, not one request fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_deploy_is_rolled_back_by_switching_the_route_back() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let node = DevNode::start_with_agent_port(&d);
    let proxy_a = ProxyProcess::start_named(d.logs.path(), "proxy-a", "127.0.0.1");
    let mut proxy_b = ProxyProcess::start_named(d.logs.path(), "proxy-b", "127.0.0.2");
    let prod = [("env", "prod")];
    let (a, b) = (unique("roll-a"), unique("roll-b"));
    let socket_a = proxy_a.socket().display().to_string();
    let socket_b = proxy_b.socket().display().to_string();
    let _agent_a = AgentProcess::start_with(
        &node,
        &a,
        &prod,
        d.logs.path(),
        &["--proxy-socket", &socket_a],
    )
    .await;
    let _agent_b = AgentProcess::start_with(
        &node,
        &b,
        &prod,
        d.logs.path(),
        &["--proxy-socket", &socket_b],
    )
    .await;
    wait_connected(&node, &a).await;
    wait_connected(&node, &b).await;
    let reg = registry::shared();
    for tag in ["zd1", "zd2"] {
        reg.push(&format!("berth-test/web:{tag}"), &format!("web:{tag}"));
    }
    let app = unique("rollproxy");
    let port = free_port();
    let label = vec![berth_proto::v1::Target {
        target: Some(berth_proto::v1::target::Target::Label("env=prod".into())),
    }];
    register_web_app(&node, &app, Some(port), &reg.password, label).await;
    let first = deploy(&node, &app, "zd1").await;
    let detail = wait_deployment(&node, &first, Duration::from_secs(180)).await;
    assert_eq!(status(&detail), "success", "{detail:#?}");

    proxy_b.kill();
    let load = Load::start(vec![
        Target {
            port,
            host: format!("127.0.0.1:{port}"),
            mode: Mode::NewConnections,
        },
        Target {
            port,
            host: format!("127.0.0.1:{port}"),
            mode: Mode::KeepAlive,
        },
    ]);
    let id = deploy(&node, &app, "zd2").await;
    let detail = wait_deployment(&node, &id, Duration::from_secs(180)).await;
    let report = load.stop();
    assert_eq!(status(&detail), "failed", "{detail:#?}");
    let statuses: Vec<(&str, &str)> = detail
        .targets
        .iter()
        .map(|t| (t.agent.as_str(), t.status.as_str()))
        .collect();
    assert!(
        statuses.contains(&(a.as_str(), "rolled_back"))
            && statuses.contains(&(b.as_str(), "failed")),
        "{statuses:?}\n{detail:#?}"
    );
    assert!(
        host_page(port).starts_with("version=zd1"),
        "the first host serves the previous version again"
    );
    assert_no_failure(&report, &["zd1", "zd2"]);
    remove_app_containers(&app);
}

fn host_page(port: u16) -> String {
    http::expect_page(port)
}
