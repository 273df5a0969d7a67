//! Provider sync (issue 7, SPEC §8): N secrets (default 1,000) synced by
//! `Service::sync_provider` from a real OpenBao dev server (`hashicorp-vault`) and from a real
//! moto server (`aws-secrets-manager`) into a SQLite file opened as the control plane opens it
//! (`Store::open`: WAL, `synchronous=FULL`), side by side, in the same round, with a client of
//! the provider's own reading the same secrets:
//!
//! - OpenBao: the same HTTP requests berth makes (the LIST of every folder, the GET of every
//!   secret, one after the other) sent by a minimal hyper client over one keep-alive
//!   connection, values parsed; and once, OpenBao's CLI: `bao kv list` of every folder and
//!   `bao kv get` of every secret, one process each (BAO_CLI of them, default N; 0 skips).
//! - moto: boto3's `list_secrets` pages of 100 and `batch_get_secret_value` of 20 ARNs, the
//!   calls berth makes (`tests/bench/provider_sync_boto3.py`, the provider venv's Python).
//!
//! Each round uses a fresh database and makes two syncs per provider: the first creates N
//! secrets, the second finds them unchanged. For each it reports the total, the fetch
//! (`SyncTimings::fetch`: login and every read from the provider) and berth's own part, total
//! minus fetch: plan (read and decrypt the group, diff, encrypt), apply (the one transaction)
//! and the rest (provider and group lookups, the audit row). The unchanged sync must write no
//! secret row: the group's rows are compared before and after it (ciphertext, preview,
//! `updated_at`, `last_synced_at`, `stale_since`), more than a second apart so that a
//! `datetime('now')` written by the second sync cannot equal the first's.
//!
//! eval "$(bash tests/providers/setup.sh)"
//! cargo bench -p berth-control-plane --bench provider_sync [-- N ROUNDS BAO_CLI]

// A benchmark reports on stdout.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use berth_control_plane::crypto::MasterKey;
use berth_control_plane::model::Secret;
use berth_control_plane::provider::ProviderType;
use berth_control_plane::service::providers::{ProviderSettings, SyncOutcome};
use berth_control_plane::service::{Actor, Service};
use berth_control_plane::store::Store;
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

const BAO_TOKEN: &str = "berth-bench-root-token";
/// KV v2 path of the bench's secrets in OpenBao: FOLDERS folders of N / FOLDERS secrets.
const BAO_PATH: &str = "bench";
const FOLDERS: usize = 10;
const AWS_REGION: &str = "eu-central-1";
const AWS_PREFIX: &str = "bench/app/";
/// moto runs without request authentication: any key is accepted (both clients sign).
const AWS_KEY: (&str, &str) = ("AKIDBENCH", "bench-secret-access-key");
const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(1000);
    let rounds = args.get(1).copied().unwrap_or(7).max(1);
    let cli_gets = args.get(2).copied().unwrap_or(n);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(n, rounds, cli_gets))
}

