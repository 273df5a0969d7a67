//! Webhook throughput (SPEC §12): a control plane (real TLS, SQLite with durable commits) and
//! its webhook shim in this process, one agent enrolled through the real path with the
//! in-memory executor, and HTTP/1.1 keep-alive clients. It reports:
//!
//! - deploy requests (`?wait=false`: 202, or 409 for one a newer request of the burst already
//!   superseded) per second with CONCURRENCY clients, p50 and p99;
//! - a full deploy through the shim (`wait=true`, fake executor), p50 and p99;
//! - rejected-token requests per second that reach the control plane (401), and those the
//!   shim's failed-auth limit answers itself (429).
//!
//! cargo bench -p berth-control-plane --bench webhook [-- DEPLOYS REJECTS CONCURRENCY]
//!
//! The control plane's database is on the disk of the working directory's temp dir (its
//! fsyncs are what is measured). The agent stands for another host: with
//! `BERTH_BENCH_AGENT_DIR` (e.g. `/dev/shm`) its data dir — the journal it writes, three file
//! creations per command — goes there instead, so the agent's disk does not load the control
//! plane's, as the fleet simulator's `--agents-dir` does.
//!
//! DEPLOYS (default 200) are of one application: the first runs, the others queue behind it
//! and supersede each other (only the newest queued one runs next), so a burst of any size
//! sends the agent two commands.

// A benchmark reports on stdout.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_agent::fake::FakeExecutor;
use berth_agent::AgentRuntime;
use berth_control_plane::node::{self, MasterKeySource, NodeConfig};
use berth_control_plane::service::applications::ApplicationSpec;
use berth_control_plane::service::Actor;
use berth_control_plane::webhook::{self, ShimConfig};
use secrecy::ExposeSecret as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let deploys = args.first().copied().unwrap_or(200);
    let rejects = args.get(1).copied().unwrap_or(5000);
    let concurrency = args.get(2).copied().unwrap_or(16);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(deploys, rejects, concurrency))
}

async fn run(deploys: usize, rejects: usize, concurrency: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = NodeConfig::new(dir.path());
    config.grpc_listen = "127.0.0.1:0".parse()?;
    config.agent_listen = "127.0.0.1:0".parse()?;
    config.master_key = MasterKeySource::DataDir;
    let node = node::start(config).await?;
    let admin_url = format!("https://{}", node.grpc_addr);
    let service = node.service.clone();
    let fleet = node.fleet.clone();
    let ca_pem = std::fs::read_to_string(&node.ca_cert_path)?;
    let ca_fingerprint = node.ca_fingerprint.clone();
    let app = service
        .create_application(
            &Actor::system(),
            ApplicationSpec {
                name: "bench".into(),
                image: "bench/web".into(),
                version: None,
                repository: None,
                ports: vec![],
                webhook_enabled: true,
                auto_deploy: false,
                targets: vec![],
                deploy_batch_size: None,
                health_check: None,
                restart_policy: None,
                drain_timeout_s: None,
                stop_timeout_s: None,
                stop_signal: None,
                cancel_in_progress: false,
            },
        )
        .await?;
    let token = app.webhook_token.expose_secret().to_string();
    let shim_key = service.create_webhook_key("bench-shim").await?.key;
    let (enroll_token, _) = fleet
        .create_enrollment_token(
            &Actor::system(),
            "bench-agent",
            &Default::default(),
            Some(300),
        )
        .await?;
    tokio::spawn(node.serve(std::future::pending()));

    let agent_tmp = match std::env::var_os("BERTH_BENCH_AGENT_DIR") {
        Some(parent) => tempfile::tempdir_in(parent)?,
        None => tempfile::tempdir()?,
    };
    let agent_dir = agent_tmp.path().join("agent");
    let identity =
        berth_agent::enroll::enroll(&admin_url, &enroll_token, &ca_fingerprint, "bench").await?;
    identity.save(&agent_dir)?;
    let runtime = AgentRuntime {
        data_dir: agent_dir,
        executor: Arc::new(FakeExecutor::new()),
        version: "bench".into(),
        on_command: None,
        endpoint_override: None,
    };
    tokio::spawn(berth_agent::run(runtime, std::future::pending()));
    while !fleet.is_connected("bench-agent") {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Two shims: one with the default failed-auth limit, one without (to measure 401s).
    let shim = |per_minute: u32| {
        let mut config = ShimConfig::new(admin_url.clone(), Some(ca_pem.clone()), shim_key.clone());
        config.failed_auth_per_minute = per_minute;
        config
    };
    let limited = serve(shim(20)).await?;
    let unlimited = serve(shim(u32::MAX)).await?;

    println!("webhook bench: {concurrency} connections, fake executor, durable commits");
    let deploy = |i: usize| {
        format!("{{\"applicationName\":\"bench\",\"version\":\"v{i}\",\"token\":\"{token}\"}}")
    };
    // Whole deploys first, on a quiet agent: one client, wait=true.
    let whole = (deploys / 2).max(50);
    let (rate, p50, p99) = load(unlimited, "/webhook/deploy", whole, 1, &[200], &deploy).await?;
    println!("deploy completed (200)    {rate:>8.0} req/s   p50 {p50:>7.2} ms   p99 {p99:>7.2} ms   (one client, wait=true)");
    // Then the accepting side alone: the rollouts it starts are not waited for. Every answer
    // is a durably recorded deployment: 202 while it is queued or running, 409 when a newer
    // deploy of the application (one of this burst) superseded it before its answer.
    let (rate, p50, p99) = load(
        unlimited,
        "/webhook/deploy?wait=false",
        deploys,
        concurrency,
        &[202, 409],
        &deploy,
    )
    .await?;
    println!("deploy accepted (202/409) {rate:>8.0} req/s   p50 {p50:>7.2} ms   p99 {p99:>7.2} ms");
    let wrong = |i: usize| {
        format!("{{\"applicationName\":\"bench\",\"version\":\"v1\",\"token\":\"whk_wrong-{i}\"}}")
    };
    let (rate, p50, p99) = load(
        unlimited,
        "/webhook/deploy",
        rejects,
        concurrency,
        &[401],
        &wrong,
    )
    .await?;
    println!("rejected token (401)      {rate:>8.0} req/s   p50 {p50:>7.2} ms   p99 {p99:>7.2} ms   (checked by the control plane)");
    let (rate, p50, p99) = load(
        limited,
        "/webhook/deploy",
        rejects * 4,
        concurrency,
        &[429],
        &wrong,
    )
    .await?;
    println!("rejected token (429)      {rate:>8.0} req/s   p50 {p50:>7.2} ms   p99 {p99:>7.2} ms   (failed-auth limit in the shim)");
    Ok(())
}

async fn serve(config: ShimConfig) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(webhook::serve(config, listener, std::future::pending()));
    Ok(addr)
}

