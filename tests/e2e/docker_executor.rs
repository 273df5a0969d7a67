//! The Docker executor against the real engine, driven directly (no agent, no control plane):
//! what only a real host shows — host ports published after the health gate, the image's own
//! HEALTHCHECK, restart policies, pulls with credentials, a registry outage.
//!
//! Every deploy really pulls from a private registry with basic auth: each test pushes its
//! images under a repository of its own, then untags the local copy. Each test uses its own
//! app name and host ports, and removes its containers and image tags when it ends, even on
//! panic. What every executor must do, the fake included, is in `executor_contract.rs`.

use std::time::Duration;

use berth_agent::executor::{DeploySpec, Executor, HealthCheck};
use bollard::models::{ContainerSummaryStateEnum, HealthStatusEnum, RestartPolicyNameEnum};
use secrecy::SecretString;

use berth_agent::docker::DockerExecutor;

use crate::fixture::executor::{deploy, rollback, DockerApp, Run};
use crate::fixture::http::{expect_page, wait_page, Poller};
use crate::fixture::process::free_port;
use crate::fixture::proxy::ProxyProcess;
use crate::fixture::registry::Registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_version_never_interrupts_the_serving_one() {
    let Some(app) = DockerApp::start().await else {
        return;
    };
    let port = free_port();
    let http = HealthCheck::Http {
        port: 80,
        path: "/".to_owned(),
        timeout: Duration::from_secs(10),
    };

    let v1 = app.deploy(app.spec("v1", Some(port), http.clone())).await;
    assert!(v1.outcome.success, "{:?}", v1.outcome);
    // Put back and running; its server may take a moment to listen again.
    assert_eq!(
        wait_page(port, Duration::from_secs(10)),
        format!("version=v1 secret={}", app.secret)
    );

    let v2 = app.deploy(app.spec("v2", Some(port), http.clone())).await;
    assert!(v2.outcome.success, "{:?}", v2.outcome);
    assert_eq!(
        expect_page(port),
        format!("version=v2 secret={}", app.secret)
    );
    assert_eq!(
        v2.phases(),
        [
            "pull", "pull", "create", "start", "health", "swap", "create", "start", "health",
            "done"
        ]
    );
    // The previous container is stopped but kept until commit.
    let containers = app.containers().await;
    assert_eq!(containers.len(), 2, "{containers:?}");
    let v1_container = containers
        .iter()
        .find(|c| c.id.as_deref() == Some(v1.container()))
        .expect("v1 kept");
    assert_ne!(v1_container.state, Some(ContainerSummaryStateEnum::RUNNING));

    let cleanup = app.commit(&v2.deployment_id).await;
    assert_eq!(cleanup.len(), 1);
    assert!(
        cleanup[0].message.starts_with("removed berth-"),
        "{cleanup:?}"
    );
    assert_eq!(app.container_ids().await, [v2.container()]);

    // v3 dies after a second: the gate fails on the candidate and v2 never stops serving.
    let default = HealthCheck::Default {
        timeout: Duration::from_secs(10),
        grace: Duration::from_secs(3),
    };
    let v3_spec = app.spec("bad", Some(port), default);
    let poller = Poller::start(port, "version=v2");
    let v3 = app.deploy(v3_spec).await;
    let (served, failures) = poller.stop();
    assert!(!v3.outcome.success);
    assert!(v3.outcome.rolled_back);
    assert_eq!(v3.outcome.container_id, v2.outcome.container_id);
    assert_eq!(
        v3.outcome.error.as_deref(),
        Some("health check failed: container exited with code 1")
    );
    assert_eq!(v3.phases().last().copied(), Some("failed"));
    assert!(
        failures.is_empty(),
        "v2 stopped answering during the v3 deploy: {failures:?}"
    );
    assert!(served >= 10, "only {served} polls during the v3 deploy");
    assert_eq!(
        expect_page(port),
        format!("version=v2 secret={}", app.secret)
    );
    assert_eq!(
        app.container_ids().await,
        [v2.container()],
        "the candidate is removed"
    );

    for run in [&v1, &v2, &v3] {
        app.assert_no_secret(run);
    }
}