async fn run(n: usize, rounds: usize, cli_gets: usize) -> anyhow::Result<()> {
    let bao_bin = std::env::var("BERTH_BAO_BIN")
        .context("BERTH_BAO_BIN: eval \"$(bash tests/providers/setup.sh)\" first")?;
    let python = std::env::var("BERTH_PROVIDER_PYTHON")
        .context("BERTH_PROVIDER_PYTHON: eval \"$(bash tests/providers/setup.sh)\" first")?;

    let bao = Peer::start(
        Command::new(&bao_bin).args([
            "server",
            "-dev",
            "-dev-no-store-token",
            &format!("-dev-root-token-id={BAO_TOKEN}"),
        ]),
        |port| vec![format!("-dev-listen-address=127.0.0.1:{port}")],
        "/v1/sys/health",
    )
    .await?;
    let moto = Peer::start(
        Command::new(&python).args(["-m", "moto.server", "-H", "127.0.0.1"]),
        |port| vec!["-p".into(), port.to_string()],
        "/moto-api/data.json",
    )
    .await?;
    eprintln!("writing {n} secrets into OpenBao and {n} into moto (boto3) ...");
    let bao_values = fill_bao(&bao, n).await?;
    fill_moto(&python, &moto, n).await?;

    let mut vault = Figures::default();
    let mut aws = Figures::default();
    for round in 0..rounds {
        eprintln!("round {} of {rounds}", round + 1);
        let dir = tempfile::tempdir()?;
        let svc = service(&dir.path().join("berth.db")).await?;
        link(
            &svc,
            "bao",
            ProviderType::HashicorpVault,
            bao_settings(&bao),
        )
        .await?;
        link(
            &svc,
            "moto",
            ProviderType::AwsSecretsManager,
            aws_settings(&moto),
        )
        .await?;

        let started = Instant::now();
        let fetched = bao_fetch(&bao).await?;
        vault.anchor.push(started.elapsed());
        if fetched != bao_values {
            bail!("the minimal OpenBao client read other values than were written");
        }
        syncs(&svc, "bao", n, &mut vault).await?;

        let anchor = boto3_fetch(&python, &moto).await?;
        if anchor.secrets != n {
            bail!("boto3 read {} secrets, not {n}", anchor.secrets);
        }
        aws.anchor.push(anchor.calls);
        aws.anchor_client.push(anchor.client);
        syncs(&svc, "moto", n, &mut aws).await?;
    }
    let cli = if cli_gets > 0 {
        eprintln!("bao kv list + bao kv get of {cli_gets} secrets, one process each ...");
        Some(bao_cli_fetch(&bao_bin, &bao, cli_gets).await?)
    } else {
        None
    };

    println!(
        "provider sync: {n} secrets, {rounds} rounds; SQLite file (WAL, synchronous=FULL); \
         median [min-max] ms"
    );
    println!(
        "{:<44}{:>28}{:>28}",
        "", "OpenBao (hashicorp-vault)", "moto (aws-secrets-manager)"
    );
    let line = |label: &str, a: &[Duration], b: &[Duration]| {
        println!("{label:<44}{:>28}{:>28}", stat(a), stat(b));
    };
    line(
        "anchor: provider's client reads all",
        &vault.anchor,
        &aws.anchor,
    );
    if !aws.anchor_client.is_empty() {
        line(
            "  (boto3 client creation, not included)",
            &[],
            &aws.anchor_client,
        );
    }
    for (title, v, a) in [
        ("first sync (creates all)", &vault.first, &aws.first),
        ("second sync (all unchanged)", &vault.second, &aws.second),
    ] {
        println!("{title}");
        line("  berth total", &v.total, &a.total);
        line("  fetch (login + every read)", &v.fetch, &a.fetch);
        line("  berth's own part (total - fetch)", &v.own(), &a.own());
        line("    plan: read+decrypt, diff, encrypt", &v.plan, &a.plan);
        line("    apply: the one transaction", &v.apply, &a.apply);
        line("    rest: lookups, audit row", &v.rest(), &a.rest());
    }
    for (name, f) in [("OpenBao", &vault), ("moto", &aws)] {
        let worst = f.unchanged.iter().max_by_key(|c| c.rows_changed).copied();
        if let Some(c) = worst {
            println!(
                "{name}: second sync changed {} of {n} secret rows (worst round): \
                 ciphertext {}, updated_at {}, last_synced_at {}, stale_since {}",
                c.rows_changed, c.ciphertext, c.updated_at, c.last_synced_at, c.stale_since
            );
        }
    }
    if let Some((gets, elapsed)) = cli {
        let processes = FOLDERS + 1 + gets;
        println!(
            "OpenBao CLI: bao kv list of {} folders + bao kv get of {gets} secrets, one process \
             each: {:.0} ms ({:.1} ms per process)",
            FOLDERS + 1,
            ms(elapsed),
            ms(elapsed) / processes as f64
        );
    }
    Ok(())
}

/// One provider's figures over the rounds.
#[derive(Default)]
struct Figures {
    anchor: Vec<Duration>,
    anchor_client: Vec<Duration>,
    first: Phases,
    second: Phases,
    unchanged: Vec<RowChanges>,
}

#[derive(Default)]
struct Phases {
    total: Vec<Duration>,
    fetch: Vec<Duration>,
    plan: Vec<Duration>,
    apply: Vec<Duration>,
}

