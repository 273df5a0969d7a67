//! Attack path: the `RegistryPush` RPC called directly, with the shim's own credential (an
//! API key of role `webhook`), is never weaker than `POST /webhook/registry`.

use berth_proto::v1 as pb;
use pb::webhook_service_client::WebhookServiceClient;

use secrecy::SecretString;

use super::*;

const REGISTRY: &str = "127.0.0.1:5000";

fn push_request(secret: &str, key: &str) -> tonic::Request<pb::RegistryPushRequest> {
    let mut request = tonic::Request::new(pb::RegistryPushRequest {
        events: vec![pb::RegistryPushEvent {
            host: REGISTRY.into(),
            repository: "web".into(),
            tag: "v9".into(),
        }],
        client_ip: "198.51.100.1".into(),
        secret: secret.into(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

async fn auto_deploy_app(cluster: &Cluster) {
    cluster
        .fleet
        .service()
        .create_application(
            &Actor::system(),
            ApplicationSpec {
                name: "auto".into(),
                image: format!("{REGISTRY}/web"),
                version: None,
                repository: None,
                ports: vec![],
                webhook_enabled: true,
                auto_deploy: true,
                targets: vec![Target::Label {
                    key: "role".into(),
                    value: "web".into(),
                }],
                deploy_batch_size: None,
                health_check: None,
                restart_policy: None,
                drain_timeout_s: None,
                stop_timeout_s: None,
                stop_signal: None,
                cancel_in_progress: false,
            },
        )
        .await
        .unwrap();
}

async fn deployments(cluster: &Cluster) -> Vec<DeploymentLog> {
    let store = cluster.fleet.service().store();
    let app = store.application("auto").await.unwrap();
    store.recent_deployments(app.id, 10).await.unwrap()
}

async fn webhook_key(cluster: &Cluster) -> String {
    let created = cluster.fleet.service().create_webhook_key("shim").await;
    created.unwrap().key.expose_secret().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_key_without_the_registry_secret_deploys_nothing() {
    let cluster = Cluster::start().await;
    auto_deploy_app(&cluster).await;
    let key = webhook_key(&cluster).await;
    let mut rpc = WebhookServiceClient::new(cluster.admin_channel().await);

    // Registry notifications are off by default: no secret opens them.
    for secret in ["", "anything-at-all-long-enough"] {
        let refused = rpc
            .registry_push(push_request(secret, &key))
            .await
            .expect_err("a direct call on a node without a registry secret is refused");
        assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    }
    assert!(deployments(&cluster).await.is_empty(), "nothing deployed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_registry_push_needs_the_same_secret_as_the_http_route() {
    const SECRET: &str = "a-registry-secret-of-32-chars-xx";
    let mut cluster = Cluster::start_with(|config| {
        config.fleet.registry_secret = Some(
            crate::fleet::webhook::RegistrySecret::new(&SecretString::from(SECRET.to_string()))
                .unwrap(),
        );
    })
    .await;
    cluster.add_agent("a1", FakeExecutor::new()).await;
    auto_deploy_app(&cluster).await;
    let key = webhook_key(&cluster).await;
    let mut rpc = WebhookServiceClient::new(cluster.admin_channel().await);

    for wrong in ["", "a-registry-secret-of-32-chars-xy", &SECRET[..16]] {
        let refused = rpc
            .registry_push(push_request(wrong, &key))
            .await
            .expect_err("a wrong secret is refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{wrong:?}");
        // The caller's credential, not the shim's key: its client gets 401 and a failed
        // attempt against the limit.
        assert!(refused
            .metadata()
            .get(crate::grpc::CALLER_REFUSED_METADATA)
            .is_none());
    }
    assert!(deployments(&cluster).await.is_empty(), "nothing deployed");

    let started = rpc
        .registry_push(push_request(SECRET, &key))
        .await
        .unwrap()
        .into_inner()
        .started;
    assert_eq!(started.len(), 1, "{started:?}");
    let log = cluster.finished(&started[0].deployment_id).await;
    assert_eq!(log.status, DeploymentStatus::Success, "{log:?}");
    assert_eq!(log.trigger_type, "registry");
    assert_eq!(
        cluster.executor("a1").current_version("auto").as_deref(),
        Some("v9")
    );
}

#[test]
fn an_empty_blank_or_short_registry_secret_from_a_flag_or_a_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registry.secret");
    for bad in ["", "   ", "\n \t\n", "too-short-secret"[..15].as_ref()] {
        let flag = RegistrySecretArgs {
            registry_secret: Some(bad.to_string()),
            registry_secret_file: None,
        };
        let e = flag.load().unwrap_err().to_string();
        assert!(e.contains("--registry-secret"), "{e}");
        std::fs::write(&file, bad).unwrap();
        let from_file = RegistrySecretArgs {
            registry_secret: None,
            registry_secret_file: Some(file.clone()),
        };
        let e = from_file.load().unwrap_err().to_string();
        assert!(
            e.contains("registry.secret") && e.contains("secret is"),
            "{e}"
        );
    }
    let missing = RegistrySecretArgs {
        registry_secret: None,
        registry_secret_file: Some(dir.path().join("nope")),
    };
    assert!(missing
        .load()
        .unwrap_err()
        .to_string()
        .contains("cannot read"));

    assert!(RegistrySecretArgs::default().load().unwrap().is_none());
    std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
    let good = RegistrySecretArgs {
        registry_secret: None,
        registry_secret_file: Some(file),
    };
    let secret = good.load().unwrap().unwrap();
    assert!(secret.matches(&SecretString::from("0123456789abcdef0123".to_string())));
}
