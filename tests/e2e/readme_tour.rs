//! The README's quick tour, run as written: every command between `<!-- tour:begin -->` and
//! `<!-- tour:end -->` in README.md, in order, in a shell, against a fresh `berth dev` (with
//! its local agent, host proxy and shim) on the real Docker Engine. A command the README
//! changes is the command that runs, so the tour cannot drift from the code.
//!
//! What each command must do is read from its comment: `exits N` is its exit status (0
//! otherwise), and a comment starting `version=` is the beginning of what it prints (up to a
//! `…`). Only the addresses are changed, so that the test can run beside others: the node's
//! ports for 7443, 7480, 8080 and 80, a name of its own for `myapp`, and the webhook token
//! `app create` printed for the placeholder, as the README tells the reader to paste it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::fixture::admin::unique;
use crate::fixture::docker::{docker_available, Cleanup};
use crate::fixture::node::{dirs, start_with_webhook_env};
use crate::fixture::process::{bin, free_port};
use crate::fixture::repo_root;

/// One command of the tour and what its comment promises.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    command: String,
    exit: i32,
    prints: Option<String>,
}

/// The tour's commands: continuation lines joined, comments and blank lines dropped.
fn steps(readme: &str) -> Vec<Step> {
    let begin = readme
        .find("<!-- tour:begin -->")
        .expect("README.md has a <!-- tour:begin --> marker");
    let end = readme
        .find("<!-- tour:end -->")
        .expect("README.md has a <!-- tour:end --> marker");
    let block = &readme[begin..end];
    let mut steps = Vec::new();
    let mut pending = String::new();
    for raw in block.lines().skip(1) {
        let line = raw.trim_end();
        if line.starts_with("```") || line.trim_start().starts_with('#') && pending.is_empty() {
            continue;
        }
        let (code, comment) = split_comment(line);
        if let Some(continued) = code.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        let command = std::mem::take(&mut pending).trim().to_string();
        if command.is_empty() {
            continue;
        }
        let comment = comment.unwrap_or_default();
        let exit = comment
            .split("exits ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let prints = comment
            .starts_with("version=")
            .then(|| comment.split('…').next().unwrap_or_default().to_string());
        steps.push(Step {
            command,
            exit,
            prints,
        });
    }
    steps
}

/// `code  # comment`: a `#` after whitespace, outside quotes, starts the comment.
fn split_comment(line: &str) -> (&str, Option<String>) {
    let mut quote = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '#') if previous.is_whitespace() => {
                return (line[..i].trim_end(), Some(line[i + 1..].trim().to_string()));
            }
            _ => {}
        }
        previous = c;
    }
    (line, None)
}

#[test]
fn the_readme_tour_parses_into_its_commands() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let steps = steps(&readme);
    let commands: Vec<&str> = steps.iter().map(|s| s.command.as_str()).collect();
    assert!(
        commands.contains(&"berth deploy myapp v1 --follow"),
        "{commands:#?}"
    );
    let webhook = steps
        .iter()
        .find(|s| s.command.starts_with("curl --fail-with-body"))
        .expect("the webhook call");
    assert!(
        webhook
            .command
            .contains("-d '{\"applicationName\":\"myapp\",\"version\":\"v2\"}'"),
        "continuation lines are joined: {webhook:?}"
    );
    let bad = steps
        .iter()
        .find(|s| s.command == "berth deploy myapp bad --follow")
        .expect("the failing release");
    assert_eq!(bad.exit, 1);
    let page = steps
        .iter()
        .find(|s| s.command == "curl -s http://127.0.0.1:8080/")
        .unwrap();
    assert_eq!(
        page.prints.as_deref(),
        Some("version=v1 secret=postgres://")
    );
}

#[test]
fn the_readme_tour_runs_as_written() {
    if !docker_available() {
        return;
    }
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let steps = steps(&readme);

    // The reader's directory: the repository's scripts and binaries where the tour says,
    // and the node's data in `.berth`.
    let d = dirs();
    let work = d.data.path();
    std::os::unix::fs::symlink(repo_root().join("tests"), work.join("tests")).unwrap();
    std::fs::create_dir_all(work.join("target")).unwrap();
    let bin_dir = bin("berth").parent().unwrap().to_path_buf();
    std::os::unix::fs::symlink(&bin_dir, work.join("target/debug")).unwrap();
    let (node, webhook_port) =
        start_with_webhook_env(&work.join(".berth"), d.logs.path(), true, &[]);
    let admin_port = node.addr.rsplit(':').next().unwrap().to_string();
    let app_port = free_port();
    let app = unique("tour");
    let _cleanup = Cleanup { app: app.clone() };

    let here = |command: &str, token: &str| {
        command
            .replace("127.0.0.1:7443", &format!("127.0.0.1:{admin_port}"))
            .replace("127.0.0.1:7480", &format!("127.0.0.1:{webhook_port}"))
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{app_port}"))
            .replace("--port 8080:80", &format!("--port {app_port}:80"))
            .replace(
                "http://127.0.0.1/",
                &format!("http://127.0.0.1:{}/", node.proxy_http_port),
            )
            .replace("myapp", &app)
            .replace("whk_PASTE_THE_TOKEN_APP_CREATE_PRINTED", token)
    };

    let mut env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("BERTH_") && k != "OLDPWD")
        .collect();
    env.insert("PWD".into(), work.display().to_string());
    let mut token = String::new();
    for step in &steps {
        let command = here(&step.command, &token);
        if let Some(assignment) = command.strip_prefix("export ") {
            let name = assignment.split('=').next().unwrap().to_string();
            let out = shell(work, &env, &format!("{command}; printf %s \"${name}\""));
            assert!(out.status.success(), "{command}: {}", text(&out.stderr));
            env.insert(name, text(&out.stdout));
            continue;
        }
        let mut out = shell(work, &env, &command);
        // A page is read again for a few seconds: a route reaches the proxy just after the
        // command that changed it returns.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(prints) = &step.prints {
            if text(&out.stdout).starts_with(prints.as_str()) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            out = shell(work, &env, &command);
        }
        let report = || {
            format!(
                "README tour step `{}` (run as `{command}`):\nexit {:?}\nstdout:\n{}\nstderr:\n{}\nnode log:\n{}",
                step.command,
                out.status.code(),
                text(&out.stdout),
                text(&out.stderr),
                node.log()
            )
        };
        assert_eq!(out.status.code(), Some(step.exit), "{}", report());
        if let Some(prints) = &step.prints {
            assert!(
                text(&out.stdout).starts_with(prints.as_str()),
                "{}",
                report()
            );
        }
        if command.starts_with("berth app create") {
            token = text(&out.stdout)
                .split_whitespace()
                .find(|w| w.starts_with("whk_"))
                .unwrap_or_else(|| panic!("no webhook token printed: {}", report()))
                .to_string();
        }
    }
    assert!(!token.is_empty(), "the tour creates an application");
}

fn shell(dir: &Path, env: &BTreeMap<String, String>, command: &str) -> Output {
    Command::new("sh")
        .args(["-c", command])
        .current_dir(dir)
        .env_clear()
        .envs(env)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
