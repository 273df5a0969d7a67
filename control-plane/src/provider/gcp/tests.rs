//! Syncs against a local double of Secret Manager and Google's token endpoint
//! (`tests/providers/doubles/gcp_secret_manager.py`; no Google server runs here). Google's own
//! client library (`google-cloud-secret-manager`, REST transport, through
//! `tests/providers/gcp-secret-manager/sdk.py`) writes each test's secrets into the double and
//! reads them back first, so the double answers what the vendor's client expects; berth then
//! syncs from it. Python comes from `BERTH_PROVIDER_PYTHON` (`tests/providers/setup.sh`);
//! without it these tests fail when `CI` is set and are skipped (with a note) otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Method;
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::error::ErrorCode;
use crate::provider::http::ProviderHttp;
use crate::provider::ProviderType;
use crate::service::providers::ProviderSettings;
use crate::service::testing::{admin, service};
use crate::service::{Service, SetEnvValue};

const PROJECT: &str = "berth-test";
const CLIENT_EMAIL: &str = "berth-sync@berth-test.iam.gserviceaccount.com";

struct Double {
    child: Child,
    /// Key files, certificates; removed with the double.
    dir: tempfile::TempDir,
    python: String,
    endpoint: String,
    /// The service-account key file the double knows (JSON), and where it lies.
    key: String,
    key_path: PathBuf,
    /// The throwaway CA of an https double.
    ca: Option<String>,
    ca_path: Option<PathBuf>,
    http: ProviderHttp,
}

impl Drop for Double {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
}

fn sdk_script() -> PathBuf {
    repo().join("tests/providers/gcp-secret-manager/sdk.py")
}

/// Runs a Python script to its end; its stdout is one JSON object.
fn run(python: &str, args: &[&str], envs: &[(&str, &Path)]) -> Value {
    let out = Command::new(python)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, *v)))
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

