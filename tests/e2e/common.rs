//! The fixture: start and stop `berth dev` nodes in temp dirs, run the CLI against them, and
//! reach the admin API with a gRPC client.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// A test's data directory and, apart from it, the directory its process logs go to (so a
/// scan of the data directory for plaintext never reads the logs).
pub struct Dirs {
    pub data: tempfile::TempDir,
    pub logs: tempfile::TempDir,
}

pub fn dirs() -> Dirs {
    Dirs {
        data: tempfile::tempdir().unwrap(),
        logs: tempfile::tempdir().unwrap(),
    }
}

/// Directory holding the workspace's built binaries (next to this test executable).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `berth dev` process and what a user would export to talk to it.
pub struct DevNode {
    pub data_dir: PathBuf,
    pub addr: String,
    pub ca_cert: PathBuf,
    pub log_path: PathBuf,
    /// host:port of the agent API, when the test chose it.
    pub agent_addr: Option<String>,
    child: Option<Child>,
}

impl DevNode {
    /// Starts a node on `data_dir`, waiting until its admin port accepts connections.
    /// Returns the node's combined output when it exits before that.
    pub fn start(data_dir: &Path, log_dir: &Path, env: &[(&str, &str)]) -> Result<DevNode, String> {
        Self::start_with(
            data_dir,
            log_dir,
            env,
            &["--agent-listen", "127.0.0.1:0"],
            free_port(),
        )
    }

    /// Starts a node with extra `berth dev` arguments on a given admin port.
    pub fn start_with(
        data_dir: &Path,
        log_dir: &Path,
        env: &[(&str, &str)],
        args: &[&str],
        port: u16,
    ) -> Result<DevNode, String> {
        let log_path = log_dir.join(format!("node-{port}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut cmd = Command::new(bin("berth"));
        cmd.args(["dev", "--data-dir"])
            .arg(data_dir)
            .args(["--grpc-listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env_remove("BERTH_MASTER_KEY")
            .env_remove("BERTH_MASTER_KEY_FILE")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn berth dev");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let output = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("berth dev exited with {status}:\n{output}"));
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "berth dev did not listen within 60s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(DevNode {
            data_dir: data_dir.to_path_buf(),
            addr: format!("https://127.0.0.1:{port}"),
            ca_cert: data_dir.join("pki/ca.crt"),
            log_path,
            agent_addr: None,
            child: Some(child),
        })
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_string()
    }

    /// Runs `berth ARGS` as the admin, with `stdin` piped in.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.cli_as(&self.admin_token(), args, stdin)
    }

    pub fn cli_as(&self, token: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(bin("berth"))
            .args(args)
            .env("BERTH_ADDR", &self.addr)
            .env("BERTH_CA_CERT", &self.ca_cert)
            .env("BERTH_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth");
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    }

    /// A TLS channel to the admin API, verifying the server against the node's CA.
    pub async fn channel(&self) -> Channel {
        let ca = std::fs::read_to_string(&self.ca_cert).unwrap();
        Channel::from_shared(self.addr.clone())
            .unwrap()
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .unwrap()
            .connect()
            .await
            .expect("connect to admin api")
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.wait();
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for DevNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Adds the bearer key to a request.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if !token.is_empty() {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the command succeeded, showing its output otherwise.
#[track_caller]
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(path);
                }
            }
        }
    }
    hits
}

/// A logical dump of every table, to prove a refused start changed nothing.
pub async fn dump_database(path: &Path) -> String {
    use sqlx::{Column as _, Row as _};
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut out = String::new();
    for table in tables {
        let rows = sqlx::query(&format!("SELECT * FROM \"{table}\" ORDER BY rowid"))
            .fetch_all(&pool)
            .await;
        let Ok(rows) = rows else { continue };
        for row in rows {
            out.push_str(&table);
            for (i, column) in row.columns().iter().enumerate() {
                let value: Option<String> =
                    row.try_get_unchecked::<Option<String>, _>(i).ok().flatten();
                out.push_str(&format!(" {}={:?}", column.name(), value));
            }
            out.push('\n');
        }
    }
    pool.close().await;
    out
}

