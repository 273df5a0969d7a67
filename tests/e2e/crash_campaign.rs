//! The kill -9 campaign (issue 9; SPEC §11, reliability invariants 1, 2, 5 and 7): the
//! reliability promises checked at random crash points instead of a few chosen ones.
//!
//! A control plane (`berth dev --no-agent`), two agents, each behind a `berth-proxy` of its
//! own (two "hosts" on the one Docker Engine, publishing on 127.0.0.1 and 127.0.0.2), the
//! standalone webhook shim, and the shared private registry. Each round runs a steady mix of
//! writes, deploys (webhook, API, CLI; one in six fails its health gate) and reads
//! ([`workload`]), kills the control plane or one agent with SIGKILL at a random moment,
//! restarts it, and then checks ([`checks`]): every acknowledged write is there (0 lost), no
//! deployment is unfinished once the reconcile timeout has passed (0 stuck), no deployment
//! created a container twice on one agent, counted from the engine's own events (0 doubles),
//! every app that served on a host before the round serves there after it (0 down), and the
//! database passes `PRAGMA integrity_check`.
//!
//! `BERTH_CAMPAIGN_ROUNDS` sets the number of rounds (10 by default, as CI runs it;
//! `tests/campaign.sh` runs 50 and prints the figures). Every choice (victim, moments, the
//! mix) comes from one seed, printed first; `BERTH_CAMPAIGN_SEED=<seed>` makes the same
//! choices again (the timing is the machine's, so a replay strikes near, not exactly at,
//! the same instants).
//!
//! [`full_disk`] is the full-disk check: the control plane's data directory on a small tmpfs.
//! [`group_commit`] kills the control plane with 1,000 deploys in flight through its
//! group-committing writer.

mod checks;
mod full_disk;
mod group_commit;
mod workload;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use pb::secret_service_client::SecretServiceClient;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use self::checks::{CampaignApp, Figures, Marks, RoundReport};
use self::workload::{Admin, DeployApp, Ledger, Workload, GROUP};
use crate::fixture::admin::{
    authed, create_api_key, deploy, register_web_app, status, unique, wait_deployment,
};
use crate::fixture::agent::{wait_connected, AgentProcess};
use crate::fixture::docker::{docker_available, Cleanup, ContainerCreations};
use crate::fixture::node::{dirs, DevNode, Dirs};
use crate::fixture::process::free_port;
use crate::fixture::proxy::ProxyProcess;
use crate::fixture::registry;
use crate::fixture::shim::StandaloneShim;

/// How long a restarted control plane waits for agents to report unfinished deployments.
const RECONCILE_TIMEOUT_SECS: u64 = 10;
/// After a round, how long every deployment has to finish: the reconcile timeout, then a
/// deployment queued behind a reconciled one runs on both hosts.
const SETTLE: Duration = Duration::from_secs(RECONCILE_TIMEOUT_SECS + 60);
/// The addresses the two hosts' proxies publish the apps' ports on.
const HOSTS: [&str; 2] = ["127.0.0.1", "127.0.0.2"];
/// Applications deployed to both hosts by the mix.
const APPS: usize = 3;

/// Everything a campaign runs, and how to kill and restart each process.
struct Cluster {
    d: Dirs,
    node: Option<DevNode>,
    admin_port: u16,
    agent_port: u16,
    admin: Admin,
    shim: StandaloneShim,
    /// Kept running for the whole campaign (the data plane is not a victim here).
    proxies: Vec<ProxyProcess>,
    agents: Vec<(String, AgentProcess)>,
    apps: Vec<CampaignApp>,
}

#[derive(Clone, Copy)]
enum Victim {
    ControlPlane,
    Agent(usize),
}

