//! `berth import-v1` end to end (SPEC §9, R-9.1): a V1 database made from the V1 schema
//! (`tests/fixtures/v1/schema.sql`) with rows of every kind, imported by the real `berth`
//! binary into a real `berth dev` node through its admin API: a dry run first, then the
//! import, then a second run that imports nothing; the V1 file's bytes never change.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _};

use crate::fixture::data_dir::files_containing;
use crate::fixture::http::post;
use crate::fixture::node::{dirs, ok, start_with_webhook, stderr, stdout, DevNode};
use crate::fixture::repo_root;

const DB_URL: &str = "postgres://app:v1-s3cr3t-db@db.internal/app";
const API_KEY: &str = "sk_live_v1s3cr3tapikey";
const REGISTRY_PASSWORD: &str = "v1-s3cr3t-registry";
const PROVIDER_SECRET: &str = "v1-s3cr3t-client";

/// A V1 database with rows of every kind: secrets referenced by the seed's `@secret:<id>`,
/// a registry with credentials, two applications (ports, env_vars JSON, a tagged image),
/// global and project variables, an allowlist pattern, a domain, a provider, a setting.
async fn v1_database(dir: &Path) -> PathBuf {
    let path = dir.join("v1.sqlite");
    let schema = std::fs::read_to_string(repo_root().join("tests/fixtures/v1/schema.sql")).unwrap();
    let rows = format!(
        r#"
        INSERT INTO secret_providers (name, type, config) VALUES
          ('infisical-prod', 'infisical',
           '{{"clientId":"machine-1","clientSecret":"{PROVIDER_SECRET}","projectId":"p-1","environment":"prod","secretPath":"/"}}');
        INSERT INTO secrets (name, reference, metadata) VALUES
          ('DATABASE_URL', '{DB_URL}', 'main database'),
          ('API_KEY', '{API_KEY}', NULL);
        INSERT INTO repositories (name, url, username, password) VALUES
          ('registry', 'registry.local:5000', 'ci', '{REGISTRY_PASSWORD}');
        INSERT INTO applications (name, image, version, repository_id, ports, env_vars, status) VALUES
          ('web', 'registry.local:5000/team/web', 'v1.4.2', 1, '[{{"host":18080,"container":80}}]',
           '{{"DATABASE_URL":"@secret:1","GREETING":"hello"}}', 'running'),
          ('worker', 'team/worker:v7', NULL, NULL, '[]', '{{}}', 'stopped');
        INSERT INTO environment_variables (scope, project_id, key, value) VALUES
          ('global', NULL, 'NODE_ENV', 'production'),
          ('project', 2, 'API_KEY', '@secret:2');
        INSERT INTO image_whitelists (pattern) VALUES ('registry.local:5000/*'), ('team/*');
        INSERT INTO domains (application_id, domain) VALUES (1, 'shop.example.com');
        INSERT INTO system_settings (key, value) VALUES ('legacy_webhook_secret', 'v1-s3cr3t-legacy');
        "#
    );
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql(&format!("{schema}{rows}"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    path
}

fn import(node: &DevNode, args: &[&str]) -> std::process::Output {
    let mut all = vec!["import-v1"];
    all.extend_from_slice(args);
    node.cli(&all, None)
}

/// `(kind, name) -> outcome` of a JSON report.
fn outcomes(report: &Value) -> Vec<(String, String, String)> {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap().to_string(),
                i["name"].as_str().unwrap().to_string(),
                i["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn count(report: &Value, outcome: &str) -> usize {
    outcomes(report)
        .iter()
        .filter(|(_, _, o)| o == outcome)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_v1_database_is_imported_once_through_the_api_and_never_changed() {
    let d = dirs();
    let v1_dir = tempfile::tempdir().unwrap();
    let v1 = v1_database(v1_dir.path()).await;
    let v1_bytes = std::fs::read(&v1).unwrap();
    let v1_path = v1.to_str().unwrap();
    let (node, shim) = start_with_webhook(d.data.path(), d.logs.path(), false);

    // A dry run reports everything and writes nothing.
    let dry: Value =
        serde_json::from_str(&ok(import(&node, &[v1_path, "--dry-run", "-o", "json"]))).unwrap();
    assert_eq!(
        (dry["dry_run"].as_bool(), dry["applied"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(dry["tokens"], json!({}));
    assert_eq!(count(&dry, "created"), 14, "{dry:#}");
    assert!(ok(node.cli(&["secret", "list"], None)).contains("no secrets"));
    assert!(!ok(node.cli(&["app", "list"], None)).contains("worker"));

    // The import: tokens to a new 0600 file.
    let tokens_path = d.logs.path().join("tokens.json");
    let tokens_arg = tokens_path.to_str().unwrap();
    let table = ok(import(&node, &[v1_path, "--tokens-out", tokens_arg]));
    assert!(
        table.contains("webhook tokens of the 2 created applications"),
        "{table}"
    );
    assert!(table.contains("skipped (not imported):"), "{table}");
    assert!(table.contains("legacy_webhook_secret"), "{table}");
    assert!(
        !table.contains("whk_"),
        "tokens went to the file, not stdout: {table}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&tokens_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let tokens: Value =
        serde_json::from_str(&std::fs::read_to_string(&tokens_path).unwrap()).unwrap();
    let web_token = tokens["web"].as_str().unwrap().to_string();
    assert!(web_token.starts_with("whk_"));
    assert!(tokens["worker"].as_str().unwrap().starts_with("whk_"));

    // Secrets reveal to the V1 values.
    let revealed = ok(node.cli(
        &["secret", "reveal", "default", "DATABASE_URL", "--yes"],
        None,
    ));
    assert_eq!(revealed.trim(), DB_URL);
    // Variables resolve: the references to the V1 secrets, the plain values as they were.
    let web_env = ok(node.cli(&["env", "export", "--app", "web", "--yes"], None));
    for line in [
        format!("DATABASE_URL={DB_URL}"),
        "GREETING=hello".into(),
        "NODE_ENV=production".into(),
    ] {
        assert!(
            web_env.lines().any(|l| l == line),
            "{line} not in {web_env}"
        );
    }
    let worker_env = ok(node.cli(&["env", "export", "--app", "worker", "--yes"], None));
    assert!(
        worker_env
            .lines()
            .any(|l| l == format!("API_KEY={API_KEY}")),
        "{worker_env}"
    );
    let show = ok(node.cli(&["app", "show", "worker", "-o", "json"], None));
    let worker: Value = serde_json::from_str(&show).unwrap();
    assert_eq!(worker["application"]["image"], "team/worker", "{worker:#}");
    assert_eq!(worker["application"]["version"], "v7", "{worker:#}");

    // The tokens are the applications' webhook tokens: the shim's control plane accepts
    // web's, refuses worker's for web, and refuses a made-up one.
    let deploy = |token: &str| {
        post(
            shim,
            "/webhook/deploy",
            &json!({"applicationName": "web", "version": "v1.4.3", "token": token}),
            None,
        )
    };
    let accepted = deploy(&web_token);
    assert!(
        ![401, 403, 404].contains(&accepted.status),
        "the imported token was not accepted: {accepted:?}"
    );
    assert_eq!(deploy(tokens["worker"].as_str().unwrap()).status, 401);
    assert_eq!(deploy("whk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").status, 401);

    // The second run imports nothing; an existing tokens file is never overwritten.
    let again = import(&node, &[v1_path, "--tokens-out", tokens_arg]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("never overwrites"),
        "{}",
        stderr(&again)
    );
    let second: Value = serde_json::from_str(&ok(import(&node, &[v1_path, "-o", "json"]))).unwrap();
    assert_eq!(second["applied"], true);
    assert_eq!(count(&second, "created"), 0, "{second:#}");
    assert_eq!(count(&second, "conflict"), 0, "{second:#}");
    assert_eq!(count(&second, "already_imported"), 14, "{second:#}");
    assert_eq!(second["tokens"], json!({}));

    // A value changed in berth is a conflict: reported, not overwritten, nothing written,
    // exit code 1.
    ok(node.cli(
        &["secret", "set", "default", "API_KEY"],
        Some("rotated-in-berth"),
    ));
    let conflict = import(&node, &[v1_path]);
    assert_eq!(conflict.status.code(), Some(1), "{}", stdout(&conflict));
    let out = stdout(&conflict);
    assert!(out.contains("conflicts: nothing was written"), "{out}");
    assert!(
        out.contains("secret default/API_KEY (secrets row 2): berth's secret differs: value"),
        "{out}"
    );
    assert!(
        !out.contains("rotated-in-berth") && !out.contains(API_KEY),
        "{out}"
    );
    let kept = ok(node.cli(&["secret", "reveal", "default", "API_KEY", "--yes"], None));
    assert_eq!(kept.trim(), "rotated-in-berth");

    // The V1 file never changed, and no V1 secret is in berth's files in plaintext.
    assert_eq!(
        std::fs::read(&v1).unwrap(),
        v1_bytes,
        "the V1 database changed"
    );
    for plaintext in [DB_URL, API_KEY, REGISTRY_PASSWORD, PROVIDER_SECRET] {
        assert!(
            files_containing(d.data.path(), plaintext).is_empty(),
            "{plaintext} in plaintext under the data directory"
        );
    }
    assert!(
        files_containing(d.logs.path(), DB_URL).is_empty(),
        "a V1 value was logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_is_not_a_v1_database_is_refused_and_nothing_is_written() {
    let d = dirs();
    let node = DevNode::start_without_agent(&d);
    let other = tempfile::tempdir().unwrap();
    let text = other.path().join("notes.txt");
    std::fs::write(&text, "not a database\n".repeat(200)).unwrap();
    let berth_db = node.data_dir.join("berth.db");
    for (path, expected) in [
        (text.as_path(), "is not a SQLite database"),
        (berth_db.as_path(), "this is not a V1 database"),
    ] {
        let out = import(&node, &[path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    }
    assert!(ok(node.cli(&["secret", "list"], None)).contains("no secrets"));
}
