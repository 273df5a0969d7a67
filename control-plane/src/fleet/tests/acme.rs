//! ACME orders through the agent stream (domains with `--acme`): the challenge reaches the
//! app's connected targets and no other agent, the order waits for their confirmation, an
//! issued certificate is routed, and a failed order records why and keeps what serves. The
//! CA is a scripted one (the real protocol is tested against Pebble in the e2e suite).

use secrecy::{ExposeSecret as _, SecretString};

use super::routes::{harness, next_message, next_routes};
use super::*;
use crate::acme::{CertificateAuthority, ChallengeResponder, IssuedCertificate};
use crate::model::AcmeStatus;
use crate::service::domains::certificate::tests::certificate;
use crate::service::domains::{DomainSpec, DomainTls};

const TOKEN: &str = "tok-1";
const KEY_AUTHORIZATION: &str = "tok-1.thumbprint";

/// Publishes one challenge, then issues a certificate for the host (or fails as told).
struct ScriptedCa {
    fail_after_challenge: Option<&'static str>,
}

#[async_trait::async_trait]
impl CertificateAuthority for ScriptedCa {
    async fn issue(
        &self,
        host: &str,
        responder: &dyn ChallengeResponder,
    ) -> Result<IssuedCertificate> {
        let published = responder
            .publish(TOKEN, &SecretString::from(KEY_AUTHORIZATION.to_string()))
            .await;
        responder.withdraw(TOKEN).await;
        published?;
        if let Some(reason) = self.fail_after_challenge {
            return Err(Error::Unavailable(reason.to_string()));
        }
        let (chain_pem, key_pem) =
            certificate(&[host], time::Duration::days(-1), time::Duration::days(89));
        Ok(IssuedCertificate { chain_pem, key_pem })
    }
}

async fn add_acme(h: &Harness, host: &str) {
    h.fleet
        .add_domain(
            &Actor::system(),
            DomainSpec {
                app: "web".into(),
                host: host.into(),
                container_port: 0,
                tls: DomainTls::Acme,
            },
        )
        .await
        .unwrap();
}

/// The agent's side of a challenge: expects it, and replies with `error` ("" = answered).
async fn confirm_challenge(agent: &mut ScriptedAgent, error: &str) {
    match next_message(agent).await {
        pb::control_message::Msg::AcmeChallenge(c) => {
            assert_eq!(c.token, TOKEN);
            assert_eq!(c.key_authorization, KEY_AUTHORIZATION);
            assert!(c.ttl_seconds > 0);
            agent
                .fleet
                .handle_message(
                    &agent.name,
                    agent.session.id,
                    pb::AgentMessage {
                        msg: Some(pb::agent_message::Msg::ChallengeReply(pb::ChallengeReply {
                            token: c.token,
                            error: error.to_string(),
                        })),
                    },
                )
                .await
                .unwrap();
        }
        other => panic!("{} expected a challenge, got {other:?}", agent.name),
    }
}

async fn withdrawn(agent: &mut ScriptedAgent) {
    match next_message(agent).await {
        pb::control_message::Msg::AcmeChallenge(c) => {
            assert_eq!((c.token.as_str(), c.ttl_seconds), (TOKEN, 0));
            assert!(c.key_authorization.is_empty());
        }
        other => panic!(
            "{} expected the challenge withdrawn, got {other:?}",
            agent.name
        ),
    }
}

fn run_due(h: &Harness, ca: ScriptedCa) -> tokio::task::JoinHandle<Result<usize>> {
    let fleet = h.fleet.clone();
    tokio::spawn(async move { crate::acme::orders::run_due(&fleet, &ca).await })
}

