//! Deploys through agents, against the real Docker Engine and a real private registry: the
//! health gate and a failing version that never takes the app down, wrong registry
//! credentials, rolling multi-host deploys with rollback, the image allowlist, and crashes
//! mid-deploy (a cut stream, an agent kill -9, a control plane kill -9).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use pb::application_service_client::ApplicationServiceClient;

use crate::fixture::admin::{
    authed, deploy, deployments, register_web_app, status, unique, wait_deployment,
    wait_deployment_until, APP_SECRET,
};
use crate::fixture::agent::{wait_connected, AgentProcess};
use crate::fixture::docker::{
    containers_with_label, docker_available, remove_app_containers, running_containers,
};
use crate::fixture::http::{self, Poller};
use crate::fixture::load::{Load, Mode, Target};
use crate::fixture::node::{dirs, start_with_webhook, DevNode, Dirs};
use crate::fixture::process::free_port;
use crate::fixture::registry;

#[tokio::test(flavor = "multi_thread")]
async fn deploy_v1_v2_and_a_failing_v3_never_takes_the_app_down() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let node = DevNode::start_in(&d);
    wait_connected(&node, "local").await;
    let app = unique("web");
    let port = free_port();
    register_web_app(
        &node,
        &app,
        Some(port),
        &registry::shared().password,
        vec![],
    )
    .await;

    let v1 = wait_deployment(
        &node,
        &deploy(&node, &app, "v1").await,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(status(&v1), "success", "{v1:#?}");
    let page = http::page(port).expect("v1 serves");
    assert!(page.contains("version=v1"), "{page}");

    let v2 = wait_deployment(
        &node,
        &deploy(&node, &app, "v2").await,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(status(&v2), "success", "{v2:#?}");
    let page = http::page(port).expect("v2 serves");
    assert!(
        page.contains("version=v2") && page.contains(APP_SECRET),
        "the secret from the group reaches the app: {page}"
    );
    // The seed's deployment_logs columns are filled.
    let row = v2.deployment.clone().unwrap();
    assert_eq!(
        (row.version.as_str(), row.trigger_type.as_str()),
        ("v2", "manual")
    );
    assert!(
        row.trigger_source.is_some()
            && row.completed_at.is_some()
            && row.duration_ms.is_some()
            && row.error_message.is_none()
    );
    assert!(
        v2.events.iter().any(|e| e.phase == "health")
            && v2.targets.iter().all(|t| t.status == "success")
    );
    // v1's container is gone once v2 is committed.
    let v1_id = v1.deployment.as_ref().unwrap().deployment_id.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !containers_with_label(&format!("berth.deployment={v1_id}")).is_empty() {
        assert!(Instant::now() < deadline, "v1 container still present");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // v3 fails its health gate; v2 serves through the whole deploy.
    let poller = Poller::start(port, "version=v2");
    let v3 = wait_deployment(
        &node,
        &deploy(&node, &app, "bad").await,
        Duration::from_secs(120),
    )
    .await;
    let (served, failures) = poller.stop();
    assert_eq!(status(&v3), "failed", "{v3:#?}");
    let reason = v3
        .deployment
        .as_ref()
        .unwrap()
        .error_message
        .clone()
        .unwrap_or_default();
    assert!(!reason.is_empty(), "failed deployment has a reason");
    assert!(
        failures.is_empty(),
        "v2 stopped serving during the failed v3 deploy: {failures:?}"
    );
    assert!(served > 20, "the poller ran during the deploy");
    assert!(http::page(port).unwrap().contains("version=v2"));

    // Neither the deployment log nor the node's log holds the secret.
    for detail in [&v1, &v2, &v3] {
        assert!(
            !format!("{detail:?}").contains(APP_SECRET),
            "secret in deployment log"
        );
    }
    assert!(!node.log().contains(APP_SECRET), "secret in the node log");
    remove_app_containers(&app);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_registry_credentials_fail_with_a_clear_error() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let node = DevNode::start_in(&d);
    wait_connected(&node, "local").await;
    let app = unique("wrongpw");
    register_web_app(&node, &app, None, "not-the-password", vec![]).await;
    let detail = wait_deployment(
        &node,
        &deploy(&node, &app, "v1").await,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(status(&detail), "failed");
    let reason = detail
        .deployment
        .unwrap()
        .error_message
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        reason.contains("pull")
            && (reason.contains("unauthorized") || reason.contains("authentication")),
        "{reason}"
    );
    assert!(!reason.contains("not-the-password"));
    remove_app_containers(&app);
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_deploy_to_two_agents_rolls_back_the_first_when_the_second_fails() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let node = DevNode::start_in(&d);
    // The dev node's own agent is not labelled env=prod; two more agents are.
    let prod = [("env", "prod")];
    let (n1, n2) = (unique("prod-a"), unique("prod-b"));
    let _a = AgentProcess::start(&node, &n1, &prod, d.logs.path()).await;
    let _b = AgentProcess::start(&node, &n2, &prod, d.logs.path()).await;
    wait_connected(&node, &n1).await;
    wait_connected(&node, &n2).await;
    let label = vec![pb::Target {
        target: Some(pb::target::Target::Label("env=prod".into())),
    }];

    // Without host ports both agents (on this one Docker Engine) succeed, one after the other.
    let ok_app = unique("roll");
    register_web_app(
        &node,
        &ok_app,
        None,
        &registry::shared().password,
        label.clone(),
    )
    .await;
    let ok = wait_deployment(
        &node,
        &deploy(&node, &ok_app, "v1").await,
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(status(&ok), "success", "{ok:#?}");
    assert_eq!(ok.targets.len(), 2);
    assert!(ok.targets.iter().all(|t| t.status == "success"));
    let first_done = ok
        .targets
        .iter()
        .map(|t| t.completed_at.clone().unwrap())
        .min()
        .unwrap();
    let second_start = ok
        .targets
        .iter()
        .map(|t| t.started_at.clone().unwrap())
        .max()
        .unwrap();
    assert!(
        first_done <= second_start,
        "batch size 1: the second target starts after the first finished"
    );

    // With one host port, the second agent cannot bind it (the first holds it): the second
    // target fails, and the first is rolled back.
    let port_app = unique("rollfail");
    let port = free_port();
    register_web_app(
        &node,
        &port_app,
        Some(port),
        &registry::shared().password,
        label,
    )
    .await;
    let failed = wait_deployment(
        &node,
        &deploy(&node, &port_app, "v1").await,
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(status(&failed), "failed", "{failed:#?}");
    let statuses: Vec<&str> = failed.targets.iter().map(|t| t.status.as_str()).collect();
    assert!(
        statuses.contains(&"rolled_back") && statuses.contains(&"failed"),
        "{statuses:?}"
    );
    assert!(
        http::page(port).is_err(),
        "the rolled-back first target must not serve the failed release"
    );
    remove_app_containers(&ok_app);
    remove_app_containers(&port_app);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_off_the_allowlist_is_refused_before_dispatch_and_audited() {
    let d = dirs();
    let node = DevNode::start_without_agent(&d);
    let admin = node.admin_token();
    let channel = node.channel().await;
    pb::allowlist_service_client::AllowlistServiceClient::new(channel.clone())
        .add_image_pattern(authed(
            pb::AddImagePatternRequest {
                pattern: "registry.internal/team/*".into(),
                description: None,
            },
            &admin,
        ))
        .await
        .unwrap();
    ApplicationServiceClient::new(channel.clone())
        .create_application(authed(
            pb::CreateApplicationRequest {
                name: "rogue".into(),
                image: "evil/miner".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap();
    let detail = wait_deployment(
        &node,
        &deploy(&node, "rogue", "v1").await,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(status(&detail), "failed");
    let reason = detail
        .deployment
        .clone()
        .unwrap()
        .error_message
        .unwrap_or_default();
    assert!(reason.contains("not on the image allowlist"), "{reason}");
    assert!(
        detail.events.iter().all(|e| e.phase != "dispatch"),
        "nothing may reach an agent: {detail:#?}"
    );
    let out = node.cli(&["app", "show", "rogue"], None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed"));
}

/// A TCP proxy the test can cut: closes every open connection and refuses new ones while cut.
struct CuttableProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl CuttableProxy {
    async fn start(upstream: String) -> CuttableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(generation);
        let (c, g) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let upstream = upstream.clone();
                let mut killed = g.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = killed.changed() => {}
                    }
                });
            }
        });
        CuttableProxy {
            port,
            cut,
            generation,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

async fn wait_target_running(node: &DevNode, id: &str) {
    wait_deployment_until(
        node,
        id,
        Duration::from_secs(60),
        "the agent starting the deploy",
        |d| {
            d.events
                .iter()
                .any(|e| e.phase == "start" || e.phase == "create")
        },
    )
    .await;
}

/// A connected agent of its own (`<agent>-…`), an application (`<app>-…`) without host ports,
/// and a deploy of its `v1` that the agent has started: where the crash tests strike.
async fn deploy_under_way(
    node: &DevNode,
    d: &Dirs,
    agent: &str,
    app: &str,
) -> (AgentProcess, String, String) {
    let name = unique(agent);
    let agent = AgentProcess::start(node, &name, &[], d.logs.path()).await;
    wait_connected(node, &name).await;
    let app = unique(app);
    register_web_app(node, &app, None, &registry::shared().password, vec![]).await;
    let id = deploy(node, &app, "v1").await;
    wait_target_running(node, &id).await;
    (agent, app, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_stream_mid_deploy_delivers_the_outcome_after_reconnect() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let agent_port = free_port();
    let proxy = CuttableProxy::start(format!("127.0.0.1:{agent_port}")).await;
    let endpoint = format!("127.0.0.1:{}", proxy.port);
    let node = DevNode::start_with_agent_api(
        &d,
        agent_port,
        &["--agent-endpoint", &endpoint],
        free_port(),
    );
    let (_agent, app, id) = deploy_under_way(&node, &d, "cut", "cutapp").await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.restore();
    let detail = wait_deployment(&node, &id, Duration::from_secs(120)).await;
    assert_eq!(status(&detail), "success", "{detail:#?}");
    assert_eq!(
        containers_with_label(&format!("berth.deployment={id}")).len(),
        1,
        "the deploy ran exactly once"
    );
    remove_app_containers(&app);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_mid_deploy_reports_after_restart_and_does_not_rerun() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let node = DevNode::start_with_agent_port(&d);
    let (mut agent, app, id) = deploy_under_way(&node, &d, "killed", "killapp").await;
    agent.kill();
    agent.spawn(&[]);
    let detail = wait_deployment(&node, &id, Duration::from_secs(120)).await;
    let row = detail.deployment.clone().unwrap();
    assert_eq!(row.status, "failed", "{detail:#?}");
    assert!(
        row.error_message
            .unwrap_or_default()
            .contains("agent restarted"),
        "{detail:#?}"
    );
    assert!(
        containers_with_label(&format!("berth.deployment={id}")).len() <= 1,
        "the deploy ran twice"
    );
    remove_app_containers(&app);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_control_plane_mid_deploy_leaves_nothing_pending_and_runs_nothing_twice() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let agent_port = free_port();
    let admin_port = free_port();
    let args = ["--reconcile-timeout", "60"];
    let mut node = DevNode::start_with_agent_api(&d, agent_port, &args, admin_port);
    let (_agent, app, id) = deploy_under_way(&node, &d, "survivor", "crashapp").await;
    node.kill();
    let node = DevNode::start_with_agent_api(&d, agent_port, &args, admin_port);
    let detail = wait_deployment(&node, &id, Duration::from_secs(120)).await;
    assert_eq!(
        status(&detail),
        "success",
        "the agent's report finished the deployment: {detail:#?}"
    );
    assert!(detail.events.iter().any(|e| e.phase == "reconcile"));
    assert_eq!(
        containers_with_label(&format!("berth.deployment={id}")).len(),
        1,
        "the deploy ran exactly once"
    );
    let all = deployments(&node, &app).await;
    assert!(
        all.iter()
            .all(|d| d.status != "pending" && d.status != "running"),
        "{all:#?}"
    );
    remove_app_containers(&app);
}

/// Two webhook deploys of one app 0.3 s apart, then three at once, with a published port (the
/// race that once failed a healthy release with "port is already allocated"), under continuous
/// load through the host proxy: every deployment ends `success` or `superseded`, never
/// `failed`; the newest one serves; one container serves the app; not one request fails.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_deploys_of_one_app_queue_and_the_newest_serves() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let (node, shim) = start_with_webhook(d.data.path(), d.logs.path(), true);
    wait_connected(&node, "local").await;
    let app = unique("race");
    let port = free_port();
    let token = register_web_app(
        &node,
        &app,
        Some(port),
        &registry::shared().password,
        vec![],
    )
    .await;
    let first = deploy(&node, &app, "v1").await;
    assert_eq!(
        status(&wait_deployment(&node, &first, Duration::from_secs(180)).await),
        "success"
    );
    let target = |mode| Target {
        port,
        host: format!("127.0.0.1:{port}"),
        mode,
    };
    let load = Load::start(vec![target(Mode::NewConnections), target(Mode::KeepAlive)]);
    for (round, versions) in [vec!["v2", "v1"], vec!["v2", "v1", "v2"]]
        .into_iter()
        .enumerate()
    {
        let mut ids = Vec::new();
        for (i, version) in versions.iter().enumerate() {
            if round == 0 && i > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let answer = http::post(
                shim,
                "/webhook/deploy?wait=false",
                &serde_json::json!({"applicationName": app, "version": version}),
                Some(&token),
            );
            assert_eq!(answer.status, 202, "{answer:?}");
            ids.push(answer.json()["deploymentId"].as_str().unwrap().to_string());
        }
        let mut outcomes = Vec::new();
        for id in &ids {
            let detail = wait_deployment(&node, id, Duration::from_secs(180)).await;
            outcomes.push(status(&detail).to_string());
        }
        assert!(
            outcomes.iter().all(|s| s == "success" || s == "superseded"),
            "round {round}: {outcomes:?}"
        );
        assert_eq!(
            outcomes.last().map(String::as_str),
            Some("success"),
            "round {round}"
        );
        let newest = versions.last().unwrap();
        let page = http::page(port).expect("the app serves");
        assert!(
            page.contains(&format!("version={newest}")),
            "round {round}: {page}"
        );
    }
    let report = load.stop();
    assert!(
        report.failures.is_empty(),
        "{} requests failed while the deploys raced: {:?}",
        report.failures.len(),
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(report.total() > 0);
    // The retired versions drain and stop in the background: one container keeps serving.
    let deadline = Instant::now() + Duration::from_secs(120);
    while running_containers(&app).len() > 1 {
        assert!(Instant::now() < deadline, "{:?}", running_containers(&app));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    remove_app_containers(&app);
}
