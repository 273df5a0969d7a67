//! Enrollment through the agent's real code over TLS: a token works once, an expired
//! one and a wrong CA fingerprint get clear errors, and a wrong fingerprint spends nothing.
//! Bogus attempts (anyone can make them) write nothing and never wait for the write lock
//! (issue 9, attack path 7).

use berth_agent::enroll::enroll;
use berth_proto::v1 as pb;
use secrecy::{ExposeSecret as _, SecretString};

use super::*;
use crate::crypto::{generate_token, token_digest};

async fn token(cluster: &Cluster, name: &str) -> SecretString {
    let labels = [("role".to_string(), "web".to_string())].into();
    cluster
        .fleet
        .create_enrollment_token(&Actor::system(), name, &labels, Some(60))
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_works_once_and_a_wrong_ca_fingerprint_spends_nothing() {
    let cluster = Cluster::start().await;
    let token = token(&cluster, "a1").await;

    // Another CA: refused at the TLS handshake, before the token is ever sent.
    let other_ca = format!("sha256:{}", "0".repeat(64));
    let e = enroll(&cluster.admin_url, &token, &other_ca, "test")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match the pinned fingerprint"), "{e}");
    let e = enroll(&cluster.admin_url, &token, "sha256:abc", "test")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("--ca-fingerprint must be sha256:"), "{e}");

    // The token is still good with the right CA, once.
    let identity = enroll(&cluster.admin_url, &token, &cluster.ca_fingerprint, "test")
        .await
        .unwrap();
    assert_eq!(identity.name, "a1");
    let e = enroll(&cluster.admin_url, &token, &cluster.ca_fingerprint, "test")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("enrollment token was already used"), "{e}");

    let never_issued = generate_token(crate::fleet::ENROLLMENT_TOKEN_PREFIX);
    let e = enroll(
        &cluster.admin_url,
        &never_issued,
        &cluster.ca_fingerprint,
        "test",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("invalid enrollment token"), "{e}");
    assert!(!e.contains(never_issued.expose_secret()), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_with_its_expiry() {
    let cluster = Cluster::start().await;
    // Issued a minute ago with no time to live left (the service refuses such a ttl, so
    // the row is written as time would have left it).
    let token = generate_token(crate::fleet::ENROLLMENT_TOKEN_PREFIX);
    cluster
        .fleet
        .service()
        .store()
        .insert_enrollment_token(
            &token_digest(token.expose_secret()),
            "late",
            &Default::default(),
            -60,
        )
        .await
        .unwrap();
    let e = enroll(&cluster.admin_url, &token, &cluster.ca_fingerprint, "test")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("enrollment token expired at"), "{e}");
    assert!(!cluster.fleet.is_connected("late"));
    assert!(cluster.fleet.service().store().agent("late").await.is_err());
}

