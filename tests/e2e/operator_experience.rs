//! What an operator reads when something goes wrong or takes long (issue 13): errors that
//! say what to do next and never repeat themselves, lookups by a short deployment id, a deploy
//! that was not followed saying how to follow it, the agent's word for an image that exists
//! nowhere, `berth dev` taking its own options only, logs without colour codes in a file, and
//! the image script installing what it needs.

use std::process::Command;

use crate::fixture::admin::unique;
use crate::fixture::docker::{build_test_images, docker_available, Cleanup};
use crate::fixture::node::{dirs, ok, stderr, stdout, DevNode};
use crate::fixture::process::{bin, free_port};
use crate::fixture::repo_root;

/// Runs `berth ARGS` against a node, returning (exit code, stdout, stderr).
fn berth(node: &DevNode, args: &[&str]) -> (i32, String, String) {
    let out = node.cli(args, None);
    (out.status.code().unwrap_or(-1), stdout(&out), stderr(&out))
}

/// An application of the test image at v1.
fn create_app(node: &DevNode, app: &str) {
    ok(node.cli(
        &[
            "app",
            "create",
            app,
            "--image",
            "berth-test/web",
            "--version",
            "v1",
        ],
        None,
    ));
}

#[test]
fn errors_say_it_once_with_one_prefix_and_name_the_list_command() {
    let d = dirs();
    let node = DevNode::start_without_agent(&d);

    let (code, _, err) = berth(&node, &["app", "show", "nope"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("application \"nope\" not found"), "{err}");
    assert!(!err.contains("not found: application"), "repeated: {err}");
    assert!(err.contains("berth app list"), "{err}");

    ok(node.cli(&["group", "create", "db"], None));
    let (code, _, err) = berth(&node, &["group", "create", "db"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("error: group \"db\" already exists"),
        "{err}"
    );
    assert!(!err.contains("already exists: "), "repeated: {err}");

    let (code, _, err) = berth(&node, &["deploy", "show", "0000ffff-nope"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("deployment 0000ffff-nope not found") && err.contains("berth deploy list APP"),
        "{err}"
    );

    // Nothing listens: the question to ask, not only the socket's errno.
    let port = free_port();
    let out = Command::new(bin("berth"))
        .args(["app", "list"])
        .env("BERTH_ADDR", format!("https://127.0.0.1:{port}"))
        .env("BERTH_CA_CERT", &node.ca_cert)
        .env("BERTH_TOKEN", node.admin_token())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        err.contains("connection refused")
            && err.contains(&format!(
                "Is the control plane running at https://127.0.0.1:{port}?"
            )),
        "{err}"
    );
}

#[test]
fn a_second_node_on_a_taken_port_says_another_may_be_running() {
    let d = dirs();
    let node = DevNode::start_without_agent(&d);
    let taken = node.addr.trim_start_matches("https://").to_string();
    let other = dirs();
    let out = Command::new(bin("berth"))
        .args(["dev", "--no-agent", "--data-dir"])
        .arg(other.data.path())
        .args(["--listen", &taken, "--agent-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {taken}: address in use")),
        "{err}"
    );
    assert!(err.contains("Another berth node"), "{err}");
    assert!(err.contains("--listen"), "{err}");
    // Logs written to a file carry no colour codes.
    assert!(!err.contains('\u{1b}'), "colour codes in a file: {err:?}");
    assert!(
        !node.log().contains('\u{1b}'),
        "colour codes in the node's log"
    );
}

#[test]
fn deployments_are_found_by_any_unique_prefix_and_an_ambiguous_one_lists_candidates() {
    let d = dirs();
    let node = DevNode::start_without_agent(&d);
    let app = unique("prefix");
    create_app(&node, &app);
    // Without an agent each deploy is refused before dispatch, at once. Of 17 random ids,
    // two share their first hex digit.
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..17 {
        let out = node.cli(&["deploy", &app, "v1", "-o", "json"], None);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let started: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        ids.push(
            started["deployment"]["deployment_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let id = &ids[0];
    let (code, shown, err) = berth(&node, &["deploy", "show", &id[..8]]);
    assert_eq!(code, 0, "{err}");
    assert!(shown.contains(&format!("Deployment: {id}")), "{shown}");

    let first = ids
        .iter()
        .find(|a| ids.iter().filter(|b| b[..1] == a[..1]).count() > 1)
        .expect("pigeonhole");
    let prefix = &first[..1];
    let (code, _, err) = berth(&node, &["deploy", "show", prefix]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("ambiguous"), "{err}");
    for candidate in ids.iter().filter(|i| i.starts_with(prefix)).take(2) {
        assert!(err.contains(candidate.as_str()), "{candidate} not in {err}");
    }
}

#[test]
fn a_deploy_not_followed_says_how_to_follow_it_and_the_follower_speaks_plainly() {
    if !docker_available() {
        return;
    }
    build_test_images();
    let d = dirs();
    let node = DevNode::start_in(&d);
    // The node answers before its local agent has connected: a deploy before that fails at
    // once for want of a target.
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::fixture::agent::wait_connected(&node, "local"));
    let app = unique("follow");
    let _cleanup = Cleanup { app: app.clone() };
    create_app(&node, &app);

    let (code, started, err) = berth(&node, &["deploy", &app, "v1"]);
    assert_eq!(code, 0, "{err}");
    let id = started
        .split_whitespace()
        .nth(1)
        .expect("deployment <id> of …")
        .to_string();
    assert!(
        started.contains(&format!("berth deploy show {id} --follow")),
        "{started}"
    );
    let (code, followed, err) = berth(&node, &["deploy", "show", &id[..8], "--follow"]);
    assert_eq!(code, 0, "{followed}{err}");
    assert!(
        followed.contains(&format!("deployment {id} succeeded")),
        "{followed}"
    );
    assert!(followed.contains("deploy sent to"), "{followed}");
    assert!(!followed.contains("COMMAND_KIND"), "{followed}");

    // A failed target shows the container it tried apart from the one kept serving.
    let shown: serde_json::Value =
        serde_json::from_str(&ok(node.cli(&["app", "show", &app, "-o", "json"], None))).unwrap();
    let serving = shown["serving"][0]["container_id"]
        .as_str()
        .expect("v1 serves")
        .to_string();
    let (code, followed, err) = berth(&node, &["deploy", &app, "bad", "--follow"]);
    assert_eq!(code, 1, "{followed}{err}");
    let bad = followed
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("deployment <id> failed: …")
        .to_string();
    let (code, detail, err) = berth(&node, &["deploy", "show", &bad, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let detail: serde_json::Value = serde_json::from_str(&detail).unwrap();
    let target = &detail["targets"][0];
    assert_eq!(target["container_id"], serving.as_str(), "{detail:#}");
    let tried = target["failed_container"]
        .as_str()
        .unwrap_or_else(|| panic!("no failed container: {detail:#}"));
    let (_, table, _) = berth(&node, &["deploy", "show", &bad]);
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("local "))
        .unwrap_or_else(|| panic!("no target row: {table}"));
    assert!(
        row.contains(&serving[..12]) && row.contains(tried),
        "serving {serving} and failed {tried} apart: {table}"
    );

    // A tag that exists neither on a registry nor on the host: said so, whatever the
    // engine answered about the registry.
    let (code, followed, err) = berth(&node, &["deploy", &app, "no-such-tag-13", "--follow"]);
    assert_eq!(code, 1, "{followed}{err}");
    assert!(
        followed.contains(
            "image berth-test/web:no-such-tag-13 is neither pullable from its registry nor present on the host"
        ),
        "{followed}"
    );
}

#[test]
fn berth_dev_help_has_its_own_options_with_their_environment_variables() {
    let out = Command::new(bin("berth"))
        .args(["dev", "--help"])
        .output()
        .unwrap();
    let help = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{help}");
    for client in ["--addr", "--token", "--output"] {
        assert!(
            !help.contains(client),
            "{client} in berth dev --help:\n{help}"
        );
    }
    for own in [
        "--listen",
        "[env: BERTH_LISTEN=]",
        "[env: BERTH_WEBHOOK_LISTEN=]",
        "--enable-legacy-deploy",
    ] {
        assert!(help.contains(own), "{own} not in berth dev --help:\n{help}");
    }
    let help_dev = Command::new(bin("berth"))
        .args(["help", "dev"])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&help_dev),
        help,
        "berth help dev is berth dev --help"
    );
    let refused = Command::new(bin("berth"))
        .args(["dev", "--addr", "https://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
}

/// Without a static busybox the image script installs it with apt-get, and when that does
/// not make one appear it stops with the one command to run. A fake `apt-get` (and `sudo`)
/// records what the script asked for.
#[test]
fn the_image_script_installs_busybox_or_names_the_command() {
    let fake = tempfile::tempdir().unwrap();
    let calls = fake.path().join("calls");
    for (name, body) in [
        (
            "apt-get",
            format!("#!/bin/sh\necho \"apt-get $*\" >> {}\n", calls.display()),
        ),
        (
            "sudo",
            "#!/bin/sh\n[ \"$1\" = -n ] && shift\nexec \"$@\"\n".to_string(),
        ),
    ] {
        let path = fake.path().join(name);
        std::fs::write(&path, body).unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).unwrap();
    }
    let path = format!(
        "{}:{}",
        fake.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg(repo_root().join("tests/images/build.sh"))
        .env("PATH", path)
        .env("BUSYBOX", fake.path().join("no-busybox"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let asked = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        asked.contains("install") && asked.contains("busybox-static"),
        "{asked:?}"
    );
    assert!(
        err.contains("install it with: sudo apt-get install -y busybox-static"),
        "{err}"
    );
}

/// `backup create` shows its progress on a terminal (a pseudo-terminal from util-linux's
/// `script`) and writes nothing to stderr in a pipe.
#[test]
fn long_work_shows_progress_on_a_terminal_and_stays_quiet_in_a_pipe() {
    let d = dirs();
    let node = DevNode::start_without_agent(&d);
    let piped = d.logs.path().join("piped.bak");
    let out = node.cli(&["backup", "create", piped.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "a pipe gets no progress");

    let on_terminal = d.logs.path().join("terminal.bak");
    let command = format!(
        "{} backup create {}",
        bin("berth").display(),
        on_terminal.display()
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("BERTH_ADDR", &node.addr)
        .env("BERTH_CA_CERT", &node.ca_cert)
        .env("BERTH_TOKEN", node.admin_token())
        .output()
        .expect("script (util-linux) runs a command on a pseudo-terminal");
    let shown = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains(&format!("writing {}", on_terminal.display())),
        "no progress on a terminal: {shown:?}"
    );
}
