//! Fast tests of the rollout engine: a [`Fleet`] over a real SQLite file, and scripted agents
//! that speak the agent protocol through `open_session` / `handle_message` — exactly what
//! `grpc/agent.rs` calls for a real stream — with no network and no Docker. Each test names
//! the agent-side behaviour it scripts (answer, fail, stay silent, reconnect, replay).
//!
//! Timers run on the real clock, with the engine's timeouts configured in milliseconds. A
//! paused clock (`tokio::time::pause`) is not sound here: sqlx runs SQLite on threads of its
//! own, a paused runtime waiting for them counts as idle and jumps to the next timer, and
//! that fires sqlx's own pool-acquire deadline (seen: "pool timed out while waiting for an
//! open connection"). Pure timing logic (the agent's backoff) is tested on paused time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1 as pb;
use tempfile::TempDir;

use super::*;
use crate::crypto::MasterKey;
use crate::model::{DeploymentLog, DeploymentStatus, Target, TargetStatus};
use crate::service::applications::ApplicationSpec;
use crate::service::Actor;
use crate::store::Store;

/// How long a test waits for something that must happen; only reached when it does not.
const MUST_HAPPEN: Duration = Duration::from_secs(10);
/// How long a test watches for something that must not happen.
const MUST_NOT_HAPPEN: Duration = Duration::from_millis(150);

struct Harness {
    fleet: Fleet,
    dir: TempDir,
}

fn rollout(result_timeout: Duration, reconcile_timeout: Duration) -> RolloutConfig {
    RolloutConfig {
        connect_wait: Duration::from_secs(2),
        result_timeout,
        reconcile_timeout,
    }
}

impl Harness {
    /// A fresh control plane with `agents` enrolled, all labelled `role=web`.
    async fn new(agents: &[&str], rollout: RolloutConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let fleet = fleet_on(dir.path(), rollout).await;
        for name in agents {
            let labels = BTreeMap::from([("role".to_string(), "web".to_string())]);
            fleet
                .service()
                .store()
                .upsert_agent(name, &labels, &format!("fp-{name}"), "1", "4102444800")
                .await
                .unwrap();
        }
        Harness { fleet, dir }
    }

    /// The same data directory opened by a new control plane, as after a crash.
    async fn restarted(&self, rollout: RolloutConfig) -> Fleet {
        fleet_on(self.dir.path(), rollout).await
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
}

async fn fleet_on(dir: &std::path::Path, rollout: RolloutConfig) -> Fleet {
    let store = Store::open(&dir.join("berth.db")).await.unwrap();
    let service = Service::new(store, MasterKey::from_bytes(&[9u8; 32]).unwrap())
        .await
        .unwrap();
    let pki = Pki::load_or_create(dir, &["localhost".to_string()]).unwrap();
    Fleet::new(
        service,
        Arc::new(pki),
        FleetConfig {
            rollout,
            ..FleetConfig::default()
        },
    )
}

async fn deploy(fleet: &Fleet, app: &str, version: &str) -> String {
    fleet
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

async fn finished(fleet: &Fleet, id: &str) -> DeploymentLog {
    let log = fleet.wait_finished(id, MUST_HAPPEN * 3).await.unwrap();
    assert!(log.status.is_finished(), "{log:?}");
    log
}

async fn targets(fleet: &Fleet, id: &str) -> Vec<(String, TargetStatus)> {
    fleet
        .service()
        .store()
        .deployment_targets(id)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.agent_name, t.status))
        .collect()
}

async fn phases(fleet: &Fleet, id: &str) -> Vec<String> {
    fleet
        .service()
        .store()
        .deployment_events(id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.phase)
        .collect()
}

/// One agent's end of the stream, driven by the test.
struct ScriptedAgent {
    name: String,
    fleet: Fleet,
    session: Session,
    acks: Vec<(String, i32)>,
}

/// A command as the test sees it.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Deploy { id: String, version: String },
    Rollback { id: String },
    Commit { id: String },
}

