//! Local doubles of the providers whose servers cannot run here (Infisical, Azure Key Vault):
//! Python programs in `tests/providers/doubles/`, written from the vendors' published APIs, and
//! the scripts through which each vendor's official SDK writes fixtures into them and reads
//! them back. Both run with the provider test environment's interpreter,
//! `BERTH_PROVIDER_PYTHON` (`eval "$(bash tests/providers/setup.sh)"`). Without it these tests
//! fail when `CI` is set and are skipped (with a note) otherwise.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use http::Method;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::provider::http::ProviderHttp;

/// A running double. Dropping it closes its standard input (it exits) and kills it.
pub struct Double {
    _child: Child,
    /// Held open: the double serves until it closes.
    _stdin: ChildStdin,
    /// What the double printed once listening: its addresses (and CA path, over https).
    pub info: serde_json::Value,
    python: PathBuf,
}

fn doubles_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/providers/doubles")
}

/// The provider test environment's Python, or `None` (outside CI) when it is not set up.
// Tells a developer, in the test output, why the test did nothing.
#[allow(clippy::print_stderr)]
pub fn python() -> Option<PathBuf> {
    match std::env::var_os("BERTH_PROVIDER_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "the provider doubles need BERTH_PROVIDER_PYTHON in CI: \
                 eval \"$(bash tests/providers/setup.sh)\""
            );
            eprintln!(
                "skipping: no BERTH_PROVIDER_PYTHON (eval \"$(bash tests/providers/setup.sh)\")"
            );
            None
        }
    }
}

fn command(python: &PathBuf, script: &str) -> Command {
    let mut command = Command::new(python);
    command
        .arg(doubles_dir().join(script))
        // No __pycache__ in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true);
    command
}

/// Starts `tests/providers/doubles/{script}` with its JSON configuration and waits for the
/// line that says where it listens.
pub async fn start(python: PathBuf, script: &str, config: serde_json::Value) -> Double {
    let mut child = command(&python, script)
        .arg(config.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {script}: {e}"));
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let line = tokio::time::timeout(Duration::from_secs(30), async {
        BufReader::new(stdout).lines().next_line().await
    })
    .await
    .unwrap_or_else(|_| panic!("{script} did not start within 30s"))
    .unwrap_or_else(|e| panic!("{script}: {e}"))
    .unwrap_or_else(|| panic!("{script} exited before listening"));
    let info = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("{script} printed {line:?}, not JSON: {e}"));
    Double {
        _child: child,
        _stdin: stdin,
        info,
        python,
    }
}

impl Double {
    /// One of the addresses the double printed.
    pub fn url(&self, key: &str) -> String {
        self.info[key].as_str().expect("an address").to_string()
    }

    /// The PEM of the double's throwaway CA (doubles serving https).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.info["ca"].as_str().expect("a CA path")).unwrap()
    }

    /// Runs a vendor SDK script with `spec` on its standard input; its JSON output.
    pub async fn sdk(&self, script: &str, spec: serde_json::Value) -> serde_json::Value {
        let mut child = command(&self.python, script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {script}: {e}"));
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(spec.to_string().as_bytes()).await.unwrap();
        drop(stdin);
        let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{script} did not finish within 120s"))
            .unwrap();
        assert!(
            output.status.success(),
            "{script} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "{script} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// The requests the listener at `key` served: `(method, path with query)`.
    pub async fn log(&self, key: &str) -> Vec<(String, String)> {
        let ca = self.info.get("ca").map(|_| self.ca_pem());
        let http =
            ProviderHttp::new(&self.url(key), ca.as_deref(), Duration::from_secs(10)).unwrap();
        let answer = http
            .call(Method::GET, "/_double/log", &[], None)
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        serde_json::from_slice(&answer.body).unwrap()
    }
}