#[tokio::test]
async fn rollback_after_a_successful_deploy_restores_the_previous_container() {
    let Some(app) = DockerApp::start().await else {
        return;
    };
    let port = free_port();
    let tcp = HealthCheck::Tcp {
        port: 80,
        timeout: Duration::from_secs(10),
    };

    let mut v1_spec = app.spec("v1", Some(port), tcp.clone());
    v1_spec.restart_policy = "unless-stopped".to_owned();
    let v1 = app.deploy(v1_spec).await;
    assert!(v1.outcome.success, "{:?}", v1.outcome);
    let v2 = app.deploy(app.spec("v2", Some(port), tcp)).await;
    assert!(v2.outcome.success, "{:?}", v2.outcome);
    assert_eq!(
        expect_page(port),
        format!("version=v2 secret={}", app.secret)
    );

    let rollback = app.rollback(&v2.deployment_id).await;
    assert!(!rollback.outcome.success);
    assert!(rollback.outcome.rolled_back);
    assert_eq!(rollback.outcome.container_id, v1.outcome.container_id);
    assert_eq!(rollback.phases(), ["rollback", "rollback"]);

    // Put back and running; its server may take a moment to listen again.
    assert_eq!(
        wait_page(port, Duration::from_secs(10)),
        format!("version=v1 secret={}", app.secret)
    );
    assert_eq!(app.container_ids().await, [v1.container()]);
    // Stopping set its restart policy to `no`; serving again gives it back its own.
    let restored = app
        .docker
        .inspect_container(v1.container(), None)
        .await
        .unwrap();
    let policy = restored
        .host_config
        .and_then(|h| h.restart_policy)
        .and_then(|p| p.name);
    assert_eq!(policy, Some(RestartPolicyNameEnum::UNLESS_STOPPED));
}

/// The scenario a kill -9 campaign found an app down in, through `exec`: v1 serves; a
/// stopped candidate of an interrupted deployment (never passed its gate; no `berth.health`
/// label, so the default check, "still running after its grace", applies) sits one generation
/// above it; v2 deploys; v2 is rolled back. The rollback must put v1 back, not the leftover,
/// and say why it passed over the leftover. Returns (v1, the leftover's id).
async fn rollback_past_a_leftover(
    app: &DockerApp,
    exec: &dyn Executor,
    port: u16,
) -> (Run, String) {
    let tcp = HealthCheck::Tcp {
        port: 80,
        timeout: Duration::from_secs(10),
    };
    let v1 = deploy(exec, &app.spec("v1", Some(port), tcp.clone())).await;
    assert!(v1.outcome.success, "{:?}", v1.outcome);
    let leftover = app.leftover_container("berth-test/web:bad", "bad", 2).await;
    let v2 = deploy(exec, &app.spec("v2", Some(port), tcp)).await;
    assert!(v2.outcome.success, "{:?}", v2.outcome);
    assert_eq!(
        wait_page(port, Duration::from_secs(10)),
        format!("version=v2 secret={}", app.secret)
    );

    let rollback = rollback(exec, &app.name, &v2.deployment_id).await;
    assert!(rollback.outcome.rolled_back, "{:?}", rollback.events);
    assert_eq!(
        rollback.outcome.container_id, v1.outcome.container_id,
        "{:?}",
        rollback.events
    );
    assert!(
        rollback
            .texts()
            .any(|t| t.contains("does not pass its health check again")),
        "{:?}",
        rollback.events
    );
    assert_eq!(
        wait_page(port, Duration::from_secs(10)),
        format!("version=v1 secret={}", app.secret)
    );
    (v1, leftover)
}

/// A rollback puts back only a container that passes its own health check again, newest
/// first (the host-port cut-over); the leftover it passed over is stopped again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_skips_a_previous_container_that_fails_its_health_check_again() {
    let Some(app) = DockerApp::start().await else {
        return;
    };
    let (_, leftover) = rollback_past_a_leftover(&app, &app.exec, free_port()).await;
    let state = app
        .docker
        .inspect_container(&leftover, None)
        .await
        .unwrap()
        .state
        .and_then(|s| s.running);
    assert_eq!(state, Some(false), "the leftover was stopped again");
}

