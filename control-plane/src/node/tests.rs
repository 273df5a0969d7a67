//! An in-process cluster: a whole control plane (`node::start` + `Node::serve`, real TLS on
//! loopback, SQLite file) and N agents (`berth_agent::run`, enrolled through the real token /
//! CSR path, each on its own mTLS stream) whose executor is the in-memory fake. Everything a
//! deploy crosses except Docker, in about a second; the Docker executor is covered by the
//! e2e suite and the executor contract suite keeps the fake honest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_agent::fake::FakeExecutor;
use berth_agent::{AgentRuntime, CommandReceipt};
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::fleet::{DeployTrigger, RolloutConfig};
use crate::model::{DeploymentLog, DeploymentStatus, Target, TargetStatus};
use crate::service::applications::ApplicationSpec;
use crate::service::Actor;

mod connections;
mod deploy_records;
mod enrollment;
mod public_failures;
mod registry_push;
mod shutdown;
mod watch_streams;

const MUST_HAPPEN: Duration = Duration::from_secs(20);

struct Cluster {
    dir: TempDir,
    admin_url: String,
    /// The agent (mTLS) port.
    agent_addr: std::net::SocketAddr,
    ca_fingerprint: String,
    fleet: Fleet,
    agents: HashMap<String, RunningAgent>,
    /// Stops the node (as SIGTERM does); `serving` ends once it has stopped.
    stop: Option<oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

struct RunningAgent {
    executor: Arc<FakeExecutor>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    commands: mpsc::UnboundedReceiver<CommandReceipt>,
}

impl Cluster {
    async fn start() -> Cluster {
        Self::start_with(|_| {}).await
    }

    /// A cluster whose node configuration `configure` adjusts first.
    async fn start_with(configure: impl FnOnce(&mut NodeConfig)) -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new(dir.path().join("control-plane"));
        config.grpc_listen = "127.0.0.1:0".parse().unwrap();
        config.agent_listen = "127.0.0.1:0".parse().unwrap();
        config.fleet.rollout = RolloutConfig {
            connect_wait: Duration::from_secs(5),
            result_timeout: MUST_HAPPEN,
            reconcile_timeout: MUST_HAPPEN,
        };
        configure(&mut config);
        let node = start(config).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        Cluster {
            admin_url: format!("https://{}", node.grpc_addr),
            agent_addr: node.agent_addr,
            ca_fingerprint: node.ca_fingerprint.clone(),
            fleet: node.fleet.clone(),
            dir,
            agents: HashMap::new(),
            stop: Some(stop),
            serving: Some(tokio::spawn(node.serve(async {
                let _ = stopped.await;
            }))),
        }
    }

    /// Stops the node as SIGTERM does (agents keep running) and waits until `serve` returns.
    async fn stop_node(&mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().expect("node running").send(());
        let serving = self.serving.take().expect("node running");
        tokio::time::timeout(MUST_HAPPEN, serving)
            .await
            .expect("the node stops in time")
            .expect("serve does not panic")
    }

