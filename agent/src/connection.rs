//! The agent's side of the stream: dial out over mTLS, say hello, replay
//! unacknowledged results, run commands idempotently, heartbeat, renew the certificate
//! before it expires, and reconnect with jittered exponential backoff.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::v1 as pb;
use rand::Rng as _;
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

use crate::enroll::error_chain;
use crate::executor::{DeployEvent, DeploySpec, Executor, HealthCheck, PortSpec, RegistryAuth};
use crate::identity::{new_key_and_csr, Identity};
use crate::journal::{Begin, Journal, StoredResult};

const HEARTBEAT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// When a deploy command reached the agent, by the wall clock (unix nanoseconds).
#[derive(Debug, Clone)]
pub struct CommandReceipt {
    pub deployment_id: String,
    pub received_unix_nanos: i64,
    /// When the control plane queued it on the stream.
    pub sent_unix_nanos: i64,
}

/// Everything a running agent needs.
pub struct AgentRuntime {
    pub data_dir: PathBuf,
    pub executor: Arc<dyn Executor>,
    pub version: String,
    /// Told of every deploy command as it arrives: the fleet simulator's dispatch probe.
    pub on_command: Option<mpsc::UnboundedSender<CommandReceipt>>,
    /// Dial this host:port instead of the one recorded at enrollment (`berth dev`, whose
    /// agent port may change between starts).
    pub endpoint_override: Option<String>,
}

struct Shared {
    runtime: AgentRuntime,
    journal: Journal,
    /// The current stream's sender, when connected.
    outbound: Mutex<Option<mpsc::Sender<pb::AgentMessage>>>,
    identity: Mutex<Identity>,
}

/// Runs until `shutdown` resolves. The agent must already be enrolled.
pub async fn run(
    runtime: AgentRuntime,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut identity = Identity::load(&runtime.data_dir)?;
    if let Some(endpoint) = &runtime.endpoint_override {
        identity.endpoint = endpoint.clone();
    }
    let journal = Journal::open(&runtime.data_dir)?;
    // Commands a previous process was running when it died: their outcome is unknown here,
    // so they are reported failed rather than run a second time.
    for (id, kind, app) in journal.unfinished()? {
        tracing::warn!(deployment = %id, %app, "command interrupted by an agent restart");
        journal.finish(
            &id,
            kind,
            &StoredResult {
                success: false,
                container_id: String::new(),
                error: "the agent restarted while running this command".into(),
                rolled_back: false,
            },
        )?;
    }
    let shared = Arc::new(Shared {
        runtime,
        journal,
        outbound: Mutex::new(None),
        identity: Mutex::new(identity),
    });
    tokio::pin!(shutdown);
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            outcome = session(&shared) => outcome,
        };
        *shared.outbound.lock().expect("outbound lock") = None;
        match outcome {
            Ok(()) => {
                failures = 0;
                backoff = BACKOFF_MIN;
            }
            Err(e) => {
                // Log the first failure of a streak and then every tenth, not every retry.
                if failures % 10 == 0 {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "control plane stream lost");
                }
                failures += 1;
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = BACKOFF_MIN;
                }
            }
        }
        let jittered = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(jittered) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn channel_for(identity: &Identity) -> anyhow::Result<Endpoint> {
    let host = identity
        .endpoint
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(&identity.endpoint)
        .trim_matches(['[', ']']);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&identity.ca_pem))
        .identity(TlsIdentity::from_pem(
            &identity.cert_pem,
            secrecy::ExposeSecret::expose_secret(&identity.key_pem),
        ))
        .domain_name(host.to_string());
    Ok(
        Endpoint::from_shared(format!("https://{}", identity.endpoint))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10)),
    )
}

