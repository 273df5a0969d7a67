//! Outgoing notifications: `berth webhook` against a receiver in the test that checks every
//! request's HMAC signature with the secret `webhook add` printed, retried deliveries, roles
//! and input, for deployments that fail before dispatch (no Docker needed). The receiver is on
//! 127.0.0.1, so the nodes allow private destinations explicitly (`--notify-allow-private`);
//! one node without it shows the refusal.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use pb::allowlist_service_client::AllowlistServiceClient;
use pb::api_key_service_client::ApiKeyServiceClient;
use pb::application_service_client::ApplicationServiceClient;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::fixture::admin::{authed, deploy, wait_deployment};
use crate::fixture::data_dir::files_containing;
use crate::fixture::node::{dirs, ok, stderr, DevNode, Dirs};
use crate::fixture::process::free_port;

/// One request as the receiver read it; header names lowercased.
struct Received {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// A plain-HTTP receiver on 127.0.0.1 that answers each request with the next status of
/// `answers` (200 once they run out), parsing requests by hand.
struct Receiver {
    url: String,
    requests: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    async fn start(answers: Vec<u16>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hooks/berth?team=ops",
            listener.local_addr().unwrap()
        );
        let (tx, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            while let Ok((mut stream, _)) = listener.accept().await {
                let Some(request) = read_request(&mut stream).await else {
                    continue;
                };
                let code = answers.next().unwrap_or(200);
                let _ = tx.send(request);
                let reply = format!(
                    "HTTP/1.1 {code} Whatever\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        Receiver { url, requests }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(30), self.requests.recv())
            .await
            .expect("no notification within 30s")
            .expect("receiver stopped")
    }
}

async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, path) = (
        request_line.next()?.to_string(),
        request_line.next()?.to_string(),
    );
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers.get("content-length")?.parse().ok()?;
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Received {
        method,
        path,
        headers,
        body: buf[head_end..head_end + length].to_vec(),
    })
}

/// `sha256=<hex>` of HMAC-SHA256(secret, body): the same function the control plane signs
/// with, itself checked against RFC 4231 and GitHub's published vectors in its unit tests.
fn expected_signature(secret: &str, body: &[u8]) -> String {
    berth_control_plane::notify::signature(secret.as_bytes(), body)
}

/// A node without a local agent (deployments fail before dispatch, Docker or not) that may
/// deliver to the receivers on 127.0.0.1.
fn start_node() -> (Dirs, DevNode) {
    start_node_with(&["--notify-allow-private"])
}

fn start_node_with(args: &[&str]) -> (Dirs, DevNode) {
    let d = dirs();
    let mut all = vec!["--no-agent", "--agent-listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let node = DevNode::start_with(d.data.path(), d.logs.path(), &[], &all, free_port())
        .unwrap_or_else(|log| panic!("{log}"));
    (d, node)
}

/// An application whose image the allowlist excludes, so its deployments are refused.
async fn refused_app(node: &DevNode, name: &str) {
    let admin = node.admin_token();
    let mut allowlist = AllowlistServiceClient::new(node.channel().await);
    let pattern = pb::AddImagePatternRequest {
        pattern: "registry.example.com/approved/*".into(),
        description: None,
    };
    let _ = allowlist.add_image_pattern(authed(pattern, &admin)).await;
    let mut apps = ApplicationServiceClient::new(node.channel().await);
    let app = pb::CreateApplicationRequest {
        name: name.into(),
        image: "busybox".into(),
        ..Default::default()
    };
    apps.create_application(authed(app, &admin))
        .await
        .expect("create application");
}

fn word_starting_with<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.split_whitespace()
        .find(|w| w.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}… in: {text}"))
}