/// `total` POSTs over `connections` keep-alive connections; returns (req/s, p50 ms, p99 ms).
/// The first request of each connection warms it and is not counted. Any answer other than
/// `expect` (after the first few of a limited run) is an error.
async fn load(
    addr: SocketAddr,
    path: &str,
    total: usize,
    connections: usize,
    expect: &[u16],
    body: &(dyn Fn(usize) -> String + Sync),
) -> anyhow::Result<(f64, f64, f64)> {
    let per_connection = total.div_ceil(connections);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let bodies: Vec<String> = (0..=per_connection)
            .map(|i| body(c * (per_connection + 1) + i))
            .collect();
        let path = path.to_string();
        let expect = expect.to_vec();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut stream = BufReader::new(stream);
            let mut latencies = Vec::with_capacity(per_connection);
            let mut unexpected = 0usize;
            for (i, body) in bodies.iter().enumerate() {
                let t0 = Instant::now();
                let status = post(&mut stream, &path, body).await?;
                if i > 0 {
                    latencies.push(t0.elapsed());
                    if !expect.contains(&status) {
                        unexpected += 1;
                    }
                }
            }
            anyhow::Ok((latencies, unexpected))
        }));
    }
    let mut latencies = Vec::new();
    let mut unexpected = 0;
    for task in tasks {
        let (l, u) = task.await??;
        latencies.extend(l);
        unexpected += u;
    }
    let elapsed = started.elapsed();
    // A limited run answers 401 for the first attempts of the address, then 429.
    anyhow::ensure!(unexpected <= 64, "{unexpected} answers were not {expect:?}");
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1000.0
    };
    Ok((
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
    ))
}

/// One request on a keep-alive connection; returns the status after reading the whole body.
async fn post(stream: &mut BufReader<TcpStream>, path: &str, body: &str) -> anyhow::Result<u16> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.get_mut().write_all(request.as_bytes()).await?;
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        stream.read_line(&mut line).await?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse()?;
            }
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    Ok(status)
}