    /// A TLS channel to the admin port, verifying the node's CA.
    async fn admin_channel(&self) -> tonic::transport::Channel {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.fleet.ca_pem()));
        tonic::transport::Channel::from_shared(self.admin_url.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Enrolls `name` (labels `role=web`) and starts it with `executor`.
    async fn add_agent(&mut self, name: &str, executor: FakeExecutor) {
        let labels = [("role".to_string(), "web".to_string())].into();
        let (token, _) = self
            .fleet
            .create_enrollment_token(&Actor::system(), name, &labels, Some(60))
            .await
            .unwrap();
        let identity =
            berth_agent::enroll::enroll(&self.admin_url, &token, &self.ca_fingerprint, "test")
                .await
                .unwrap();
        identity.save(&self.agent_dir(name)).unwrap();
        self.run_agent(name, Arc::new(executor));
        self.wait_connected(name).await;
    }

    fn agent_dir(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join("agents").join(name)
    }

    fn run_agent(&mut self, name: &str, executor: Arc<FakeExecutor>) {
        let (stop, stopped) = oneshot::channel::<()>();
        let (on_command, commands) = mpsc::unbounded_channel();
        let runtime = AgentRuntime {
            data_dir: self.agent_dir(name),
            executor: executor.clone(),
            version: "test".into(),
            on_command: Some(on_command),
            endpoint_override: None,
        };
        let task = tokio::spawn(berth_agent::run(runtime, async {
            let _ = stopped.await;
        }));
        self.agents.insert(
            name.to_string(),
            RunningAgent {
                executor,
                stop: Some(stop),
                task,
                commands,
            },
        );
    }

    /// Stops an agent's process (its stream ends; commands already running finish and are
    /// journaled), then starts it again on the same data directory.
    async fn restart_agent(&mut self, name: &str) {
        let mut agent = self.agents.remove(name).unwrap();
        let _ = agent.stop.take().unwrap().send(());
        agent.task.await.unwrap().unwrap();
        // As after a real restart, the old stream is gone before the new one comes.
        let deadline = tokio::time::Instant::now() + MUST_HAPPEN;
        while self.fleet.is_connected(name) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}'s old stream stayed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.run_agent(name, agent.executor);
        self.wait_connected(name).await;
    }

    async fn wait_connected(&self, name: &str) {
        let deadline = tokio::time::Instant::now() + MUST_HAPPEN;
        while !self.fleet.is_connected(name) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never connected"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn executor(&self, name: &str) -> &FakeExecutor {
        &self.agents[name].executor
    }

    async fn app(&self, name: &str, batch: u32) {
        self.fleet
            .service()
            .create_application(
                &Actor::system(),
                ApplicationSpec {
                    name: name.into(),
                    image: "team/web".into(),
                    version: None,
                    repository: None,
                    ports: vec![],
                    webhook_enabled: false,
                    auto_deploy: false,
                    targets: vec![Target::Label {
                        key: "role".into(),
                        value: "web".into(),
                    }],
                    deploy_batch_size: Some(batch),
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

    async fn deploy(&self, app: &str, version: &str) -> String {
        self.fleet
            .deploy(
                &Actor::system(),
                app,
                version,
                DeployTrigger {
                    trigger_type: "manual",
                    source: None,
                    cancel_in_progress: false,
                },
            )
            .await
            .unwrap()
    }

    async fn finished(&self, id: &str) -> DeploymentLog {
        let log = self.fleet.wait_finished(id, MUST_HAPPEN).await.unwrap();
        assert!(log.status.is_finished(), "{log:?}");
        log
    }

    async fn deploy_and_wait(&self, app: &str, version: &str) -> DeploymentLog {
        let id = self.deploy(app, version).await;
        self.finished(&id).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_reaches_every_agent_and_a_bad_version_is_rolled_back_everywhere() {
    let mut cluster = Cluster::start().await;
    cluster.add_agent("a1", FakeExecutor::new()).await;
    cluster
        .add_agent(
            "a2",
            FakeExecutor::failing_version("v3", "health check timed out"),
        )
        .await;
    cluster.add_agent("a3", FakeExecutor::new()).await;
    cluster.app("web", 1).await;

    let good = cluster.deploy_and_wait("web", "v2").await;
    assert_eq!(good.status, DeploymentStatus::Success, "{good:?}");
    for agent in ["a1", "a2", "a3"] {
        assert_eq!(
            cluster.executor(agent).current_version("web").as_deref(),
            Some("v2"),
            "{agent}"
        );
    }

    // v3 passes on a1, fails its health gate on a2: a1 goes back to v2, a3 is never touched.
    let bad = cluster.deploy_and_wait("web", "v3").await;
    assert_eq!(bad.status, DeploymentStatus::Failed, "{bad:?}");
    assert!(bad
        .error_message
        .as_deref()
        .unwrap()
        .contains("target a2 failed"));
    // The rollback result is stored before the deployment finishes.
    let targets = cluster
        .fleet
        .service()
        .store()
        .deployment_targets(&bad.deployment_id)
        .await
        .unwrap();
    let status: Vec<_> = targets
        .iter()
        .map(|t| (t.agent_name.as_str(), t.status))
        .collect();
    assert_eq!(
        status,
        vec![
            ("a1", TargetStatus::RolledBack),
            ("a2", TargetStatus::Failed),
            ("a3", TargetStatus::Skipped),
        ]
    );
    for agent in ["a1", "a2", "a3"] {
        assert_eq!(
            cluster.executor(agent).current_version("web").as_deref(),
            Some("v2"),
            "{agent} serves v2 after the failed v3"
        );
    }
    assert_eq!(cluster.executor("a3").deploy_count(), 1, "a3 never ran v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_journaled_while_the_agent_was_away_is_replayed_and_the_deploy_runs_once() {
    let mut cluster = Cluster::start().await;
    cluster
        .add_agent(
            "a1",
            FakeExecutor::new().with_delay(Duration::from_millis(400)),
        )
        .await;
    cluster.app("web", 1).await;
    let id = cluster.deploy("web", "v2").await;

    // The command arrives; the control plane drops the stream while the deploy runs.
    let receipt = tokio::time::timeout(
        MUST_HAPPEN,
        cluster.agents.get_mut("a1").unwrap().commands.recv(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(receipt.deployment_id, id);
    cluster.fleet.reap_silent(Duration::ZERO);
    assert!(!cluster.fleet.is_connected("a1"));

    // The deploy finishes with no stream: its result goes to the journal. The agent dials
    // back in, replays it (and answers the re-sent command from the journal), so the
    // deployment finishes without running twice.
    let log = cluster.finished(&id).await;
    assert_eq!(log.status, DeploymentStatus::Success, "{log:?}");
    assert_eq!(cluster.executor("a1").deploy_count(), 1);

    // And an agent restarted after everything was acknowledged has nothing to replay.
    cluster.restart_agent("a1").await;
    let again = cluster.deploy_and_wait("web", "v3").await;
    assert_eq!(again.status, DeploymentStatus::Success, "{again:?}");
    assert_eq!(cluster.executor("a1").deploy_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_deploys_of_one_app_runs_the_first_and_the_last_and_supersedes_the_rest() {
    let mut cluster = Cluster::start().await;
    cluster
        .add_agent(
            "a1",
            FakeExecutor::new().with_delay(Duration::from_millis(300)),
        )
        .await;
    cluster.app("web", 1).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(cluster.deploy("web", &format!("v{i}")).await);
    }
    let mut outcomes = Vec::new();
    for id in &ids {
        outcomes.push(cluster.finished(id).await.status);
    }
    let ran = outcomes
        .iter()
        .filter(|s| **s == DeploymentStatus::Success)
        .count();
    assert!(
        outcomes
            .iter()
            .all(|s| matches!(s, DeploymentStatus::Success | DeploymentStatus::Superseded)),
        "{outcomes:?}"
    );
    assert!(
        ran <= 2,
        "one runs, at most one more after it: {outcomes:?}"
    );
    assert_eq!(outcomes[0], DeploymentStatus::Success, "{outcomes:?}");
    assert_eq!(outcomes[19], DeploymentStatus::Success, "{outcomes:?}");
    assert_eq!(
        cluster.executor("a1").current_version("web").as_deref(),
        Some("v19")
    );
    assert_eq!(cluster.executor("a1").deploy_count(), ran);
}

/// The admission decides "start or queue" in the writer's transaction: deploys of one app
/// that arrive together share commits, and still exactly one of them takes the slot — the
/// others queue behind it and only the newest queued one runs after it.
#[tokio::test]
async fn concurrent_deploys_of_one_app_admit_exactly_one_and_run_the_newest_queued_after_it() {
    let mut cluster = Cluster::start().await;
    cluster
        .add_agent(
            "a1",
            FakeExecutor::new().with_delay(Duration::from_millis(500)),
        )
        .await;
    cluster.app("web", 1).await;
    let cluster = Arc::new(cluster);
    let deploys: Vec<_> = (0..20)
        .map(|i| {
            let cluster = cluster.clone();
            tokio::spawn(async move { cluster.deploy("web", &format!("v{i}")).await })
        })
        .collect();
    let mut ids = Vec::new();
    for deploy in deploys {
        ids.push(deploy.await.unwrap());
    }
    let mut outcomes = Vec::new();
    for id in &ids {
        outcomes.push(cluster.finished(id).await);
    }
    let ran: Vec<&DeploymentLog> = outcomes
        .iter()
        .filter(|log| log.status == DeploymentStatus::Success)
        .collect();
    assert!(
        outcomes.iter().all(|log| matches!(
            log.status,
            DeploymentStatus::Success | DeploymentStatus::Superseded
        )),
        "{outcomes:#?}"
    );
    assert_eq!(
        ran.len(),
        2,
        "the admitted one, then the newest queued: {outcomes:#?}"
    );
    assert_eq!(cluster.executor("a1").deploy_count(), 2);
    // The one that ran second was the newest: every superseded one was admitted before it.
    let last = ran.iter().max_by_key(|log| log.id).unwrap();
    assert!(
        outcomes
            .iter()
            .filter(|log| log.status == DeploymentStatus::Superseded)
            .all(|log| log.id < last.id),
        "{outcomes:#?}"
    );
    assert_eq!(
        cluster.executor("a1").current_version("web"),
        Some(last.version.clone())
    );
}
