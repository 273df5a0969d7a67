//! Attack path: failure reasons with internal detail (the variable and the stored row that
//! cannot be decrypted, the image the allowlist refused, the agents and what they answered)
//! reach whoever holds a CI token, through the webhook shim's answer, and every notification
//! receiver. They get the failure's public reason and the deployment id; the admin API keeps
//! the detail.

use std::collections::HashMap;

use berth_proto::v1 as pb;
use pb::deploy_service_client::DeployServiceClient;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::*;
use crate::model::NewSecret;
use crate::notify::DestinationPolicy;
use crate::service::SetEnvValue;

/// The shim in front of the cluster's admin port, as `berth dev` runs it.
async fn shim(cluster: &Cluster) -> std::net::SocketAddr {
    let key = cluster
        .fleet
        .service()
        .create_webhook_key("shim")
        .await
        .unwrap()
        .key;
    let config = crate::webhook::ShimConfig::new(
        cluster.admin_url.clone(),
        Some(cluster.fleet.ca_pem().to_string()),
        key,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(crate::webhook::serve(
        config,
        listener,
        std::future::pending(),
    ));
    addr
}

/// `POST /webhook/deploy` as a CI job sends it: the HTTP status and the JSON answer.
async fn webhook_deploy(
    shim: std::net::SocketAddr,
    app: &str,
    version: &str,
    token: &SecretString,
) -> (u16, serde_json::Value) {
    let body = serde_json::json!({
        "applicationName": app,
        "version": version,
        "token": token.expose_secret(),
    })
    .to_string();
    let mut stream = tokio::net::TcpStream::connect(shim).await.unwrap();
    let request = format!(
        "POST /webhook/deploy HTTP/1.1\r\nhost: ci\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let (_, json) = answer.split_once("\r\n\r\n").unwrap();
    (status, serde_json::from_str(json).unwrap_or_default())
}

/// A notification receiver on 127.0.0.1: each request's JSON body.
async fn receiver() -> (String, mpsc::UnboundedReceiver<serde_json::Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let body = loop {
                let n = stream.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.trim().parse().ok())
                        .unwrap_or(0);
                    if body.len() >= length {
                        break Some(body[..length].to_string());
                    }
                }
            };
            if let Some(body) = body {
                let _ = tx.send(serde_json::from_str(&body).unwrap());
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    (url, rx)
}

/// The `deployment` object of the notification about `deployment_id`.
async fn notification(
    events: &mut mpsc::UnboundedReceiver<serde_json::Value>,
    seen: &mut HashMap<String, serde_json::Value>,
    deployment_id: &str,
) -> serde_json::Value {
    loop {
        if let Some(found) = seen.remove(deployment_id) {
            return found;
        }
        let event = tokio::time::timeout(MUST_HAPPEN, events.recv())
            .await
            .expect("a notification in time")
            .expect("receiver running");
        let id = event["deployment"]["deploymentId"]
            .as_str()
            .unwrap()
            .to_string();
        seen.insert(id, event["deployment"].clone());
    }
}

/// What an admin-API reader (a viewer key) gets for a deployment.
async fn admin_detail(cluster: &Cluster, deployment_id: &str) -> String {
    let key = cluster
        .fleet
        .service()
        .create_api_key(
            &Actor::system(),
            &format!("reader-{}", &deployment_id[..8]),
            "viewer",
        )
        .await
        .unwrap()
        .key;
    let mut request = tonic::Request::new(pb::GetDeploymentRequest {
        deployment_id: deployment_id.to_string(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", key.expose_secret()).parse().unwrap(),
    );
    let detail = DeployServiceClient::new(cluster.admin_channel().await)
        .get_deployment(request)
        .await
        .unwrap()
        .into_inner();
    detail.deployment.unwrap().error_message.unwrap_or_default()
}

async fn webhook_app(cluster: &Cluster, name: &str, image: &str) -> SecretString {
    cluster
        .fleet
        .service()
        .create_application(
            &Actor::system(),
            ApplicationSpec {
                name: name.into(),
                image: image.into(),
                version: None,
                repository: None,
                ports: vec![],
                webhook_enabled: true,
                auto_deploy: false,
                targets: vec![Target::Label {
                    key: "role".into(),
                    value: "web".into(),
                }],
                deploy_batch_size: Some(2),
                health_check: None,
                restart_policy: None,
                drain_timeout_s: None,
                stop_timeout_s: None,
                stop_signal: None,
                cancel_in_progress: false,
            },
        )
        .await
        .unwrap()
        .webhook_token
}

/// Asserts that `text` names none of `internal`.
fn assert_none_of(text: &str, internal: &[&str]) {
    for word in internal {
        assert!(!text.contains(word), "{word:?} leaked in: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_callers_and_receivers_get_the_public_reason_and_admins_the_detail() {
    let mut cluster = Cluster::start_with(|config| {
        config.notify_destinations = DestinationPolicy::AllowPrivate;
    })
    .await;
    cluster.add_agent("edge-host-a1", FakeExecutor::new()).await;
    cluster
        .add_agent(
            "edge-host-a2",
            FakeExecutor::failing_version("v9", "container exited with code 3 on edge-host-a2"),
        )
        .await;
    let svc = cluster.fleet.service().clone();
    let admin = Actor::system();
    let (url, mut events) = receiver().await;
    svc.add_webhook(&admin, &url, &["deployment.failed".to_string()], None)
        .await
        .unwrap();
    let shim = shim(&cluster).await;
    let mut seen = HashMap::new();

    // 1. An unresolvable secret reference: payments/DB_PASSWORD holds a ciphertext bound to
    //    another row, so it cannot be decrypted.
    let token = webhook_app(&cluster, "billing", "team/billing").await;
    let value = SecretString::from("postgres://do-not-leak".to_string());
    for group in ["vault-copy", "payments"] {
        svc.create_group(&admin, group, None).await.unwrap();
        svc.set_secret(&admin, group, "DB_PASSWORD", &value, None)
            .await
            .unwrap();
    }
    let store = svc.store();
    let copied = store.secret("vault-copy", "DB_PASSWORD").await.unwrap();
    let payments = store.group("payments").await.unwrap();
    store
        .write_secrets(
            payments.id,
            &[NewSecret {
                name: "DB_PASSWORD".into(),
                value: copied.value.clone(),
                value_preview: copied.value_preview.clone(),
                description: None,
            }],
            true,
        )
        .await
        .unwrap();
    svc.set_env(
        &admin,
        Some("billing"),
        "DATABASE_URL",
        SetEnvValue::Secret("payments/DB_PASSWORD".into()),
        None,
    )
    .await
    .unwrap();
    let internal = [
        "DATABASE_URL",
        "payments",
        "DB_PASSWORD",
        "decrypt",
        "secrets",
    ];

    let (status, answer) = webhook_deploy(shim, "billing", "v1", &token).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["success"], false);
    assert_eq!(answer["error"], "environment could not be resolved");
    let id = answer["deploymentId"].as_str().expect("the deployment id");
    assert_none_of(&answer.to_string(), &internal);
    let sent = notification(&mut events, &mut seen, id).await;
    assert_eq!(sent["errorMessage"], "environment could not be resolved");
    assert_none_of(&sent.to_string(), &internal);
    let detail = admin_detail(&cluster, id).await;
    assert!(
        detail.contains("DATABASE_URL") && detail.contains("cannot decrypt"),
        "{detail}"
    );

    // 2. An image the allowlist refuses.
    svc.add_image_pattern(&admin, "registry.internal.example/approved/*", None)
        .await
        .unwrap();
    let token = webhook_app(&cluster, "intranet", "team/intranet-portal").await;
    let internal = ["intranet-portal", "registry.internal", "allowlist"];
    let (status, answer) = webhook_deploy(shim, "intranet", "v1", &token).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["error"], "image not allowed");
    let id = answer["deploymentId"].as_str().expect("the deployment id");
    assert_none_of(&answer.to_string(), &internal);
    let sent = notification(&mut events, &mut seen, id).await;
    assert_eq!(sent["errorMessage"], "image not allowed");
    assert_none_of(&sent.to_string(), &internal);
    let detail = admin_detail(&cluster, id).await;
    assert!(
        detail.contains("team/intranet-portal") && detail.contains("allowlist"),
        "{detail}"
    );

    // 3. A host that fails its deploy.
    svc.add_image_pattern(&admin, "team/*", None).await.unwrap();
    let token = webhook_app(&cluster, "shop", "team/shop").await;
    let internal = ["edge-host", "exited with code"];
    let (status, answer) = webhook_deploy(shim, "shop", "v9", &token).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["error"], "deploy failed on 1 of 2 hosts");
    let id = answer["deploymentId"].as_str().expect("the deployment id");
    assert_none_of(&answer.to_string(), &internal);
    let sent = notification(&mut events, &mut seen, id).await;
    assert_eq!(sent["errorMessage"], "deploy failed on 1 of 2 hosts");
    assert_none_of(&sent.to_string(), &internal);
    let detail = admin_detail(&cluster, id).await;
    assert!(
        detail.contains("edge-host-a2") && detail.contains("exited with code 3"),
        "{detail}"
    );
}
