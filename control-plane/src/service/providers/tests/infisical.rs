//! `infisical` against the local double (`tests/providers/doubles/infisical.py`), with every
//! fixture written — and read back — by Infisical's official Python SDK (`infisicalsdk`).

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;

use super::doubles::{self, Double};
use super::{linked, values};
use crate::error::ErrorCode;
use crate::provider::{self, ProviderType};
use crate::service::providers::ProviderSettings;
use crate::service::testing::{admin, service};

const PROJECT: &str = "6f1c1b0e-berth-test-project";
const CLIENT_ID: &str = "berth-machine-identity";
const CLIENT_SECRET: &str = "berth-client-secret-0123456789";

async fn double() -> Option<Double> {
    let python = doubles::python()?;
    Some(
        doubles::start(
            python,
            "infisical.py",
            json!({
                "projects": {PROJECT: ["dev", "prod"]},
                "identities": {
                    CLIENT_ID: {"secret": CLIENT_SECRET, "projects": [PROJECT]},
                    "stranger": {"secret": "stranger-secret", "projects": []},
                    "blind": {"secret": "blind-secret", "projects": [PROJECT], "read_values": false},
                },
            }),
        )
        .await,
    )
}

/// Runs SDK steps in `environment` and returns what the SDK then lists below `read`, as
/// `(folder, key, value)`.
async fn sdk(
    double: &Double,
    environment: &str,
    steps: serde_json::Value,
    read: &str,
) -> Vec<(String, String, String)> {
    let out = double
        .sdk(
            "sdk_infisical.py",
            json!({
                "url": double.url("url"),
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "project_id": PROJECT,
                "environment": environment,
                "steps": steps,
                "read": read,
            }),
        )
        .await;
    serde_json::from_value(out["read"].clone()).unwrap()
}

fn settings(double: &Double, environment: &str, secret_path: &str) -> ProviderSettings {
    ProviderSettings {
        provider_type: ProviderType::Infisical,
        settings: BTreeMap::from([
            ("site_url".to_string(), double.url("url")),
            ("client_id".to_string(), CLIENT_ID.to_string()),
            ("project_id".to_string(), PROJECT.to_string()),
            ("environment".to_string(), environment.to_string()),
            ("secret_path".to_string(), secret_path.to_string()),
        ]),
        sync_interval: None,
    }
}

fn triples(rows: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    rows.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

fn pairs(rows: &[(&str, &str)]) -> Vec<(String, String)> {
    rows.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn a_sync_reads_the_folder_tree_the_sdk_wrote_and_follows_its_changes() {
    let Some(double) = double().await else { return };
    let written = sdk(
        &double,
        "dev",
        json!([
            {"op": "folder", "path": "/", "name": "app"},
            {"op": "folder", "path": "/app", "name": "billing"},
            {"op": "folder", "path": "/app/billing", "name": "live"},
            {"op": "folder", "path": "/", "name": "application"},
            {"op": "set", "path": "/app", "key": "DATABASE_URL", "value": "postgres://u:p@db/app"},
            {"op": "set", "path": "/app", "key": "PORT", "value": "8080"},
            {"op": "set", "path": "/app", "key": "API_URL", "value": "${DATABASE_URL}?api=1"},
            {"op": "set", "path": "/app/billing", "key": "api-key", "value": "ak_1"},
            {"op": "set", "path": "/app/billing/live", "key": "STRIPE_KEY", "value": "sk_live_1"},
            {"op": "set", "path": "/application", "key": "NOT_MINE", "value": "x"},
        ]),
        "/app",
    )
    .await;
    // The SDK reads back what it wrote, references expanded, the sibling folder not included.
    assert_eq!(
        written,
        triples(&[
            ("/app", "API_URL", "postgres://u:p@db/app?api=1"),
            ("/app", "DATABASE_URL", "postgres://u:p@db/app"),
            ("/app", "PORT", "8080"),
            ("/app/billing", "api-key", "ak_1"),
            ("/app/billing/live", "STRIPE_KEY", "sk_live_1"),
        ])
    );
    // Another environment of the same project stays out.
    sdk(
        &double,
        "prod",
        json!([{"op": "folder", "path": "/", "name": "app"},
               {"op": "set", "path": "/app", "key": "DATABASE_URL", "value": "postgres://prod"}]),
        "/",
    )
    .await;

    // What the client fetches, before any name mapping: keys and references.
    let config = provider::config_json(
        ProviderType::Infisical,
        &settings(&double, "dev", "/app/").settings,
        &SecretString::from(CLIENT_SECRET.to_string()),
    )
    .unwrap();
    let source = provider::source(
        ProviderType::Infisical,
        &config,
        SecretString::from(CLIENT_SECRET.to_string()),
        Duration::from_secs(10),
    )
    .unwrap();
    let mut fetched: Vec<(String, String)> = source
        .fetch()
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.key, f.reference))
        .collect();
    fetched.sort();
    assert_eq!(
        fetched,
        pairs(&[
            ("API_URL", "/dev/app/API_URL"),
            ("DATABASE_URL", "/dev/app/DATABASE_URL"),
            ("PORT", "/dev/app/PORT"),
            ("billing/api-key", "/dev/app/billing/api-key"),
            (
                "billing/live/STRIPE_KEY",
                "/dev/app/billing/live/STRIPE_KEY"
            ),
        ])
    );

    let svc = service().await;
    linked(
        &svc,
        "infisical",
        settings(&double, "dev", "/app"),
        CLIENT_SECRET,
    )
    .await;
    let done = svc
        .sync_provider(&admin(), "infisical", false)
        .await
        .unwrap();
    assert_eq!(done.summary.status(), "success");
    assert_eq!(
        values(&svc, "infisical-group").await,
        pairs(&[
            ("API_URL", "postgres://u:p@db/app?api=1"),
            ("DATABASE_URL", "postgres://u:p@db/app"),
            ("PORT", "8080"),
            ("billing_api_key", "ak_1"),
            ("billing_live_STRIPE_KEY", "sk_live_1"),
        ])
    );
    // berth logged in and listed the folder once, recursively, with references expanded.
    let log = double.log("url").await;
    let lists: Vec<&String> = log
        .iter()
        .filter(|(m, p)| m == "GET" && p.starts_with("/api/v3/secrets/raw?"))
        .map(|(_, p)| p)
        .filter(|p| p.contains("include_imports=false"))
        .collect();
    assert_eq!(lists.len(), 2, "{log:?}");
    assert!(
        lists.iter().all(|p| p.contains("secretPath=%2Fapp&")
            && p.contains("recursive=true")
            && p.contains("expandSecretReferences=true")
            && p.contains(&format!("workspaceId={PROJECT}"))),
        "{lists:?}"
    );

    // Upstream changes through the SDK: one updated, one deleted, one added deeper.
    sdk(
        &double,
        "dev",
        json!([
            {"op": "set", "path": "/app/billing/live", "key": "STRIPE_KEY", "value": "sk_live_2"},
            {"op": "delete", "path": "/app", "key": "PORT"},
            {"op": "set", "path": "/app/billing/live", "key": "WEBHOOK", "value": "wh"},
        ]),
        "/app",
    )
    .await;
    let changed = svc
        .sync_provider(&admin(), "infisical", false)
        .await
        .unwrap();
    assert_eq!(changed.summary.created, vec!["billing_live_WEBHOOK"]);
    assert_eq!(changed.summary.updated, vec!["billing_live_STRIPE_KEY"]);
    assert_eq!(changed.summary.removed, vec!["PORT"]);
    assert_eq!(changed.summary.unchanged, 3);
}

