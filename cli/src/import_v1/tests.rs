//! Reading real V1 files, made from the V1 schema (`tests/fixtures/v1/schema.sql`), and the
//! files `import-v1` must refuse.

use std::path::{Path, PathBuf};

use berth_control_plane::service::import::PlanValue;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _};

use super::{plan, read};

const SCHEMA: &str = include_str!("../../../tests/fixtures/v1/schema.sql");

/// A SQLite file at `dir/name` made by `sql`.
async fn database(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let path = dir.join(name);
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    path
}

const ROWS: &str = r#"
INSERT INTO secret_providers (name, type, config) VALUES
  ('infisical', 'infisical', '{"clientId":"id","clientSecret":"s3cr3t-client","projectId":"p","environment":"prod"}');
INSERT INTO secrets (name, reference, metadata) VALUES
  ('DATABASE_URL', 'postgres://app:s3cr3t@db/app', 'main database'),
  ('API_KEY', 'sk_s3cr3t_api', NULL);
INSERT INTO repositories (name, url, username, password) VALUES ('registry', 'registry.local:5000', 'ci', 's3cr3t-pw');
INSERT INTO applications (name, image, version, repository_id, ports, env_vars, status) VALUES
  ('web', 'registry.local:5000/team/web', 'v1', 1, '[{"host":8080,"container":80}]', '{"DATABASE_URL":"@secret:1","MODE":"fast"}', 'running'),
  ('worker', 'team/worker:v7', NULL, NULL, '[]', '{}', 'stopped');
INSERT INTO environment_variables (scope, project_id, key, value) VALUES
  ('global', NULL, 'NODE_ENV', 'production'),
  ('project', 2, 'API_KEY', '@secret:2');
INSERT INTO image_whitelists (pattern) VALUES ('registry.local:5000/*');
INSERT INTO domains (application_id, domain) VALUES (1, 'shop.example.com');
INSERT INTO system_settings (key, value) VALUES ('legacy_secret', 's3cr3t-legacy');
"#;

#[tokio::test]
async fn a_v1_database_is_read_without_changing_a_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path(), "v1.db", &format!("{SCHEMA}{ROWS}")).await;
    let before = std::fs::read(&path).unwrap();
    let data = read::open(&path).await.unwrap().read().await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), before, "the V1 file changed");
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["v1.db"], "a file appeared beside the V1 database");

    assert!(
        data.missing_columns.is_empty(),
        "{:?}",
        data.missing_columns
    );
    let mapped = plan::map(data, "default").unwrap();
    let p = &mapped.plan;
    assert_eq!(p.secrets.len(), 2);
    assert_eq!(p.secrets[0].description.as_deref(), Some("main database"));
    assert!(p.secrets[0].created_at.is_some());
    assert_eq!(p.repositories[0].name, "registry");
    assert_eq!(p.applications[0].repository.as_deref(), Some("registry"));
    assert_eq!(p.applications[0].ports[0].host, 8080);
    assert_eq!(p.applications[1].version.as_deref(), Some("v7"));
    let refs: Vec<(&str, &str)> = p
        .variables
        .iter()
        .filter_map(|v| match &v.value {
            PlanValue::Secret(s) => Some((v.key.as_str(), s.as_str())),
            PlanValue::Plain(_) => None,
        })
        .collect();
    assert_eq!(
        refs,
        [("DATABASE_URL", "DATABASE_URL"), ("API_KEY", "API_KEY")]
    );
    assert_eq!(p.variables.len(), 4);
    assert_eq!(p.image_patterns.len(), 1);
    assert_eq!(p.domains[0].application, "web");
    assert_eq!(p.providers[0].provider_type, "infisical");
    assert_eq!(mapped.local.len(), 1, "{:?}", mapped.local);
    assert!(mapped.local[0].name.contains("legacy_secret"));
    assert!(!format!("{:?}", mapped.local).contains("s3cr3t"));
}

/// The file is opened read-only: the connection the import reads with cannot write at all.
#[tokio::test]
async fn the_connection_to_the_v1_database_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path(), "v1.db", SCHEMA).await;
    let before = std::fs::read(&path).unwrap();
    let mut db = read::open(&path).await.unwrap();
    let refused = db.try_write().await.expect_err("a write went through");
    assert!(refused.to_string().contains("readonly"), "{refused}");
    db.read().await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