impl Cluster {
    async fn start() -> Cluster {
        let d = dirs();
        let (admin_port, agent_port) = (free_port(), free_port());
        let node = start_node(&d, agent_port, admin_port);
        let reg = registry::shared();
        let label = ("campaign", "yes");
        let mut proxies = Vec::new();
        let mut agents = Vec::new();
        for (i, host) in HOSTS.iter().enumerate() {
            let proxy = ProxyProcess::start_named(d.logs.path(), &format!("proxy-{i}"), host);
            let name = unique(&format!("campaign-{i}"));
            let socket = proxy.socket().display().to_string();
            let agent = AgentProcess::start_with(
                &node,
                &name,
                &[label],
                d.logs.path(),
                &["--proxy-socket", &socket],
            )
            .await;
            wait_connected(&node, &name).await;
            proxies.push(proxy);
            agents.push((name, agent));
        }
        let mut apps = Vec::new();
        for i in 0..APPS {
            let name = unique(&format!("campaign{i}"));
            let port = free_port();
            let targets = vec![pb::Target {
                target: Some(pb::target::Target::Label("campaign=yes".into())),
            }];
            let token = register_web_app(&node, &name, Some(port), &reg.password, targets).await;
            apps.push(CampaignApp { name, token, port });
        }
        SecretServiceClient::new(node.channel().await)
            .create_group(authed(
                pb::CreateGroupRequest {
                    name: GROUP.into(),
                    description: None,
                    provider: None,
                    auto_sync: false,
                },
                &node.admin_token(),
            ))
            .await
            .expect("create the campaign's group");
        let shim_key = create_api_key(&node, "campaign-shim", "webhook").await;
        let shim = StandaloneShim::start(&node, &shim_key, &[], &[], d.logs.path());
        let admin = Admin {
            addr: node.addr.clone(),
            ca_pem: std::fs::read_to_string(&node.ca_cert).unwrap(),
            ca_cert: node.ca_cert.clone(),
            token: node.admin_token(),
        };
        Cluster {
            d,
            node: Some(node),
            admin_port,
            agent_port,
            admin,
            shim,
            proxies,
            agents,
            apps,
        }
    }

    fn node(&self) -> &DevNode {
        self.node.as_ref().expect("the control plane runs")
    }

    fn victim_name(&self, victim: Victim) -> String {
        match victim {
            Victim::ControlPlane => "control plane".to_owned(),
            Victim::Agent(i) => format!("agent {}", ["a", "b"][i]),
        }
    }

    fn kill(&mut self, victim: Victim) {
        match victim {
            Victim::ControlPlane => {
                if let Some(mut node) = self.node.take() {
                    node.kill();
                }
            }
            Victim::Agent(i) => self.agents[i].1.kill(),
        }
    }

    fn restart(&mut self, victim: Victim) {
        match victim {
            Victim::ControlPlane => {
                // Starting waits (blocking) for the admin port; the workload runs meanwhile.
                let node = tokio::task::block_in_place(|| {
                    start_node(&self.d, self.agent_port, self.admin_port)
                });
                self.node = Some(node);
            }
            Victim::Agent(i) => self.agents[i].1.spawn(&[]),
        }
    }

