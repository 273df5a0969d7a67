//! The fleet simulator (SPEC §12): a real `berth-control-plane` process, and N agents in this
//! process, each enrolled through the real token/CSR path and holding its own mTLS stream,
//! with the in-memory executor. It reports:
//!
//! - dispatch latency, API call -> command received by an agent (p50, p99), on loopback;
//! - control-plane RSS and CPU with N agents connected and idle;
//! - the time to fan one deploy out to every agent, and to finish it;
//! - the reconnect storm: time for all N agents to be back after the control plane restarts.
//!
//! cargo build --release --bins && target/release/fleet-sim --agents 1000

// A benchmark reports on stdout.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_agent::fake::FakeExecutor;
use berth_agent::{AgentRuntime, CommandReceipt};
use berth_proto::v1 as pb;
use clap::Parser;
use secrecy::SecretString;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[derive(Parser, Debug)]
struct Args {
    /// Number of simulated agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Deploys to one agent, one after the other, for the latency percentiles.
    #[arg(long, default_value_t = 300)]
    latency_samples: usize,
    /// Seconds of idle measurement (RSS and CPU of the control plane).
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// Also measure the reconnect storm (kill -9 and restart of the control plane).
    #[arg(long)]
    storm: bool,
    /// Where the agents keep their data (identity, command journal): by default the
    /// control plane's temporary directory, on the same disk. Each journaled command costs an
    /// agent file creations and fsyncs that a real fleet spreads over its hosts' disks; here
    /// they share this machine's one disk and cores with the control plane. A tmpfs
    /// (`/dev/shm`) keeps the agents' files and leaves the control plane's database on disk.
    #[arg(long)]
    agents_dir: Option<PathBuf>,
}