impl Phases {
    fn push(&mut self, total: Duration, outcome: &SyncOutcome) {
        self.total.push(total);
        self.fetch.push(outcome.timings.fetch);
        self.plan.push(outcome.timings.plan);
        self.apply.push(outcome.timings.apply);
    }

    fn own(&self) -> Vec<Duration> {
        self.total
            .iter()
            .zip(&self.fetch)
            .map(|(t, f)| t.saturating_sub(*f))
            .collect()
    }

    fn rest(&self) -> Vec<Duration> {
        self.own()
            .iter()
            .zip(self.plan.iter().zip(&self.apply))
            .map(|(o, (p, a))| o.saturating_sub(*p + *a))
            .collect()
    }
}

/// The first and the second sync of one provider, and what the second changed.
async fn syncs(svc: &Service, provider: &str, n: usize, f: &mut Figures) -> anyhow::Result<()> {
    let group = format!("{provider}-bench");
    let started = Instant::now();
    let first = svc.sync_provider(&Actor::system(), provider, false).await?;
    f.first.push(started.elapsed(), &first);
    if first.summary.created.len() != n {
        bail!("{provider}: first sync created {:?}", first.summary);
    }
    let before = svc.list_secrets(&Actor::system(), Some(&group)).await?;
    // datetime('now') has whole seconds: a row the second sync touches must differ.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    let second = svc.sync_provider(&Actor::system(), provider, false).await?;
    f.second.push(started.elapsed(), &second);
    if second.summary.unchanged != n {
        bail!("{provider}: second sync was {:?}", second.summary);
    }
    let after = svc.list_secrets(&Actor::system(), Some(&group)).await?;
    f.unchanged.push(RowChanges::between(&before, &after));
    Ok(())
}

/// Secret rows that differ between two listings of a group, by column.
#[derive(Clone, Copy, Default)]
struct RowChanges {
    rows_changed: usize,
    ciphertext: usize,
    updated_at: usize,
    last_synced_at: usize,
    stale_since: usize,
}

impl RowChanges {
    fn between(before: &[Secret], after: &[Secret]) -> Self {
        let before: BTreeMap<i64, &Secret> = before.iter().map(|s| (s.id, s)).collect();
        let mut c = RowChanges::default();
        for a in after {
            let Some(b) = before.get(&a.id) else {
                c.rows_changed += 1;
                continue;
            };
            let diffs = [
                (
                    a.value != b.value || a.value_preview != b.value_preview,
                    &mut c.ciphertext,
                ),
                (a.updated_at != b.updated_at, &mut c.updated_at),
                (a.last_synced_at != b.last_synced_at, &mut c.last_synced_at),
                (a.stale_since != b.stale_since, &mut c.stale_since),
            ];
            let mut changed = false;
            for (differs, count) in diffs {
                if differs {
                    *count += 1;
                    changed = true;
                }
            }
            c.rows_changed += usize::from(changed);
        }
        c.rows_changed += before.len().saturating_sub(after.len());
        c
    }
}

async fn service(path: &Path) -> anyhow::Result<Service> {
    let store = Store::open(path).await?;
    Ok(Service::new(store, MasterKey::from_bytes(&[7u8; 32])?).await?)
}

/// Registers a provider and links a new group `{name}-bench` to it, as the CLI does.
async fn link(
    svc: &Service,
    name: &str,
    provider_type: ProviderType,
    (settings, credential): (BTreeMap<String, String>, &str),
) -> anyhow::Result<()> {
    let actor = Actor::system();
    let settings = ProviderSettings {
        provider_type,
        settings,
        sync_interval: None,
    };
    svc.add_provider(
        &actor,
        name,
        settings,
        &SecretString::from(credential.to_string()),
    )
    .await?;
    svc.create_group_linked(&actor, &format!("{name}-bench"), None, Some(name), false)
        .await?;
    Ok(())
}

fn bao_settings(bao: &Peer) -> (BTreeMap<String, String>, &'static str) {
    let settings = [("address", bao.url()), ("path", BAO_PATH.into())];
    (to_map(settings), BAO_TOKEN)
}

fn aws_settings(moto: &Peer) -> (BTreeMap<String, String>, &'static str) {
    let settings = [
        ("region", AWS_REGION.to_string()),
        ("endpoint", moto.url()),
        ("prefix", AWS_PREFIX.to_string()),
        ("access_key_id", AWS_KEY.0.to_string()),
    ];
    (to_map(settings), AWS_KEY.1)
}

