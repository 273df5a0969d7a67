//! `aws-secrets-manager` against moto's server mode (`python -m moto.server`, PyPI
//! `moto[server]`, a real AWS API emulator), with the fixture secrets written and read back by
//! boto3 (`tests/providers/aws/fixture.py`, run with `BERTH_PROVIDER_PYTHON`). Without that
//! Python these tests fail when `CI` is set and are skipped (with a note) otherwise.
//!
//! moto checks signatures here: the fixture turns its request authentication on, after which
//! every request must carry a SigV4 signature that botocore's signer, run by moto over the
//! request it received with the key's secret, agrees with, from an IAM user whose policy allows
//! the action. So a wrong secret key fails as it does at AWS. That check is botocore's reading
//! of the request berth sent; the signer is also held to AWS's own published examples, with
//! every intermediate value, in `sigv4.rs`.

mod moto;
mod pure;

use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{json, Value};

use self::moto::{moto, Hook, Key, Tap, REGION};
use super::{AwsConfig, AwsSource};
use crate::error::ErrorCode;
use crate::provider::{FetchedSecret, ProviderType, SecretSource as _};
use crate::service::providers::ProviderSettings;
use crate::service::testing::{admin, service};
use crate::service::Service;

/// (key, value) of what a source fetched, sorted by key.
fn pairs(fetched: &[FetchedSecret]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fetched
        .iter()
        .map(|f| (f.key.clone(), f.value.expose_secret().to_string()))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn pages_through_the_prefix_and_takes_strings_binaries_and_json_whole() {
    let Some(moto) = moto(false).await else {
        return;
    };
    let cert = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
    let written = moto
        .fixture
        .apply(json!([
            {"put": "team/prod/DATABASE_URL", "string": "postgres://app:pw@db/app"},
            {"put": "team/prod/api-key", "string": "k-123"},
            {"put": "team/prod/stripe/secret", "string": "sk_live_1"},
            {"put": "team/prod/TLS_CERT", "binary_b64": base64_of(cert.as_bytes())},
            {"put": "team/prod/CONFIG", "string": "{\"user\":\"u\",\"password\":\"p\"}"},
            {"put": "team/prod/GREETING", "string": "naïve ✓ — ok"},
            // Created without a value (as Terraform's aws_secretsmanager_secret is): skipped.
            {"put": "team/prod/PLACEHOLDER"},
            // Outside the prefix: a longer folder name, another case, another folder.
            {"put": "team/production/NOT_MINE", "string": "x"},
            {"put": "Team/prod/CASE", "string": "x"},
            {"put": "other/OTHER", "string": "x"},
            {"read": "team/prod/DATABASE_URL"},
            {"read": "team/prod/api-key"},
            {"read": "team/prod/stripe/secret"},
            {"read": "team/prod/TLS_CERT"},
            {"read": "team/prod/CONFIG"},
            {"read": "team/prod/GREETING"},
        ]))
        .await;
    let tap = Tap::start(&moto, Hook::Forward).await;
    let fetched = moto
        .source(&tap.endpoint, &moto.reader, "team/prod/")
        .paged(2, 3)
        .fetch()
        .await
        .unwrap();

    // What berth read is what boto3 reads, binary included (boto3 gives bytes, berth text).
    let boto3 = &written["read"];
    let expected: Vec<(String, String)> = [
        ("CONFIG", "team/prod/CONFIG"),
        ("DATABASE_URL", "team/prod/DATABASE_URL"),
        ("GREETING", "team/prod/GREETING"),
        ("TLS_CERT", "team/prod/TLS_CERT"),
        ("api-key", "team/prod/api-key"),
        ("stripe/secret", "team/prod/stripe/secret"),
    ]
    .iter()
    .map(|(key, name)| {
        let read = boto3[name].as_str().unwrap();
        let value = match read.strip_prefix("base64:") {
            Some(b64) => String::from_utf8(base64_decode(b64)).unwrap(),
            None => read.to_string(),
        };
        (key.to_string(), value)
    })
    .collect();
    assert_eq!(pairs(&fetched), expected);
    assert_eq!(expected[3].1, cert);
    for f in &fetched {
        let name = format!("team/prod/{}", f.key);
        assert_eq!(
            f.reference,
            written["arns"][&name].as_str().unwrap(),
            "{name}"
        );
    }

    // Seven secrets under the prefix, two a page: four ListSecrets, each filtered by name,
    // each after the first continuing from the last NextToken.
    let lists = tap.bodies("ListSecrets");
    assert_eq!(lists.len(), 4, "{lists:?}");
    for (i, body) in lists.iter().enumerate() {
        assert_eq!(body["MaxResults"], 2);
        assert_eq!(
            body["Filters"],
            json!([{"Key": "name", "Values": ["team/prod/"]}])
        );
        assert_eq!(body.get("NextToken").is_some(), i > 0, "{body}");
    }
    // Three at a time: three batch calls. moto fails a whole batch for the one secret without
    // a value, so that batch's secrets are read one by one (and the placeholder skipped).
    let batches = tap.bodies("BatchGetSecretValue");
    assert_eq!(batches.len(), 3, "{batches:?}");
    assert!(batches
        .iter()
        .all(|b| b["SecretIdList"].as_array().unwrap().len() <= 3));
    assert!((1..=3).contains(&tap.count("GetSecretValue")));

    // The region is part of the signature and picks the secrets: none in another region.
    let elsewhere = AwsSource::new(
        AwsConfig {
            region: "us-west-2".into(),
            ..moto.config(&moto.fixture.endpoint, &moto.reader, "team/prod/")
        },
        SecretString::from(moto.reader.1.clone()),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(elsewhere.fetch().await.unwrap().is_empty());

    // Bytes that are not UTF-8 fail the whole fetch, naming the secret, not the bytes.
    moto.fixture
        .apply(json!([{"put": "team/prod/KEYSTORE", "binary_b64": base64_of(&[0xff, 0xfe, 0x00, 0x41])}]))
        .await;
    let e = moto
        .source(&moto.fixture.endpoint, &moto.reader, "team/prod/")
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::FailedPrecondition, "{e}");
    assert!(
        e.to_string().contains("team/prod/KEYSTORE") && e.to_string().contains("UTF-8"),
        "{e}"
    );
}

#[tokio::test]
async fn without_the_batch_permission_each_value_comes_from_get_secret_value() {
    let Some(moto) = moto(false).await else {
        return;
    };
    let ops: Vec<Value> = (1..=5)
        .map(|i| json!({"put": format!("svc/KEY_{i}"), "string": format!("value-{i}")}))
        .collect();
    moto.fixture.apply(Value::Array(ops)).await;
    let tap = Tap::start(&moto, Hook::Forward).await;
    let fetched = moto
        .source(&tap.endpoint, &moto.classic, "svc/")
        .paged(2, 2)
        .fetch()
        .await
        .unwrap();
    let expected: Vec<(String, String)> = (1..=5)
        .map(|i| (format!("KEY_{i}"), format!("value-{i}")))
        .collect();
    assert_eq!(pairs(&fetched), expected);
    // Refused once (moto's IAM: not allowed secretsmanager:BatchGetSecretValue), never asked
    // again; then one GetSecretValue per secret.
    assert_eq!(tap.count("BatchGetSecretValue"), 1);
    assert_eq!(tap.count("GetSecretValue"), 5);
    assert_eq!(tap.count("ListSecrets"), 3);
}

#[tokio::test]
async fn per_secret_errors_in_the_batch_answer_and_malformed_answers() {
    let Some(moto) = moto(false).await else {
        return;
    };
    moto.fixture
        .apply(json!([
            {"put": "app/A", "string": "a"},
            {"put": "app/B", "string": "b"},
            {"put": "app/C", "string": "c"},
        ]))
        .await;

    // Deleted after the listing, before the batch read: its entry in the answer's Errors is
    // ResourceNotFoundException, and it is gone, so left out.
    let tap = Tap::start(
        &moto,
        Hook::Before("BatchGetSecretValue", json!([{"delete": "app/B"}])),
    )
    .await;
    let fetched = moto
        .source(&tap.endpoint, &moto.reader, "app/")
        .fetch()
        .await
        .unwrap();
    assert_eq!(
        pairs(&fetched),
        vec![("A".into(), "a".into()), ("C".into(), "c".into())]
    );
    assert_eq!(tap.count("BatchGetSecretValue"), 1);
    assert_eq!(tap.count("GetSecretValue"), 0);

    // Scheduled for deletion in between: InvalidRequestException in Errors fails the fetch,
    // naming the secret (leaving it out would remove its local copy).
    let tap = Tap::start(
        &moto,
        Hook::Before("BatchGetSecretValue", json!([{"schedule_delete": "app/C"}])),
    )
    .await;
    let e = moto
        .source(&tap.endpoint, &moto.reader, "app/")
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::FailedPrecondition, "{e}");
    assert!(
        e.to_string().contains("app/C") && e.to_string().contains("InvalidRequestException"),
        "{e}"
    );

    // Answers that are not what the API documents fail as unavailable, with what was wrong.
    for (body, what) in [
        ("not json", "malformed answer"),
        ("{\"SecretList\": \"nope\"}", "SecretList"),
        ("{\"SecretList\": [{\"Name\": \"app/A\"}]}", "without ARN"),
    ] {
        let tap = Tap::start(&moto, Hook::Answer("ListSecrets", body)).await;
        let e = moto
            .source(&tap.endpoint, &moto.reader, "app/")
            .fetch()
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
        assert!(e.to_string().contains(what), "{e}");
    }
    let tap = Tap::start(
        &moto,
        Hook::Answer(
            "BatchGetSecretValue",
            "{\"SecretValues\": [], \"Errors\": []}",
        ),
    )
    .await;
    let e = moto
        .source(&tap.endpoint, &moto.reader, "app/")
        .fetch()
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("neither a value nor an error"),
        "{e}"
    );
}