struct ControlPlane {
    child: Child,
    admin: String,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_control_plane(
    data: &Path,
    admin_port: u16,
    agent_port: u16,
) -> (ControlPlane, Option<String>) {
    let mut child = Command::new(bin_dir().join("berth-control-plane"))
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{admin_port}")])
        .args(["--agent-listen", &format!("127.0.0.1:{agent_port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start berth-control-plane (build with cargo build --release --bins)");
    let stdout = child.stdout.take().unwrap();
    // A first start writes the admin key to <data>/admin.token and says so (never the key).
    let created = std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut created = false;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            created |= line.starts_with("Initial admin API key written to");
            if line.starts_with("CA fingerprint") {
                break;
            }
        }
        created
    })
    .join()
    .unwrap();
    let key = created.then(|| {
        std::fs::read_to_string(data.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_string()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_err() {
        assert!(Instant::now() < deadline, "control plane did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (
        ControlPlane {
            child,
            admin: format!("https://127.0.0.1:{admin_port}"),
        },
        key,
    )
}

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn admin_channel(url: &str, ca: &Path) -> Channel {
    let ca = std::fs::read_to_string(ca).unwrap();
    Channel::from_shared(url.to_string())
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// (RSS in KiB, utime+stime in clock ticks) of a process.
fn proc_stats(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
    (rss, ticks)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// Agents holding a live stream now. The summary only: listing 10,000 agents every 100 ms
/// took a pool connection and a core of the control plane for about a second each time,
/// inside the measurement. A control plane older than the summary sends the whole list.
async fn connected_count(
    admin: &mut pb::agent_admin_service_client::AgentAdminServiceClient<Channel>,
    key: &str,
) -> usize {
    admin
        .list_agents(authed(pb::ListAgentsRequest { summary_only: true }, key))
        .await
        .map(|r| {
            let r = r.into_inner();
            match r.counts {
                Some(counts) => counts.connected as usize,
                None => r.agents.iter().filter(|a| a.status == "connected").count(),
            }
        })
        .unwrap_or(0)
}

async fn wait_connected(
    admin: &mut pb::agent_admin_service_client::AgentAdminServiceClient<Channel>,
    key: &str,
    n: usize,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    while connected_count(admin, key).await < n {
        assert!(
            started.elapsed() < limit,
            "agents did not all connect within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

/// Polls the deployment's summary (`ListDeployments` of its app, newest first) every 2 ms
/// until it is finished, and returns its status. A summary, not `GetDeployment`: that one
/// returns every target and event, which for a fan-out to 10,000 agents is megabytes per poll
/// and made the poller, not the control plane, the cost of the measurement.
async fn wait_finished(
    deploys: &mut pb::deploy_service_client::DeployServiceClient<Channel>,
    key: &str,
    app: &str,
    id: &str,
) -> String {
    loop {
        let listed = deploys
            .list_deployments(authed(
                pb::ListDeploymentsRequest {
                    app: app.into(),
                    limit: 5,
                },
                key,
            ))
            .await
            .unwrap()
            .into_inner()
            .deployments;
        let d = listed
            .into_iter()
            .find(|d| d.deployment_id == id)
            .expect("the deployment is among its app's newest");
        if d.status != "pending" && d.status != "running" && d.status != "queued" {
            return d.status;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let cp_dir = tmp.path().join("cp");
    let (admin_port, agent_port) = (free_port(), free_port());
    let (mut cp, key) = start_control_plane(&cp_dir, admin_port, agent_port);
    let key = key.expect("initial admin key in admin.token");
    let ca = cp_dir.join("pki/ca.crt");
    let channel = admin_channel(&cp.admin, &ca).await;
    let mut admin = pb::agent_admin_service_client::AgentAdminServiceClient::new(channel.clone())
        .max_decoding_message_size(256 << 20);
    let mut apps = pb::application_service_client::ApplicationServiceClient::new(channel.clone());
    // A deployment to 10,000 agents has 10,000 target rows and more events than the default
    // 4 MiB message limit allows.
    let mut deploys = pb::deploy_service_client::DeployServiceClient::new(channel.clone())
        .max_decoding_message_size(256 << 20);
    println!(
        "fleet simulator: {} agents, control plane pid {}",
        args.agents,
        cp.child.id()
    );

    // Enrollment, through the real path (token, CSR, pinned CA), 16 at a time.
    let started = Instant::now();
    let agents_tmp = match &args.agents_dir {
        Some(dir) => Some(tempfile::tempdir_in(dir)?),
        None => None,
    };
    let agents_dir = agents_tmp
        .as_ref()
        .map_or_else(|| tmp.path().join("agents"), |d| d.path().join("agents"));
    let semaphore = Arc::new(tokio::sync::Semaphore::new(16));
    let mut enrollments = tokio::task::JoinSet::new();
    for i in 0..args.agents {
        let (mut admin, key, url, dir, permit) = (
            admin.clone(),
            key.clone(),
            cp.admin.clone(),
            agents_dir.join(format!("sim-{i}")),
            semaphore.clone().acquire_owned().await?,
        );
        enrollments.spawn(async move {
            let created = admin
                .create_enrollment_token(authed(
                    pb::CreateEnrollmentTokenRequest {
                        agent_name: format!("sim-{i}"),
                        labels: [("sim".to_string(), "1".to_string())].into_iter().collect(),
                        ttl_seconds: 3600,
                    },
                    &key,
                ))
                .await
                .unwrap()
                .into_inner();
            let identity = berth_agent::enroll::enroll(
                &url,
                &SecretString::from(created.token),
                &created.ca_fingerprint,
                "sim",
            )
            .await
            .unwrap();
            identity.save(&dir).unwrap();
            drop(permit);
        });
    }
    while let Some(r) = enrollments.join_next().await {
        r?;
    }
    println!(
        "enrolled {} agents in {:.1?}",
        args.agents,
        started.elapsed()
    );

    // Connect them all.
    let (probe_tx, mut probe) = mpsc::unbounded_channel::<CommandReceipt>();
    let executor = Arc::new(FakeExecutor::new());
    let (rss_before, _) = proc_stats(std::process::id());
    let started = Instant::now();
    for i in 0..args.agents {
        let runtime = AgentRuntime {
            data_dir: agents_dir.join(format!("sim-{i}")),
            executor: executor.clone(),
            version: "sim".into(),
            on_command: Some(probe_tx.clone()),
            endpoint_override: None,
        };
        tokio::spawn(berth_agent::run(runtime, std::future::pending()));
    }
    let connect_time =
        wait_connected(&mut admin, &key, args.agents, Duration::from_secs(600)).await;
    println!("{} agents connected in {:.1?}", args.agents, connect_time);
    let connected_at = Instant::now();
    let _ = started;

    // Idle: the control plane's memory and CPU with every stream open.
    let pid = cp.child.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, t0) = proc_stats(pid);
    let wall = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let (rss, t1) = proc_stats(pid);
    let ticks_per_second = 100.0;
    let cpu = (t1 - t0) as f64 / ticks_per_second / wall.elapsed().as_secs_f64() * 100.0;
    let (sim_rss, _) = proc_stats(std::process::id());
    println!(
        "idle with {} agents: control plane RSS {:.1} MiB, CPU {:.2}% of one core; simulator RSS {:.1} MiB (+{:.1} MiB for the agents)",
        args.agents,
        rss as f64 / 1024.0,
        cpu,
        sim_rss as f64 / 1024.0,
        (sim_rss.saturating_sub(rss_before)) as f64 / 1024.0
    );

    // Dispatch latency: API call -> command received, one agent, sequential deploys.
    apps.create_application(authed(
        pb::CreateApplicationRequest {
            name: "latency".into(),
            image: "sim/app".into(),
            targets: vec![pb::Target {
                target: Some(pb::target::Target::Agent("sim-0".into())),
            }],
            ..Default::default()
        },
        &key,
    ))
    .await?;
    let (mut api_to_agent, mut stream_to_agent) = (Vec::new(), Vec::new());
    for i in 0..args.latency_samples {
        let t0 = now_nanos();
        let detail = deploys
            .deploy(authed(
                pb::DeployRequest {
                    app: "latency".into(),
                    version: format!("v{i}"),
                    cancel_in_progress: false,
                },
                &key,
            ))
            .await?
            .into_inner();
        let id = detail.deployment.unwrap().deployment_id;
        let receipt = loop {
            let r = probe.recv().await.unwrap();
            if r.deployment_id == id {
                break r;
            }
        };
        api_to_agent.push((receipt.received_unix_nanos - t0) as f64 / 1e6);
        stream_to_agent.push((receipt.received_unix_nanos - receipt.sent_unix_nanos) as f64 / 1e6);
        wait_finished(&mut deploys, &key, "latency", &id).await;
    }
    api_to_agent.sort_by(|a, b| a.partial_cmp(b).unwrap());
    stream_to_agent.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "dispatch latency over {} deploys: API call -> agent p50 {:.2} ms, p99 {:.2} ms (includes the durable deployment commit); \
         queued on stream -> agent p50 {:.3} ms, p99 {:.3} ms",
        args.latency_samples,
        percentile(&api_to_agent, 50.0),
        percentile(&api_to_agent, 99.0),
        percentile(&stream_to_agent, 50.0),
        percentile(&stream_to_agent, 99.0)
    );

    // Fan-out: one deploy to every agent in one batch.
    apps.create_application(authed(
        pb::CreateApplicationRequest {
            name: "fanout".into(),
            image: "sim/app".into(),
            targets: vec![pb::Target {
                target: Some(pb::target::Target::Label("sim=1".into())),
            }],
            deploy_batch_size: Some(args.agents as u32),
            ..Default::default()
        },
        &key,
    ))
    .await?;
    while probe.try_recv().is_ok() {}
    let started = Instant::now();
    let id = deploys
        .deploy(authed(
            pb::DeployRequest {
                app: "fanout".into(),
                version: "v1".into(),
                cancel_in_progress: false,
            },
            &key,
        ))
        .await?
        .into_inner()
        .deployment
        .unwrap()
        .deployment_id;
    let mut received = 0;
    while received < args.agents {
        let r = probe.recv().await.unwrap();
        if r.deployment_id == id {
            received += 1;
        }
    }
    let dispatched = started.elapsed();
    let status = wait_finished(&mut deploys, &key, "fanout", &id).await;
    println!(
        "fan-out to {} agents: every agent had the command after {:.2?}; deployment {status} after {:.2?}",
        args.agents,
        dispatched,
        started.elapsed()
    );

    if args.storm {
        // Reconnect storm: kill -9 the control plane, restart it, time until all are back.
        // An agent whose session lasted a minute (the agent's STABLE_SESSION) dials back from
        // the shortest backoff step, as after any real uptime; killed sooner, the agents
        // would still carry the steps their first connect doubled, and the storm would
        // measure that connect's backoff.
        let settled = connected_at + Duration::from_secs(61);
        tokio::time::sleep_until(settled.into()).await;
        let _ = cp.child.kill();
        let _ = cp.child.wait();
        drop(cp);
        let started = Instant::now();
        let (new_cp, _) = start_control_plane(&cp_dir, admin_port, agent_port);
        cp = new_cp;
        let channel = admin_channel(&cp.admin, &ca).await;
        let mut admin = pb::agent_admin_service_client::AgentAdminServiceClient::new(channel)
            .max_decoding_message_size(256 << 20);
        let back = wait_connected(&mut admin, &key, args.agents, Duration::from_secs(600)).await;
        println!(
            "reconnect storm: {} agents back {:.1?} after the control plane restarted ({:.1?} including its start)",
            args.agents,
            back,
            started.elapsed()
        );
    }
    drop(cp);
    Ok(())
}