impl ScriptedAgent {
    async fn connect(fleet: &Fleet, name: &str) -> ScriptedAgent {
        let row = fleet.service().store().agent(name).await.unwrap();
        let session = fleet
            .open_session(&row, &pb::Hello::default())
            .await
            .unwrap();
        ScriptedAgent {
            name: name.to_string(),
            fleet: fleet.clone(),
            session,
            acks: Vec::new(),
        }
    }

    /// The stream breaks and the agent dials back in.
    async fn reconnect(self) -> ScriptedAgent {
        self.fleet.close_session(&self.name, self.session.id).await;
        ScriptedAgent::connect(&self.fleet, &self.name).await
    }

    /// The next command, keeping acknowledgements aside.
    async fn next(&mut self) -> Command {
        loop {
            let msg = tokio::time::timeout(MUST_HAPPEN, self.session.outbound.recv())
                .await
                .unwrap_or_else(|_| panic!("{} got no command", self.name))
                .expect("stream open");
            match msg.msg.expect("a message") {
                pb::control_message::Msg::Deploy(d) => {
                    return Command::Deploy {
                        id: d.deployment_id,
                        version: d.version,
                    }
                }
                pb::control_message::Msg::Rollback(r) => {
                    return Command::Rollback {
                        id: r.deployment_id,
                    }
                }
                pb::control_message::Msg::Commit(c) => {
                    return Command::Commit {
                        id: c.deployment_id,
                    }
                }
                pb::control_message::Msg::Ack(a) => self.acks.push((a.deployment_id, a.kind)),
                // Domain routing and ACME challenges are not what these tests script.
                pb::control_message::Msg::Routes(_)
                | pb::control_message::Msg::AcmeChallenge(_) => {}
            }
        }
    }

    /// Asserts that no command arrives for a while (acknowledgements aside).
    async fn idle(&mut self) {
        tokio::time::sleep(MUST_NOT_HAPPEN).await;
        while let Ok(msg) = self.session.outbound.try_recv() {
            match msg.msg {
                Some(pb::control_message::Msg::Ack(a)) => self.acks.push((a.deployment_id, a.kind)),
                other => panic!("{} got an unexpected command: {other:?}", self.name),
            }
        }
    }

    async fn answer(&self, id: &str, kind: pb::CommandKind, error: Option<&str>) {
        let result = pb::DeployResult {
            deployment_id: id.to_string(),
            kind: kind as i32,
            success: error.is_none(),
            container_id: format!("c-{}", self.name),
            error: error.unwrap_or_default().to_string(),
            rolled_back: error.is_some(),
        };
        self.fleet
            .handle_message(
                &self.name,
                self.session.id,
                pb::AgentMessage {
                    msg: Some(pb::agent_message::Msg::Result(result)),
                },
            )
            .await
            .unwrap();
    }

    async fn deployed(&self, id: &str) {
        self.answer(id, pb::CommandKind::Deploy, None).await
    }
}

fn deploy_of(id: &str, version: &str) -> Command {
    Command::Deploy {
        id: id.to_string(),
        version: version.to_string(),
    }
}

#[tokio::test]
async fn batches_go_out_in_order_and_each_waits_for_the_previous_one() {
    let h = Harness::new(
        &["a1", "a2", "a3", "a4", "a5"],
        rollout(MUST_HAPPEN, MUST_HAPPEN),
    )
    .await;
    h.app("web", 2).await;
    let mut agents = Vec::new();
    for name in ["a1", "a2", "a3", "a4", "a5"] {
        agents.push(ScriptedAgent::connect(&h.fleet, name).await);
    }
    let id = deploy(&h.fleet, "web", "v2").await;
    // The first batch was recorded as dispatched by the admission itself (one commit), so it
    // is durable before the deploy call answers; the later batches are not yet.
    let running = TargetStatus::Running;
    let pending = TargetStatus::Pending;
    let expected: Vec<(String, TargetStatus)> = [
        ("a1", running),
        ("a2", running),
        ("a3", pending),
        ("a4", pending),
        ("a5", pending),
    ]
    .into_iter()
    .map(|(a, s)| (a.to_string(), s))
    .collect();
    assert_eq!(targets(&h.fleet, &id).await, expected);
    assert_eq!(
        status(&h.fleet, &id).await.status,
        DeploymentStatus::Running
    );
    // (`prepare`: the default health timeout, capped at the test's short result timeout.)
    assert_eq!(
        phases(&h.fleet, &id).await,
        ["prepare", "dispatch", "dispatch"]
    );

    for batch in [0..2, 2..4, 4..5] {
        // Only this batch has its command; the later ones wait.
        for agent in &mut agents[batch.clone()] {
            assert_eq!(agent.next().await, deploy_of(&id, "v2"));
        }
        for agent in &mut agents[batch.end..] {
            agent.idle().await;
        }
        for agent in &agents[batch.clone()] {
            agent.deployed(&id).await;
        }
    }
    let log = finished(&h.fleet, &id).await;
    assert_eq!(log.status, DeploymentStatus::Success);
    // Every target commits (removes its superseded container) once all succeeded.
    for agent in &mut agents {
        assert_eq!(agent.next().await, Command::Commit { id: id.clone() });
        assert!(
            agent.acks.iter().any(|(d, _)| d == &id),
            "{} ack",
            agent.name
        );
    }
    assert!(targets(&h.fleet, &id)
        .await
        .iter()
        .all(|(_, s)| *s == TargetStatus::Success));
}