/// What bogus enrollments could have written: agents, audit rows.
async fn written(cluster: &Cluster) -> (usize, usize) {
    let store = cluster.fleet.service().store();
    (
        store.list_agents().await.unwrap().len(),
        store.list_audit(10_000).await.unwrap().len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_enrollments_write_nothing_and_never_wait_for_the_write_lock() {
    let cluster = Cluster::start().await;
    let store = cluster.fleet.service().store().clone();
    let used = token(&cluster, "used").await;
    enroll(&cluster.admin_url, &used, &cluster.ca_fingerprint, "test")
        .await
        .unwrap();
    let expired = generate_token(crate::fleet::ENROLLMENT_TOKEN_PREFIX);
    store
        .insert_enrollment_token(
            &token_digest(expired.expose_secret()),
            "late",
            &Default::default(),
            -60,
        )
        .await
        .unwrap();
    let good = token(&cluster, "a1").await;
    let before = written(&cluster).await;

    // A legitimate write holds SQLite's one write lock for the whole flood. Bogus attempts
    // (never issued, already used, expired) are all answered meanwhile: they only read.
    let write = store.hold_write_lock().await.unwrap();
    let channel = cluster.admin_channel().await;
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..90 {
        let presented = match i % 3 {
            0 => generate_token(crate::fleet::ENROLLMENT_TOKEN_PREFIX),
            1 => used.clone(),
            _ => expired.clone(),
        };
        let mut client = pb::agent_enrollment_client::AgentEnrollmentClient::new(channel.clone());
        flood.spawn(async move {
            client
                .enroll(pb::EnrollRequest {
                    token: presented.expose_secret().to_string(),
                    csr_pem: "not even a csr".into(),
                    agent_version: "test".into(),
                })
                .await
                .unwrap_err()
        });
    }
    let answers = tokio::time::timeout(MUST_HAPPEN, flood.join_all())
        .await
        .expect("every bogus attempt is answered while a write holds the lock");
    for refused in &answers {
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        let m = refused.message();
        assert!(
            m == "invalid enrollment token"
                || m == "enrollment token was already used"
                || m.starts_with("enrollment token expired at"),
            "{m}"
        );
    }
    write.release().await.unwrap();

    // They wrote nothing (the one audit row more is the legitimate write's) and spent
    // nothing: the unused token still enrolls, the expired one is still only expired.
    let (agents, audit) = before;
    assert_eq!(written(&cluster).await, (agents, audit + 1));
    let e = enroll(
        &cluster.admin_url,
        &expired,
        &cluster.ca_fingerprint,
        "test",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("enrollment token expired at"), "{e}");
    let identity = enroll(&cluster.admin_url, &good, &cluster.ca_fingerprint, "test")
        .await
        .unwrap();
    assert_eq!(identity.name, "a1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_made_during_a_flood_of_bogus_enrollments_goes_through() {
    let cluster = Cluster::start().await;
    let before = written(&cluster).await;
    let channel = cluster.admin_channel().await;
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..400 {
        let mut client = pb::agent_enrollment_client::AgentEnrollmentClient::new(channel.clone());
        flood.spawn(async move {
            client
                .enroll(pb::EnrollRequest {
                    token: generate_token(crate::fleet::ENROLLMENT_TOKEN_PREFIX)
                        .expose_secret()
                        .to_string(),
                    csr_pem: String::new(),
                    agent_version: "test".into(),
                })
                .await
                .unwrap_err()
        });
    }
    // Admin writes meanwhile; at most a few attempts hold a store connection at once.
    let svc = cluster.fleet.service();
    for i in 0..20 {
        svc.create_group(&Actor::system(), &format!("g{i}"), None)
            .await
            .unwrap();
    }
    let answers = tokio::time::timeout(MUST_HAPPEN, flood.join_all())
        .await
        .expect("the flood is answered");
    for refused in &answers {
        assert!(
            matches!(
                refused.code(),
                tonic::Code::Unauthenticated | tonic::Code::ResourceExhausted
            ),
            "{refused:?}"
        );
    }
    let (agents, audit) = before;
    assert_eq!(
        written(&cluster).await,
        (agents, audit + 20),
        "only the 20 groups' audit rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_csr_is_refused_without_spending_the_token() {
    let cluster = Cluster::start().await;
    let good = token(&cluster, "a1").await;
    let mut client =
        pb::agent_enrollment_client::AgentEnrollmentClient::new(cluster.admin_channel().await);
    let refused = client
        .enroll(pb::EnrollRequest {
            token: good.expose_secret().to_string(),
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n".into(),
            agent_version: "test".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("invalid certificate signing request"),
        "{refused:?}"
    );
    assert!(cluster.fleet.service().store().agent("a1").await.is_err());
    // The agent fixes its request and enrolls with the same token.
    let identity = enroll(&cluster.admin_url, &good, &cluster.ca_fingerprint, "test")
        .await
        .unwrap();
    assert_eq!(identity.name, "a1");
}
