//! The effective environment (issue 13 item 2): `berth env list --app APP --effective` and
//! `berth app show` list every key the containers get, where it comes from and what it
//! overrides, masked, with unresolvable references marked — by the deploy path's own
//! resolution, so what they show is what a deployment sends.

use serde_json::Value;

use crate::fixture::admin::create_api_key;
use crate::fixture::node::{dirs, ok, DevNode};

const VALUE: &str = "postgres://app:s3cr3t-effective@db:5432/prod";

fn by_key<'a>(vars: &'a [Value], key: &str) -> &'a Value {
    vars.iter()
        .find(|v| v["key"] == key)
        .unwrap_or_else(|| panic!("{key} missing: {vars:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn globals_overridden_by_app_rows_groups_and_a_dangling_reference() {
    let d = dirs();
    let node = DevNode::start_without_agent(&d);
    ok(node.cli(&["group", "create", "db"], None));
    ok(node.cli(&["secret", "set", "db", "DATABASE_URL"], Some(VALUE)));
    ok(node.cli(
        &["secret", "set", "db", "DB_USER"],
        Some("s3cr3t-user-value"),
    ));
    ok(node.cli(&["app", "create", "web", "--image", "berth-test/web"], None));
    ok(node.cli(&["env", "set", "LOG_LEVEL", "info", "--global"], None));
    ok(node.cli(&["env", "set", "REGION", "eu-west", "--global"], None));
    ok(node.cli(&["env", "set", "DB_ALL", "--group", "db", "--global"], None));
    ok(node.cli(&["env", "set", "LOG_LEVEL", "debug", "--app", "web"], None));
    ok(node.cli(
        &[
            "env",
            "set",
            "DB_USER",
            "--secret",
            "db/DATABASE_URL",
            "--app",
            "web",
        ],
        None,
    ));

    let out = ok(node.cli(
        &["env", "list", "--app", "web", "--effective", "-o", "json"],
        None,
    ));
    assert!(
        !out.contains("s3cr3t"),
        "a value in the effective view: {out}"
    );
    let vars: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(
        vars.iter()
            .map(|v| v["key"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["DATABASE_URL", "DB_USER", "LOG_LEVEL", "REGION"]
    );
    let log = by_key(&vars, "LOG_LEVEL");
    assert_eq!(log["value"], "debug");
    assert_eq!(log["source"]["scope"], "app");
    assert_eq!(log["overrides"][0]["text"], "global");
    let url = by_key(&vars, "DATABASE_URL");
    assert_eq!(url["value"], "postgres://****@****");
    assert_eq!(url["value_type"], "group_ref");
    assert_eq!(url["source"]["text"], "global group db (DB_ALL)");
    let user = by_key(&vars, "DB_USER");
    assert_eq!(user["source"]["text"], "app secret db/DATABASE_URL");
    assert_eq!(user["overrides"][0]["text"], "global group db (DB_ALL)");
    assert_eq!(by_key(&vars, "REGION")["value"], "eu-west");
    assert!(vars.iter().all(|v| v["problem"].is_null()), "{vars:?}");

    // The table and `app show` say the same, masked; a viewer may read it.
    let viewer = create_api_key(&node, "watcher", "viewer").await;
    let table = ok(node.cli_as(
        &viewer,
        &["env", "list", "--app", "web", "--effective"],
        None,
    ));
    for words in [
        "KEY",
        "SOURCE",
        "OVERRIDES",
        "global group db (DB_ALL)",
        "postgres://****@****",
    ] {
        assert!(table.contains(words), "{words}: {table}");
    }
    let show = ok(node.cli(&["app", "show", "web"], None));
    assert!(show.contains("Effective environment (4 keys"), "{show}");
    assert!(show.contains("app secret db/DATABASE_URL"), "{show}");
    let show_json: Value =
        serde_json::from_str(&ok(node.cli(&["app", "show", "web", "-o", "json"], None))).unwrap();
    assert_eq!(show_json["effective_env"].as_array().unwrap().len(), 4);
    assert!(!show.contains("s3cr3t"));

    // References the API cannot make any more (a group, a secret gone behind its back):
    // marked in the view, and the reason a deployment is refused.
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(d.data.path().join("berth.db"))
        .foreign_keys(false);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    for sql in [
        "INSERT INTO environment_variables (scope, project_id, key, value, value_type) \
         SELECT 'project', id, 'CACHE_ALL', '@group:cache', 'group_ref' FROM applications \
         WHERE name = 'web'",
        "INSERT INTO environment_variables (scope, key, value, value_type, secret_id) \
         VALUES ('global', 'API_KEY', '@secret:99999', 'secret_ref', 99999)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let table = ok(node.cli(&["env", "list", "--app", "web", "--effective"], None));
    assert!(
        table.contains("UNRESOLVED: variable CACHE_ALL (web) cannot be resolved: group \"cache\" does not exist"),
        "{table}"
    );
    assert!(
        table.contains("2 unresolvable reference(s): a deployment of web is refused"),
        "{table}"
    );
    let out = ok(node.cli(
        &["env", "list", "--app", "web", "--effective", "-o", "json"],
        None,
    ));
    let vars: Vec<Value> = serde_json::from_str(&out).unwrap();
    let dangling = by_key(&vars, "CACHE_ALL");
    assert_eq!(dangling["source"]["text"], "app group cache (CACHE_ALL)");
    assert!(dangling["problem"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    let gone = by_key(&vars, "API_KEY");
    assert_eq!(gone["source"]["text"], "global secret (missing)");
    assert_eq!(
        gone["problem"],
        "variable API_KEY (global) cannot be resolved: @secret:99999 does not exist"
    );
    // The deploy path resolves with the same code, and refuses for the first problem the
    // view lists (global rows first).
    let first = vars.iter().find_map(|v| v["problem"].as_str()).unwrap();
    let refused = node.cli(&["env", "export", "--app", "web", "--yes"], None);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains(first), "{err}");
}