/// Polls `berth webhook deliveries ID -o json` until one delivery has `status`.
fn wait_delivery(node: &DevNode, webhook_id: &str, status: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let out = ok(node.cli(&["webhook", "deliveries", webhook_id, "-o", "json"], None));
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&out).expect("deliveries -o json is json");
        if let Some(found) = list.iter().find(|d| d["status"] == status) {
            return found.clone();
        }
        assert!(Instant::now() < deadline, "no {status} delivery: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_deployment_is_posted_signed_with_the_secret_shown_once() {
    let (d, mut node) = start_node();
    let mut receiver = Receiver::start(vec![]).await;

    let added = ok(node.cli(
        &[
            "webhook",
            "add",
            &receiver.url,
            "--event",
            "deployment.failed",
        ],
        None,
    ));
    let secret = word_starting_with(&added, "whs_").to_string();
    let listed = ok(node.cli(&["webhook", "list", "-o", "json"], None));
    let hooks: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(hooks.len(), 1, "{listed}");
    assert_eq!(hooks[0]["url"], receiver.url.as_str());
    assert!(!listed.contains(&secret), "the secret is listed: {listed}");
    let webhook_id = hooks[0]["id"].to_string();

    refused_app(&node, "notified").await;
    let deployment_id = deploy(&node, "notified", "v1").await;
    let detail = wait_deployment(&node, &deployment_id, Duration::from_secs(30)).await;
    let row = detail.deployment.unwrap();
    assert_eq!(row.status, "failed");

    let request = receiver.next().await;
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/hooks/berth?team=ops")
    );
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(request.header("x-berth-event"), "deployment.failed");
    assert_eq!(
        request.header("x-berth-signature-256"),
        expected_signature(&secret, &request.body)
    );
    assert_ne!(
        request.header("x-berth-signature-256"),
        expected_signature("whs_wrong", &request.body)
    );

    let event: serde_json::Value = serde_json::from_slice(&request.body).expect("the body is json");
    assert_eq!(event["id"], request.header("x-berth-delivery"));
    assert_eq!(event["event"], "deployment.failed");
    let deployment = &event["deployment"];
    assert_eq!(deployment["deploymentId"], deployment_id.as_str());
    assert_eq!(deployment["application"], "notified");
    assert_eq!(deployment["version"], "v1");
    assert_eq!(deployment["status"], "failed");
    assert_eq!(deployment["triggerType"], row.trigger_type.as_str());
    // The receiver reads the public reason; the admin API keeps the detail (the image).
    assert_eq!(deployment["errorMessage"], "image not allowed");
    let detail = row.error_message.clone().unwrap();
    assert!(detail.contains("busybox"), "{detail}");
    let text = String::from_utf8_lossy(&request.body);
    assert!(
        !text.contains("busybox") && !text.contains("approved") && !text.contains("allowlist"),
        "{text}"
    );
    assert!(deployment["durationMs"].is_i64(), "{event}");
    for time in [
        &deployment["startedAt"],
        &deployment["completedAt"],
        &event["sentAt"],
    ] {
        let t = time.as_str().unwrap_or_default();
        assert!(t.contains('T') && t.ends_with('Z'), "not rfc3339: {event}");
    }

    let delivery = wait_delivery(&node, &webhook_id, "delivered");
    assert_eq!(delivery["id"], request.header("x-berth-delivery"));
    assert_eq!(
        (
            delivery["attempt"].as_u64(),
            delivery["response_code"].as_u64()
        ),
        (Some(1), Some(200))
    );
    assert_eq!(delivery["deployment_id"], deployment_id.as_str());
    let table = ok(node.cli(&["webhook", "list"], None));
    assert!(table.contains("delivered"), "{table}");

    // The secret is stored encrypted and never logged.
    node.stop();
    assert!(
        files_containing(d.data.path(), &secret).is_empty(),
        "the signing secret is stored in plaintext"
    );
    assert!(
        !node.log().contains(&secret),
        "the signing secret is in the node log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_fails_twice_gets_the_same_delivery_until_it_answers_2xx() {
    let (_d, node) = start_node();
    let mut receiver = Receiver::start(vec![500, 500]).await;
    let secret = "a-secret-the-receiver-already-has";
    let added = ok(node.cli(
        &[
            "webhook",
            "add",
            &receiver.url,
            "--event",
            "deployment.finished",
            "--secret-stdin",
        ],
        Some(&format!("{secret}\n")),
    ));
    assert!(
        !added.contains(secret),
        "a secret given on stdin was echoed: {added}"
    );
    // "added webhook ID for URL (EVENTS)"
    let webhook_id = added
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string();
    assert!(webhook_id.parse::<i64>().is_ok(), "{added}");

    refused_app(&node, "flaky").await;
    let deployment_id = deploy(&node, "flaky", "v7").await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(receiver.next().await);
    }
    let delivery = wait_delivery(&node, &webhook_id, "delivered");
    assert_eq!(delivery["attempt"].as_u64(), Some(3), "{delivery}");
    assert_eq!(delivery["response_code"].as_u64(), Some(200), "{delivery}");
    assert_eq!(delivery["deployment_id"], deployment_id.as_str());
    assert_eq!(delivery["event"], "deployment.failed");
    for request in &seen {
        assert_eq!(
            request.header("x-berth-delivery"),
            delivery["id"].as_str().unwrap()
        );
        assert_eq!(
            request.header("x-berth-signature-256"),
            expected_signature(secret, &request.body)
        );
    }

    let table = ok(node.cli(&["webhook", "deliveries", &webhook_id], None));
    assert!(
        table.contains("delivered") && table.contains(&deployment_id),
        "{table}"
    );
    let all = ok(node.cli(
        &["webhook", "deliveries", "--limit", "5", "-o", "json"],
        None,
    ));
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&all)
            .unwrap()
            .len(),
        1,
        "{all}"
    );
    assert!(
        receiver.requests.try_recv().is_err(),
        "a delivered event was sent again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_commands_check_roles_and_input() {
    let (_d, node) = start_node();
    let admin = node.admin_token();
    let mut keys = ApiKeyServiceClient::new(node.channel().await);
    let viewer = keys
        .create_api_key(authed(
            pb::CreateApiKeyRequest {
                name: "watcher".into(),
                role: "viewer".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .key;

    let refused = node.cli_as(
        &viewer,
        &[
            "webhook",
            "add",
            "https://example.com/hook",
            "--event",
            "deployment.failed",
        ],
        None,
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("permission denied"),
        "{}",
        stderr(&refused)
    );

    for (url, needle) in [
        ("ftp://example.com/hook", "scheme"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("not a url", "spaces"),
    ] {
        let out = node.cli(
            &["webhook", "add", url, "--event", "deployment.failed"],
            None,
        );
        assert_eq!(out.status.code(), Some(1), "{url}");
        assert!(
            stderr(&out).contains("invalid argument") && stderr(&out).contains(needle),
            "{url}: {}",
            stderr(&out)
        );
    }
    let usage = node.cli(
        &[
            "webhook",
            "add",
            "https://example.com/hook",
            "--event",
            "deployment.done",
        ],
        None,
    );
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));

    let added = ok(node.cli(
        &[
            "webhook",
            "add",
            "https://example.com/hook",
            "--event",
            "deployment.succeeded",
            "-o",
            "json",
        ],
        None,
    ));
    let added: serde_json::Value = serde_json::from_str(&added).unwrap();
    assert!(
        added["secret"]
            .as_str()
            .unwrap_or_default()
            .starts_with("whs_"),
        "{added}"
    );
    let id = added["webhook"]["id"].to_string();
    // Below admin, a URL reads as its origin: its path may be the receiver's credential.
    let listed = ok(node.cli_as(&viewer, &["webhook", "list"], None));
    assert!(
        listed.contains("https://example.com")
            && !listed.contains("/hook")
            && listed.contains("deployment.succeeded"),
        "{listed}"
    );
    let listed = ok(node.cli_as(&viewer, &["webhook", "list", "-o", "json"], None));
    assert!(
        listed.contains("\"https://example.com\"") && !listed.contains("/hook"),
        "{listed}"
    );
    let listed = ok(node.cli(&["webhook", "list"], None));
    assert!(listed.contains("https://example.com/hook"), "{listed}");
    let refused = node.cli_as(&viewer, &["webhook", "remove", &id], None);
    assert!(
        stderr(&refused).contains("permission denied"),
        "{}",
        stderr(&refused)
    );

    ok(node.cli(&["webhook", "remove", &id], None));
    assert!(ok(node.cli(&["webhook", "list"], None)).contains("no webhooks"));
    let again = node.cli(&["webhook", "remove", &id], None);
    assert!(stderr(&again).contains("not found"), "{}", stderr(&again));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_notify_allow_private_a_loopback_receiver_is_refused_and_never_reached() {
    let (_d, node) = start_node_with(&[]);
    let mut receiver = Receiver::start(vec![]).await;
    let added = ok(node.cli(
        &[
            "webhook",
            "add",
            &receiver.url,
            "--event",
            "deployment.failed",
        ],
        None,
    ));
    let webhook_id = added
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string();
    refused_app(&node, "private").await;
    let deployment_id = deploy(&node, "private", "v1").await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let delivery = loop {
        let out = ok(node.cli(&["webhook", "deliveries", &webhook_id, "-o", "json"], None));
        let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        if let Some(d) = list.iter().find(|d| d["attempt"].as_u64() >= Some(1)) {
            break d.clone();
        }
        assert!(Instant::now() < deadline, "no attempt recorded: {out}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(delivery["deployment_id"], deployment_id.as_str());
    assert_eq!(
        delivery["error"],
        "destination address is not allowed (private/loopback); start the control plane with --notify-allow-private to allow it",
        "{delivery}"
    );
    assert!(delivery["response_code"].is_null(), "{delivery}");
    assert!(
        receiver.requests.try_recv().is_err(),
        "a refused destination received the event"
    );
}
