//! Issue 9's reviewed paths on the agent stream: a renewal whose answer is lost, a revoke
//! that races a stream's handshake, events from agents that are not targets, and results
//! that come after the control plane gave up on them.

use super::*;
use crate::model::HealthCheckConfig;
use crate::service::applications::ApplicationUpdate;

/// A CSR for a fresh key, as an agent renewing its certificate sends it.
fn csr() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

fn event(id: &str, message: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Event(pb::DeployEvent {
            deployment_id: id.to_string(),
            phase: "pull".to_string(),
            message: message.to_string(),
        })),
    }
}

async fn messages_of(fleet: &Fleet, id: &str, agent: &str) -> Vec<String> {
    let store = fleet.service().store();
    // Agents' events are queued, not awaited, by the stream that reads them.
    store.queued_writes_durable().await.unwrap();
    store
        .deployment_events(id, 0)
        .await
        .unwrap()
        .into_iter()
        // The control plane's own line about the dispatch to the agent aside.
        .filter(|e| e.agent_name.as_deref() == Some(agent) && e.phase != "dispatch")
        .map(|e| e.message)
        .collect()
}

#[tokio::test]
async fn a_renewal_whose_answer_is_lost_leaves_the_old_certificate_valid_until_the_new_one_is_used()
{
    let h = Harness::new(&["a1"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    let issued = h.fleet.renew("a1", "fp-a1", &csr()).await.unwrap();

    // The answer never reached the agent (or it crashed before saving): it comes back with
    // the certificate it had, and may renew again.
    let agent = h.fleet.authenticate_agent("fp-a1").await.unwrap();
    assert_eq!(agent.name, "a1");
    let again = h.fleet.renew("a1", "fp-a1", &csr()).await.unwrap();
    assert_ne!(again.fingerprint, issued.fingerprint);
    // The first renewal's certificate was never used and is replaced.
    let lost = h.fleet.authenticate_agent(&issued.fingerprint).await;
    assert!(matches!(lost, Err(Error::Unauthenticated(_))), "{lost:?}");

    // The first time the new certificate is presented, the old one stops working.
    assert_eq!(
        h.fleet
            .authenticate_agent(&again.fingerprint)
            .await
            .unwrap()
            .name,
        "a1"
    );
    let old = h.fleet.authenticate_agent("fp-a1").await;
    assert!(matches!(old, Err(Error::Unauthenticated(_))), "{old:?}");
    assert!(h.fleet.authenticate_agent(&again.fingerprint).await.is_ok());
}

#[tokio::test]
async fn a_revocation_after_the_handshake_keeps_the_stream_from_registering() {
    let h = Harness::new(&["a1"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    // The stream passed the certificate check...
    let row = h.fleet.authenticate_agent("fp-a1").await.unwrap();
    // ...then the agent is revoked before its Hello registered the session.
    h.fleet.revoke(&Actor::system(), "a1").await.unwrap();
    let opened = h.fleet.open_session(&row, &pb::Hello::default()).await;
    assert!(
        matches!(opened, Err(Error::PermissionDenied(_))),
        "a revoked agent registered a stream"
    );
    assert!(!h.fleet.is_connected("a1"));
}

#[tokio::test]
async fn every_message_of_a_stream_that_is_no_longer_current_is_refused() {
    let h = Harness::new(&["a1"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    h.app("web", 1).await;
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    let id = deploy(&h.fleet, "web", "v2").await;
    assert_eq!(a1.next().await, deploy_of(&id, "v2"));
    let stale = a1.session.id;
    h.fleet
        .handle_message("a1", stale, event(&id, "before the revoke"))
        .await
        .unwrap();

    h.fleet.revoke(&Actor::system(), "a1").await.unwrap();
    for message in [
        event(&id, "after the revoke"),
        pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {})),
        },
    ] {
        let refused = h.fleet.handle_message("a1", stale, message).await;
        assert!(
            matches!(refused, Err(Error::PermissionDenied(_))),
            "{refused:?}"
        );
    }
    let result = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Result(pb::DeployResult {
            deployment_id: id.clone(),
            kind: pb::CommandKind::Deploy as i32,
            success: true,
            ..pb::DeployResult::default()
        })),
    };
    h.fleet
        .handle_message("a1", stale, result)
        .await
        .unwrap_err();
    assert_eq!(
        messages_of(&h.fleet, &id, "a1").await,
        vec!["before the revoke".to_string()]
    );
    assert_eq!(
        targets(&h.fleet, &id).await,
        vec![("a1".to_string(), TargetStatus::Running)]
    );
}

#[tokio::test]
async fn only_targets_add_events_to_a_deployment_and_only_so_many() {
    let h = Harness::new(&["a1", "a2"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    // Only a1 is a target of the app.
    h.app("web", 1).await;
    h.fleet
        .service()
        .update_application(
            &Actor::system(),
            "web",
            ApplicationUpdate {
                targets: Some(vec![Target::Agent("a1".to_string())]),
                ..ApplicationUpdate::default()
            },
        )
        .await
        .unwrap();
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    let a2 = ScriptedAgent::connect(&h.fleet, "a2").await;
    let id = deploy(&h.fleet, "web", "v2").await;
    assert_eq!(a1.next().await, deploy_of(&id, "v2"));

    // a2 knows the id but is no target: nothing it says is stored.
    h.fleet
        .handle_message("a2", a2.session.id, event(&id, "forged"))
        .await
        .unwrap();
    assert!(messages_of(&h.fleet, &id, "a2").await.is_empty());

    // A target that floods the log is cut off at the cap, with one line saying so.
    let cap = usize::try_from(EVENTS_PER_TARGET).unwrap();
    for n in 0..cap + 20 {
        h.fleet
            .handle_message("a1", a1.session.id, event(&id, &format!("line {n}")))
            .await
            .unwrap();
    }
    // The cap counts every line of the agent in the log, the dispatch line among them.
    let stored = messages_of(&h.fleet, &id, "a1").await;
    assert_eq!(stored.len(), cap - 1);
    assert!(
        stored
            .last()
            .unwrap()
            .contains("later events of this deployment are dropped"),
        "{:?}",
        stored.last()
    );
}

#[tokio::test]
async fn a_success_reported_after_the_restart_gave_up_on_the_target_is_rolled_back() {
    let h = Harness::new(&["a1"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    h.app("web", 1).await;
    let dir = h.dir.path().to_path_buf();
    let id = on_a_runtime_that_crashes(async move {
        let fleet = fleet_on(&dir, rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
        let mut a1 = ScriptedAgent::connect(&fleet, "a1").await;
        let id = deploy(&fleet, "web", "v2").await;
        assert_eq!(a1.next().await, deploy_of(&id, "v2"));
        id
    });

    // The new control plane waits for a1's report, which does not come in time.
    let mut config = rollout(MUST_HAPPEN, Duration::from_millis(200));
    config.connect_wait = Duration::from_millis(100);
    let fleet = h.restarted(config).await;
    fleet.reconcile().await.unwrap();
    let log = finished(&fleet, &id).await;
    assert_eq!(log.status, DeploymentStatus::Failed);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // a1 comes back and replays its journaled success: the host serves a version whose
    // deployment failed, so it is rolled back.
    let mut a1 = ScriptedAgent::connect(&fleet, "a1").await;
    a1.deployed(&id).await;
    assert_eq!(a1.next().await, Command::Rollback { id: id.clone() });
    a1.answer(&id, pb::CommandKind::Rollback, None).await;
    assert_eq!(
        targets(&fleet, &id).await,
        vec![("a1".to_string(), TargetStatus::Failed)]
    );
}

#[tokio::test]
async fn a_late_success_is_left_alone_once_a_newer_deployment_reached_the_agent() {
    let h = Harness::new(&["a1"], rollout(Duration::from_millis(300), MUST_HAPPEN)).await;
    h.app("web", 1).await;
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    let v2 = deploy(&h.fleet, "web", "v2").await;
    assert_eq!(a1.next().await, deploy_of(&v2, "v2"));
    // v2 times out; its rollback goes out and is not answered either.
    assert_eq!(
        finished(&h.fleet, &v2).await.status,
        DeploymentStatus::Failed
    );
    assert_eq!(a1.next().await, Command::Rollback { id: v2.clone() });
    tokio::time::sleep(Duration::from_millis(400)).await;

    // v3 reaches a1 and succeeds: it decides what a1 serves.
    let v3 = deploy(&h.fleet, "web", "v3").await;
    assert_eq!(a1.next().await, deploy_of(&v3, "v3"));
    a1.deployed(&v3).await;
    assert_eq!(
        finished(&h.fleet, &v3).await.status,
        DeploymentStatus::Success
    );
    assert_eq!(a1.next().await, Command::Commit { id: v3.clone() });

    // v2's success, very late: rolling it back now would undo v3.
    a1.deployed(&v2).await;
    a1.idle().await;
}

#[tokio::test]
async fn the_health_gate_is_capped_below_the_result_timeout() {
    let h = Harness::new(&["a1"], rollout(Duration::from_secs(20), MUST_HAPPEN)).await;
    h.app("web", 1).await;
    h.fleet
        .service()
        .update_application(
            &Actor::system(),
            "web",
            ApplicationUpdate {
                health_check: Some(Some(HealthCheckConfig {
                    kind: "http".to_string(),
                    port: 8080,
                    path: None,
                    timeout_s: Some(600),
                })),
                ..ApplicationUpdate::default()
            },
        )
        .await
        .unwrap();
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    let id = deploy(&h.fleet, "web", "v2").await;
    let command = loop {
        match super::routes::next_message(&mut a1).await {
            pb::control_message::Msg::Deploy(d) => break d,
            _ => continue,
        }
    };
    assert_eq!(command.health_check.unwrap().timeout_seconds, 10);
    let events = h
        .fleet
        .service()
        .store()
        .deployment_events(&id, 0)
        .await
        .unwrap();
    assert!(
        events.iter().any(|e| e
            .message
            .contains("health timeout capped at 10s (asked 600s)")),
        "{events:?}"
    );
    a1.deployed(&id).await;
}
