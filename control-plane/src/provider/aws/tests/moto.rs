//! The peer of the tests: a moto server with IAM users and request authentication on, the
//! boto3 fixture that writes into it, and a recording pass-through ("tap") in front of it.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::super::{AwsConfig, AwsSource};
use crate::provider::http::ProviderHttp;

pub(super) const REGION: &str = "eu-central-1";
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/providers/aws/fixture.py"
);

/// An access key: (id, secret).
pub(super) type Key = (String, String);

/// Runs the boto3 fixture against one moto.
#[derive(Clone)]
pub(super) struct Fixture {
    python: String,
    pub(super) endpoint: String,
    ca_file: Option<std::path::PathBuf>,
    /// The fixture's own key, allowed everything in Secrets Manager.
    writer: Key,
}

impl Fixture {
    async fn run(&self, args: &[&str], stdin: &str) -> Value {
        let mut command = tokio::process::Command::new(&self.python);
        command
            .arg(FIXTURE)
            .args([self.endpoint.as_str(), REGION])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ca) = &self.ca_file {
            command.env("AWS_CA_BUNDLE", ca);
        }
        let mut child = command.spawn().expect("run the boto3 fixture");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        let out = child.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "fixture {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs boto3 operations (see fixture.py) with the writer's key.
    pub(super) async fn apply(&self, ops: Value) -> Value {
        let (id, secret) = &self.writer;
        self.run(&["apply", id, secret], &ops.to_string()).await
    }
}

pub(super) struct Moto {
    child: Child,
    pub(super) fixture: Fixture,
    /// May ListSecrets, BatchGetSecretValue and GetSecretValue.
    pub(super) reader: Key,
    /// May ListSecrets and GetSecretValue only.
    pub(super) classic: Key,
    pub(super) ca_pem: Option<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh moto on a free port (with TLS from a test CA when `tls`), its IAM users made and
/// request authentication on; `None` (outside CI) when there is no provider Python.
// Tells a developer, in the test output, why the test did nothing.
#[allow(clippy::print_stderr)]
pub(super) async fn moto(tls: bool) -> Option<Moto> {
    let Some(python) = std::env::var_os("BERTH_PROVIDER_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "moto is required in CI: tests/run.sh installs it and sets BERTH_PROVIDER_PYTHON"
        );
        eprintln!(
            "skipping: no moto (eval \"$(bash tests/providers/setup.sh)\" sets BERTH_PROVIDER_PYTHON)"
        );
        return None;
    };
    let python = python.to_string_lossy().into_owned();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new(&python);
    command.args([
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ]);
    let (scheme, ca_pem, ca_file) = if tls {
        let pki = crate::pki::Pki::load_or_create(dir.path(), &["127.0.0.1".to_string()])
            .expect("test CA");
        command
            .arg("-c")
            .arg(&pki.paths.server_cert)
            .arg("-k")
            .arg(&pki.paths.server_key);
        (
            "https",
            Some(pki.ca_cert_pem.clone()),
            Some(pki.paths.ca_cert.clone()),
        )
    } else {
        ("http", None, None)
    };
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto");
    let endpoint = format!("{scheme}://127.0.0.1:{port}");
    let mut moto = Moto {
        child,
        fixture: Fixture {
            python,
            endpoint: endpoint.clone(),
            ca_file,
            writer: Default::default(),
        },
        reader: Default::default(),
        classic: Default::default(),
        ca_pem,
        _dir: dir,
    };
    let http =
        ProviderHttp::new(&endpoint, moto.ca_pem.as_deref(), Duration::from_secs(5)).unwrap();
    let mut ready = false;
    for _ in 0..300 {
        let answer = http
            .call(http::Method::GET, "/moto-api/data.json", &[], None)
            .await;
        if answer.is_ok_and(|a| a.status == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "moto did not become ready");
    let keys = moto.fixture.run(&["setup"], "").await;
    let key = |user: &str| -> Key {
        (
            keys[user][0].as_str().unwrap().to_string(),
            keys[user][1].as_str().unwrap().to_string(),
        )
    };
    moto.fixture.writer = key("writer");
    moto.reader = key("reader");
    moto.classic = key("classic");
    Some(moto)
}

impl Moto {
    pub(super) fn config(&self, endpoint: &str, key: &Key, prefix: &str) -> AwsConfig {
        AwsConfig {
            region: REGION.into(),
            endpoint: Some(endpoint.into()),
            prefix: Some(prefix.into()),
            access_key_id: key.0.clone(),
            ca_cert: self.ca_pem.clone(),
        }
    }