/// Docker is required: with `CI` set an unreachable engine fails the suite; otherwise the
/// Docker tests say loudly that they did not run.
pub fn docker_available() -> bool {
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but the Docker Engine is unreachable"
        );
        eprintln!(
            "!!! Docker Engine unreachable: Docker tests NOT RUN (set CI=1 to make this an error)"
        );
    }
    ok
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the local test images (idempotent; see tests/images/build.sh).
pub fn build_test_images() {
    let out = Command::new("sh")
        .arg(repo_root().join("tests/images/build.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tests/images/build.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plain HTTP/1.0 GET on 127.0.0.1:port; the body, or None when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_secs(2),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    if !response.starts_with("HTTP/1.") {
        return None;
    }
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// Names of containers (running or not) with a label.
pub fn containers_with_label(label: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label={label}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Removes every container of an application (test cleanup).
pub fn remove_app_containers(app: &str) {
    for name in containers_with_label(&format!("berth.app={app}")) {
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    }
}

/// A `berth-agent` process with its own data dir, name and labels.
pub struct AgentProcess {
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl AgentProcess {
    /// Enrolls (first start) and runs an agent against `node`.
    pub async fn start(
        node: &DevNode,
        name: &str,
        labels: &[(&str, &str)],
        data_dir: &Path,
        log_dir: &Path,
    ) -> AgentProcess {
        use berth_proto::v1 as pb;
        let mut admin =
            pb::agent_admin_service_client::AgentAdminServiceClient::new(node.channel().await);
        let created = admin
            .create_enrollment_token(authed(
                pb::CreateEnrollmentTokenRequest {
                    agent_name: name.into(),
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ttl_seconds: 600,
                },
                &node.admin_token(),
            ))
            .await
            .expect("create enrollment token")
            .into_inner();
        let mut agent = AgentProcess {
            data_dir: data_dir.into(),
            log_path: log_dir.join(format!("agent-{name}.log")),
            child: None,
        };
        agent.spawn(&[
            "--control-plane",
            &node.addr,
            "--enroll-token",
            &created.token,
            "--ca-fingerprint",
            &created.ca_fingerprint,
        ]);
        agent
    }

    /// (Re)starts the process on its data dir (enrolled already unless `args` enroll it).
    pub fn spawn(&mut self, args: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(bin("berth-agent"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn berth-agent");
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `agent` shows as connected.
pub async fn wait_connected(node: &DevNode, agent: &str) {
    use berth_proto::v1 as pb;
    let mut admin =
        pb::agent_admin_service_client::AgentAdminServiceClient::new(node.channel().await);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let agents = admin
            .list_agents(authed(pb::ListAgentsRequest {}, &node.admin_token()))
            .await
            .unwrap()
            .into_inner()
            .agents;
        if agents
            .iter()
            .any(|a| a.name == agent && a.status == "connected")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent {agent} did not connect: {agents:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls a deployment until `done` holds for its detail, and returns that detail.
pub async fn wait_deployment_until(
    node: &DevNode,
    id: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&berth_proto::v1::DeploymentDetail) -> bool,
) -> berth_proto::v1::DeploymentDetail {
    use berth_proto::v1 as pb;
    let mut deploys = pb::deploy_service_client::DeployServiceClient::new(node.channel().await);
    let deadline = Instant::now() + timeout;
    loop {
        let detail = deploys
            .get_deployment(authed(
                pb::GetDeploymentRequest {
                    deployment_id: id.into(),
                },
                &node.admin_token(),
            ))
            .await
            .unwrap()
            .into_inner();
        if done(&detail) {
            return detail;
        }
        assert!(
            Instant::now() < deadline,
            "deployment {id}: {what} not reached: {detail:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a deployment to finish and returns its detail.
pub async fn wait_deployment(
    node: &DevNode,
    id: &str,
    timeout: Duration,
) -> berth_proto::v1::DeploymentDetail {
    wait_deployment_until(node, id, timeout, "a final status", |d| {
        !matches!(
            d.deployment.as_ref().map(|d| d.status.as_str()),
            Some("pending" | "running")
        )
    })
    .await
}

/// Starts a deployment through the admin API and returns its id.
pub async fn deploy(node: &DevNode, app: &str, version: &str) -> String {
    use berth_proto::v1 as pb;
    let mut deploys = pb::deploy_service_client::DeployServiceClient::new(node.channel().await);
    deploys
        .deploy(authed(
            pb::DeployRequest {
                app: app.into(),
                version: version.into(),
            },
            &node.admin_token(),
        ))
        .await
        .expect("deploy accepted")
        .into_inner()
        .deployment
        .unwrap()
        .deployment_id
}

/// Waits until something accepts connections on 127.0.0.1:port.
pub fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within 30s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a `berth dev` node whose webhook shim listens on a port of its own (with the
/// local agent, or `--no-agent`); returns the node and the shim's port once both answer.
pub fn start_with_webhook(data_dir: &Path, log_dir: &Path, agent: bool) -> (DevNode, u16) {
    let webhook_port = free_port();
    let webhook_listen = format!("127.0.0.1:{webhook_port}");
    let mut args = vec![
        "--agent-listen",
        "127.0.0.1:0",
        "--webhook-listen",
        webhook_listen.as_str(),
    ];
    if !agent {
        args.push("--no-agent");
    }
    let node = DevNode::start_with(data_dir, log_dir, &[], &args, free_port())
        .unwrap_or_else(|l| panic!("{l}"));
    wait_listening(webhook_port, "the webhook shim");
    (node, webhook_port)
}