/// The seed shows secrets, applications, environment variables and providers; everything
/// else is assumed, and may be missing.
#[tokio::test]
async fn missing_assumed_tables_and_columns_are_reported_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(
        dir.path(),
        "v1.db",
        r#"
        CREATE TABLE secrets (id INTEGER PRIMARY KEY, name TEXT, reference TEXT);
        CREATE TABLE applications (id INTEGER PRIMARY KEY, name TEXT, image TEXT, repository_id INTEGER, env_vars TEXT);
        CREATE TABLE environment_variables (id INTEGER PRIMARY KEY, scope TEXT, project_id INTEGER, key TEXT, value TEXT);
        INSERT INTO secrets VALUES (1, 'TOKEN', 't0ken');
        INSERT INTO applications VALUES (1, 'web', 'team/web', 3, '{"A":"1"}');
        "#,
    )
    .await;
    let data = read::open(&path).await.unwrap().read().await.unwrap();
    let mapped = plan::map(data, "default").unwrap();
    let skipped: Vec<&str> = mapped
        .local
        .iter()
        .filter(|i| i.skipped)
        .map(|i| i.name.as_str())
        .collect();
    for expected in [
        "(table repositories)",
        "(table image_whitelists)",
        "(table domains)",
        "(table secret_providers)",
        "(table system_settings)",
        "(column secrets.metadata)",
        "(column applications.ports)",
        "(column applications.status)",
    ] {
        assert!(skipped.contains(&expected), "{expected} not in {skipped:?}");
    }
    let app = &mapped.plan.applications[0];
    assert_eq!(
        (app.repository.as_deref(), app.status.as_str()),
        (None, "stopped")
    );
    assert!(app.ports.is_empty());
    assert_eq!(mapped.plan.variables.len(), 1);
}

async fn refused(path: &Path) -> String {
    match read::open(path).await {
        Ok(db) => format!("{:#}", db.read().await.err().expect("read")),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_or_is_corrupt_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "this is not a database, it is a text file of some length\n".repeat(100),
    )
    .unwrap();
    let message = refused(&text).await;
    assert!(message.ends_with("is not a SQLite database"), "{message}");

    let rows: String = (0..2000)
        .map(|i| {
            format!(
                "INSERT INTO secrets (name, reference) VALUES ('S{i}', '{}');\n",
                "v".repeat(200)
            )
        })
        .collect();
    let good = database(dir.path(), "v1.db", &format!("{SCHEMA}BEGIN;{rows}COMMIT;")).await;
    let bytes = std::fs::read(&good).unwrap();
    // Half a file: the pages the header counts are not there.
    let truncated = dir.path().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let message = refused(&truncated).await;
    assert!(
        message.contains("is a corrupt SQLite database"),
        "{message}"
    );
    // Garbage over the pages of the secrets table.
    let mut damaged = bytes.clone();
    for b in &mut damaged[8192..bytes.len() - 8192] {
        *b = 0x5a;
    }
    let damaged_path = dir.path().join("damaged.db");
    std::fs::write(&damaged_path, damaged).unwrap();
    let message = refused(&damaged_path).await;
    assert!(
        message.contains("is a corrupt SQLite database"),
        "{message}"
    );

    let message = refused(&dir.path().join("missing.db")).await;
    assert!(message.contains("cannot read"), "{message}");
}

#[tokio::test]
async fn a_berth_database_or_an_unknown_schema_is_not_a_v1_database() {
    let dir = tempfile::tempdir().unwrap();
    let berth = dir.path().join("berth.db");
    berth_control_plane::store::Store::open(&berth)
        .await
        .unwrap()
        .close()
        .await;
    let message = refused(&berth).await;
    assert!(
        message.starts_with("this is not a V1 database: "),
        "{message}"
    );
    assert!(message.contains("berth (V2) database"), "{message}");

    let other = database(
        dir.path(),
        "other.db",
        "CREATE TABLE notes (id INTEGER, body TEXT);",
    )
    .await;
    let message = refused(&other).await;
    assert!(message.contains("has none of the V1 tables"), "{message}");

    let half = database(
        dir.path(),
        "half.db",
        "CREATE TABLE secrets (id INTEGER PRIMARY KEY, name TEXT, value TEXT);
         CREATE TABLE applications (id INTEGER PRIMARY KEY, name TEXT, image TEXT);
         CREATE TABLE environment_variables (id INTEGER PRIMARY KEY, scope TEXT, project_id INTEGER, key TEXT, value TEXT);",
    )
    .await;
    let message = refused(&half).await;
    assert!(
        message.contains("table secrets of") && message.contains("no column reference"),
        "{message}"
    );

    let no_env = database(
        dir.path(),
        "no_env.db",
        "CREATE TABLE secrets (id INTEGER PRIMARY KEY, name TEXT, reference TEXT);
         CREATE TABLE applications (id INTEGER PRIMARY KEY, name TEXT, image TEXT);",
    )
    .await;
    let message = refused(&no_env).await;
    assert!(
        message.contains("has no table environment_variables"),
        "{message}"
    );
}
