//! What a campaign checks after each round, and the figures it adds up to: every
//! acknowledged write is there (lost), every deployment finished in time (stuck), no
//! deployment created a container twice on one agent (doubles), every app that served before
//! the round serves after it (down), and SQLite finds its file sound (integrity).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_control_plane::model::DeploymentStatus;
use berth_proto::v1 as pb;
use pb::application_service_client::ApplicationServiceClient;
use pb::deploy_service_client::DeployServiceClient;
use pb::env_service_client::EnvServiceClient;
use pb::secret_service_client::SecretServiceClient;

use super::workload::{Admin, Ledger, Via, GROUP};
use crate::fixture::admin::authed;
use crate::fixture::data_dir::integrity_check;
use crate::fixture::docker::CreationCounts;
use crate::fixture::http;

/// An application the campaign deploys: where it is published on each host.
#[derive(Clone)]
pub struct CampaignApp {
    pub name: String,
    pub token: String,
    pub port: u16,
}

/// Which (app, host address) pairs answer with a page right now.
pub async fn serving(apps: &[CampaignApp], hosts: &[&str]) -> BTreeSet<(String, SocketAddr)> {
    let pairs: Vec<(String, SocketAddr)> = apps
        .iter()
        .flat_map(|app| {
            hosts.iter().map(|host| {
                let addr = SocketAddr::new(host.parse().unwrap(), app.port);
                (app.name.clone(), addr)
            })
        })
        .collect();
    // One thread a pair: a host that does not serve an app costs a read timeout.
    let probes: Vec<_> = pairs
        .into_iter()
        .map(|pair| std::thread::spawn(move || http::page_at(pair.1).is_ok().then_some(pair)))
        .collect();
    tokio::task::spawn_blocking(move || {
        probes
            .into_iter()
            .filter_map(|probe| probe.join().unwrap())
            .collect()
    })
    .await
    .unwrap()
}