/// The same behind the host proxy (the cut-over the kill -9 campaign runs), and an agent's
/// repair removes a stopped container newer than the routed one (it never served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_host_proxy_a_rollback_and_a_repair_leave_out_a_candidate_that_never_passed() {
    let Some(app) = DockerApp::start().await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::start(logs.path());
    let exec = DockerExecutor::connect()
        .await
        .expect("connect to the Docker Engine")
        .with_proxy(proxy.socket());
    let port = free_port();
    let (v1, leftover) = rollback_past_a_leftover(&app, &exec, port).await;

    // Left by a crash: stopped, newer than the routed v1 (as the first leftover is). A repair
    // removes every container newer than the routed one, running or not.
    let never_routed = app.leftover_container("berth-test/web:bad", "bad", 9).await;
    exec.repair().await.expect("repair");
    let ids = app.container_ids().await;
    assert!(
        !ids.contains(&never_routed) && !ids.contains(&leftover),
        "{ids:?}"
    );
    assert!(ids.iter().any(|id| id == v1.container()), "{ids:?}");
    assert_eq!(
        wait_page(port, Duration::from_secs(10)),
        format!("version=v1 secret={}", app.secret)
    );
}

#[tokio::test]
async fn a_final_container_that_cannot_start_puts_the_previous_one_back() {
    let Some(app) = DockerApp::start().await else {
        return;
    };
    let tcp = HealthCheck::Tcp {
        port: 80,
        timeout: Duration::from_secs(10),
    };
    let port = free_port();
    let v1 = app.deploy(app.spec("v1", Some(port), tcp.clone())).await;
    assert!(v1.outcome.success, "{:?}", v1.outcome);

    // The candidate passes on its bridge address; the final container cannot get its port.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").expect("bind a port");
    let taken_port = taken.local_addr().unwrap().port();
    let v2 = app.deploy(app.spec("v2", Some(taken_port), tcp)).await;
    drop(taken);
    assert!(!v2.outcome.success);
    assert!(v2.outcome.rolled_back);
    assert_eq!(v2.outcome.container_id, v1.outcome.container_id);
    let error = v2.outcome.error.clone().unwrap();
    assert!(error.starts_with("starting berth-"), "{error}");
    assert!(error.contains("address already in use"), "{error}");
    let phases = v2.phases();
    assert_eq!(
        phases[phases.len().saturating_sub(3)..],
        ["start", "rollback", "failed"],
        "{phases:?}"
    );

    // Put back and running; its server may take a moment to listen again.
    assert_eq!(
        wait_page(port, Duration::from_secs(10)),
        format!("version=v1 secret={}", app.secret)
    );
    assert_eq!(app.container_ids().await, [v1.container()]);
    app.assert_no_secret(&v2);
}

#[tokio::test]
async fn private_registry_pulls_need_the_right_credentials() {
    let Some(app) = DockerApp::start().await else {
        return;
    };
    let tcp = HealthCheck::Tcp {
        port: 80,
        timeout: Duration::from_secs(10),
    };

    // No host port: the candidate is the final container.
    let spec = app.spec("v1", None, tcp.clone());
    let reference = format!("{}:v1", spec.image);
    assert!(
        app.docker.inspect_image(&reference).await.is_err(),
        "the test must really pull"
    );
    let v1 = app.deploy(spec).await;
    assert!(v1.outcome.success, "{:?}", v1.outcome);
    assert!(app.docker.inspect_image(&reference).await.is_ok());
    assert_eq!(
        v1.phases(),
        ["pull", "pull", "create", "start", "health", "swap", "done"]
    );
    assert!(
        v1.events[0]
            .message
            .contains(&format!("as {} on", app.registry.username)),
        "{:?}",
        v1.events[0]
    );

    let mut wrong = app.spec("v2", None, tcp);
    let wrong_password = "not-the-password-42";
    wrong.registry_auth.as_mut().unwrap().password = SecretString::from(wrong_password);
    let image = wrong.image.clone();
    let v2 = app.deploy(wrong).await;
    assert!(!v2.outcome.success);
    assert!(!v2.outcome.rolled_back, "nothing was touched");
    assert_eq!(
        v2.outcome.container_id, v1.outcome.container_id,
        "v1 still serves"
    );
    let error = v2.outcome.error.clone().unwrap();
    assert!(
        error.starts_with(&format!("pull {image}:v2 failed: ")),
        "{error}"
    );
    assert!(
        error.contains("unauthorized") || error.contains("authentication"),
        "{error}"
    );
    assert_eq!(v2.phases(), ["pull", "failed"]);
    for text in v2.texts() {
        assert!(
            !text.contains(wrong_password) && !text.contains(&app.registry.password),
            "{text}"
        );
    }
    assert_eq!(app.container_ids().await, [v1.container()]);
    app.assert_no_secret(&v1);
    app.assert_no_secret(&v2);
}