/// One connection, until it breaks (Err) or a renewed certificate needs a new one (Ok).
async fn session(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let endpoint = channel_for(&shared.identity.lock().expect("identity lock"))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("connect: {}", error_chain(&e)))?;
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel.clone());

    let renew_at = shared
        .identity
        .lock()
        .expect("identity lock")
        .renewal_due_at_unix();
    if time::OffsetDateTime::now_utc().unix_timestamp() >= renew_at {
        renew(shared, &channel).await?;
        return Ok(());
    }

    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(1024);
    let docker_version = shared.runtime.executor.runtime_version().await;
    let running = shared
        .journal
        .unfinished()?
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    tx.send(msg(pb::agent_message::Msg::Hello(pb::Hello {
        agent_version: shared.runtime.version.clone(),
        docker_version,
        running,
    })))
    .await?;
    // Results produced while the stream was down.
    for (deployment_id, kind, r) in shared.journal.unacked()? {
        tx.send(result_message(&deployment_id, kind, &r)).await?;
    }
    let mut inbound = client
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("stream refused: {} ({:?})", s.message(), s.code()))?
        .into_inner();
    *shared.outbound.lock().expect("outbound lock") = Some(tx.clone());
    tracing::info!(agent = %shared.identity.lock().expect("identity lock").name, "connected to control plane");

    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    let renew_in = Duration::from_secs(
        (renew_at - time::OffsetDateTime::now_utc().unix_timestamp()).max(1) as u64,
    );
    let renewal = tokio::time::sleep(renew_in);
    tokio::pin!(renewal);
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if tx.send(msg(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {}))).await.is_err() {
                    anyhow::bail!("stream closed");
                }
            }
            _ = &mut renewal => {
                renew(shared, &channel).await?;
                return Ok(());
            }
            message = inbound.message() => match message {
                Ok(Some(message)) => handle(shared, message),
                Ok(None) => anyhow::bail!("control plane closed the stream"),
                Err(status) => anyhow::bail!("stream ended: {} ({:?})", status.message(), status.code()),
            },
        }
    }
}

/// Renews the certificate over the current mTLS identity, then saves it; the next
/// session uses it. The new key is generated here; only its CSR leaves the host.
async fn renew(shared: &Arc<Shared>, channel: &tonic::transport::Channel) -> anyhow::Result<()> {
    let (key_pem, csr_pem) = new_key_and_csr()?;
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel.clone());
    let response = client
        .renew(pb::RenewRequest { csr_pem })
        .await
        .map_err(|s| anyhow::anyhow!("certificate renewal refused: {}", s.message()))?
        .into_inner();
    let mut identity = shared.identity.lock().expect("identity lock");
    identity.cert_pem = response.certificate_pem;
    identity.key_pem = key_pem;
    identity.issued_at_unix = time::OffsetDateTime::now_utc().unix_timestamp();
    identity.not_after_unix = response.not_after_unix;
    identity.save(&shared.runtime.data_dir)?;
    tracing::info!(agent = %identity.name, not_after = identity.not_after_unix, "certificate renewed");
    Ok(())
}

fn handle(shared: &Arc<Shared>, message: pb::ControlMessage) {
    use pb::control_message::Msg;
    match message.msg {
        Some(Msg::Deploy(cmd)) => {
            if let Some(probe) = &shared.runtime.on_command {
                let _ = probe.send(CommandReceipt {
                    deployment_id: cmd.deployment_id.clone(),
                    received_unix_nanos: now_nanos(),
                    sent_unix_nanos: cmd.sent_at_unix_nanos,
                });
            }
            let (id, app) = (cmd.deployment_id.clone(), cmd.app.clone());
            start(
                shared,
                id,
                pb::CommandKind::Deploy,
                app,
                move |shared, events| async move {
                    let spec = spec_from(cmd);
                    let outcome = shared.runtime.executor.deploy(&spec, &events).await;
                    stored(outcome)
                },
            );
        }
        Some(Msg::Commit(c)) => {
            start(
                shared,
                c.deployment_id.clone(),
                pb::CommandKind::Commit,
                c.app.clone(),
                move |shared, events| async move {
                    shared
                        .runtime
                        .executor
                        .commit(&c.app, &c.deployment_id, &events)
                        .await;
                    StoredResult {
                        success: true,
                        container_id: String::new(),
                        error: String::new(),
                        rolled_back: false,
                    }
                },
            );
        }
        Some(Msg::Rollback(r)) => {
            start(
                shared,
                r.deployment_id.clone(),
                pb::CommandKind::Rollback,
                r.app.clone(),
                move |shared, events| async move {
                    stored(
                        shared
                            .runtime
                            .executor
                            .rollback(&r.app, &r.deployment_id, &events)
                            .await,
                    )
                },
            );
        }
        Some(Msg::Ack(ack)) => {
            if let Err(e) = shared.journal.ack(&ack.deployment_id, ack.kind) {
                tracing::warn!(error = %e, "cannot record ack");
            }
        }
        None => {}
    }
}