fn to_map<const K: usize>(pairs: [(&str, String); K]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn value(i: usize) -> String {
    format!(
        "postgres://svc{i}:pw-{i:06}-Zq8vT3kL@db-{}.internal:5432/app",
        i % 7
    )
}

/// A peer process on a free loopback port, killed on drop.
struct Peer {
    child: Child,
    port: u16,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    async fn start(
        command: &mut Command,
        port_args: impl FnOnce(u16) -> Vec<String>,
        ready_path: &str,
    ) -> anyhow::Result<Peer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = command
            .args(port_args(port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let peer = Peer { child, port };
        for _ in 0..400 {
            if let Ok(mut c) = KeepAlive::connect(port).await {
                if c.call(Method::GET, ready_path, &[], None)
                    .await
                    .is_ok_and(|(status, _)| status == 200)
                {
                    return Ok(peer);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{command:?} did not become ready")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A minimal HTTP/1.1 client: one keep-alive connection, requests one after the other.
struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl KeepAlive {
    async fn connect(port: u16) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(KeepAlive {
            sender,
            host: format!("127.0.0.1:{port}"),
        })
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let answer = self
            .sender
            .send_request(request.body(Full::new(body))?)
            .await?;
        let status = answer.status().as_u16();
        Ok((status, answer.into_body().collect().await?.to_bytes()))
    }
}

fn bao_path(i: usize) -> String {
    format!("{BAO_PATH}/team-{}/secret-{i:05}", i % FOLDERS)
}

/// Writes N secrets (one field `value` each); returns them by path, as [`bao_fetch`] reads.
async fn fill_bao(bao: &Peer, n: usize) -> anyhow::Result<BTreeMap<String, String>> {
    let mut c = KeepAlive::connect(bao.port).await?;
    let mut written = BTreeMap::new();
    for i in 0..n {
        let path = bao_path(i);
        let data = json!({ "data": { "value": value(i) } });
        let (status, _) = c
            .call(
                Method::POST,
                &format!("/v1/secret/data/{path}"),
                &[("x-vault-token", BAO_TOKEN)],
                Some(&data),
            )
            .await?;
        if status != 200 {
            bail!("OpenBao write of {path}: HTTP {status}");
        }
        written.insert(path, value(i));
    }
    Ok(written)
}

/// The anchor: the requests berth's `VaultSource::fetch` makes, in its order (the secret at
/// the path itself, then a LIST of every folder and a GET of every secret), over one
/// keep-alive connection; values parsed out of the JSON.
async fn bao_fetch(bao: &Peer) -> anyhow::Result<BTreeMap<String, String>> {
    let mut c = KeepAlive::connect(bao.port).await?;
    let token = [("x-vault-token", BAO_TOKEN)];
    let mut out = BTreeMap::new();
    let mut pending = vec![String::new()];
    while let Some(relative) = pending.pop() {
        let path = format!("{BAO_PATH}/{relative}");
        let path = path.trim_end_matches('/');
        if !relative.ends_with('/') {
            let (status, body) = c
                .call(
                    Method::GET,
                    &format!("/v1/secret/data/{path}"),
                    &token,
                    None,
                )
                .await?;
            if status == 200 {
                let json: Value = serde_json::from_slice(&body)?;
                if let Value::Object(fields) = &json["data"]["data"] {
                    for (_, v) in fields {
                        out.insert(path.to_string(), v.as_str().unwrap_or_default().to_string());
                    }
                }
            }
        }
        if relative.is_empty() || relative.ends_with('/') {
            let (status, body) = c
                .call(
                    Method::GET,
                    &format!("/v1/secret/metadata/{path}?list=true"),
                    &token,
                    None,
                )
                .await?;
            if status == 200 {
                let json: Value = serde_json::from_slice(&body)?;
                for key in json["data"]["keys"].as_array().into_iter().flatten() {
                    pending.push(format!("{relative}{}", key.as_str().unwrap_or_default()));
                }
            }
        }
    }
    Ok(out)
}

/// OpenBao's own CLI: `bao kv list` of the path and of every folder, `bao kv get` of the
/// first `gets` secrets, one process each; the wall time of it all.
async fn bao_cli_fetch(bin: &str, bao: &Peer, gets: usize) -> anyhow::Result<(usize, Duration)> {
    let cli = |args: Vec<String>| {
        let mut command = tokio::process::Command::new(bin);
        command
            .arg("kv")
            .args(args)
            .env("BAO_ADDR", bao.url())
            .env("BAO_TOKEN", BAO_TOKEN)
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        command
    };
    let started = Instant::now();
    let out = cli(vec![
        "list".into(),
        "-format=json".into(),
        format!("secret/{BAO_PATH}"),
    ])
    .output()
    .await?;
    let folders: Vec<String> = serde_json::from_slice(&out.stdout)?;
    let mut secrets = Vec::new();
    for folder in folders {
        let out = cli(vec![
            "list".into(),
            "-format=json".into(),
            format!("secret/{BAO_PATH}/{folder}"),
        ])
        .output()
        .await?;
        let keys: Vec<String> = serde_json::from_slice(&out.stdout)?;
        secrets.extend(
            keys.into_iter()
                .map(|k| format!("secret/{BAO_PATH}/{folder}{k}")),
        );
    }
    let mut got = 0;
    for path in secrets.iter().take(gets) {
        let out = cli(vec!["get".into(), "-format=json".into(), path.clone()])
            .output()
            .await?;
        let json: Value = serde_json::from_slice(&out.stdout)?;
        got += usize::from(json["data"]["data"]["value"].is_string());
    }
    let elapsed = started.elapsed();
    if got != gets.min(secrets.len()) {
        bail!("bao kv get read {got} of {gets} secrets");
    }
    Ok((got, elapsed))
}

/// Writes N secrets under [`AWS_PREFIX`] with AWS's own client (the tests' boto3 fixture).
async fn fill_moto(python: &str, moto: &Peer, n: usize) -> anyhow::Result<()> {
    let ops: Vec<Value> = (0..n)
        .map(|i| json!({ "put": format!("{AWS_PREFIX}SECRET_{i:05}"), "string": value(i) }))
        .collect();
    let mut child = tokio::process::Command::new(python)
        .arg(repo_file("tests/providers/aws/fixture.py"))
        .args([
            moto.url().as_str(),
            AWS_REGION,
            "apply",
            AWS_KEY.0,
            AWS_KEY.1,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().context("fixture stdin")?;
    stdin
        .write_all(Value::from(ops).to_string().as_bytes())
        .await?;
    drop(stdin);
    if !child.wait().await?.success() {
        bail!("the boto3 fixture failed");
    }
    Ok(())
}

struct Boto3Fetch {
    secrets: usize,
    client: Duration,
    calls: Duration,
}

/// The anchor: boto3 lists and batch-reads the same secrets (its own timing, without the
/// interpreter's start).
async fn boto3_fetch(python: &str, moto: &Peer) -> anyhow::Result<Boto3Fetch> {
    let out = tokio::process::Command::new(python)
        .arg(repo_file("tests/bench/provider_sync_boto3.py"))
        .args([
            moto.url().as_str(),
            AWS_REGION,
            AWS_PREFIX,
            AWS_KEY.0,
            AWS_KEY.1,
        ])
        .stderr(Stdio::inherit())
        .output()
        .await?;
    if !out.status.success() {
        bail!("the boto3 anchor failed");
    }
    let json: Value = serde_json::from_slice(&out.stdout)?;
    let millis = |key: &str| Duration::from_secs_f64(json[key].as_f64().unwrap_or(0.0) / 1000.0);
    Ok(Boto3Fetch {
        secrets: json["secrets"].as_u64().unwrap_or(0) as usize,
        client: millis("client_ms"),
        calls: millis("calls_ms"),
    })
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(MANIFEST).join("..").join(path)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `median [min-max]` in ms.
fn stat(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "-".into();
    }
    let mut s = samples.to_vec();
    s.sort();
    let median = s[s.len() / 2];
    if s.len() == 1 {
        return format!("{:.1}", ms(median));
    }
    format!(
        "{:.1} [{:.1}-{:.1}]",
        ms(median),
        ms(s[0]),
        ms(s[s.len() - 1])
    )
}