async fn stored(h: &Harness, host: &str) -> crate::model::Domain {
    h.fleet
        .service()
        .store()
        .domain(host)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn an_order_is_validated_through_the_apps_agents_and_its_certificate_routed() {
    let h = harness().await;
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    let mut d1 = ScriptedAgent::connect(&h.fleet, "d1").await;
    add_acme(&h, "shop.example.com").await;
    // Routed over plain HTTP at once, so the CA's validation reaches the proxy.
    let plain = next_routes(&mut a1).await;
    assert_eq!(plain.domains.len(), 1);
    assert!(plain.domains[0].tls_cert_pem.is_empty());

    let order = run_due(
        &h,
        ScriptedCa {
            fail_after_challenge: None,
        },
    );
    confirm_challenge(&mut a1, "").await;
    withdrawn(&mut a1).await;
    assert_eq!(order.await.unwrap().unwrap(), 1);

    let routes = next_routes(&mut a1).await;
    let domain = &routes.domains[0];
    assert!(domain.tls_cert_pem.contains("BEGIN CERTIFICATE"));
    let stored = stored(&h, "shop.example.com").await;
    assert_eq!(stored.acme.unwrap().status, AcmeStatus::Issued);
    assert_eq!(
        stored.certificate_pem.as_deref(),
        Some(domain.tls_cert_pem.as_str())
    );
    let key = h
        .fleet
        .service()
        .routed_domains(&h.fleet.service().store().application("web").await.unwrap())
        .await
        .unwrap()
        .remove(0)
        .private_key_pem
        .unwrap();
    assert_eq!(domain.tls_key_pem, key.expose_secret());
    // The db agent saw none of it.
    d1.idle().await;
    // Nothing more is due: the renewal is two months away.
    let again = run_due(
        &h,
        ScriptedCa {
            fail_after_challenge: None,
        },
    );
    assert_eq!(again.await.unwrap().unwrap(), 0);
}

#[tokio::test]
async fn an_agent_without_the_proxy_fails_the_order_with_its_reason() {
    let h = harness().await;
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    add_acme(&h, "shop.example.com").await;
    next_routes(&mut a1).await;
    let order = run_due(
        &h,
        ScriptedCa {
            fail_after_challenge: None,
        },
    );
    confirm_challenge(&mut a1, "ACME challenges need the host proxy").await;
    withdrawn(&mut a1).await;
    order.await.unwrap().unwrap();
    let acme = stored(&h, "shop.example.com").await.acme.unwrap();
    assert_eq!(acme.status, AcmeStatus::Failed);
    let error = acme.error.unwrap();
    assert!(
        error.contains("agent a1: ACME challenges need the host proxy"),
        "{error}"
    );
    assert!(error.contains("--proxy-socket"), "{error}");
    assert_eq!(acme.attempts, 1);
    assert!(acme.next_attempt_at.is_some());
}

#[tokio::test]
async fn with_no_agent_connected_the_order_fails_saying_so() {
    let h = harness().await;
    add_acme(&h, "shop.example.com").await;
    let order = run_due(
        &h,
        ScriptedCa {
            fail_after_challenge: None,
        },
    );
    order.await.unwrap().unwrap();
    let error = stored(&h, "shop.example.com")
        .await
        .acme
        .unwrap()
        .error
        .unwrap();
    assert!(
        error.contains("no agent of app web is connected"),
        "{error}"
    );
}

#[tokio::test]
async fn a_failed_renewal_keeps_the_certificate_that_serves() {
    let h = harness().await;
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    add_acme(&h, "shop.example.com").await;
    next_routes(&mut a1).await;
    let service = h.fleet.service();
    let domain = stored(&h, "shop.example.com").await;
    // A certificate with 10 days left: its renewal is due now.
    let (chain, key) = certificate(
        &["shop.example.com"],
        time::Duration::days(-80),
        time::Duration::days(10),
    );
    service
        .record_acme_certificate(&domain, &chain, &key, time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    let before = stored(&h, "shop.example.com").await;

    let order = run_due(
        &h,
        ScriptedCa {
            fail_after_challenge: Some("the ACME server refused the order: rate limited"),
        },
    );
    confirm_challenge(&mut a1, "").await;
    withdrawn(&mut a1).await;
    order.await.unwrap().unwrap();
    let after = stored(&h, "shop.example.com").await;
    assert_eq!(after.certificate_pem, before.certificate_pem);
    assert_eq!(after.private_key, before.private_key);
    assert_eq!(after.not_after, before.not_after);
    let acme = after.acme.unwrap();
    assert_eq!(acme.status, AcmeStatus::Failed);
    assert!(acme.error.unwrap().contains("rate limited"));
    // No routes were pushed: the proxies keep serving the certificate they have.
    a1.idle().await;
}

#[tokio::test]
async fn a_due_renewal_replaces_the_certificate_and_routes_the_new_one() {
    let h = harness().await;
    let mut a1 = ScriptedAgent::connect(&h.fleet, "a1").await;
    add_acme(&h, "shop.example.com").await;
    next_routes(&mut a1).await;
    let domain = stored(&h, "shop.example.com").await;
    // The current certificate has 10 days left: its renewal is due.
    let (chain, key) = certificate(
        &["shop.example.com"],
        time::Duration::days(-80),
        time::Duration::days(10),
    );
    h.fleet
        .service()
        .record_acme_certificate(&domain, &chain, &key, time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    let before = stored(&h, "shop.example.com").await;

    let order = run_due(
        &h,
        ScriptedCa {
            fail_after_challenge: None,
        },
    );
    confirm_challenge(&mut a1, "").await;
    withdrawn(&mut a1).await;
    assert_eq!(order.await.unwrap().unwrap(), 1);
    let after = stored(&h, "shop.example.com").await;
    assert_ne!(after.certificate_pem, before.certificate_pem);
    assert_ne!(after.private_key, before.private_key);
    assert!(after.not_after > before.not_after);
    let routes = next_routes(&mut a1).await;
    assert_eq!(
        Some(routes.domains[0].tls_cert_pem.as_str()),
        after.certificate_pem.as_deref()
    );
    let audit = h.fleet.service().store().list_audit(20).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.action == "domain.acme_issue")
            .count(),
        2
    );
}
