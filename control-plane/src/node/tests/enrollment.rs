//! Enrollment through the agent's real code over TLS: a token works once, an expired
//! one and a wrong CA fingerprint get clear errors, and a wrong fingerprint spends nothing.

use berth_agent::enroll::enroll;
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