#[tokio::test]
async fn the_first_failed_target_stops_the_rollout_and_rolls_back_the_others() {
    let h = Harness::new(&["a1", "a2", "a3"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    h.app("web", 1).await;
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    let mut a2 = ScriptedAgent::connect(&h.fleet, "a2").await;
    let mut a3 = ScriptedAgent::connect(&h.fleet, "a3").await;
    let id = deploy(&h.fleet, "web", "v2").await;

    assert_eq!(a1.next().await, deploy_of(&id, "v2"));
    a1.deployed(&id).await;
    assert_eq!(a2.next().await, deploy_of(&id, "v2"));
    a2.answer(&id, pb::CommandKind::Deploy, Some("health check timed out"))
        .await;
    // a1 already serves v2: it is rolled back; a3 never hears of the deployment.
    assert_eq!(a1.next().await, Command::Rollback { id: id.clone() });
    a1.answer(&id, pb::CommandKind::Rollback, None).await;
    a3.idle().await;

    let log = finished(&h.fleet, &id).await;
    assert_eq!(log.status, DeploymentStatus::Failed);
    assert_eq!(
        log.error_message.as_deref(),
        Some("target a2 failed: health check timed out")
    );
    assert_eq!(
        log.public_reason.as_deref(),
        Some("deploy failed on 1 of 3 hosts")
    );
    assert_eq!(
        targets(&h.fleet, &id).await,
        vec![
            ("a1".to_string(), TargetStatus::RolledBack),
            ("a2".to_string(), TargetStatus::Failed),
            ("a3".to_string(), TargetStatus::Skipped),
        ]
    );
    let phases = phases(&h.fleet, &id).await;
    assert!(phases.contains(&"rollback".to_string()), "{phases:?}");
    assert_eq!(phases.last().map(String::as_str), Some("failed"));
    a3.idle().await;
}

#[tokio::test]
async fn a_target_without_a_result_in_time_fails_and_is_told_to_roll_back() {
    let h = Harness::new(&["a1"], rollout(Duration::from_millis(300), MUST_HAPPEN)).await;
    h.app("web", 1).await;
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    let id = deploy(&h.fleet, "web", "v2").await;
    assert_eq!(a1.next().await, deploy_of(&id, "v2"));

    // The agent stays silent past the timeout: the target fails, and since the agent may
    // still be deploying, it is told to roll back (it runs that after the deploy).
    let log = finished(&h.fleet, &id).await;
    assert_eq!(log.status, DeploymentStatus::Failed);
    let why = log.error_message.unwrap();
    assert!(why.contains("no result from agent a1 within"), "{why}");
    assert_eq!(a1.next().await, Command::Rollback { id: id.clone() });

    // Then its late success arrives: acknowledged (so the agent drops it from its
    // journal), no second rollback while the first is out, and the target stays failed.
    a1.deployed(&id).await;
    a1.idle().await;
    assert!(a1
        .acks
        .contains(&(id.clone(), pb::CommandKind::Deploy as i32)));
    a1.answer(&id, pb::CommandKind::Rollback, None).await;
    assert_eq!(
        targets(&h.fleet, &id).await,
        vec![("a1".to_string(), TargetStatus::Failed)]
    );
    let (log, _) = h.fleet.service().store().deployment(&id).await.unwrap();
    assert_eq!(log.status, DeploymentStatus::Failed);
}

#[tokio::test]
async fn a_command_is_sent_again_when_its_agent_reconnects() {
    let h = Harness::new(&["a1"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    h.app("web", 1).await;
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    let id = deploy(&h.fleet, "web", "v2").await;
    assert_eq!(a1.next().await, deploy_of(&id, "v2"));

    // The stream breaks before the result: the same command comes again on the new stream.
    let mut a1 = a1.reconnect().await;
    assert_eq!(a1.next().await, deploy_of(&id, "v2"));
    a1.deployed(&id).await;
    assert_eq!(
        finished(&h.fleet, &id).await.status,
        DeploymentStatus::Success
    );
}

#[tokio::test]
async fn a_target_that_never_connects_fails_the_deployment_after_connect_wait() {
    let mut config = rollout(MUST_HAPPEN, MUST_HAPPEN);
    config.connect_wait = Duration::from_millis(200);
    let h = Harness::new(&["a1", "a2"], config).await;
    h.app("web", 2).await;
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    let id = deploy(&h.fleet, "web", "v2").await;
    assert_eq!(a1.next().await, deploy_of(&id, "v2"));
    a1.deployed(&id).await;
    // a2 is offline: it fails, and a1 (same batch, already on v2) is rolled back.
    assert_eq!(a1.next().await, Command::Rollback { id: id.clone() });
    a1.answer(&id, pb::CommandKind::Rollback, None).await;
    let log = finished(&h.fleet, &id).await;
    assert_eq!(log.status, DeploymentStatus::Failed);
    assert!(
        log.error_message
            .as_deref()
            .unwrap()
            .contains("agent a2 is not connected"),
        "{log:?}"
    );
    assert_eq!(
        log.public_reason.as_deref(),
        Some("deploy failed on 1 of 2 hosts"),
        "{log:?}"
    );
}

/// Runs `f` on a runtime of its own and then drops the runtime with every task it spawned:
/// what kill -9 does to a control plane's rollouts.
fn on_a_runtime_that_crashes<F, T>(f: F) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(f);
        rt.shutdown_background();
        out
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn after_a_crash_the_agents_replayed_results_finish_the_deployment() {
    let h = Harness::new(&["a1", "a2"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    h.app("web", 2).await;
    // The first control plane dispatches to both agents and dies before any result.
    let dir = h.dir.path().to_path_buf();
    let id = on_a_runtime_that_crashes(async move {
        let fleet = fleet_on(&dir, rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
        let mut a1 = ScriptedAgent::connect(&fleet, "a1").await;
        let mut a2 = ScriptedAgent::connect(&fleet, "a2").await;
        let id = deploy(&fleet, "web", "v2").await;
        assert_eq!(a1.next().await, deploy_of(&id, "v2"));
        assert_eq!(a2.next().await, deploy_of(&id, "v2"));
        id
    });

    // The new control plane reconciles; the agents reconnect and replay their journaled
    // results (both succeeded while it was down).
    let fleet = h.restarted(rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    fleet.reconcile().await.unwrap();
    let mut a1 = ScriptedAgent::connect(&fleet, "a1").await;
    let mut a2 = ScriptedAgent::connect(&fleet, "a2").await;
    a1.deployed(&id).await;
    a2.deployed(&id).await;
    let log = finished(&fleet, &id).await;
    assert_eq!(log.status, DeploymentStatus::Success);
    assert_eq!(a1.next().await, Command::Commit { id: id.clone() });
    assert_eq!(a2.next().await, Command::Commit { id: id.clone() });
    assert!(phases(&fleet, &id).await.contains(&"reconcile".to_string()));
}

#[tokio::test]
async fn after_a_crash_a_silent_target_fails_and_the_successful_one_is_rolled_back() {
    let h = Harness::new(&["a1", "a2"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    h.app("web", 2).await;
    let dir = h.dir.path().to_path_buf();
    let id = on_a_runtime_that_crashes(async move {
        let fleet = fleet_on(&dir, rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
        let mut a1 = ScriptedAgent::connect(&fleet, "a1").await;
        let mut a2 = ScriptedAgent::connect(&fleet, "a2").await;
        let id = deploy(&fleet, "web", "v2").await;
        a1.next().await;
        a2.next().await;
        id
    });

    let fleet = h
        .restarted(rollout(MUST_HAPPEN, Duration::from_millis(300)))
        .await;
    fleet.reconcile().await.unwrap();
    // a1 replays its success; a2 never reports within the reconcile timeout.
    let mut a1 = ScriptedAgent::connect(&fleet, "a1").await;
    a1.deployed(&id).await;
    assert_eq!(a1.next().await, Command::Rollback { id: id.clone() });
    a1.answer(&id, pb::CommandKind::Rollback, None).await;
    let log = finished(&fleet, &id).await;
    assert_eq!(log.status, DeploymentStatus::Failed);
    assert_eq!(
        targets(&fleet, &id).await,
        vec![
            ("a1".to_string(), TargetStatus::RolledBack),
            ("a2".to_string(), TargetStatus::Failed),
        ]
    );
    assert_eq!(
        log.public_reason.as_deref(),
        Some("deploy failed on 1 of 2 hosts")
    );
    assert!(log
        .error_message
        .unwrap()
        .contains("no report from the agent after a control plane restart"));
}

#[tokio::test]
async fn a_deployment_the_crash_left_undispatched_is_failed_with_the_reason() {
    let h = Harness::new(&["a1"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    h.app("web", 1).await;
    let dir = h.dir.path().to_path_buf();
    // Recorded, and the process died before the first batch went out (a1 never connected).
    let id = on_a_runtime_that_crashes(async move {
        let fleet = fleet_on(&dir, rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
        deploy(&fleet, "web", "v2").await
    });
    let fleet = h
        .restarted(rollout(MUST_HAPPEN, Duration::from_millis(200)))
        .await;
    fleet.reconcile().await.unwrap();
    let log = finished(&fleet, &id).await;
    assert_eq!(log.status, DeploymentStatus::Failed);
    let public = log.public_reason.clone().unwrap_or_default();
    assert!(
        public == "interrupted by a control plane restart"
            || public == "deploy failed on 1 of 1 host",
        "{public}"
    );
    let why = log.error_message.unwrap();
    assert!(
        why.contains("restarted before every target was deployed")
            || why.contains("no report from the agent"),
        "{why}"
    );
}

async fn status(fleet: &Fleet, id: &str) -> DeploymentLog {
    fleet.service().store().deployment(id).await.unwrap().0
}

async fn app_with(h: &Harness, name: &str) {
    h.app(name, 1).await;
}

#[tokio::test]
async fn a_deployment_of_a_busy_app_waits_and_only_the_newest_queued_one_runs() {
    let h = Harness::new(&["a1"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    h.app("web", 1).await;
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    let v2 = deploy(&h.fleet, "web", "v2").await;
    assert_eq!(a1.next().await, deploy_of(&v2, "v2"));

    // v3 and v4 arrive while v2 runs: v3 waits, then v4 supersedes it.
    let v3 = deploy(&h.fleet, "web", "v3").await;
    assert_eq!(status(&h.fleet, &v3).await.status, DeploymentStatus::Queued);
    assert!(phases(&h.fleet, &v3).await.contains(&"queued".to_string()));
    let v4 = deploy(&h.fleet, "web", "v4").await;
    let superseded = status(&h.fleet, &v3).await;
    assert_eq!(superseded.status, DeploymentStatus::Superseded);
    assert_eq!(superseded.superseded_by.as_deref(), Some(v4.as_str()));
    assert_eq!(
        superseded.public_reason,
        Some(format!("superseded by deployment {v4}"))
    );
    assert!(superseded.status.is_finished());
    assert_eq!(status(&h.fleet, &v4).await.status, DeploymentStatus::Queued);
    // What the queued admission wrote (one query): each step-log line with its words, and
    // one `deploy.queue` audit row per queued deployment, naming the one it waits behind.
    let store = h.fleet.service().store();
    let lines = |id: String| async move {
        store
            .deployment_events(&id, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.phase, e.message))
            .collect::<Vec<_>>()
    };
    let queued = |behind: &str| format!("queued behind deployment {behind}");
    assert_eq!(
        lines(v3.clone()).await,
        [
            ("queued".to_string(), queued(&v2)),
            (
                "superseded".to_string(),
                format!("superseded by deployment {v4}")
            )
        ]
    );
    assert_eq!(
        lines(v4.clone()).await,
        [("queued".to_string(), queued(&v2))]
    );
    let audit: Vec<(String, Option<String>, Option<String>)> = store
        .list_audit(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.action == "deploy.queue")
        .map(|a| (a.actor, a.target, a.details))
        .collect();
    for (id, version) in [(&v3, "v3"), (&v4, "v4")] {
        let row = (
            "system".to_string(),
            Some("web".to_string()),
            Some(format!("{id} version {version} behind {v2}")),
        );
        assert!(audit.contains(&row), "{row:?} in {audit:?}");
    }
    // Nothing of v3 or v4 reaches the agent while v2 runs.
    a1.idle().await;

    a1.deployed(&v2).await;
    assert_eq!(
        finished(&h.fleet, &v2).await.status,
        DeploymentStatus::Success
    );
    assert_eq!(a1.next().await, Command::Commit { id: v2.clone() });
    // The slot is free: v4 (never v3) runs.
    assert_eq!(a1.next().await, deploy_of(&v4, "v4"));
    a1.deployed(&v4).await;
    assert_eq!(
        finished(&h.fleet, &v4).await.status,
        DeploymentStatus::Success
    );
    assert_eq!(a1.next().await, Command::Commit { id: v4.clone() });
    a1.idle().await;
    assert!(
        targets(&h.fleet, &v3).await.is_empty(),
        "v3 never had a target"
    );
}

#[tokio::test]
async fn a_new_deployment_supersedes_a_queued_one_even_when_the_slot_just_freed() {
    let h = Harness::new(&["a1"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    h.app("web", 1).await;
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    let v2 = deploy(&h.fleet, "web", "v2").await;
    a1.next().await;
    let v3 = deploy(&h.fleet, "web", "v3").await;
    a1.deployed(&v2).await;
    finished(&h.fleet, &v2).await;
    // Whether v3 already took the slot or not, v4 is the last word.
    let v4 = deploy(&h.fleet, "web", "v4").await;
    let mut ran = Vec::new();
    loop {
        match a1.next().await {
            Command::Deploy { id, version } => {
                ran.push(version.clone());
                a1.deployed(&id).await;
                if id == v4 {
                    break;
                }
            }
            Command::Commit { .. } | Command::Rollback { .. } => {}
        }
    }
    assert_eq!(
        finished(&h.fleet, &v4).await.status,
        DeploymentStatus::Success
    );
    let v3_status = finished(&h.fleet, &v3).await.status;
    assert!(
        matches!(
            v3_status,
            DeploymentStatus::Success | DeploymentStatus::Superseded
        ),
        "{v3_status:?}"
    );
    assert_eq!(ran.last().map(String::as_str), Some("v4"), "{ran:?}");
}

#[tokio::test]
async fn deployments_of_different_apps_run_side_by_side() {
    let h = Harness::new(&["a1"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    app_with(&h, "web").await;
    app_with(&h, "api").await;
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    let web = deploy(&h.fleet, "web", "v2").await;
    let api = deploy(&h.fleet, "api", "v7").await;
    // Both commands are out before either answers.
    let first = a1.next().await;
    let second = a1.next().await;
    let mut got = vec![first, second];
    got.sort_by_key(|c| format!("{c:?}"));
    let mut want = vec![deploy_of(&web, "v2"), deploy_of(&api, "v7")];
    want.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(got, want);
    a1.deployed(&web).await;
    a1.deployed(&api).await;
    assert_eq!(
        finished(&h.fleet, &web).await.status,
        DeploymentStatus::Success
    );
    assert_eq!(
        finished(&h.fleet, &api).await.status,
        DeploymentStatus::Success
    );
}

#[tokio::test]
async fn after_a_crash_queued_deployments_run_after_the_reconciled_one_and_none_twice() {
    let h = Harness::new(&["a1"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    h.app("web", 1).await;
    let dir = h.dir.path().to_path_buf();
    let (v2, v3) = on_a_runtime_that_crashes(async move {
        let fleet = fleet_on(&dir, rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
        let mut a1 = ScriptedAgent::connect(&fleet, "a1").await;
        let v2 = deploy(&fleet, "web", "v2").await;
        a1.next().await;
        let v3 = deploy(&fleet, "web", "v3").await;
        (v2, v3)
    });
    let fleet = h.restarted(rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    fleet.reconcile().await.unwrap();
    let mut a1 = ScriptedAgent::connect(&fleet, "a1").await;
    assert_eq!(status(&fleet, &v3).await.status, DeploymentStatus::Queued);
    // The agent replays v2's result; then v3 takes the slot.
    a1.deployed(&v2).await;
    assert_eq!(
        finished(&fleet, &v2).await.status,
        DeploymentStatus::Success
    );
    assert_eq!(a1.next().await, Command::Commit { id: v2.clone() });
    assert_eq!(a1.next().await, deploy_of(&v3, "v3"));
    a1.deployed(&v3).await;
    assert_eq!(
        finished(&fleet, &v3).await.status,
        DeploymentStatus::Success
    );
    assert_eq!(a1.next().await, Command::Commit { id: v3.clone() });
    a1.idle().await;
}

#[tokio::test]
async fn after_a_crash_a_queue_with_nothing_running_starts_at_once() {
    let h = Harness::new(&["a1"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    h.app("web", 1).await;
    let dir = h.dir.path().to_path_buf();
    let (v2, v3) = on_a_runtime_that_crashes(async move {
        let fleet = fleet_on(&dir, rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
        let mut a1 = ScriptedAgent::connect(&fleet, "a1").await;
        let v2 = deploy(&fleet, "web", "v2").await;
        a1.next().await;
        let v3 = deploy(&fleet, "web", "v3").await;
        (v2, v3)
    });
    // v2's outcome was recorded just before the crash; v3 never took the slot.
    let store = Store::open(&h.dir.path().join("berth.db")).await.unwrap();
    assert!(store
        .finish_deployment(&v2, true, None, ("done", "recorded before the crash"))
        .await
        .unwrap()
        .is_some());
    store.close().await;
    let fleet = h.restarted(rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    assert_eq!(status(&fleet, &v3).await.status, DeploymentStatus::Queued);
    let mut a1 = ScriptedAgent::connect(&fleet, "a1").await;
    fleet.reconcile().await.unwrap();
    // Queued with nothing running: it starts at once.
    assert_eq!(a1.next().await, deploy_of(&v3, "v3"));
    a1.deployed(&v3).await;
    assert_eq!(
        finished(&fleet, &v3).await.status,
        DeploymentStatus::Success
    );
}

#[tokio::test]
async fn cancel_in_progress_stops_between_batches_rolls_back_and_starts_the_newer_one() {
    let h = Harness::new(&["a1", "a2"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    h.app("web", 1).await;
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    let mut a2 = ScriptedAgent::connect(&h.fleet, "a2").await;
    let v2 = deploy(&h.fleet, "web", "v2").await;
    assert_eq!(a1.next().await, deploy_of(&v2, "v2"));
    let v3 = h
        .fleet
        .deploy(
            &Actor::system(),
            "web",
            "v3",
            DeployTrigger {
                trigger_type: "manual",
                source: None,
                cancel_in_progress: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(status(&h.fleet, &v3).await.status, DeploymentStatus::Queued);
    // The batch in flight finishes; no further batch goes out; a1 goes back.
    a1.deployed(&v2).await;
    assert_eq!(a1.next().await, Command::Rollback { id: v2.clone() });
    a1.answer(&v2, pb::CommandKind::Rollback, None).await;
    let cancelled = finished(&h.fleet, &v2).await;
    assert_eq!(cancelled.status, DeploymentStatus::Superseded);
    assert_eq!(cancelled.superseded_by.as_deref(), Some(v3.as_str()));
    assert_eq!(
        cancelled.public_reason,
        Some(format!("cancelled by deployment {v3}"))
    );
    assert_eq!(
        targets(&h.fleet, &v2).await,
        vec![
            ("a1".to_string(), TargetStatus::RolledBack),
            ("a2".to_string(), TargetStatus::Skipped),
        ]
    );
    // Then v3 runs, batch by batch.
    assert_eq!(a1.next().await, deploy_of(&v3, "v3"));
    a1.deployed(&v3).await;
    assert_eq!(a2.next().await, deploy_of(&v3, "v3"));
    a2.deployed(&v3).await;
    assert_eq!(
        finished(&h.fleet, &v3).await.status,
        DeploymentStatus::Success
    );
}

mod acme;
mod hardening;
mod routes;

/// An environment too heavy for one deploy command (the agent would refuse to decode it and
/// the deployment would wait out its timeout) is refused before anything is sent, like an
/// image off the allowlist: the deployment is recorded failed with a reason that names the
/// largest variables and none of their values.
#[tokio::test]
async fn an_environment_above_the_command_limit_is_refused_before_dispatch() {
    let h = Harness::new(&["a1"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    h.app("heavy", 1).await;
    let value = "v".repeat(crate::validate::MAX_ENV_VALUE_BYTES);
    let count = crate::validate::MAX_ENVIRONMENT_BYTES / value.len() + 1;
    for i in 0..count {
        h.fleet
            .service()
            .set_env(
                &Actor::system(),
                Some("heavy"),
                &format!("BLOB_{i:02}"),
                crate::service::SetEnvValue::Plain(value.clone()),
                None,
            )
            .await
            .unwrap();
    }
    let id = deploy(&h.fleet, "heavy", "v1").await;
    let log = finished(&h.fleet, &id).await;
    assert_eq!(log.status, DeploymentStatus::Failed);
    let reason = log.error_message.unwrap_or_default();
    assert!(
        reason.contains("the resolved environment of heavy is")
            && reason.contains("KiB a deploy command may carry")
            && reason.contains("BLOB_"),
        "{reason}"
    );
    assert!(!reason.contains("vvvv"), "{reason}");
    assert_eq!(log.public_reason.as_deref(), Some("environment too large"));
    let targets = h
        .fleet
        .service()
        .store()
        .deployment_targets(&id)
        .await
        .unwrap();
    assert!(
        targets.iter().all(|t| t.status == TargetStatus::Skipped),
        "nothing was dispatched: {targets:?}"
    );
}

#[tokio::test]
async fn a_change_between_subscribing_and_waiting_wakes_the_watcher() {
    // Watchers subscribe, read the store, then wait: a step stored while they read must
    // wake them, not the next poll half a second later.
    let h = Harness::new(&[], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    let subscribed = h.fleet.changed();
    h.fleet.inner.changed.notify_waiters();
    assert!(
        tokio::time::timeout(Duration::ZERO, subscribed)
            .await
            .is_ok(),
        "the change was missed"
    );
}

#[tokio::test]
async fn the_agent_summary_counts_enrolled_connected_and_revoked_agents() {
    let h = Harness::new(&["a1", "a2", "a3"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    let counts = |total, connected, revoked| AgentCounts {
        total,
        connected,
        revoked,
    };
    assert_eq!(
        h.fleet.agent_counts(&Actor::system()).await.unwrap(),
        counts(3, 0, 0)
    );
    let _a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    let _a2 = ScriptedAgent::connect(&h.fleet, "a2").await;
    assert_eq!(
        h.fleet.agent_counts(&Actor::system()).await.unwrap(),
        counts(3, 2, 0)
    );
    // A revoked agent's stream is dropped at once: no longer connected.
    h.fleet.revoke(&Actor::system(), "a2").await.unwrap();
    assert_eq!(
        h.fleet.agent_counts(&Actor::system()).await.unwrap(),
        counts(3, 1, 1)
    );
}
