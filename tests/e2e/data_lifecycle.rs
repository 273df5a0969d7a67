//! Key rotation and backup/restore through the real binaries (issue 10 parts 2 and 3): a
//! rotation killed with SIGKILL mid-way finishes after the restart with every secret
//! readable; a backup of a running node restored into a new directory serves the same
//! secrets, the same deployment history, and the same agents reconnect without enrolling.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixture::admin::{create_app, deploy, deployment_count, AppSpec};
use crate::fixture::agent::{wait_connected, AgentProcess};
use crate::fixture::node::{dirs, DevNode};
use crate::fixture::process::{bin, free_port};

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn key_status(node: &DevNode) -> Value {
    serde_json::from_str(&ok(node.cli(&["-o", "json", "key", "status"], None))).unwrap()
}

fn reveal(node: &DevNode, group: &str, name: &str) -> String {
    ok(node.cli(&["secret", "reveal", group, name, "--yes"], None))
        .trim()
        .to_string()
}

#[tokio::test]
async fn a_rotation_killed_mid_way_leaves_every_secret_readable_and_finishes_after_restart() {
    const ROWS: usize = 20_000;
    let d = dirs();
    let (agent_port, port) = (free_port(), free_port());
    let mut node = DevNode::start_with_agent_api(&d, agent_port, &[], port);
    ok(node.cli(&["group", "create", "g"], None));
    let document: String = (0..ROWS).map(|i| format!("S{i}=value-{i}\n")).collect();
    ok(node.cli(
        &["secret", "import", "g", "--file", "-", "--format", "dotenv"],
        Some(&document),
    ));
    let before = key_status(&node);
    let first = before["keys"][0]["id"].as_str().unwrap().to_string();

    let out = ok(node.cli(&["-o", "json", "key", "rotate", "--no-wait"], None));
    let target = serde_json::from_str::<Value>(&out).unwrap()["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(target, first);
    node.kill();

    let node = DevNode::start_with_agent_api(&d, agent_port, &[], port);
    // Every secret reads at once, whichever key it is under now.
    for i in [0, ROWS / 2, ROWS - 1] {
        assert_eq!(reveal(&node, "g", &format!("S{i}")), format!("value-{i}"));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = key_status(&node);
        if status["rotation"].is_null() {
            let active = &status["keys"][0];
            assert_eq!(active["id"], target.as_str());
            assert_eq!(active["state"], "active");
            let rows: i64 = active["rows"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["column"] == "secrets.value")
                .map(|r| r["rows"].as_i64().unwrap())
                .sum();
            assert_eq!(rows, ROWS as i64);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rotation did not finish: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The kill landed mid-way: the restarted node resumed the rewrap itself.
    assert!(
        node.log().contains("resuming an unfinished key rotation"),
        "{}",
        node.log()
    );
    for i in [1, ROWS / 3, ROWS - 2] {
        assert_eq!(reveal(&node, "g", &format!("S{i}")), format!("value-{i}"));
    }
    // The old key has no row left and can be retired.
    ok(node.cli(&["key", "retire", &first], None));
}

#[tokio::test]
async fn a_backup_restored_into_a_new_directory_serves_the_same_node() {
    let d = dirs();
    let agent_port = free_port();
    let mut node = DevNode::start_with_agent_api(&d, agent_port, &[], free_port());
    ok(node.cli(&["group", "create", "prod"], None));
    ok(node.cli(
        &["secret", "set", "prod", "DB_PASSWORD"],
        Some("s3cret-value"),
    ));
    let agent = AgentProcess::start(&node, "a1", &[], d.logs.path()).await;
    wait_connected(&node, "a1").await;
    create_app(&node, "web", AppSpec::default()).await;
    deploy(&node, "web", "v1").await;
    let deployments = deployment_count(&node).await;
    assert!(deployments >= 1);

    let out_dir = tempfile::tempdir().unwrap();
    let archive = out_dir.path().join("berth.berthbak");
    let said = ok(node.cli(&["backup", "create", archive.to_str().unwrap()], None));
    assert!(said.contains("NOT in the backup"), "{said}");
    let key_file = d.data.path().join("master.key");
    let verified = ok(node.cli(
        &[
            "backup",
            "verify",
            archive.to_str().unwrap(),
            "--master-key-file",
            key_file.to_str().unwrap(),
        ],
        None,
    ));
    assert!(verified.contains("integrity check ok"), "{verified}");
    node.stop();

    let d2 = dirs();
    let restored = Command::new(bin("berth-control-plane"))
        .args(["restore", archive.to_str().unwrap(), "--data-dir"])
        .arg(d2.data.path())
        .arg("--master-key-file")
        .arg(&key_file)
        .output()
        .unwrap();
    ok(restored);
    // The admin key is the operator's, not the backup's: the same key works on the copy.
    std::fs::copy(
        d.data.path().join("admin.token"),
        d2.data.path().join("admin.token"),
    )
    .unwrap();
    let node2 = DevNode::start_with_agent_api(&d2, agent_port, &[], free_port());
    assert_eq!(reveal(&node2, "prod", "DB_PASSWORD"), "s3cret-value");
    assert_eq!(deployment_count(&node2).await, deployments);
    // Same CA: the agent enrolled with the first node reconnects on its own.
    wait_connected(&node2, "a1").await;
    drop(agent);
}
