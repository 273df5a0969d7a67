//! ACME certificates for domains (R-5.9, issue 8) against Pebble, the real ACME test server:
//! a `berth dev` node with its local agent and in-process host proxy, an app deployed from
//! the test registry, `berth domain add APP shop.test --acme`; Pebble validates HTTP-01
//! through the proxy's HTTP listener and issues; the proxy then serves the app over HTTPS
//! with a certificate that verifies against Pebble's root. The key is stored encrypted: in
//! plaintext it is only in the proxy's state file (mode 0600), never in the database or the
//! node's log.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixture::admin::{deploy, register_web_app, status, unique, wait_deployment};
use crate::fixture::agent::wait_connected;
use crate::fixture::data_dir::files_containing;
use crate::fixture::docker::{docker_available, remove_app_containers};
use crate::fixture::node::{dirs, ok, DevNode, Dirs};
use crate::fixture::pebble::{https_get, pebble_available, Pebble};
use crate::fixture::process::free_port;
use crate::fixture::registry;

const HOST: &str = "shop.test";

/// The domain's row in `berth domain list -o json`.
fn listed(node: &DevNode, host: &str) -> Value {
    let out = ok(node.cli(&["domain", "list", "-o", "json"], None));
    let all: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    all.as_array()
        .unwrap()
        .iter()
        .find(|d| d["host"] == host)
        .cloned()
        .unwrap_or_else(|| panic!("{host} not listed: {out}"))
}

/// Every string value under a JSON key named `key`, anywhere in `value`.
fn strings_under(value: &Value, key: &str, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) if k == key => found.push(s.clone()),
                    other => strings_under(other, key, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| strings_under(v, key, found)),
        _ => {}
    }
}