#[tokio::test]
async fn a_wrong_secret_key_or_an_unknown_key_id_is_refused_without_the_key_in_the_error() {
    let Some(moto) = moto(false).await else {
        return;
    };
    moto.fixture
        .apply(json!([{"put": "app/A", "string": "a"}]))
        .await;
    let endpoint = &moto.fixture.endpoint;
    let wrong_secret = (
        moto.reader.0.clone(),
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYWRONGKEY".to_string(),
    );
    let unknown_id = ("AKIAUNKNOWN000000000".to_string(), moto.reader.1.clone());
    for (key, code) in [
        (&wrong_secret, "SignatureDoesNotMatch"),
        (&unknown_id, "InvalidClientTokenId"),
    ] {
        let e = moto
            .source(endpoint, key, "app/")
            .fetch()
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::PermissionDenied, "{e}");
        assert!(e.to_string().contains(code), "{e}");
        assert!(
            !e.to_string().contains(&key.1),
            "no secret key in errors: {e}"
        );
    }
}

async fn linked(svc: &Service, name: &str, settings: ProviderSettings, credential: &str) {
    let a = admin();
    svc.add_provider(
        &a,
        name,
        settings,
        &SecretString::from(credential.to_string()),
    )
    .await
    .unwrap();
    let group = format!("{name}-group");
    svc.create_group(&a, &group, None).await.unwrap();
    svc.link_group(&a, &group, Some(name), false).await.unwrap();
}

