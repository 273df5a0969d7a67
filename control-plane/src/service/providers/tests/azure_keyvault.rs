//! `azure-keyvault` against the local double (`tests/providers/doubles/azure_keyvault.py`,
//! https with a throwaway CA), with every fixture written — and read back — by Microsoft's
//! official Python SDK (`azure-keyvault-secrets` + `azure-identity`'s ClientSecretCredential,
//! challenge authentication included).

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde_json::json;

use super::doubles::{self, Double};
use super::{linked, values};
use crate::error::ErrorCode;
use crate::provider::ProviderType;
use crate::service::providers::ProviderSettings;
use crate::service::testing::{admin, service};

const TENANT: &str = "72f988bf-0000-4000-8000-00000000berth";
const APP: &str = "0a1b2c3d-0000-4000-8000-0000000berth";
const APP_SECRET: &str = "berth~client~secret~0123456789";

async fn double() -> Option<Double> {
    let python = doubles::python()?;
    Some(
        doubles::start(
            python,
            "azure_keyvault.py",
            json!({
                "tenant": TENANT,
                "page_size": 2,
                "clients": {
                    APP: {"secret": APP_SECRET, "permissions": ["get", "list", "set", "delete"]},
                    "lister": {"secret": "lister-secret", "permissions": ["list"]},
                },
            }),
        )
        .await,
    )
}

/// Runs SDK steps, then returns what the SDK lists: `(name, enabled, value)` and the number
/// of pages it read.
async fn sdk(
    double: &Double,
    steps: serde_json::Value,
) -> (Vec<(String, bool, Option<String>)>, u64) {
    let out = double
        .sdk("sdk_azure_keyvault.py", spec(double, steps, json!([])))
        .await;
    (
        serde_json::from_value(out["read"].clone()).unwrap(),
        out["pages"].as_u64().unwrap(),
    )
}

fn spec(double: &Double, steps: serde_json::Value, probes: serde_json::Value) -> serde_json::Value {
    json!({
        "authority": double.url("authority"),
        "vault": double.url("vault"),
        "ca": double.info["ca"],
        "tenant_id": TENANT,
        "client_id": APP,
        "client_secret": APP_SECRET,
        "page_size": 2,
        "steps": steps,
        "probes": probes,
    })
}

fn settings(double: &Double, client_id: &str, tenant_id: &str, with_ca: bool) -> ProviderSettings {
    let mut settings = BTreeMap::from([
        ("vault_url".to_string(), double.url("vault")),
        ("tenant_id".to_string(), tenant_id.to_string()),
        ("client_id".to_string(), client_id.to_string()),
        ("authority_host".to_string(), double.url("authority")),
    ]);
    if with_ca {
        settings.insert("ca_cert".into(), double.ca_pem());
    }
    ProviderSettings {
        provider_type: ProviderType::AzureKeyvault,
        settings,
        sync_interval: None,
    }
}