/// A `berth dev` node whose proxy listens on `http_port`/`https_port`, its ACME CA Pebble,
/// and an app with a published port; deployed (v1) when `deployed`.
async fn acme_node(
    d: &Dirs,
    pebble: &Pebble,
    http_port: u16,
    https_port: u16,
    deployed: bool,
) -> (DevNode, String) {
    let node = DevNode::start_with(
        d.data.path(),
        d.logs.path(),
        &[],
        &[
            "--agent-listen",
            "127.0.0.1:0",
            "--proxy-http-listen",
            &format!("127.0.0.1:{http_port}"),
            "--proxy-https-listen",
            &format!("127.0.0.1:{https_port}"),
            "--acme-directory",
            &pebble.directory_url,
            "--acme-ca-file",
            &pebble.tls_ca_file.display().to_string(),
            "--acme-email",
            "ops@shop.test",
        ],
        free_port(),
    )
    .unwrap_or_else(|log| panic!("{log}"));
    wait_connected(&node, "local").await;
    let app = unique("acme");
    register_web_app(
        &node,
        &app,
        Some(free_port()),
        &registry::shared().password,
        vec![],
    )
    .await;
    if deployed {
        let v1 = wait_deployment(
            &node,
            &deploy(&node, &app, "v1").await,
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(status(&v1), "success", "{v1:#?}");
    }
    (node, app)
}

/// Waits until `berth domain list` shows `host` with an ACME status in `wanted`.
async fn wait_acme_status(node: &DevNode, host: &str, wanted: &[&str], within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let domain = listed(node, host);
        if wanted.contains(&domain["acme_status"].as_str().unwrap_or("")) {
            return domain;
        }
        assert!(
            Instant::now() < deadline,
            "not {wanted:?} within {within:?}: {domain}\nnode log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The page of `HOST` over HTTPS, verified against `root`, once it answers (within 30 s).
async fn verified_page(node: &DevNode, https_port: u16, root: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match https_get(https_port, HOST, root, "/") {
            Ok((200, body)) => return body,
            other => assert!(
                Instant::now() < deadline,
                "no verified HTTPS answer for {HOST}: {other:?}\nnode log:\n{}",
                node.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acme_domain_gets_a_certificate_from_pebble_and_the_proxy_serves_https() {
    if !docker_available() || !pebble_available() {
        return;
    }
    let d = dirs();
    let (http_port, https_port) = (free_port(), free_port());
    let pebble = Pebble::start(d.logs.path(), http_port);
    let (node, app) = acme_node(&d, &pebble, http_port, https_port, true).await;

    let added = ok(node.cli(&["domain", "add", &app, HOST, "--acme"], None));
    assert!(added.contains("acme: pending"), "{added}");

    let domain =
        wait_acme_status(&node, HOST, &["issued", "failed"], Duration::from_secs(120)).await;
    assert_eq!(
        domain["acme_status"],
        "issued",
        "{domain}\nnode log:\n{}",
        node.log()
    );
    assert_eq!(domain["tls_mode"], "acme");
    assert!(domain["not_after"].as_str().is_some(), "{domain}");
    // The renewal is planned.
    assert!(
        domain["acme_next_attempt_at"].as_str().is_some(),
        "{domain}"
    );
    let table = ok(node.cli(&["domain", "list"], None));
    assert!(table.contains("acme: issued (expires"), "{table}");

    // The proxy serves the app over HTTPS with Pebble's certificate (verified against
    // Pebble's issuing root only; the routes reach the proxy right after the issuance).
    let root = pebble.issuing_root();
    let page = verified_page(&node, https_port, &root).await;
    assert!(page.contains("version=v1"), "{page}");
    // Another name is not covered by it: the handshake fails verification.
    assert!(https_get(https_port, "other.test", &root, "/").is_err());

    // The key: in plaintext only in the proxy's state file, mode 0600; the database holds
    // ciphertext, the node's log nothing of it.
    let state = d.data.path().join("proxy");
    let routes = files_containing(&state, "PRIVATE KEY");
    assert_eq!(routes.len(), 1, "{routes:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&routes[0]).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", routes[0].display());
    }
    let document: Value =
        serde_json::from_str(&std::fs::read_to_string(&routes[0]).unwrap()).unwrap();
    let mut keys = Vec::new();
    strings_under(&document, "key_pem", &mut keys);
    let key = keys
        .iter()
        .find(|k| k.contains("PRIVATE KEY"))
        .expect("the proxy state holds the domain's key");
    let body_line = key
        .lines()
        .find(|l| !l.starts_with("-----") && l.len() > 16)
        .unwrap();
    let holders: Vec<_> = files_containing(d.data.path(), body_line)
        .into_iter()
        .filter(|p| !p.starts_with(&state))
        .collect();
    assert!(holders.is_empty(), "the plaintext key is in {holders:?}");
    assert!(
        !node.log().contains(body_line),
        "the node log holds the key"
    );
    assert!(
        files_containing(d.logs.path(), body_line).is_empty(),
        "a log holds the key"
    );
    remove_app_containers(&app);
}

#[tokio::test(flavor = "multi_thread")]
async fn acme_order_that_cannot_be_validated_fails_with_the_reason_and_is_retried() {
    if !docker_available() || !pebble_available() {
        return;
    }
    let d = dirs();
    let (http_port, https_port) = (free_port(), free_port());
    // Pebble validates on a port where no proxy listens.
    let pebble = Pebble::start(d.logs.path(), free_port());
    let (node, app) = acme_node(&d, &pebble, http_port, https_port, false).await;
    ok(node.cli(&["domain", "add", &app, HOST, "--acme"], None));
    let domain = wait_acme_status(&node, HOST, &["failed"], Duration::from_secs(120)).await;
    let error = domain["acme_error"].as_str().unwrap();
    assert!(
        error.contains(&format!("could not validate {HOST}"))
            && error.contains("port 80 there reaches berth-proxy"),
        "{error}"
    );
    assert!(
        domain["acme_next_attempt_at"].as_str().is_some(),
        "{domain}"
    );
    assert!(domain["not_after"].is_null(), "{domain}");
    let table = ok(node.cli(&["domain", "list"], None));
    assert!(
        table.contains("acme: failed: ") && table.contains("retry at"),
        "{table}"
    );
    remove_app_containers(&app);
}

#[tokio::test(flavor = "multi_thread")]
async fn acme_certificate_is_renewed_before_it_expires_and_the_new_one_serves() {
    if !docker_available() || !pebble_available() {
        return;
    }
    let d = dirs();
    let (http_port, https_port) = (free_port(), free_port());
    // 30 s certificates: renewed with a third of their lifetime left, 20 s after issuance.
    let pebble = Pebble::start_with_validity(d.logs.path(), http_port, Some(30));
    let (node, app) = acme_node(&d, &pebble, http_port, https_port, true).await;
    ok(node.cli(&["domain", "add", &app, HOST, "--acme"], None));
    let first =
        wait_acme_status(&node, HOST, &["issued", "failed"], Duration::from_secs(120)).await;
    assert_eq!(first["acme_status"], "issued", "{first}");
    let first_expiry = first["not_after"].as_str().unwrap().to_string();
    let root = pebble.issuing_root();
    assert!(verified_page(&node, https_port, &root)
        .await
        .contains("version=v1"));

    let deadline = Instant::now() + Duration::from_secs(90);
    let renewed = loop {
        let domain = listed(&node, HOST);
        assert_ne!(
            domain["acme_status"],
            "failed",
            "{domain}\nnode log:\n{}",
            node.log()
        );
        if domain["not_after"]
            .as_str()
            .is_some_and(|t| t > first_expiry.as_str())
        {
            break domain;
        }
        assert!(
            Instant::now() < deadline,
            "not renewed within 90 s: {domain}\nnode log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(renewed["acme_status"], "issued", "{renewed}");
    // Once the first certificate has expired, a verified handshake proves the proxy serves
    // the renewed one (an expired certificate fails verification).
    let expired_at = Instant::now() + Duration::from_secs(32);
    while Instant::now() < expired_at {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let still = listed(&node, HOST);
    assert!(
        still["not_after"].as_str().unwrap() > first_expiry.as_str(),
        "{still}"
    );
    assert!(verified_page(&node, https_port, &root)
        .await
        .contains("version=v1"));
    remove_app_containers(&app);
}