    pub(super) fn source(&self, endpoint: &str, key: &Key, prefix: &str) -> AwsSource {
        AwsSource::new(
            self.config(endpoint, key, prefix),
            SecretString::from(key.1.clone()),
            Duration::from_secs(10),
        )
        .unwrap()
    }
}

/// What a tap does besides recording.
pub(super) enum Hook {
    Forward,
    /// Before the first request with this target goes on, the fixture runs these operations.
    Before(&'static str, Value),
    /// Requests with this target are answered `200` with this body, never forwarded.
    Answer(&'static str, &'static str),
}

/// A recording pass-through in front of moto: the `X-Amz-Target` and JSON body of every
/// request berth sends (one per connection), and a [`Hook`]. moto's answers pass unchanged.
pub(super) struct Tap {
    pub(super) endpoint: String,
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tap {
    pub(super) async fn start(moto: &Moto, hook: Hook) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream = moto
            .fixture
            .endpoint
            .trim_start_matches("http://")
            .to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hook = Arc::new(Mutex::new(Some(hook)));
        let fixture = moto.fixture.clone();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (seen, hook, fixture, upstream) = (
                        seen.clone(),
                        hook.clone(),
                        fixture.clone(),
                        upstream.clone(),
                    );
                    tokio::spawn(async move {
                        let _ = relay(client, &upstream, &seen, &hook, &fixture).await;
                    });
                }
            })
        };
        Tap {
            endpoint,
            seen,
            task,
        }
    }

    pub(super) fn bodies(&self, target: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == &format!("secretsmanager.{target}"))
            .map(|(_, body)| body.clone())
            .collect()
    }

    pub(super) fn count(&self, target: &str) -> usize {
        self.bodies(target).len()
    }
}

async fn relay(
    mut client: TcpStream,
    upstream: &str,
    seen: &Mutex<Vec<(String, Value)>>,
    hook: &Mutex<Option<Hook>>,
    fixture: &Fixture,
) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..n]);
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let length: usize = header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let target = header("x-amz-target").unwrap_or_default();
    let body = serde_json::from_slice(&request[head_end..]).unwrap_or(Value::Null);
    seen.lock().unwrap().push((target.clone(), body));

    let action = target.trim_start_matches("secretsmanager.");
    enum Step {
        Forward,
        Before(Value),
        Answer(&'static str),
    }
    let step = {
        let mut hook = hook.lock().unwrap();
        match hook.as_ref() {
            Some(Hook::Answer(t, body)) if *t == action => Step::Answer(body),
            Some(Hook::Before(t, _)) if *t == action => match hook.take() {
                Some(Hook::Before(_, ops)) => Step::Before(ops),
                _ => unreachable!("matched just above"),
            },
            _ => Step::Forward,
        }
    };
    match step {
        Step::Forward => {}
        Step::Before(ops) => {
            fixture.apply(ops).await;
        }
        Step::Answer(body) => {
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.1\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(answer.as_bytes()).await?;
            return client.shutdown().await;
        }
    }
    let mut moto = TcpStream::connect(upstream).await?;
    moto.write_all(&request).await?;
    tokio::io::copy_bidirectional(&mut client, &mut moto).await?;
    Ok(())
}
