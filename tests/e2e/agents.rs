//! The agents issue's acceptance, against the real Docker Engine and a real private registry:
//! deploys with health gate and rollback, rolling multi-host deploys, mTLS refusals, and
//! crashes (control plane kill -9, agent kill -9, a cut stream).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use pb::agent_admin_service_client::AgentAdminServiceClient;
use pb::application_service_client::ApplicationServiceClient;
use pb::env_service_client::EnvServiceClient;
use pb::repository_service_client::RepositoryServiceClient;
use pb::secret_service_client::SecretServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::common::{
    authed, containers_with_label, deploy, dirs, docker_available, free_port, http_get,
    remove_app_containers, wait_connected, wait_deployment, wait_deployment_until, AgentProcess,
    DevNode, Dirs,
};
use crate::registry;

const APP_SECRET: &str = "sup3r-s3cret-from-a-group";

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid_like()[..8])
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
        .chars()
        .rev()
        .collect()
}

/// Registers the test registry (with the given password), a group with APP_SECRET, and an
/// application `name` of image `web` that maps `host_port` (if any) and references the secret.
async fn register_app(
    node: &DevNode,
    name: &str,
    host_port: Option<u16>,
    password: &str,
    targets: Vec<pb::Target>,
) {
    let admin = node.admin_token();
    let channel = node.channel().await;
    let reg = registry::shared();
    let repo = format!("reg-{name}");
    RepositoryServiceClient::new(channel.clone())
        .add_repository(authed(
            pb::AddRepositoryRequest {
                name: repo.clone(),
                url: reg.server.clone(),
                username: Some(reg.username.clone()),
                password: Some(password.to_string()),
            },
            &admin,
        ))
        .await
        .unwrap();
    let group = format!("g-{name}");
    let mut secrets = SecretServiceClient::new(channel.clone());
    secrets
        .create_group(authed(
            pb::CreateGroupRequest {
                name: group.clone(),
                description: None,
            },
            &admin,
        ))
        .await
        .unwrap();
    secrets
        .set_secret(authed(
            pb::SetSecretRequest {
                group: group.clone(),
                name: "APP_SECRET".into(),
                value: APP_SECRET.into(),
                description: None,
            },
            &admin,
        ))
        .await
        .unwrap();
    ApplicationServiceClient::new(channel.clone())
        .create_application(authed(
            pb::CreateApplicationRequest {
                name: name.into(),
                image: "web".into(),
                repository: Some(repo),
                ports: host_port
                    .map(|p| pb::PortMapping {
                        host: p.into(),
                        container: 80,
                        protocol: "tcp".into(),
                    })
                    .into_iter()
                    .collect(),
                targets,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap();
    EnvServiceClient::new(channel)
        .set_env(authed(
            pb::SetEnvRequest {
                scope: Some(pb::EnvScope {
                    scope: Some(pb::env_scope::Scope::App(name.into())),
                }),
                key: "APP_SECRET".into(),
                value: Some(pb::set_env_request::Value::Secret(format!(
                    "{group}/APP_SECRET"
                ))),
                description: None,
            },
            &admin,
        ))
        .await
        .unwrap();
}

fn status(detail: &pb::DeploymentDetail) -> &str {
    &detail.deployment.as_ref().unwrap().status
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_v1_v2_and_a_failing_v3_never_takes_the_app_down() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let node = DevNode::start(d.data.path(), d.logs.path(), &[]).unwrap_or_else(|l| panic!("{l}"));
    wait_connected(&node, "local").await;
    let app = unique("web");
    let port = free_port();
    register_app(
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
    let page = http_get(port, "/").expect("v1 serves");
    assert!(page.contains("version=v1"), "{page}");

    let v2 = wait_deployment(
        &node,
        &deploy(&node, &app, "v2").await,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(status(&v2), "success", "{v2:#?}");
    let page = http_get(port, "/").expect("v2 serves");
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
    let stop = Arc::new(AtomicBool::new(false));
    let (polls, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let poller = {
        let (stop, polls, failures) = (stop.clone(), polls.clone(), failures.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                polls.fetch_add(1, Ordering::Relaxed);
                match http_get(port, "/") {
                    Some(page) if page.contains("version=v2") => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let v3 = wait_deployment(
        &node,
        &deploy(&node, &app, "bad").await,
        Duration::from_secs(120),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
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
        polls.load(Ordering::Relaxed) > 20,
        "the poller ran during the deploy"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "v2 stopped serving during the failed v3 deploy"
    );
    assert!(http_get(port, "/").unwrap().contains("version=v2"));

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
    let node = DevNode::start(d.data.path(), d.logs.path(), &[]).unwrap_or_else(|l| panic!("{l}"));
    wait_connected(&node, "local").await;
    let app = unique("wrongpw");
    register_app(&node, &app, None, "not-the-password", vec![]).await;
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
    let node = DevNode::start(d.data.path(), d.logs.path(), &[]).unwrap_or_else(|l| panic!("{l}"));
    // The dev node's own agent is not labelled env=prod; two more agents are.
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let prod = [("env", "prod")];
    let (n1, n2) = (unique("prod-a"), unique("prod-b"));
    let _a = AgentProcess::start(&node, &n1, &prod, a_dir.path(), d.logs.path()).await;
    let _b = AgentProcess::start(&node, &n2, &prod, b_dir.path(), d.logs.path()).await;
    wait_connected(&node, &n1).await;
    wait_connected(&node, &n2).await;
    let label = vec![pb::Target {
        target: Some(pb::target::Target::Label("env=prod".into())),
    }];

    // Without host ports both agents (on this one Docker Engine) succeed, one after the other.
    let ok_app = unique("roll");
    register_app(
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
    register_app(
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
        http_get(port, "/").is_none(),
        "the rolled-back first target must not serve the failed release"
    );
    remove_app_containers(&ok_app);
    remove_app_containers(&port_app);
}

/// A TLS channel to the agent port with an optional client identity.
async fn agent_channel(
    node_ca_pem: &str,
    agent_addr: &str,
    identity: Option<Identity>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(node_ca_pem))
        .domain_name("127.0.0.1");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Channel::from_shared(format!("https://{agent_addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Whether the agent API refuses this client: at the TLS handshake or when the stream opens.
async fn refused(ca: &str, addr: &str, identity: Option<Identity>) -> bool {
    match agent_channel(ca, addr, identity).await {
        Err(_) => true,
        Ok(channel) => try_connect(channel).await.is_err(),
    }
}

/// Opens the agent stream with a hello; the error code the control plane answers with.
async fn try_connect(channel: Channel) -> Result<(), tonic::Status> {
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    let hello = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello::default())),
    };
    let mut stream = client
        .connect(tokio_stream::iter(vec![hello]))
        .await?
        .into_inner();
    // The stream stays open for an accepted agent; a refused one ends with an error.
    match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
        Ok(Err(status)) => Err(status),
        _ => Ok(()),
    }
}

fn agent_addr(node: &DevNode) -> String {
    // The fixture's nodes for these tests listen on a known agent port.
    node.agent_addr.clone().expect("agent address")
}

async fn node_with_agent_port(d: &Dirs) -> DevNode {
    let agent_port = free_port();
    let mut node = DevNode::start_with(
        d.data.path(),
        d.logs.path(),
        &[],
        &[
            "--no-agent",
            "--agent-listen",
            &format!("127.0.0.1:{agent_port}"),
        ],
        free_port(),
    )
    .unwrap_or_else(|l| panic!("{l}"));
    node.agent_addr = Some(format!("127.0.0.1:{agent_port}"));
    node
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_without_a_certificate_is_refused() {
    let d = dirs();
    let node = node_with_agent_port(&d).await;
    let ca = std::fs::read_to_string(&node.ca_cert).unwrap();
    assert!(
        refused(&ca, &agent_addr(&node), None).await,
        "a client without certificate reached the agent api"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_with_a_certificate_from_another_ca_is_refused() {
    let d = dirs();
    let node = node_with_agent_port(&d).await;
    // A CA of our own, and a client certificate it signs.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth CA");
    let other_ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "local");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &other_ca, &ca_key).unwrap();
    let ca = std::fs::read_to_string(&node.ca_cert).unwrap();
    let identity = Identity::from_pem(cert.pem(), key.serialize_pem());
    assert!(
        refused(&ca, &agent_addr(&node), Some(identity)).await,
        "a certificate from another CA reached the agent api"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_agent_is_dropped_at_once_and_refused_afterwards() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let node = node_with_agent_port(&d).await;
    let a_dir = tempfile::tempdir().unwrap();
    let name = unique("revoked");
    let mut agent = AgentProcess::start(&node, &name, &[], a_dir.path(), d.logs.path()).await;
    wait_connected(&node, &name).await;
    let cert = std::fs::read_to_string(a_dir.path().join("agent.crt")).unwrap();
    let key = std::fs::read_to_string(a_dir.path().join("agent.key")).unwrap();
    // With its valid certificate the stream is accepted.
    let ca = std::fs::read_to_string(&node.ca_cert).unwrap();
    let channel = agent_channel(
        &ca,
        &agent_addr(&node),
        Some(Identity::from_pem(&cert, &key)),
    )
    .await
    .unwrap();
    assert!(try_connect(channel).await.is_ok());
    wait_connected(&node, &name).await;

    let mut admin = AgentAdminServiceClient::new(node.channel().await);
    admin
        .revoke_agent(authed(
            pb::RevokeAgentRequest { name: name.clone() },
            &node.admin_token(),
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let agents = admin
            .list_agents(authed(pb::ListAgentsRequest {}, &node.admin_token()))
            .await
            .unwrap()
            .into_inner()
            .agents;
        let a = agents.iter().find(|a| a.name == name).unwrap();
        if a.status == "revoked" {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        agent.log().contains("revoked") || agent.log().contains("PermissionDenied"),
        "agent not told: {}",
        agent.log()
    );
    let channel = agent_channel(
        &ca,
        &agent_addr(&node),
        Some(Identity::from_pem(&cert, &key)),
    )
    .await
    .unwrap();
    let refused = try_connect(channel).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    agent.kill();
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

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_stream_mid_deploy_delivers_the_outcome_after_reconnect() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let agent_port = free_port();
    let proxy = CuttableProxy::start(format!("127.0.0.1:{agent_port}")).await;
    let node = DevNode::start_with(
        d.data.path(),
        d.logs.path(),
        &[],
        &[
            "--no-agent",
            "--agent-listen",
            &format!("127.0.0.1:{agent_port}"),
            "--agent-endpoint",
            &format!("127.0.0.1:{}", proxy.port),
        ],
        free_port(),
    )
    .unwrap_or_else(|l| panic!("{l}"));
    let a_dir = tempfile::tempdir().unwrap();
    let name = unique("cut");
    let _agent = AgentProcess::start(&node, &name, &[], a_dir.path(), d.logs.path()).await;
    wait_connected(&node, &name).await;
    let app = unique("cutapp");
    register_app(&node, &app, None, &registry::shared().password, vec![]).await;
    let id = deploy(&node, &app, "v1").await;
    wait_target_running(&node, &id).await;
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
    let node = node_with_agent_port(&d).await;
    let a_dir = tempfile::tempdir().unwrap();
    let name = unique("killed");
    let mut agent = AgentProcess::start(&node, &name, &[], a_dir.path(), d.logs.path()).await;
    wait_connected(&node, &name).await;
    let app = unique("killapp");
    register_app(&node, &app, None, &registry::shared().password, vec![]).await;
    let id = deploy(&node, &app, "v1").await;
    wait_target_running(&node, &id).await;
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
    let args = [
        "--no-agent".to_string(),
        "--agent-listen".into(),
        format!("127.0.0.1:{agent_port}"),
        "--reconcile-timeout".into(),
        "60".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = DevNode::start_with(d.data.path(), d.logs.path(), &[], &args, admin_port)
        .unwrap_or_else(|l| panic!("{l}"));
    let a_dir = tempfile::tempdir().unwrap();
    let name = unique("survivor");
    let _agent = AgentProcess::start(&node, &name, &[], a_dir.path(), d.logs.path()).await;
    wait_connected(&node, &name).await;
    let app = unique("crashapp");
    register_app(&node, &app, None, &registry::shared().password, vec![]).await;
    let id = deploy(&node, &app, "v1").await;
    wait_target_running(&node, &id).await;
    node.kill();
    let node = DevNode::start_with(d.data.path(), d.logs.path(), &[], &args, admin_port)
        .unwrap_or_else(|l| panic!("{l}"));
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
    let mut deploys = pb::deploy_service_client::DeployServiceClient::new(node.channel().await);
    let all = deploys
        .list_deployments(authed(
            pb::ListDeploymentsRequest {
                app: app.clone(),
                limit: 50,
            },
            &node.admin_token(),
        ))
        .await
        .unwrap()
        .into_inner()
        .deployments;
    assert!(
        all.iter()
            .all(|d| d.status != "pending" && d.status != "running"),
        "{all:#?}"
    );
    remove_app_containers(&app);
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_renew_their_certificate_over_the_stream_without_a_restart() {
    let d = dirs();
    let agent_port = free_port();
    // 15 s certificates: the agent renews after 10 s.
    let node = DevNode::start_with(
        d.data.path(),
        d.logs.path(),
        &[],
        &[
            "--no-agent",
            "--agent-listen",
            &format!("127.0.0.1:{agent_port}"),
            "--agent-cert-ttl",
            "15",
        ],
        free_port(),
    )
    .unwrap_or_else(|l| panic!("{l}"));
    let a_dir = tempfile::tempdir().unwrap();
    let name = unique("renew");
    let agent = AgentProcess::start(&node, &name, &[], a_dir.path(), d.logs.path()).await;
    wait_connected(&node, &name).await;
    let first = std::fs::read_to_string(a_dir.path().join("agent.crt")).unwrap();
    let first_key = std::fs::read_to_string(a_dir.path().join("agent.key")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let now = std::fs::read_to_string(a_dir.path().join("agent.crt")).unwrap_or_default();
        if !now.is_empty() && now != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "certificate not renewed: {}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The same process reconnects with the new certificate; the old one is refused.
    wait_connected(&node, &name).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_connected(&node, &name).await;
    assert!(
        agent.log().contains("certificate renewed"),
        "{}",
        agent.log()
    );
    let ca = std::fs::read_to_string(&node.ca_cert).unwrap();
    let old_key_cert = Identity::from_pem(&first, &first_key);
    assert!(
        refused(&ca, &format!("127.0.0.1:{agent_port}"), Some(old_key_cert)).await,
        "the superseded certificate still works"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_off_the_allowlist_is_refused_before_dispatch_and_audited() {
    let d = dirs();
    let node = DevNode::start_with(
        d.data.path(),
        d.logs.path(),
        &[],
        &["--no-agent", "--agent-listen", "127.0.0.1:0"],
        free_port(),
    )
    .unwrap_or_else(|l| panic!("{l}"));
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
