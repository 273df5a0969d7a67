//! What a deployment records, end to end through a real node and fake-executor agents: the
//! application row follows its deployments (R-5.6b: `deploying` while one runs; `running` with
//! version and `last_deployed_at` on success; after a failure `error` only when nothing serves
//! it), and an environment that cannot be resolved refuses the deployment before anything
//! reaches an agent.

use secrecy::{ExposeSecret as _, SecretString};

use super::*;
use crate::model::{Application, NewSecret};
use crate::service::SetEnvValue;

async fn app_row(cluster: &Cluster, name: &str) -> Application {
    cluster
        .fleet
        .service()
        .store()
        .application(name)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_row_follows_its_deployments() {
    let mut cluster = Cluster::start().await;
    cluster
        .add_agent(
            "a1",
            FakeExecutor::failing_version("v3", "health check timed out")
                .with_delay(Duration::from_millis(300)),
        )
        .await;
    cluster.app("web", 1).await;
    let created = app_row(&cluster, "web").await;
    assert_eq!(created.last_deployed_at, None);

    // A first deployment that fails: nothing serves the application, it is in error.
    let id = cluster.deploy("web", "v3").await;
    let during = app_row(&cluster, "web").await;
    assert_eq!(during.status, "deploying");
    let log = cluster.finished(&id).await;
    assert_eq!(log.status, DeploymentStatus::Failed, "{log:?}");
    let failed = app_row(&cluster, "web").await;
    assert_eq!(
        (failed.status.as_str(), failed.version.as_deref()),
        ("error", created.version.as_deref())
    );
    assert_eq!(failed.last_deployed_at, None);

    // Deploying from the moment the deployment is recorded; version and time unchanged.
    let id = cluster.deploy("web", "v2").await;
    let during = app_row(&cluster, "web").await;
    assert_eq!(
        (during.status.as_str(), during.version.as_deref()),
        ("deploying", created.version.as_deref())
    );
    assert_eq!(during.last_deployed_at, None);
    let log = cluster.finished(&id).await;
    assert_eq!(log.status, DeploymentStatus::Success, "{log:?}");
    let deployed = app_row(&cluster, "web").await;
    assert_eq!(
        (deployed.status.as_str(), deployed.version.as_deref()),
        ("running", Some("v2"))
    );
    let deployed_at = deployed.last_deployed_at.clone().expect("last_deployed_at");

    // A failed deployment while v2 serves: v2 keeps serving, so the application is still
    // running, and version and time stay as the last success set them.
    let id = cluster.deploy("web", "v3").await;
    assert_eq!(app_row(&cluster, "web").await.status, "deploying");
    let log = cluster.finished(&id).await;
    assert_eq!(log.status, DeploymentStatus::Failed, "{log:?}");
    assert_eq!(
        cluster.executor("a1").current_version("web").as_deref(),
        Some("v2")
    );
    let after = app_row(&cluster, "web").await;
    assert_eq!(
        (after.status.as_str(), after.version.as_deref()),
        ("running", Some("v2"))
    );
    assert_eq!(
        after.last_deployed_at.as_deref(),
        Some(deployed_at.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_with_an_unresolvable_reference_is_refused_before_dispatch() {
    let mut cluster = Cluster::start().await;
    cluster.add_agent("a1", FakeExecutor::new()).await;
    cluster.app("web", 1).await;
    let svc = cluster.fleet.service().clone();
    let admin = Actor::system();
    let value = SecretString::from("postgres://app:do-not-leak@db/prod".to_string());
    for group in ["g", "h"] {
        svc.create_group(&admin, group, None).await.unwrap();
        svc.set_secret(&admin, group, "DB", &value, None)
            .await
            .unwrap();
    }
    // h/DB now holds g/DB's ciphertext, which is bound to g/DB's row: it cannot decrypt
    // (what a restored or tampered database gives).
    let store = svc.store();
    let copied = store.secret("g", "DB").await.unwrap();
    let h = store.group("h").await.unwrap();
    store
        .write_secrets(
            h.id,
            &[NewSecret {
                name: "DB".into(),
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
        Some("web"),
        "DATABASE_URL",
        SetEnvValue::Secret("h/DB".into()),
        None,
    )
    .await
    .unwrap();

    let log = cluster.deploy_and_wait("web", "v2").await;
    assert_eq!(log.status, DeploymentStatus::Failed, "{log:?}");
    let reason = log.error_message.clone().unwrap_or_default();
    assert!(
        reason.contains("DATABASE_URL"),
        "the reason names the variable: {reason}"
    );
    assert!(!reason.contains(value.expose_secret()), "{reason}");

    // Nothing reached the agent: no command, no deploy, every target skipped.
    let agent = cluster.agents.get_mut("a1").unwrap();
    assert!(
        agent.commands.try_recv().is_err(),
        "a command was dispatched"
    );
    assert_eq!(cluster.executor("a1").deploy_count(), 0);
    let targets = store.deployment_targets(&log.deployment_id).await.unwrap();
    assert!(
        targets.iter().all(|t| t.status == TargetStatus::Skipped),
        "{targets:?}"
    );
    let audit = store.list_audit(10).await.unwrap();
    assert!(
        audit.iter().any(|e| e.action == "deploy.refused"),
        "{audit:?}"
    );
}