#[tokio::test]
async fn refusals_are_named_change_nothing_and_read_as_the_sdk_reads_them() {
    let Some(double) = double().await else { return };
    sdk(
        &double,
        "dev",
        json!([{"op": "set", "path": "/", "key": "A", "value": "1"}]),
        "/",
    )
    .await;
    // The SDK understands the double's error bodies as Infisical's.
    let probes = double
        .sdk(
            "sdk_infisical.py",
            json!({
                "url": double.url("url"), "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                "project_id": PROJECT, "environment": "dev",
                "probes": [
                    {"client_id": CLIENT_ID, "client_secret": "wrong", "op": "login"},
                    {"client_id": "stranger", "client_secret": "stranger-secret", "op": "list"},
                ],
            }),
        )
        .await;
    assert_eq!(probes["probes"][0]["status"], 401, "{probes}");
    assert_eq!(probes["probes"][0]["kind"], "UnauthorizedError");
    assert_eq!(probes["probes"][1]["status"], 403, "{probes}");
    assert_eq!(probes["probes"][1]["kind"], "PermissionDenied");

    let svc = service().await;
    linked(&svc, "good", settings(&double, "dev", "/"), CLIENT_SECRET).await;
    svc.sync_provider(&admin(), "good", false).await.unwrap();

    let cases: [(&str, ProviderSettings, &str, ErrorCode, &str); 4] = [
        (
            "wrong-secret",
            settings(&double, "dev", "/"),
            "not-the-secret",
            ErrorCode::PermissionDenied,
            "Invalid credentials",
        ),
        (
            "stranger",
            ProviderSettings {
                settings: BTreeMap::from([
                    ("site_url".to_string(), double.url("url")),
                    ("client_id".to_string(), "stranger".to_string()),
                    ("project_id".to_string(), PROJECT.to_string()),
                    ("environment".to_string(), "dev".to_string()),
                ]),
                ..settings(&double, "dev", "/")
            },
            "stranger-secret",
            ErrorCode::PermissionDenied,
            "not allowed",
        ),
        (
            "blind",
            ProviderSettings {
                settings: BTreeMap::from([
                    ("site_url".to_string(), double.url("url")),
                    ("client_id".to_string(), "blind".to_string()),
                    ("project_id".to_string(), PROJECT.to_string()),
                    ("environment".to_string(), "dev".to_string()),
                ]),
                ..settings(&double, "dev", "/")
            },
            "blind-secret",
            ErrorCode::PermissionDenied,
            "not read its value",
        ),
        (
            "no-such-env",
            settings(&double, "staging", "/"),
            CLIENT_SECRET,
            ErrorCode::FailedPrecondition,
            "Environment with slug 'staging'",
        ),
    ];
    for (name, settings, credential, code, says) in cases {
        linked(&svc, name, settings, credential).await;
        let e = svc.sync_provider(&admin(), name, false).await.unwrap_err();
        assert_eq!(e.code(), code, "{name}: {e}");
        assert!(e.to_string().contains(says), "{name}: {e}");
        assert!(
            !e.to_string().contains(credential),
            "{name}: no credential in errors: {e}"
        );
        assert!(svc
            .list_secrets(&admin(), Some(&format!("{name}-group")))
            .await
            .unwrap()
            .is_empty());
        let history = svc.sync_history(&admin(), name).await.unwrap();
        assert_eq!(history[0].status, "failed", "{name}");
    }

    // Infisical going away fails the sync; the synced values stay.
    drop(double);
    let e = svc
        .sync_provider(&admin(), "good", false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert_eq!(values(&svc, "good-group").await, pairs(&[("A", "1")]));
    let stored = svc
        .store()
        .provider("good")
        .await
        .unwrap()
        .credentials
        .unwrap();
    assert!(stored.starts_with("v1:") && !stored.contains(CLIENT_SECRET));
}