/// A fresh double on a free port (https with a throwaway CA when `tls`), or `None` (outside
/// CI) when there is no provider Python.
// Tells a developer, in the test output, why the test did nothing.
#[allow(clippy::print_stderr)]
async fn double(tls: bool) -> Option<Double> {
    let Ok(python) = std::env::var("BERTH_PROVIDER_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the provider Python is required in CI: tests/run.sh runs tests/providers/setup.sh \
             and sets BERTH_PROVIDER_PYTHON"
        );
        eprintln!("skipping: no BERTH_PROVIDER_PYTHON (eval \"$(bash tests/providers/setup.sh)\")");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let scheme = if tls { "https" } else { "http" };
    let endpoint = format!("{scheme}://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().join("sa");
    let token_uri = format!("{endpoint}/token");
    let mut keygen = vec![
        sdk_script().display().to_string(),
        "keygen".into(),
        "--dir".into(),
        dir_arg.display().to_string(),
        "--token-uri".into(),
        token_uri,
    ];
    if tls {
        keygen.push("--tls".into());
    }
    let keys = run(
        &python,
        &keygen.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    let key_path = PathBuf::from(keys["key"].as_str().unwrap());
    let public = dir_arg.join("public.pem");
    let mut args = vec![
        repo()
            .join("tests/providers/doubles/gcp_secret_manager.py")
            .display()
            .to_string(),
        "--port".into(),
        port.to_string(),
        "--project".into(),
        PROJECT.into(),
        "--client-email".into(),
        CLIENT_EMAIL.into(),
        "--public-key".into(),
        public.display().to_string(),
    ];
    if tls {
        args.extend([
            "--tls-cert".to_string(),
            keys["cert"].as_str().unwrap().to_string(),
            "--tls-key".to_string(),
            keys["cert_key"].as_str().unwrap().to_string(),
        ]);
    }
    let child = Command::new(&python)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the double");
    let ca_path = keys["ca"].as_str().map(PathBuf::from);
    let ca = ca_path
        .as_ref()
        .map(|p| std::fs::read_to_string(p).unwrap());
    let http = ProviderHttp::new(&endpoint, ca.as_deref(), Duration::from_secs(5)).unwrap();
    let double = Double {
        child,
        dir,
        python,
        endpoint,
        key: std::fs::read_to_string(&key_path).unwrap(),
        key_path,
        ca,
        ca_path,
        http,
    };
    for _ in 0..200 {
        if let Ok(a) = double
            .http
            .call(Method::GET, "/__double/health", &[], None)
            .await
        {
            if a.status == 200 {
                return Some(double);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the Secret Manager double did not become ready");
}

impl Double {
    fn ca_env(&self) -> Vec<(&'static str, &Path)> {
        // The library's transport is `requests`, which takes its roots from here.
        self.ca_path
            .iter()
            .map(|p| ("REQUESTS_CA_BUNDLE", p.as_path()))
            .collect()
    }

    /// Google's client library writes `spec` into the double (see sdk.py) and reads it all
    /// back, page by page: what it read.
    fn sdk(&self, spec: Value) -> Value {
        run(
            &self.python,
            &[
                &sdk_script().display().to_string(),
                "write",
                "--endpoint",
                &self.endpoint,
                "--key",
                &self.key_path.display().to_string(),
                "--project",
                PROJECT,
                "--spec",
                &spec.to_string(),
            ],
            &self.ca_env(),
        )
    }

    /// Another key of the same account, which the double does not know: (JSON, path).
    fn unknown_key(&self) -> (String, PathBuf) {
        let dir = self.dir.path().join("unknown");
        let keys = run(
            &self.python,
            &[
                &sdk_script().display().to_string(),
                "keygen",
                "--dir",
                &dir.display().to_string(),
                "--token-uri",
                &format!("{}/token", self.endpoint),
            ],
            &[],
        );
        let path = PathBuf::from(keys["key"].as_str().unwrap());
        (std::fs::read_to_string(&path).unwrap(), path)
    }

    async fn fault(&self, fault: Value) {
        let a = self
            .http
            .call(Method::POST, "/__double/fault", &[], Some(&fault))
            .await
            .unwrap();
        assert_eq!(a.status, 200);
    }

    /// The API requests the double served: `(method, path, query keys)`.
    async fn requests(&self) -> Vec<Value> {
        let a = self
            .http
            .call(Method::GET, "/__double/requests", &[], None)
            .await
            .unwrap();
        a.json().unwrap()["requests"].as_array().unwrap().clone()
    }

    fn settings(&self, extra: &[(&str, &str)]) -> ProviderSettings {
        let mut settings = BTreeMap::from([
            ("project".to_string(), PROJECT.to_string()),
            ("endpoint".to_string(), self.endpoint.clone()),
        ]);
        if let Some(ca) = &self.ca {
            settings.insert("ca_cert".into(), ca.clone());
        }
        for (k, v) in extra {
            settings.insert(k.to_string(), v.to_string());
        }
        ProviderSettings {
            provider_type: ProviderType::GcpSecretManager,
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

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn the_vendor_sdk_writes_what_berth_syncs_page_after_page() {
    let Some(d) = double(false).await else { return };
    // Five secrets on pages of two; one without a version, one whose latest is disabled.
    let read = d.sdk(json!({
        "create": {
            "DATABASE_URL": {"value": "postgres://u:p@db/app"},
            "stripe-key": {"value": "sk_live_abc"},
            "api_token": {"value": "t0k"},
            "not-yet": {"value": null},
            "withdrawn": {"value": "w1"},
        },
        "disable": ["withdrawn"],
        "expect": {
            "DATABASE_URL": "postgres://u:p@db/app",
            "stripe-key": "sk_live_abc",
            "api_token": "t0k",
            "not-yet": {"unreadable": "NOT_FOUND"},
            "withdrawn": {"unreadable": "FAILED_PRECONDITION"},
        },
    }));
    assert!(read["pages"].as_u64().unwrap() >= 3, "{read}");
    assert!(read["granted_pages"].as_u64().unwrap() >= 3, "{read}");

    let svc = service().await;
    linked(&svc, "gcp", d.settings(&[]), &d.key).await;
    let dry = svc.sync_provider(&admin(), "gcp", true).await.unwrap();
    assert_eq!(
        dry.summary.created,
        vec!["DATABASE_URL", "api_token", "stripe_key"]
    );
    assert!(
        values(&svc, "gcp-group").await.is_empty(),
        "dry run writes nothing"
    );

    let before = d.requests().await.len();
    let done = svc.sync_provider(&admin(), "gcp", false).await.unwrap();
    assert_eq!(done.summary.status(), "success");
    let expected = [
        ("DATABASE_URL", "postgres://u:p@db/app"),
        ("api_token", "t0k"),
        ("stripe_key", "sk_live_abc"),
    ];
    assert_eq!(values(&svc, "gcp-group").await, pairs(&expected));
    let listed = svc.list_secrets(&admin(), Some("gcp-group")).await.unwrap();
    assert!(listed
        .iter()
        .all(|s| s.source == "synced" && s.last_synced_at.is_some()));
    // berth itself followed nextPageToken: three list pages, all asking for a page size.
    let lists: Vec<Value> = d.requests().await[before..]
        .iter()
        .filter(|r| r["method"] == "GET" && r["path"] == "/v1/projects/berth-test/secrets")
        .cloned()
        .collect();
    assert_eq!(lists.len(), 3, "{lists:?}");
    assert!(lists
        .iter()
        .all(|r| r["query"].as_array().unwrap().contains(&json!("pageSize"))));
    assert_eq!(
        lists
            .iter()
            .filter(|r| r["query"].as_array().unwrap().contains(&json!("pageToken")))
            .count(),
        2
    );

    // Unchanged values are not rewritten.
    let ciphertexts: Vec<String> = listed.iter().map(|s| s.value.clone()).collect();
    let again = svc.sync_provider(&admin(), "gcp", false).await.unwrap();
    assert_eq!(again.summary.unchanged, 3);
    let after: Vec<String> = svc
        .list_secrets(&admin(), Some("gcp-group"))
        .await
        .unwrap()
        .iter()
        .map(|s| s.value.clone())
        .collect();
    assert_eq!(ciphertexts, after);

    // Upstream, through the SDK: a new version, a deleted secret, a new secret, and a value
    // withdrawn (latest version disabled) which then leaves the group like a deleted one.
    d.sdk(json!({
        "create": {"late": {"value": "l8"}},
        "add": {"stripe-key": "sk_live_rotated", "DATABASE_URL": "postgres://new"},
        "disable": ["DATABASE_URL"],
        "delete": ["api_token"],
    }));
    let changed = svc.sync_provider(&admin(), "gcp", false).await.unwrap();
    assert_eq!(changed.summary.created, vec!["late"]);
    assert_eq!(changed.summary.updated, vec!["stripe_key"]);
    assert_eq!(changed.summary.removed, vec!["DATABASE_URL", "api_token"]);
    assert_eq!(
        values(&svc, "gcp-group").await,
        pairs(&[("late", "l8"), ("stripe_key", "sk_live_rotated")])
    );
    let history = svc.sync_history(&admin(), "gcp").await.unwrap();
    assert_eq!(history.len(), 3);
    assert!(history.iter().all(|h| h.status == "success"));
}

#[tokio::test]
async fn a_prefix_and_a_filter_narrow_the_sync_and_a_withdrawn_value_in_use_is_kept_stale() {
    let Some(d) = double(false).await else { return };
    d.sdk(json!({"create": {
        "myapp-DATABASE_URL": {"value": "db", "labels": {"env": "prod"}},
        "myapp-REDIS-URL": {"value": "redis", "labels": {"env": "prod"}},
        "myapp-API_KEY": {"value": "dev-key", "labels": {"env": "dev"}},
        "other-prod-thing": {"value": "x", "labels": {"env": "prod"}},
    }}));
    let svc = service().await;
    let settings = d.settings(&[("prefix", "myapp-"), ("filter", "labels.env=prod")]);
    linked(&svc, "gcp", settings, &d.key).await;
    svc.sync_provider(&admin(), "gcp", false).await.unwrap();
    assert_eq!(
        values(&svc, "gcp-group").await,
        pairs(&[("DATABASE_URL", "db"), ("REDIS_URL", "redis")])
    );
    assert!(d
        .requests()
        .await
        .iter()
        .any(|r| r["query"].as_array().unwrap().contains(&json!("filter"))));

    // An app uses REDIS_URL; its value is withdrawn upstream: kept, stale, sync partial.
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
        "REDIS",
        SetEnvValue::Secret("gcp-group/REDIS_URL".into()),
        None,
    )
    .await
    .unwrap();
    d.sdk(json!({"disable": ["myapp-REDIS-URL"]}));
    let outcome = svc.sync_provider(&admin(), "gcp", false).await.unwrap();
    assert_eq!(outcome.summary.status(), "partial");
    assert_eq!(outcome.summary.stale[0].0, "REDIS_URL");
    assert!(values(&svc, "gcp-group")
        .await
        .contains(&("REDIS_URL".to_string(), "redis".to_string())));
}

#[tokio::test]
async fn a_wrong_key_is_refused_writes_nothing_and_never_shows_the_key() {
    let Some(d) = double(false).await else { return };
    d.sdk(json!({"create": {"A": {"value": "1"}}}));
    let (unknown, unknown_path) = d.unknown_key();
    // Google's library is refused with that key too, on both of its login paths.
    let refused = run(
        &d.python,
        &[
            &sdk_script().display().to_string(),
            "refused",
            "--endpoint",
            &d.endpoint,
            "--key",
            &unknown_path.display().to_string(),
            "--project",
            PROJECT,
        ],
        &[],
    );
    assert_eq!(refused["self_signed_jwt"], "Unauthorized", "{refused}");

    let svc = service().await;
    linked(&svc, "bad", d.settings(&[]), &unknown).await;
    let e = svc.sync_provider(&admin(), "bad", false).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("Invalid JWT Signature") && text.contains(CLIENT_EMAIL),
        "{text}"
    );
    let key_json: Value = serde_json::from_str(&unknown).unwrap();
    let pem_line = key_json["private_key"]
        .as_str()
        .unwrap()
        .lines()
        .nth(1)
        .unwrap();
    assert!(
        !text.contains(pem_line) && !text.contains("PRIVATE KEY") && !text.contains("eyJ"),
        "no key or assertion in errors: {text}"
    );
    assert!(values(&svc, "bad-group").await.is_empty());
    let row = svc.get_provider(&admin(), "bad").await.unwrap();
    assert_eq!(row.last_sync_status.as_deref(), Some("failed"));
    let history = svc.sync_history(&admin(), "bad").await.unwrap();
    assert_eq!(history[0].status, "failed");
    let recorded = history[0].error_message.as_deref().unwrap();
    assert!(
        recorded.contains("Invalid JWT Signature") && !recorded.contains(pem_line),
        "{recorded}"
    );
    let e = svc.test_provider(&admin(), "bad").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied, "{e}");

    // The right key on a project the account cannot see: Google's 403, named.
    let mut settings = d.settings(&[]);
    settings
        .settings
        .insert("project".into(), "someone-elses".into());
    linked(&svc, "elsewhere", settings, &d.key).await;
    let e = svc
        .sync_provider(&admin(), "elsewhere", false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied, "{e}");
    assert!(
        e.to_string()
            .contains("PERMISSION_DENIED: Permission 'secretmanager.secrets.list' denied"),
        "{e}"
    );
}

#[tokio::test]
async fn malformed_answers_and_refused_reads_fail_the_sync_and_keep_the_last_values() {
    let Some(d) = double(false).await else { return };
    d.sdk(json!({"create": {
        "A": {"value": "value-of-a"},
        "B": {"value": "value-of-b"},
        "C": {"value": "value-of-c"},
    }}));
    let svc = service().await;
    linked(&svc, "gcp", d.settings(&[]), &d.key).await;
    svc.sync_provider(&admin(), "gcp", false).await.unwrap();
    let good = pairs(&[
        ("A", "value-of-a"),
        ("B", "value-of-b"),
        ("C", "value-of-c"),
    ]);
    // Upstream changes that a failed sync must not half-apply.
    d.sdk(json!({"add": {"A": "new-a", "C": "new-c"}}));

    let cases = [
        (
            json!({"access": "bad-crc"}),
            ErrorCode::Unavailable,
            "dataCrc32c",
        ),
        (
            json!({"access": "not-base64"}),
            ErrorCode::Unavailable,
            "not base64",
        ),
        (
            json!({"access": "no-payload"}),
            ErrorCode::Unavailable,
            "no payload.data",
        ),
        (
            json!({"list": "not-json"}),
            ErrorCode::Unavailable,
            "malformed answer",
        ),
        (
            json!({"list": "bad-name"}),
            ErrorCode::Unavailable,
            "not a secret name",
        ),
        (
            json!({"token": "no-access-token"}),
            ErrorCode::Unavailable,
            "no access_token",
        ),
        (
            json!({"token": "unavailable"}),
            ErrorCode::Unavailable,
            "token endpoint failed",
        ),
        (
            json!({"deny": ["B"]}),
            ErrorCode::PermissionDenied,
            "read of secret B refused",
        ),
    ];
    let failures = cases.len();
    for (fault, code, expected) in cases {
        d.fault(fault.clone()).await;
        let e = svc.sync_provider(&admin(), "gcp", false).await.unwrap_err();
        assert_eq!(e.code(), code, "{fault}: {e}");
        let text = e.to_string();
        assert!(text.contains(expected), "{fault}: {text}");
        assert!(
            !text.contains("value-of") && !text.contains("new-"),
            "{text}"
        );
        assert_eq!(
            values(&svc, "gcp-group").await,
            good,
            "{fault}: all or nothing"
        );
    }
    let history = svc.sync_history(&admin(), "gcp").await.unwrap();
    assert_eq!(
        history.iter().filter(|h| h.status == "failed").count(),
        failures
    );

    d.fault(json!({})).await;
    let healed = svc.sync_provider(&admin(), "gcp", false).await.unwrap();
    assert_eq!(healed.summary.updated, vec!["A", "C"]);
    // The provider gone: the same, values stay.
    let kept = values(&svc, "gcp-group").await;
    drop(d);
    let e = svc.sync_provider(&admin(), "gcp", false).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert_eq!(values(&svc, "gcp-group").await, kept);
}

#[tokio::test]
async fn https_with_the_teams_own_ca_is_verified() {
    let Some(d) = double(true).await else { return };
    // The library over https, trusting the throwaway CA through REQUESTS_CA_BUNDLE.
    d.sdk(json!({"create": {"TLS_ONLY": {"value": "over-https"}}}));
    let svc = service().await;
    linked(&svc, "gcp", d.settings(&[]), &d.key).await;
    svc.sync_provider(&admin(), "gcp", false).await.unwrap();
    assert_eq!(
        values(&svc, "gcp-group").await,
        pairs(&[("TLS_ONLY", "over-https")])
    );
    // Without the CA, the same server is not trusted (token endpoint and API alike).
    let mut settings = d.settings(&[]);
    settings.settings.remove("ca_cert");
    linked(&svc, "no-ca", settings, &d.key).await;
    let e = svc
        .sync_provider(&admin(), "no-ca", false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert!(e.to_string().contains("tls"), "{e}");
}
