//! The steady mix a campaign round runs while a process is killed and restarted: writes
//! (secrets, environment variables, applications), deploys (through the webhook shim, the
//! admin API and the CLI; some of a version that fails its health gate) and reads, one after
//! the other with short random pauses. Every request that got an answer saying it was done is
//! *acknowledged* and goes into the [`Ledger`]; a refused or unanswered one is only counted
//! (it may or may not have landed: nothing is promised about it).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::v1 as pb;
use pb::application_service_client::ApplicationServiceClient;
use pb::deploy_service_client::DeployServiceClient;
use pb::env_service_client::EnvServiceClient;
use pb::secret_service_client::SecretServiceClient;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::fixture::admin::authed;
use crate::fixture::http;
use crate::fixture::process::bin;

/// The group every acknowledged secret of a campaign is written to.
pub const GROUP: &str = "campaign";

/// The admin API as the workload reaches it: the same address, CA and key across restarts
/// of the control plane, a new connection for every request (one to a killed process is
/// gone), and an error instead of a panic when nothing answers.
#[derive(Clone)]
pub struct Admin {
    pub addr: String,
    pub ca_pem: String,
    pub ca_cert: PathBuf,
    pub token: String,
}

impl Admin {
    pub async fn channel(&self) -> Result<Channel, String> {
        let endpoint = Channel::from_shared(self.addr.clone())
            .map_err(|e| e.to_string())?
            .tls_config(
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.ca_pem.clone())),
            )
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(20));
        endpoint
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))
    }
}

/// An application the workload deploys: its name and webhook token.
#[derive(Clone)]
pub struct DeployApp {
    pub name: String,
    pub token: String,
}

/// How a deployment was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    Webhook,
    Api,
    Cli,
}

/// Everything acknowledged so far, over the whole campaign.
#[derive(Default)]
pub struct Ledger {
    /// (name, value) in group [`GROUP`].
    pub secrets: Vec<(String, String)>,
    /// Global plain variables: (key, value).
    pub env: Vec<(String, String)>,
    /// Applications registered (never deployed).
    pub apps: Vec<String>,
    /// Deployment ids with how they were asked for and the version.
    pub deployments: Vec<(String, Via, String)>,
    /// Requests that got no acknowledgement (refused while a process was down, or cut).
    pub unacknowledged: usize,
    /// Reads that got their answer.
    pub reads: usize,
}

/// The workload of one round, running in a task of its own until stopped.
pub struct Workload {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Workload {
    /// Starts the mix; `seed` decides every choice, `round` names what it writes.
    pub fn start(
        admin: Admin,
        shim_port: u16,
        apps: Vec<DeployApp>,
        ledger: Arc<Mutex<Ledger>>,
        seed: u64,
        round: usize,
    ) -> Workload {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut n = 0usize;
            while !*stopped.borrow() {
                n += 1;
                let op = Op::draw(&mut rng);
                let run = Run {
                    admin: &admin,
                    ledger: &ledger,
                    name: format!("r{round}_{n}"),
                    value: value(&mut rng),
                };
                match op {
                    Op::Secret => run.secret().await,
                    Op::Env => run.env().await,
                    Op::App => run.app().await,
                    Op::Deploy(via) => {
                        let app = &apps[rng.gen_range(0..apps.len())];
                        // One deploy in six is of a release that fails its health gate.
                        let version = ["v1", "v2", "v1", "v2", "v1", "bad"][rng.gen_range(0..6)];
                        run.deploy(via, app, version, shim_port).await
                    }
                    Op::Read => run.read(&apps[rng.gen_range(0..apps.len())].name).await,
                }
                let pause = Duration::from_millis(rng.gen_range(50..250));
                let _ = tokio::time::timeout(pause, stopped.changed()).await;
            }
        });
        Workload { stop, task }
    }

    /// Stops after the request under way.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.expect("workload task");
    }
}

enum Op {
    Secret,
    Env,
    App,
    Deploy(Via),
    Read,
}

impl Op {
    fn draw(rng: &mut StdRng) -> Op {
        match rng.gen_range(0..100) {
            0..30 => Op::Secret,
            30..50 => Op::Env,
            50..55 => Op::App,
            // About one deploy a second, across three apps that each take a few seconds
            // on two hosts: a kill nearly always strikes some deployment under way.
            55..60 => Op::Deploy(Via::Webhook),
            60..64 => Op::Deploy(Via::Api),
            64..66 => Op::Deploy(Via::Cli),
            _ => Op::Read,
        }
    }
}