/// The pairs of `before` that do not serve again within 15 s (a container put back by a
/// rollback may take a moment to listen).
pub async fn down(before: &BTreeSet<(String, SocketAddr)>) -> Vec<String> {
    let before = before.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut missing: Vec<(String, SocketAddr)> = before.into_iter().collect();
        loop {
            missing.retain(|(_, addr)| http::page_at(*addr).is_err());
            if missing.is_empty() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        missing
            .into_iter()
            .map(|(app, addr)| {
                let why = http::page_at(addr).unwrap_err();
                format!("{app} on {addr} served before the round, not after: {why}")
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Every deployment of the campaign's apps, by id: (app, status).
pub async fn deployments(
    admin: &Admin,
    apps: &[CampaignApp],
) -> BTreeMap<String, (String, String)> {
    let mut client = DeployServiceClient::new(admin.channel().await.expect("admin api"));
    let mut all = BTreeMap::new();
    for app in apps {
        let listed = client
            .list_deployments(authed(
                pb::ListDeploymentsRequest {
                    app: app.name.clone(),
                    limit: 1000,
                },
                &admin.token,
            ))
            .await
            .expect("list deployments")
            .into_inner()
            .deployments;
        for d in listed {
            all.insert(d.deployment_id, (app.name.clone(), d.status));
        }
    }
    all
}

/// Waits until no deployment of the campaign's apps is unfinished, at most `timeout`; returns
/// the ones still unfinished then, and every deployment as it stands.
pub async fn settle(
    admin: &Admin,
    apps: &[CampaignApp],
    timeout: Duration,
) -> (Vec<String>, BTreeMap<String, (String, String)>) {
    let deadline = Instant::now() + timeout;
    loop {
        let all = deployments(admin, apps).await;
        let unfinished: Vec<String> = all
            .iter()
            .filter(|(_, (_, status))| !DeploymentStatus::is_finished_str(status))
            .map(|(id, (app, status))| format!("deployment {id} of {app} still {status}"))
            .collect();
        if unfinished.is_empty() || Instant::now() > deadline {
            return (unfinished, all);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How far the ledger had got before a round: what the round added is checked in full.
#[derive(Clone, Copy, Default)]
pub struct Marks {
    secrets: usize,
}

impl Marks {
    pub fn of(ledger: &Ledger) -> Marks {
        Marks {
            secrets: ledger.secrets.len(),
        }
    }
}

/// Every acknowledged write that is not there as acknowledged: secrets by name (and the
/// value of those written since `since`, revealed), global variables by key and value,
/// applications by name, deployments by id (`deployments`, as listed).
pub async fn lost_writes(
    admin: &Admin,
    ledger: &Ledger,
    since: Marks,
    deployments: &BTreeMap<String, (String, String)>,
) -> Vec<String> {
    let channel = admin.channel().await.expect("admin api");
    let token = &admin.token;
    let mut lost = Vec::new();

    let mut secrets = SecretServiceClient::new(channel.clone());
    let names: BTreeSet<String> = secrets
        .list_secrets(authed(
            pb::ListSecretsRequest {
                group: Some(GROUP.into()),
            },
            token,
        ))
        .await
        .expect("list secrets")
        .into_inner()
        .secrets
        .into_iter()
        .map(|s| s.name)
        .collect();
    for (i, (name, value)) in ledger.secrets.iter().enumerate() {
        if !names.contains(name) {
            lost.push(format!("secret {GROUP}/{name}"));
        } else if i >= since.secrets {
            let revealed = secrets
                .reveal_secret(authed(
                    pb::RevealSecretRequest {
                        group: GROUP.into(),
                        name: name.clone(),
                        confirm: true,
                    },
                    token,
                ))
                .await
                .expect("reveal secret")
                .into_inner()
                .value;
            if &revealed != value {
                lost.push(format!("secret {GROUP}/{name} has another value"));
            }
        }
    }

    let env: BTreeMap<String, String> = EnvServiceClient::new(channel.clone())
        .list_env(authed(
            pb::ListEnvRequest {
                scope: Some(pb::EnvScope {
                    scope: Some(pb::env_scope::Scope::Global(true)),
                }),
            },
            token,
        ))
        .await
        .expect("list env")
        .into_inner()
        .vars
        .into_iter()
        .map(|v| (v.key, v.value))
        .collect();
    for (key, value) in &ledger.env {
        match env.get(key) {
            None => lost.push(format!("variable {key}")),
            Some(v) if v != value => lost.push(format!("variable {key} has another value")),
            Some(_) => {}
        }
    }

    let apps: BTreeSet<String> = ApplicationServiceClient::new(channel)
        .list_applications(authed(pb::ListApplicationsRequest {}, token))
        .await
        .expect("list applications")
        .into_inner()
        .applications
        .into_iter()
        .map(|a| a.name)
        .collect();
    for app in &ledger.apps {
        if !apps.contains(app) {
            lost.push(format!("application {app}"));
        }
    }

    for (id, via, version) in &ledger.deployments {
        if !deployments.contains_key(id) {
            lost.push(format!("deployment {id} ({version}, {via:?})"));
        }
    }
    lost
}

/// Deployments that created a container more than once on one agent; and containers of a
/// deployment the control plane does not know (it ran, but its record is gone).
pub fn doubles_and_unknown(
    creations: &CreationCounts,
    deployments: &BTreeMap<String, (String, String)>,
) -> (Vec<String>, Vec<String>) {
    let mut doubles = Vec::new();
    let mut unknown = Vec::new();
    for (id, agents) in creations {
        for (agent, n) in agents {
            if *n > 1 {
                doubles.push(format!("deployment {id} created {n} containers on {agent}"));
            }
        }
        if !deployments.contains_key(id) {
            unknown.push(format!(
                "deployment {id} ran on {agents:?} but is not recorded"
            ));
        }
    }
    (doubles, unknown)
}

/// `PRAGMA integrity_check` of the control plane's database.
pub async fn integrity(data_dir: &Path) -> String {
    integrity_check(&data_dir.join("berth.db")).await
}

/// What a round found.
#[derive(Default)]
pub struct RoundReport {
    pub lost: Vec<String>,
    pub stuck: Vec<String>,
    pub doubles: Vec<String>,
    pub down: Vec<String>,
    /// `ok`, or what SQLite found.
    pub integrity: String,
    /// From the end of the workload until no deployment was unfinished (agents back first).
    pub settled: Duration,
    /// How long the checks took once settled.
    pub checked: Duration,
}

impl RoundReport {
    pub fn clean(&self) -> bool {
        self.lost.is_empty()
            && self.stuck.is_empty()
            && self.doubles.is_empty()
            && self.down.is_empty()
            && self.integrity == "ok"
    }
}

/// The campaign's figures, added up round by round.
#[derive(Default)]
pub struct Figures {
    pub seed: u64,
    pub rounds: usize,
    /// Kills per process.
    pub kills: BTreeMap<String, usize>,
    /// Every finding, prefixed with its round.
    pub lost: Vec<String>,
    pub stuck: Vec<String>,
    pub doubles: Vec<String>,
    pub down: Vec<String>,
    pub integrity_failures: Vec<String>,
    /// Every finding counted so far, without its round.
    seen: BTreeSet<String>,
    /// Filled at the end: the ledger's counts and the deployments' outcomes.
    pub secrets: usize,
    pub env: usize,
    pub apps: usize,
    pub deploys: BTreeMap<String, usize>,
    pub unacknowledged: usize,
    pub reads: usize,
    pub outcomes: BTreeMap<String, usize>,
    /// Containers the engine created for the campaign's deployments, and on how many
    /// (deployment, agent) pairs: what the doubles check looked at.
    pub containers: usize,
    pub runs: usize,
    pub elapsed: Duration,
}

impl Figures {
    pub fn new(seed: u64, rounds: usize) -> Figures {
        Figures {
            seed,
            rounds,
            ..Figures::default()
        }
    }

    /// Adds a round's findings; one found again in a later round (a double stays in the
    /// engine's event counts) is counted once, in the round that found it first.
    pub fn add(&mut self, round: usize, report: RoundReport) {
        let seen = &mut self.seen;
        let mut tag = |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .filter(|f| seen.insert(f.clone()))
                .map(|f| format!("round {round}: {f}"))
                .collect()
        };
        self.lost.extend(tag(report.lost));
        self.stuck.extend(tag(report.stuck));
        self.doubles.extend(tag(report.doubles));
        self.down.extend(tag(report.down));
        if report.integrity != "ok" {
            self.integrity_failures
                .push(format!("round {round}: {}", report.integrity));
        }
    }

    /// Takes the ledger's counts, the outcome of every deployment and the engine's count of
    /// container creations.
    pub fn close(
        &mut self,
        ledger: &Ledger,
        deployments: &BTreeMap<String, (String, String)>,
        creations: &CreationCounts,
    ) {
        self.containers = creations.values().flat_map(|a| a.values()).sum();
        self.runs = creations.values().map(|a| a.len()).sum();
        self.secrets = ledger.secrets.len();
        self.env = ledger.env.len();
        self.apps = ledger.apps.len();
        for (_, via, _) in &ledger.deployments {
            let via = match via {
                Via::Webhook => "webhook",
                Via::Api => "api",
                Via::Cli => "cli",
            };
            *self.deploys.entry(via.to_owned()).or_default() += 1;
        }
        self.unacknowledged = ledger.unacknowledged;
        self.reads = ledger.reads;
        for (_, status) in deployments.values() {
            *self.outcomes.entry(status.clone()).or_default() += 1;
        }
    }

    pub fn clean(&self) -> bool {
        self.lost.is_empty()
            && self.stuck.is_empty()
            && self.doubles.is_empty()
            && self.down.is_empty()
            && self.integrity_failures.is_empty()
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |m: &BTreeMap<String, usize>| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            f,
            "campaign: {} rounds in {:.0} s, seed {}",
            self.rounds,
            self.elapsed.as_secs_f64(),
            self.seed
        )?;
        writeln!(f, "campaign: kills: {}", list(&self.kills))?;
        writeln!(
            f,
            "campaign: acknowledged writes: {} (secrets {}, variables {}, applications {})",
            self.secrets + self.env + self.apps,
            self.secrets,
            self.env,
            self.apps
        )?;
        writeln!(
            f,
            "campaign: acknowledged deploys: {} ({}); reads answered: {}; requests not acknowledged: {}",
            self.deploys.values().sum::<usize>(),
            list(&self.deploys),
            self.reads,
            self.unacknowledged
        )?;
        writeln!(
            f,
            "campaign: deployments recorded: {} ({})",
            self.outcomes.values().sum::<usize>(),
            list(&self.outcomes)
        )?;
        writeln!(
            f,
            "campaign: containers created: {} for {} (deployment, agent) runs",
            self.containers, self.runs
        )?;
        writeln!(
            f,
            "campaign: lost {}, stuck {}, doubles {}, down {}, integrity failures {}",
            self.lost.len(),
            self.stuck.len(),
            self.doubles.len(),
            self.down.len(),
            self.integrity_failures.len()
        )?;
        for finding in self
            .lost
            .iter()
            .chain(&self.stuck)
            .chain(&self.doubles)
            .chain(&self.down)
            .chain(&self.integrity_failures)
        {
            writeln!(f, "campaign: FOUND {finding}")?;
        }
        Ok(())
    }
}
