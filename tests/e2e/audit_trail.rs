//! The audit trail through `berth audit list` (issue 13 item 1): every audited action of an
//! operator's day appears with its actor and target, in one naming scheme, never with a
//! value; only admins read it; the filters and `--follow`.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::fixture::admin::create_api_key;
use crate::fixture::node::{dirs, ok, stderr, DevNode};
use crate::fixture::process::bin;

const VALUE: &str = "s3cr3t-audit-value";

fn rows(out: &str) -> Vec<Value> {
    serde_json::from_str::<Vec<Value>>(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn has(rows: &[Value], actor: &str, action: &str, target: &str) -> bool {
    rows.iter()
        .any(|r| r["actor"] == actor && r["action"] == action && r["target"] == target)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_audited_action_appears_with_its_actor_and_target_and_never_a_value() {
    let d = dirs();
    let node = DevNode::start_without_agent(&d);
    let ops = create_api_key(&node, "ops", "admin").await;
    let viewer = create_api_key(&node, "watcher", "viewer").await;
    let deployer = create_api_key(&node, "ci", "deployer").await;
    let run = |args: &[&str], stdin: Option<&str>| ok(node.cli_as(&ops, args, stdin));

    run(&["group", "create", "db"], None);
    run(&["secret", "set", "db", "PASSWORD"], Some(VALUE));
    run(&["secret", "reveal", "db", "PASSWORD", "--yes"], None);
    run(
        &[
            "app",
            "create",
            "web",
            "--image",
            "berth-test/web",
            "--version",
            "v1",
            "--port",
            "18080:80",
        ],
        None,
    );
    run(&["app", "update", "web", "--version", "v2"], None);
    run(
        &[
            "env",
            "set",
            "DB",
            "--secret",
            "db/PASSWORD",
            "--app",
            "web",
        ],
        None,
    );
    run(&["env", "set", "MODE", "fast", "--global"], None);
    run(&["env", "unset", "MODE", "--global"], None);
    run(&["env", "export", "--app", "web", "--yes"], None);
    run(&["apikey", "create", "tmp", "--role", "viewer"], None);
    run(&["apikey", "revoke", "tmp"], None);
    run(&["agent", "token", "create", "a1"], None);
    run(&["allowlist", "add", "berth-test/*"], None);
    run(&["domain", "add", "web", "web.localhost"], None);
    run(&["app", "rotate-token", "web"], None);
    // No agent: the deployment is recorded, then refused.
    let _ = node.cli_as(&ops, &["deploy", "web", "v2"], None);
    run(
        &["app", "create", "gone", "--image", "berth-test/web"],
        None,
    );
    run(&["app", "delete", "gone"], None);

    let out = run(&["audit", "list", "-o", "json", "--limit", "1000"], None);
    assert!(!out.contains(VALUE), "a value in the audit trail: {out}");
    let all = rows(&out);
    for (action, target) in [
        ("group.create", "db"),
        ("secret.set", "db/PASSWORD"),
        ("secret.reveal", "db/PASSWORD"),
        ("app.create", "web"),
        ("app.update", "web"),
        ("env.set", "web:DB"),
        ("env.set", "(global):MODE"),
        ("env.unset", "(global):MODE"),
        ("env.export", "web"),
        ("apikey.create", "tmp"),
        ("apikey.revoke", "tmp"),
        ("agent.token_create", "a1"),
        ("allowlist.add", "berth-test/*"),
        ("domain.add", "web.localhost"),
        ("app.rotate_token", "web"),
        ("deploy.start", "web"),
        ("app.delete", "gone"),
    ] {
        assert!(
            has(&all, "apikey:ops", action, target),
            "{action} {target} by apikey:ops missing: {out}"
        );
    }
    // The keys made by the first admin key carry its actor.
    assert!(all
        .iter()
        .any(|r| r["action"] == "apikey.create" && r["target"] == "ops"));
    // One naming scheme: NOUN.VERB, lowercase, `_` inside the verb.
    for row in &all {
        let action = row["action"].as_str().unwrap();
        let (noun, verb) = action.split_once('.').unwrap_or_else(|| panic!("{action}"));
        assert!(
            noun.chars().all(|c| c.is_ascii_lowercase())
                && verb
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{action} breaks the scheme"
        );
    }
    // Newest first.
    let ids: Vec<i64> = all.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");

    // The filters.
    let secret = rows(&run(
        &["audit", "list", "-o", "json", "--action", "secret"],
        None,
    ));
    assert_eq!(
        secret
            .iter()
            .map(|r| r["action"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["secret.reveal", "secret.set"]
    );
    let web = rows(&run(&["audit", "list", "-o", "json", "--app", "web"], None));
    for (action, target) in [
        ("app.create", "web"),
        ("env.set", "web:DB"),
        ("env.export", "web"),
        ("domain.add", "web.localhost"),
    ] {
        assert!(has(&web, "apikey:ops", action, target), "{action}: {web:?}");
    }
    assert!(web
        .iter()
        .all(|r| r["target"] != "gone" && r["target"] != "db/PASSWORD"));
    let recent = rows(&run(
        &["audit", "list", "-o", "json", "--since", "1h"],
        None,
    ));
    assert_eq!(recent.len(), all.len());
    let future = rows(&run(
        &[
            "audit",
            "list",
            "-o",
            "json",
            "--since",
            "2999-01-01T00:00:00Z",
        ],
        None,
    ));
    assert!(future.is_empty());
    let first_key = rows(&run(
        &[
            "audit",
            "list",
            "-o",
            "json",
            "--actor",
            "apikey:ops",
            "--action",
            "apikey.revoke",
        ],
        None,
    ));
    assert_eq!(first_key.len(), 1);
    let table = run(&["audit", "list", "--limit", "2"], None);
    assert!(
        table.contains("ACTION") && table.contains("older rows: add --before"),
        "{table}"
    );
    let bad = node.cli_as(&ops, &["audit", "list", "--since", "yesterday"], None);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("neither an RFC 3339"),
        "{}",
        stderr(&bad)
    );

    // Not for viewers nor deployers.
    for key in [&viewer, &deployer] {
        let refused = node.cli_as(key, &["audit", "list"], None);
        assert_eq!(refused.status.code(), Some(1));
        let err = stderr(&refused);
        assert!(
            err.contains("cannot read the audit trail") && err.contains("admins only"),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_prints_rows_as_they_are_committed_and_ends_when_the_node_stops() {
    let d = dirs();
    let mut node = DevNode::start_without_agent(&d);
    ok(node.cli(&["group", "create", "db"], None));
    ok(node.cli(&["secret", "set", "db", "A"], Some(VALUE)));

    let mut follower = Command::new(bin("berth"))
        .args([
            "audit", "list", "-o", "json", "--action", "secret", "--follow",
        ])
        .env("BERTH_ADDR", &node.addr)
        .env("BERTH_CA_CERT", &node.ca_cert)
        .env("BERTH_TOKEN", node.admin_token())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let next = || -> Value {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("a row from the follower");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    // The rows so far first, then each new one (other actions filtered out).
    assert_eq!(next()["action"], "secret.set");
    ok(node.cli(&["app", "create", "web", "--image", "berth-test/web"], None));
    ok(node.cli(&["secret", "reveal", "db", "A", "--yes"], None));
    let revealed = next();
    assert_eq!(
        (&revealed["action"], &revealed["target"]),
        (&Value::from("secret.reveal"), &Value::from("db/A"))
    );
    ok(node.cli(&["secret", "delete", "db", "A"], None));
    assert_eq!(next()["action"], "secret.delete");

    // An open follower does not hold the node's clean stop: its stream ends with a reason.
    node.stop();
    assert!(
        node.log().contains("control plane stopped"),
        "the node did not stop cleanly with a follower open: {}",
        node.log()
    );
    let ended = follower.wait_with_output().unwrap();
    assert_eq!(ended.status.code(), Some(1));
    let err = String::from_utf8_lossy(&ended.stderr);
    assert!(err.contains("the control plane is stopping"), "{err}");
}