fn pairs(rows: &[(&str, &str)]) -> Vec<(String, String)> {
    rows.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn a_sync_pages_through_what_the_sdk_wrote_and_skips_disabled_secrets() {
    let Some(double) = double().await else { return };
    let (read, pages) = sdk(
        &double,
        json!([
            {"op": "set", "name": "my-db-url", "value": "postgres://u:p@db/app"},
            {"op": "set", "name": "api-key", "value": "k1"},
            {"op": "set", "name": "api-key", "value": "k2"},
            {"op": "set", "name": "DATABASE-PASSWORD", "value": "pw"},
            {"op": "set", "name": "old", "value": "o"},
            {"op": "disable", "name": "old"},
            {"op": "set", "name": "born-disabled", "value": "b", "enabled": false},
            {"op": "set", "name": "gone", "value": "g"},
            {"op": "delete", "name": "gone"},
            {"op": "set", "name": "zeta", "value": "z1"},
        ]),
    )
    .await;
    // The SDK pages through the double and reads back what it wrote. (It only asks for a
    // token after the vault's 401 challenge names the tenant and resource, so its success
    // also checks the double's challenge.)
    let row = |n: &str, e: bool, v: Option<&str>| (n.to_string(), e, v.map(str::to_string));
    assert_eq!(
        read,
        vec![
            row("api-key", true, Some("k2")),
            row("born-disabled", false, None),
            row("DATABASE-PASSWORD", true, Some("pw")),
            row("my-db-url", true, Some("postgres://u:p@db/app")),
            row("old", false, None),
            row("zeta", true, Some("z1")),
        ]
    );
    assert_eq!(pages, 3, "six secrets in pages of two");

    let svc = service().await;
    linked(
        &svc,
        "azure",
        settings(&double, APP, TENANT, true),
        APP_SECRET,
    )
    .await;
    let done = svc.sync_provider(&admin(), "azure", false).await.unwrap();
    assert_eq!(done.summary.status(), "success");
    assert_eq!(
        values(&svc, "azure-group").await,
        pairs(&[
            ("DATABASE_PASSWORD", "pw"),
            ("api_key", "k2"),
            ("my_db_url", "postgres://u:p@db/app"),
            ("zeta", "z1"),
        ])
    );
    // berth followed every nextLink and read only the enabled secrets, always with 7.4.
    let log = double.log("vault").await;
    // (The SDK lists with maxresults=2 and reads `/secrets/{name}/?`; berth with 25 and
    // `/secrets/{name}?`.)
    let berth: Vec<&String> = log
        .iter()
        .filter(|(m, _)| m == "GET")
        .map(|(_, p)| p)
        .filter(|p| {
            p.contains("maxresults=25") || (p.starts_with("/secrets/") && !p.contains("/?"))
        })
        .collect();
    let listed = berth.iter().filter(|p| p.starts_with("/secrets?")).count();
    assert_eq!(listed, 3, "{berth:?}");
    let read_values: Vec<&&String> = berth
        .iter()
        .filter(|p| p.starts_with("/secrets/"))
        .collect();
    assert_eq!(read_values.len(), 4, "{berth:?}");
    assert!(
        !read_values
            .iter()
            .any(|p| p.contains("/old?") || p.contains("/born-disabled?")),
        "disabled secrets are not read: {berth:?}"
    );
    assert!(log
        .iter()
        .filter(|(_, p)| p.starts_with("/secrets"))
        .all(|(_, p)| p.contains("api-version=7.4")));

    // Upstream: one disabled, one rotated.
    sdk(
        &double,
        json!([
            {"op": "disable", "name": "my-db-url"},
            {"op": "set", "name": "zeta", "value": "z2"},
        ]),
    )
    .await;
    let changed = svc.sync_provider(&admin(), "azure", false).await.unwrap();
    assert_eq!(changed.summary.updated, vec!["zeta"]);
    assert_eq!(changed.summary.removed, vec!["my_db_url"]);
    assert_eq!(changed.summary.unchanged, 2);
}

#[tokio::test]
async fn refusals_are_named_change_nothing_and_read_as_the_sdk_reads_them() {
    let Some(double) = double().await else { return };
    sdk(
        &double,
        json!([{"op": "set", "name": "a-secret", "value": "1"}]),
    )
    .await;
    // The SDK understands the double's token and vault errors as Azure's.
    let out = double
        .sdk(
            "sdk_azure_keyvault.py",
            spec(
                &double,
                json!([]),
                json!([
                    {"client_id": APP, "client_secret": "wrong", "op": "list"},
                    {"client_id": "lister", "client_secret": "lister-secret", "op": "get", "name": "a-secret"},
                    {"client_id": APP, "client_secret": APP_SECRET, "op": "get", "name": "missing"},
                ]),
            ),
        )
        .await;
    let probes = &out["probes"];
    assert_eq!(probes[0]["error"], "ClientAuthenticationError", "{probes}");
    assert!(probes[0]["message"]
        .as_str()
        .unwrap()
        .contains("AADSTS7000215"));
    assert_eq!(probes[1]["status"], 403, "{probes}");
    assert_eq!(probes[1]["code"], "Forbidden");
    assert_eq!(probes[2]["error"], "ResourceNotFoundError", "{probes}");
    assert_eq!(probes[2]["code"], "SecretNotFound");

    let svc = service().await;
    linked(
        &svc,
        "good",
        settings(&double, APP, TENANT, true),
        APP_SECRET,
    )
    .await;
    svc.sync_provider(&admin(), "good", false).await.unwrap();

    let cases = [
        (
            "wrong-secret",
            settings(&double, APP, TENANT, true),
            "not-the-secret",
            ErrorCode::PermissionDenied,
            "AADSTS7000215",
        ),
        (
            "unknown-app",
            settings(&double, "ghost", TENANT, true),
            APP_SECRET,
            ErrorCode::PermissionDenied,
            "AADSTS700016",
        ),
        (
            "unknown-tenant",
            settings(&double, APP, "contoso.example", true),
            APP_SECRET,
            ErrorCode::PermissionDenied,
            "AADSTS90002",
        ),
        (
            "list-only",
            settings(&double, "lister", TENANT, true),
            "lister-secret",
            ErrorCode::PermissionDenied,
            "get permission",
        ),
        // The throwaway CA is not among the system's roots: berth verifies the certificate.
        (
            "untrusted",
            settings(&double, APP, TENANT, false),
            APP_SECRET,
            ErrorCode::Unavailable,
            "tls",
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
        assert_eq!(
            svc.sync_history(&admin(), name).await.unwrap()[0].status,
            "failed"
        );
    }

    // A plain-http vault is refused when the provider is added: the token would travel bare.
    let mut http = settings(&double, APP, TENANT, true);
    http.settings.insert(
        "vault_url".into(),
        double.url("vault").replace("https://", "http://"),
    );
    let e = svc
        .add_provider(
            &admin(),
            "bare",
            http,
            &SecretString::from(APP_SECRET.to_string()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");

    // The vault going away fails the sync; the synced values stay.
    drop(double);
    let e = svc
        .sync_provider(&admin(), "good", false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert_eq!(
        values(&svc, "good-group").await,
        pairs(&[("a_secret", "1")])
    );
}