    /// The lines of every agent's and proxy's log naming an app of `down` (its lines name
    /// the app), the last 60 of each.
    fn host_logs(&self, down: &[String]) -> String {
        let apps: Vec<&CampaignApp> = self
            .apps
            .iter()
            .filter(|a| down.iter().any(|d| d.starts_with(&format!("{} ", a.name))))
            .collect();
        let mut out = String::new();
        let mut logs: Vec<(String, String)> = self
            .agents
            .iter()
            .map(|(name, agent)| (format!("agent {name}"), agent.log()))
            .collect();
        logs.extend(
            self.proxies
                .iter()
                .enumerate()
                .map(|(i, proxy)| (format!("proxy of host {}", HOSTS[i]), proxy.log())),
        );
        for (who, log) in logs {
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| apps.iter().any(|a| l.contains(&a.name)))
                .collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            out.push_str(&format!(
                "--- {who}: {} line(s) about the down apps, the last {}:\n",
                lines.len(),
                tail.len()
            ));
            for line in tail {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn deploy_apps(&self) -> Vec<DeployApp> {
        self.apps
            .iter()
            .map(|a| DeployApp {
                name: a.name.clone(),
                token: a.token.clone(),
            })
            .collect()
    }
}

/// The control plane of the campaign, on the same ports and data at every (re)start.
fn start_node(d: &Dirs, agent_port: u16, admin_port: u16) -> DevNode {
    let timeout = RECONCILE_TIMEOUT_SECS.to_string();
    DevNode::start_with_agent_api(
        d,
        agent_port,
        &["--reconcile-timeout", &timeout],
        admin_port,
    )
}

/// The number of rounds and the seed, from the environment.
fn campaign_settings() -> (usize, u64) {
    let rounds = std::env::var("BERTH_CAMPAIGN_ROUNDS")
        .ok()
        .map(|v| v.parse().expect("BERTH_CAMPAIGN_ROUNDS is a number"))
        .unwrap_or(10);
    let seed = std::env::var("BERTH_CAMPAIGN_SEED")
        .ok()
        .map(|v| v.parse().expect("BERTH_CAMPAIGN_SEED is a number"))
        .unwrap_or_else(rand::random);
    (rounds, seed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_campaign_loses_nothing_and_leaves_nothing_stuck_doubled_or_down() {
    if !docker_available() {
        return;
    }
    let (rounds, seed) = campaign_settings();
    eprintln!("campaign: {rounds} rounds, seed {seed} (replay: BERTH_CAMPAIGN_SEED={seed})");
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start().await;
    let _cleanup: Vec<Cleanup> = cluster
        .apps
        .iter()
        .map(|a| Cleanup {
            app: a.name.clone(),
        })
        .collect();
    let watched = Arc::new(Mutex::new(
        cluster.apps.iter().map(|a| a.name.clone()).collect(),
    ));
    let creations = ContainerCreations::watch(watched);
    // Every app serves on both hosts before the first round.
    for app in &cluster.apps {
        let id = deploy(cluster.node(), &app.name, "v1").await;
        let detail = wait_deployment(cluster.node(), &id, Duration::from_secs(180)).await;
        assert_eq!(status(&detail), "success", "{detail:#?}");
    }

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut figures = Figures::new(seed, rounds);
    for round in 1..=rounds {
        let round_started = Instant::now();
        let before = checks::serving(&cluster.apps, &HOSTS).await;
        let marks = Marks::of(&ledger.lock().unwrap());
        let workload = Workload::start(
            cluster.admin.clone(),
            cluster.shim.port,
            cluster.deploy_apps(),
            ledger.clone(),
            rng.gen(),
            round,
        );
        let strike = Duration::from_millis(rng.gen_range(500..3000));
        tokio::time::sleep(strike).await;
        let victim = match rng.gen_range(0..4) {
            0 | 1 => Victim::ControlPlane,
            n => Victim::Agent(n - 2),
        };
        cluster.kill(victim);
        let down_for = Duration::from_millis(rng.gen_range(0..1500));
        tokio::time::sleep(down_for).await;
        cluster.restart(victim);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1500))).await;
        workload.stop().await;
        *figures
            .kills
            .entry(cluster.victim_name(victim))
            .or_default() += 1;

        let report = check_round(&cluster, &ledger, marks, &before, &creations).await;
        eprintln!(
            "campaign: round {round}/{rounds}: killed the {} {:.1} s in, down {:.1} s; settled in {:.1} s, checked in {:.1} s; {}; {:.1} s",
            cluster.victim_name(victim),
            strike.as_secs_f64(),
            down_for.as_secs_f64(),
            report.settled.as_secs_f64(),
            report.checked.as_secs_f64(),
            if report.clean() {
                "clean".to_owned()
            } else {
                format!(
                    "lost {:?} stuck {:?} doubles {:?} down {:?} integrity {}",
                    report.lost, report.stuck, report.doubles, report.down, report.integrity
                )
            },
            round_started.elapsed().as_secs_f64()
        );
        if !report.down.is_empty() {
            // What the hosts' agents and proxies said, for a campaign that cannot be watched
            // (CI): the lines about the apps that went down.
            eprintln!("{}", cluster.host_logs(&report.down));
        }
        figures.add(round, report);
    }

    let all = checks::deployments(&cluster.admin, &cluster.apps).await;
    figures.close(&ledger.lock().unwrap(), &all, &creations.counts());
    figures.elapsed = started.elapsed();
    eprint!("{figures}");
    if !figures.clean() {
        cluster.d.logs.disable_cleanup(true);
        eprintln!(
            "campaign: the processes' logs are kept in {}",
            cluster.d.logs.path().display()
        );
    }
    assert!(
        figures.clean(),
        "the campaign found failures (replay with BERTH_CAMPAIGN_SEED={seed}):\n{figures}"
    );
    assert!(
        figures.secrets > 0 && figures.deploys.values().sum::<usize>() > 0,
        "the campaign acknowledged writes and deploys: {figures}"
    );
}

/// After a round: both agents back, every deployment settled, then every check.
async fn check_round(
    cluster: &Cluster,
    ledger: &Mutex<Ledger>,
    marks: Marks,
    before: &std::collections::BTreeSet<(String, std::net::SocketAddr)>,
    creations: &ContainerCreations,
) -> RoundReport {
    let started = Instant::now();
    for (name, _) in &cluster.agents {
        wait_connected(cluster.node(), name).await;
    }
    let (stuck, deployments) = checks::settle(&cluster.admin, &cluster.apps, SETTLE).await;
    let settled = started.elapsed();
    let snapshot = {
        let ledger = ledger.lock().unwrap();
        Ledger {
            secrets: ledger.secrets.clone(),
            env: ledger.env.clone(),
            apps: ledger.apps.clone(),
            deployments: ledger.deployments.clone(),
            ..Ledger::default()
        }
    };
    let mut lost = checks::lost_writes(&cluster.admin, &snapshot, marks, &deployments).await;
    let (doubles, unknown) = checks::doubles_and_unknown(&creations.counts(), &deployments);
    lost.extend(unknown);
    RoundReport {
        lost,
        stuck,
        doubles,
        down: checks::down(before).await,
        integrity: checks::integrity(cluster.d.data.path()).await,
        settled,
        checked: started.elapsed() - settled,
    }
}
