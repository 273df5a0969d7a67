//! Domain routes on the agent stream: a change reaches the app's connected targets
//! and no other agent, a (re)connecting agent catches up, and a deploy command carries the
//! domains and the app's stop spec. Also the per-app cancel-in-progress default (issue 14).

use secrecy::ExposeSecret as _;

use super::*;
use crate::service::applications::ApplicationUpdate;
use crate::service::domains::certificate::tests::valid_for;
use crate::service::domains::{DomainSpec, DomainTls, TlsFiles};

/// The next message that is not an acknowledgement.
pub(super) async fn next_message(agent: &mut ScriptedAgent) -> pb::control_message::Msg {
    loop {
        let msg = tokio::time::timeout(MUST_HAPPEN, agent.session.outbound.recv())
            .await
            .unwrap_or_else(|_| panic!("{} got no message", agent.name))
            .expect("stream open");
        match msg.msg.expect("a message") {
            pb::control_message::Msg::Ack(a) => agent.acks.push((a.deployment_id, a.kind)),
            other => return other,
        }
    }
}

pub(super) async fn next_routes(agent: &mut ScriptedAgent) -> pb::RoutesCommand {
    match next_message(agent).await {
        pb::control_message::Msg::Routes(routes) => routes,
        other => panic!("{} expected routes, got {other:?}", agent.name),
    }
}