/// Runs a command once per (deployment, kind): a re-sent command gets the recorded result.
fn start<F, Fut>(
    shared: &Arc<Shared>,
    deployment_id: String,
    kind: pb::CommandKind,
    app: String,
    work: F,
) where
    F: FnOnce(Arc<Shared>, mpsc::UnboundedSender<DeployEvent>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = StoredResult> + Send + 'static,
{
    let kind = kind as i32;
    match shared.journal.begin(&deployment_id, kind, &app) {
        Ok(Begin::Run) => {}
        Ok(Begin::Running) => return,
        Ok(Begin::Done(result)) => {
            send(shared, result_message(&deployment_id, kind, &result));
            return;
        }
        Err(e) => {
            tracing::error!(deployment = %deployment_id, error = %e, "cannot journal command");
            return;
        }
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let (events_tx, mut events_rx) = mpsc::unbounded_channel::<DeployEvent>();
        let forward = {
            let shared = shared.clone();
            let id = deployment_id.clone();
            tokio::spawn(async move {
                while let Some(event) = events_rx.recv().await {
                    send(
                        &shared,
                        msg(pb::agent_message::Msg::Event(pb::DeployEvent {
                            deployment_id: id.clone(),
                            phase: event.phase,
                            message: event.message,
                        })),
                    );
                }
            })
        };
        let result = work(shared.clone(), events_tx).await;
        let _ = forward.await;
        if let Err(e) = shared.journal.finish(&deployment_id, kind, &result) {
            tracing::error!(deployment = %deployment_id, error = %e, "cannot journal result");
        }
        send_result(&shared, result_message(&deployment_id, kind, &result)).await;
    });
}

/// Results wait for room on the stream rather than being dropped; if the stream is gone they
/// stay unacknowledged in the journal and are replayed on the next connection.
async fn send_result(shared: &Shared, message: pb::AgentMessage) {
    let tx = shared.outbound.lock().expect("outbound lock").clone();
    if let Some(tx) = tx {
        let _ = tx.send(message).await;
    }
}

/// Sends on the current stream if there is one; results not delivered stay unacknowledged in
/// the journal and are replayed on the next connection.
fn send(shared: &Shared, message: pb::AgentMessage) {
    if let Some(tx) = shared.outbound.lock().expect("outbound lock").as_ref() {
        let _ = tx.try_send(message);
    }
}

fn msg(m: pb::agent_message::Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

fn result_message(deployment_id: &str, kind: i32, r: &StoredResult) -> pb::AgentMessage {
    msg(pb::agent_message::Msg::Result(pb::DeployResult {
        deployment_id: deployment_id.to_string(),
        kind,
        success: r.success,
        container_id: r.container_id.clone(),
        error: r.error.clone(),
        rolled_back: r.rolled_back,
    }))
}

fn stored(o: crate::executor::DeployOutcome) -> StoredResult {
    StoredResult {
        success: o.success,
        container_id: o.container_id.unwrap_or_default(),
        error: o.error.unwrap_or_default(),
        rolled_back: o.rolled_back,
    }
}

fn spec_from(cmd: pb::DeployCommand) -> DeploySpec {
    let hc = cmd.health_check.unwrap_or_default();
    let timeout = Duration::from_secs(u64::from(if hc.timeout_seconds == 0 {
        60
    } else {
        hc.timeout_seconds
    }));
    let health_check = match hc.kind.as_str() {
        "http" => HealthCheck::Http {
            port: hc.port as u16,
            path: if hc.path.is_empty() {
                "/".into()
            } else {
                hc.path
            },
            timeout,
        },
        "tcp" => HealthCheck::Tcp {
            port: hc.port as u16,
            timeout,
        },
        _ => HealthCheck::Default {
            timeout,
            grace: Duration::from_secs(u64::from(hc.grace_seconds)),
        },
    };
    DeploySpec {
        deployment_id: cmd.deployment_id,
        app: cmd.app,
        image: cmd.image,
        version: cmd.version,
        env: cmd
            .env
            .into_iter()
            .map(|(k, v)| (k, SecretString::from(v)))
            .collect::<BTreeMap<_, _>>(),
        ports: cmd
            .ports
            .into_iter()
            .map(|p| PortSpec {
                host: p.host as u16,
                container: p.container as u16,
                protocol: if p.protocol.is_empty() {
                    "tcp".into()
                } else {
                    p.protocol
                },
            })
            .collect(),
        registry_auth: cmd
            .registry
            .filter(|r| !r.username.is_empty())
            .map(|r| RegistryAuth {
                server: r.server,
                username: r.username,
                password: SecretString::from(r.password),
            }),
        health_check,
        restart_policy: if cmd.restart_policy.is_empty() {
            "unless-stopped".into()
        } else {
            cmd.restart_policy
        },
        command: cmd.command,
    }
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