/// A value no other write of the campaign has.
fn value(rng: &mut StdRng) -> String {
    let bytes: [u8; 12] = rng.gen();
    format!("v-{}", hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One request of the mix.
struct Run<'a> {
    admin: &'a Admin,
    ledger: &'a Mutex<Ledger>,
    /// Unique within the campaign: `r<round>_<n>`.
    name: String,
    value: String,
}

impl Run<'_> {
    fn acknowledged(&self, record: impl FnOnce(&mut Ledger)) {
        record(&mut self.ledger.lock().unwrap());
    }

    fn unacknowledged(&self) {
        self.ledger.lock().unwrap().unacknowledged += 1;
    }

    async fn secret(&self) {
        let name = format!("S_{}", self.name);
        let done = async {
            SecretServiceClient::new(self.admin.channel().await?)
                .set_secret(authed(
                    pb::SetSecretRequest {
                        group: GROUP.into(),
                        name: name.clone(),
                        value: self.value.clone(),
                        description: None,
                    },
                    &self.admin.token,
                ))
                .await
                .map_err(|s| s.to_string())
        }
        .await;
        match done {
            Ok(_) => self.acknowledged(|l| l.secrets.push((name, self.value.clone()))),
            Err(_) => self.unacknowledged(),
        }
    }

    async fn env(&self) {
        let key = format!("CAMPAIGN_{}", self.name);
        let done = async {
            EnvServiceClient::new(self.admin.channel().await?)
                .set_env(authed(
                    pb::SetEnvRequest {
                        scope: Some(pb::EnvScope {
                            scope: Some(pb::env_scope::Scope::Global(true)),
                        }),
                        key: key.clone(),
                        value: Some(pb::set_env_request::Value::Plain(self.value.clone())),
                        description: None,
                    },
                    &self.admin.token,
                ))
                .await
                .map_err(|s| s.to_string())
        }
        .await;
        match done {
            Ok(_) => self.acknowledged(|l| l.env.push((key, self.value.clone()))),
            Err(_) => self.unacknowledged(),
        }
    }

    async fn app(&self) {
        let name = format!("reg-{}", self.name.replace('_', "-"));
        let done = async {
            ApplicationServiceClient::new(self.admin.channel().await?)
                .create_application(authed(
                    pb::CreateApplicationRequest {
                        name: name.clone(),
                        image: "web".into(),
                        ..Default::default()
                    },
                    &self.admin.token,
                ))
                .await
                .map_err(|s| s.to_string())
        }
        .await;
        match done {
            Ok(_) => self.acknowledged(|l| l.apps.push(name)),
            Err(_) => self.unacknowledged(),
        }
    }

    async fn deploy(&self, via: Via, app: &DeployApp, version: &str, shim_port: u16) {
        let id = match via {
            Via::Webhook => webhook_deploy(shim_port, app, version).await,
            Via::Api => self.api_deploy(&app.name, version).await,
            Via::Cli => self.cli_deploy(&app.name, version).await,
        };
        match id {
            Some(id) => self.acknowledged(|l| l.deployments.push((id, via, version.to_owned()))),
            None => self.unacknowledged(),
        }
    }

    async fn api_deploy(&self, app: &str, version: &str) -> Option<String> {
        let channel = self.admin.channel().await.ok()?;
        let detail = DeployServiceClient::new(channel)
            .deploy(authed(
                pb::DeployRequest {
                    app: app.into(),
                    version: version.into(),
                    cancel_in_progress: false,
                },
                &self.admin.token,
            ))
            .await
            .ok()?
            .into_inner();
        Some(detail.deployment?.deployment_id)
    }

    /// `berth deploy APP VERSION -o json`: acknowledged when it printed the deployment (its
    /// exit code also says whether a deployment refused before dispatch failed).
    async fn cli_deploy(&self, app: &str, version: &str) -> Option<String> {
        let run = tokio::process::Command::new(bin("berth"))
            .args(["deploy", app, version, "-o", "json"])
            .env("BERTH_ADDR", &self.admin.addr)
            .env("BERTH_CA_CERT", &self.admin.ca_cert)
            .env("BERTH_TOKEN", &self.admin.token)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .ok()?
            .ok()?;
        let printed: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        printed["deployment"]["deployment_id"]
            .as_str()
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
    }

    /// One read of what a user looks at: the campaign's secrets, the applications, an app's
    /// deployments.
    async fn read(&self, app: &str) {
        let done = async {
            let channel = self.admin.channel().await?;
            let token = &self.admin.token;
            SecretServiceClient::new(channel.clone())
                .list_secrets(authed(
                    pb::ListSecretsRequest {
                        group: Some(GROUP.into()),
                    },
                    token,
                ))
                .await
                .map_err(|s| s.to_string())?;
            ApplicationServiceClient::new(channel.clone())
                .list_applications(authed(pb::ListApplicationsRequest {}, token))
                .await
                .map_err(|s| s.to_string())?;
            DeployServiceClient::new(channel)
                .list_deployments(authed(
                    pb::ListDeploymentsRequest {
                        app: app.into(),
                        limit: 10,
                    },
                    token,
                ))
                .await
                .map_err(|s| s.to_string())
        }
        .await;
        match done {
            Ok(_) => self.acknowledged(|l| l.reads += 1),
            Err(_) => self.unacknowledged(),
        }
    }
}

/// `POST /webhook/deploy?wait=false` as a CI job sends it: acknowledged by a 202 that names
/// the deployment.
async fn webhook_deploy(shim_port: u16, app: &DeployApp, version: &str) -> Option<String> {
    let body = serde_json::json!({"applicationName": app.name, "version": version});
    let token = app.token.clone();
    let answer = tokio::task::spawn_blocking(move || {
        http::try_post(shim_port, "/webhook/deploy?wait=false", &body, Some(&token))
    })
    .await
    .ok()?
    .ok()?;
    if answer.status != 202 {
        return None;
    }
    answer.json()["deploymentId"].as_str().map(str::to_owned)
}