/// `web` (role=web, 8080:80) and `db` (role=db, no domain ever), agents a1 and a2 with
/// role=web and d1 with role=db.
pub(super) async fn harness() -> Harness {
    let h = Harness::new(&["a1", "a2"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    let labels = BTreeMap::from([("role".to_string(), "db".to_string())]);
    h.fleet
        .service()
        .store()
        .upsert_agent("d1", &labels, "fp-d1", "1", "4102444800")
        .await
        .unwrap();
    for (name, role, port) in [("web", "web", 8080), ("db", "db", 5432)] {
        let mut spec = crate::service::applications::tests::new_app(name);
        spec.ports[0].host = port;
        spec.targets = vec![Target::Label {
            key: "role".into(),
            value: role.into(),
        }];
        h.fleet
            .service()
            .create_application(&Actor::system(), spec)
            .await
            .unwrap();
    }
    h
}

fn plain(host: &str) -> DomainSpec {
    DomainSpec {
        app: "web".into(),
        host: host.into(),
        container_port: 0,
        tls: DomainTls::None,
    }
}

#[tokio::test]
async fn a_domain_change_reaches_the_apps_connected_targets_only() {
    let h = harness().await;
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    let mut d1 = ScriptedAgent::connect(&h.fleet, "d1").await;
    let (chain, key) = valid_for(&["shop.example.com"]);
    let (_, notified) = h
        .fleet
        .add_domain(
            &Actor::system(),
            DomainSpec {
                tls: DomainTls::Files(TlsFiles {
                    certificate_pem: chain.clone(),
                    private_key_pem: key.clone(),
                }),
                ..plain("shop.example.com")
            },
        )
        .await
        .unwrap();
    // a2 is a target but not connected: it catches up when it connects.
    assert_eq!(notified, 1);
    let routes = next_routes(&mut a1).await;
    assert_eq!(routes.app, "web");
    assert_eq!(routes.domains.len(), 1);
    let domain = &routes.domains[0];
    assert_eq!(domain.host, "shop.example.com");
    assert_eq!(
        domain.container_port, 80,
        "0 is sent as the app's first port"
    );
    assert_eq!(domain.tls_cert_pem, chain);
    assert_eq!(domain.tls_key_pem, key.expose_secret());
    assert!(!format!("{routes:?}").contains(key.expose_secret()));
    d1.idle().await;

    // Each change sends the app's whole list.
    h.fleet
        .add_domain(&Actor::system(), plain("www.example.com"))
        .await
        .unwrap();
    let hosts: Vec<String> = next_routes(&mut a1)
        .await
        .domains
        .into_iter()
        .map(|d| d.host)
        .collect();
    assert_eq!(hosts, ["shop.example.com", "www.example.com"]);
    h.fleet
        .remove_domain(&Actor::system(), "shop.example.com")
        .await
        .unwrap();
    let routes = next_routes(&mut a1).await;
    assert_eq!(routes.domains.len(), 1);
    assert_eq!(routes.domains[0].host, "www.example.com");
    assert!(routes.domains[0].tls_key_pem.is_empty());
    h.fleet
        .remove_domain(&Actor::system(), "www.example.com")
        .await
        .unwrap();
    assert!(
        next_routes(&mut a1).await.domains.is_empty(),
        "an empty list clears the routes"
    );
    d1.idle().await;
    a1.idle().await;

    // A refused change sends nothing.
    assert!(h
        .fleet
        .add_domain(&Actor::system(), plain("10.0.0.1"))
        .await
        .is_err());
    a1.idle().await;
}

#[tokio::test]
async fn a_connecting_agent_gets_the_routes_of_its_apps_that_have_domains() {
    let h = harness().await;
    // Before any domain: nothing to send (and which apps have domains is now remembered).
    let mut a2 = ScriptedAgent::connect(&h.fleet, "a2").await;
    a2.idle().await;
    drop(a2);
    h.fleet
        .add_domain(&Actor::system(), plain("shop.example.com"))
        .await
        .unwrap();
    // a2 was offline during the change; d1's app has no domain.
    let mut a2 = ScriptedAgent::connect(&h.fleet, "a2").await;
    let routes = next_routes(&mut a2).await;
    assert_eq!(routes.app, "web");
    assert_eq!(routes.domains[0].host, "shop.example.com");
    a2.idle().await;
    let mut d1 = ScriptedAgent::connect(&h.fleet, "d1").await;
    d1.idle().await;
    // And again after its stream broke.
    let mut a2 = a2.reconnect().await;
    assert_eq!(next_routes(&mut a2).await.domains.len(), 1);
    a2.idle().await;
    // Once the app's last domain is gone, a connecting agent gets nothing again.
    h.fleet
        .remove_domain(&Actor::system(), "shop.example.com")
        .await
        .unwrap();
    assert!(next_routes(&mut a2).await.domains.is_empty());
    let mut a2 = a2.reconnect().await;
    a2.idle().await;
}

#[tokio::test]
async fn a_deploy_command_carries_the_domains_and_the_stop_spec() {
    let h = harness().await;
    h.fleet
        .service()
        .update_application(
            &Actor::system(),
            "web",
            ApplicationUpdate {
                drain_timeout_s: Some(45),
                stop_timeout_s: Some(7),
                stop_signal: Some("SIGQUIT".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    h.fleet
        .add_domain(&Actor::system(), plain("shop.example.com"))
        .await
        .unwrap();
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    assert_eq!(next_routes(&mut a1).await.domains.len(), 1);
    let id = deploy(&h.fleet, "web", "v2").await;
    let command = match next_message(&mut a1).await {
        pb::control_message::Msg::Deploy(d) => d,
        other => panic!("expected a deploy command, got {other:?}"),
    };
    assert_eq!(command.deployment_id, id);
    assert_eq!(
        command.stop,
        Some(pb::StopSpec {
            drain_seconds: 45,
            timeout_seconds: 7,
            signal: "SIGQUIT".into(),
        })
    );
    assert_eq!(command.domains.len(), 1);
    assert_eq!(command.domains[0].host, "shop.example.com");
    assert_eq!(command.domains[0].container_port, 80);

    // An app without domains gets an empty list and the default stop spec.
    let mut d1 = ScriptedAgent::connect(&h.fleet, "d1").await;
    deploy(&h.fleet, "db", "v2").await;
    let command = match next_message(&mut d1).await {
        pb::control_message::Msg::Deploy(d) => d,
        other => panic!("expected a deploy command, got {other:?}"),
    };
    assert!(command.domains.is_empty());
    assert_eq!(
        command.stop,
        Some(pb::StopSpec {
            drain_seconds: 30,
            timeout_seconds: 10,
            signal: String::new(),
        })
    );
}

#[tokio::test]
async fn an_app_that_cancels_in_progress_makes_every_deploy_cancel_the_running_one() {
    let h = Harness::new(&["a1", "a2"], rollout(MUST_HAPPEN, MUST_HAPPEN)).await;
    h.app("web", 1).await;
    h.fleet
        .service()
        .update_application(
            &Actor::system(),
            "web",
            ApplicationUpdate {
                cancel_in_progress: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    let mut a2 = ScriptedAgent::connect(&h.fleet, "a2").await;
    let v2 = deploy(&h.fleet, "web", "v2").await;
    assert_eq!(a1.next().await, deploy_of(&v2, "v2"));
    // Asked without --cancel-in-progress: the app's setting decides.
    let v3 = deploy(&h.fleet, "web", "v3").await;
    assert_eq!(status(&h.fleet, &v3).await.status, DeploymentStatus::Queued);
    a1.deployed(&v2).await;
    assert_eq!(a1.next().await, Command::Rollback { id: v2.clone() });
    a1.answer(&v2, pb::CommandKind::Rollback, None).await;
    let cancelled = finished(&h.fleet, &v2).await;
    assert_eq!(cancelled.status, DeploymentStatus::Superseded);
    assert_eq!(cancelled.superseded_by.as_deref(), Some(v3.as_str()));
    assert!(phases(&h.fleet, &v2).await.contains(&"cancel".to_string()));
    assert_eq!(a1.next().await, deploy_of(&v3, "v3"));
    a1.deployed(&v3).await;
    assert_eq!(a2.next().await, deploy_of(&v3, "v3"));
    a2.deployed(&v3).await;
    assert_eq!(
        finished(&h.fleet, &v3).await.status,
        DeploymentStatus::Success
    );
}