async fn values(svc: &Service, group: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in svc.list_secrets(&admin(), Some(group)).await.unwrap() {
        let (_, value) = svc
            .reveal_secret(&admin(), group, &s.name, true)
            .await
            .unwrap();
        out.push((s.name.clone(), value.expose_secret().to_string()));
    }
    out
}

/// The whole path through the service, over TLS to a moto whose certificate comes from a
/// private CA (`ca_cert`), at a custom endpoint: the settings as `berth provider add` gives
/// them, syncs that create, keep, update and remove, and a wrong key that changes nothing.
#[tokio::test]
async fn a_service_sync_over_tls_creates_keeps_updates_removes_and_a_wrong_key_changes_nothing() {
    let Some(moto) = moto(true).await else { return };
    let written = moto
        .fixture
        .apply(json!([
            {"put": "myapp/prod/DATABASE_URL", "string": "postgres://u:p@db/app"},
            {"put": "myapp/prod/stripe/api-key", "string": "sk_live_abc"},
            {"put": "myapp/prod/OLD_TOKEN", "string": "t0k"},
            {"put": "myapp/staging/DATABASE_URL", "string": "not this one"},
        ]))
        .await;
    let settings = |key: &Key| ProviderSettings {
        provider_type: ProviderType::AwsSecretsManager,
        settings: [
            ("region", REGION.to_string()),
            ("endpoint", moto.fixture.endpoint.clone()),
            ("prefix", "myapp/prod/".to_string()),
            ("access_key_id", key.0.clone()),
            ("ca_cert", moto.ca_pem.clone().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        sync_interval: None,
    };
    let svc = service().await;
    linked(&svc, "aws", settings(&moto.reader), &moto.reader.1).await;

    let done = svc.sync_provider(&admin(), "aws", false).await.unwrap();
    assert_eq!(done.summary.status(), "success");
    assert_eq!(
        values(&svc, "aws-group").await,
        vec![
            (
                "DATABASE_URL".to_string(),
                "postgres://u:p@db/app".to_string()
            ),
            ("OLD_TOKEN".to_string(), "t0k".to_string()),
            ("stripe_api_key".to_string(), "sk_live_abc".to_string()),
        ]
    );
    let listed = svc.list_secrets(&admin(), Some("aws-group")).await.unwrap();
    assert!(listed
        .iter()
        .all(|s| s.source == "synced" && s.last_synced_at.is_some()));

    let again = svc.sync_provider(&admin(), "aws", false).await.unwrap();
    assert_eq!(again.summary.unchanged, 3);
    assert!(again.summary.created.is_empty() && again.summary.updated.is_empty());

    moto.fixture
        .apply(json!([
            {"put": "myapp/prod/stripe/api-key", "string": "sk_live_rotated"},
            {"delete": "myapp/prod/OLD_TOKEN"},
        ]))
        .await;
    let changed = svc.sync_provider(&admin(), "aws", false).await.unwrap();
    assert_eq!(changed.summary.updated, vec!["stripe_api_key"]);
    assert_eq!(changed.summary.removed, vec!["OLD_TOKEN"]);
    assert!(values(&svc, "aws-group")
        .await
        .contains(&("stripe_api_key".to_string(), "sk_live_rotated".to_string())));
    assert!(written["arns"]["myapp/prod/DATABASE_URL"].is_string());

    // A wrong secret key: refused by moto's signature check, nothing written, the failure
    // recorded without the key.
    let wrong = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYWRONGKEY";
    linked(&svc, "bad", settings(&moto.reader), wrong).await;
    let e = svc.sync_provider(&admin(), "bad", false).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied, "{e}");
    assert!(!e.to_string().contains(wrong), "{e}");
    assert!(svc
        .list_secrets(&admin(), Some("bad-group"))
        .await
        .unwrap()
        .is_empty());
    let row = svc.get_provider(&admin(), "bad").await.unwrap();
    assert_eq!(row.last_sync_status.as_deref(), Some("failed"));
    let history = svc.sync_history(&admin(), "bad").await.unwrap();
    let recorded = history[0].error_message.as_deref().unwrap();
    assert!(recorded.contains("SignatureDoesNotMatch"), "{recorded}");
    assert!(!recorded.contains(wrong));
    assert!(!row.config.contains(wrong), "the key is not a setting");

    // moto going away fails the sync as unavailable; the synced values stay.
    drop(moto);
    let e = svc.sync_provider(&admin(), "aws", false).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert_eq!(values(&svc, "aws-group").await.len(), 2);
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}
