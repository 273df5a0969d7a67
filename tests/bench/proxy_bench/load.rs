//! Clients of the test app's page (`version=<v> ...`, busybox httpd, one answer per
//! connection): `wait-page` polls until a version answers; `load` keeps several workers
//! sending requests, a new connection each, until SIGTERM or SIGINT, and reports the answers
//! per version, every request that got no 200 (no retry: a dropped request must show) and the
//! longest time without any answer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A request that takes longer counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct WaitPageArgs {
    /// Port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// Waits for a 200 whose body starts with `version=<VERSION> `.
    #[arg(long)]
    version: String,
    /// Gives up (exit 1) after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// Requests in flight at any time (each worker sends one after the other).
    #[arg(long, default_value_t = 4)]
    workers: usize,
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

pub fn wait_page(args: WaitPageArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let want = format!("version={} ", args.version);
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        loop {
            if let Ok(Some(page)) = get(args.port).await {
                if page.starts_with(&want) {
                    return Ok(());
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "port {} did not answer {want:?} within {} s",
                args.port,
                args.timeout
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// What the workers found, shared.
#[derive(Default)]
struct Tally {
    answers: BTreeMap<String, u64>,
    failures: u64,
    first_failures: Vec<String>,
    last_answer: Option<Instant>,
    longest_gap: Duration,
}

pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let started = Instant::now();
        let workers: Vec<_> = (0..args.workers)
            .map(|_| tokio::spawn(worker(args.port, tally.clone())))
            .collect();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        for worker in workers {
            worker.abort();
        }
        let tally = tally.lock().expect("tally lock");
        let total: u64 = tally.answers.values().sum();
        let versions: Vec<String> = tally
            .answers
            .iter()
            .map(|(v, n)| format!("{v}:{n}"))
            .collect();
        println!(
            "answers={total} failed={} longest_gap_ms={:.1} seconds={:.1} versions={} first_failures={:?}",
            tally.failures,
            tally.longest_gap.as_secs_f64() * 1e3,
            started.elapsed().as_secs_f64(),
            versions.join(","),
            tally.first_failures,
        );
        Ok(())
    })
}

async fn worker(port: u16, tally: Arc<Mutex<Tally>>) {
    loop {
        let outcome = get(port).await;
        let now = Instant::now();
        let mut tally = tally.lock().expect("tally lock");
        match outcome {
            Ok(Some(page)) => {
                let version = page
                    .split_whitespace()
                    .next()
                    .and_then(|w| w.strip_prefix("version="))
                    .unwrap_or("?")
                    .to_owned();
                *tally.answers.entry(version).or_default() += 1;
                if let Some(last) = tally.last_answer {
                    tally.longest_gap = tally.longest_gap.max(now - last);
                }
                tally.last_answer = Some(now);
            }
            Ok(None) | Err(_) => {
                tally.failures += 1;
                if tally.first_failures.len() < 5 {
                    let why = match outcome {
                        Err(e) => e.to_string(),
                        _ => "not 200".into(),
                    };
                    tally.first_failures.push(why);
                }
            }
        }
    }
}

/// GET / on a new connection: the body of a 200 answer, `None` for any other status.
async fn get(port: u16) -> anyhow::Result<Option<String>> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))??;
    let text = String::from_utf8_lossy(&answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        anyhow::bail!("incomplete answer ({} bytes)", answer.len());
    };
    Ok(head
        .starts_with("HTTP/1.1 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned())))
}