#[tokio::test]
async fn the_image_healthcheck_gates_the_deploy_when_there_is_one() {
    let Some(app) = DockerApp::start().await else {
        return;
    };
    // The grace alone would pass either container: only the HEALTHCHECK can fail it.
    let default = HealthCheck::Default {
        timeout: Duration::from_secs(20),
        grace: Duration::from_millis(100),
    };

    let healthy = app.deploy(app.spec("hc", None, default.clone())).await;
    assert!(healthy.outcome.success, "{:?}", healthy.outcome);
    let inspected = app
        .docker
        .inspect_container(healthy.container(), None)
        .await
        .unwrap();
    let status = inspected
        .state
        .and_then(|s| s.health)
        .and_then(|h| h.status);
    assert_eq!(status, Some(HealthStatusEnum::HEALTHY));

    let mut sick = app.spec("hc", None, default);
    sick.env.insert(
        "BERTH_TEST_HC_PATH".to_owned(),
        SecretString::from("missing"),
    );
    let sick = app.deploy(sick).await;
    assert!(!sick.outcome.success);
    assert!(sick.outcome.rolled_back);
    assert_eq!(sick.outcome.container_id, healthy.outcome.container_id);
    let error = sick.outcome.error.clone().unwrap();
    assert!(
        error.starts_with("health check failed: docker HEALTHCHECK reports unhealthy"),
        "{error}"
    );
}

#[tokio::test]
async fn an_http_check_names_the_status_it_got() {
    let Some(app) = DockerApp::start().await else {
        return;
    };
    let check = HealthCheck::Http {
        port: 80,
        path: "/missing".to_owned(),
        timeout: Duration::from_secs(2),
    };
    let run = app.deploy(app.spec("v1", Some(free_port()), check)).await;
    assert!(!run.outcome.success);
    assert!(
        !run.outcome.rolled_back,
        "there was nothing to roll back to"
    );
    assert_eq!(run.outcome.container_id, None, "nothing serves");
    assert_eq!(
        run.outcome.error.as_deref(),
        Some("health check failed: http GET :80/missing answered 404")
    );
    assert!(
        app.containers().await.is_empty(),
        "the candidate is removed"
    );
    assert!(app
        .exec
        .runtime_version()
        .await
        .starts_with(|c: char| c.is_ascii_digit()));
}

#[tokio::test]
async fn a_registry_outage_fails_a_tag_but_not_a_digest_already_here() {
    let Some(app) = DockerApp::start().await else {
        return;
    };
    let tcp = HealthCheck::Tcp {
        port: 80,
        timeout: Duration::from_secs(10),
    };
    let registry = Registry::start("outage");
    let spec = app.spec_on(&registry, "v1", None, tcp);
    let first = app.deploy(spec.clone()).await;
    assert!(first.outcome.success, "{:?}", first.outcome);
    let pulled = app
        .docker
        .inspect_image(&format!("{}:v1", spec.image))
        .await
        .unwrap();
    let digest = pulled
        .repo_digests
        .unwrap_or_default()
        .into_iter()
        .find_map(|d| {
            d.strip_prefix(&format!("{}@", spec.image))
                .map(str::to_owned)
        });
    let digest = digest.expect("the pull recorded the registry's digest");
    registry.stop();

    // A tag may have moved on the registry: the local copy is no answer.
    let by_tag = app
        .deploy(DeploySpec {
            deployment_id: uuid::Uuid::new_v4().to_string(),
            ..spec.clone()
        })
        .await;
    assert!(!by_tag.outcome.success);
    assert_eq!(
        by_tag.outcome.container_id, first.outcome.container_id,
        "the first container still serves"
    );
    let error = by_tag.outcome.error.clone().unwrap();
    assert!(
        error.starts_with(&format!("pull {}:v1 failed: ", spec.image)),
        "{error}"
    );
    assert!(error.contains("connection refused"), "{error}");

    // A digest cannot have moved: the local copy is exactly the image asked for.
    let by_digest = DeploySpec {
        deployment_id: uuid::Uuid::new_v4().to_string(),
        version: digest,
        ..spec
    };
    let by_digest = app.deploy(by_digest).await;
    assert!(by_digest.outcome.success, "{:?}", by_digest.outcome);
    assert!(
        by_digest.events[1]
            .message
            .ends_with("using the local copy of this digest"),
        "{:?}",
        by_digest.events
    );
    app.assert_no_secret(&by_tag);
    app.assert_no_secret(&by_digest);
}
