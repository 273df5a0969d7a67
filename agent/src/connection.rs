//! The agent's side of the stream (R-5.4, R-5.5): dial out over mTLS, say hello, replay
//! unacknowledged results, run commands idempotently, heartbeat, renew the certificate
//! before it expires, and reconnect with jittered exponential backoff.
//!
//! Architecture invariant: a command's result is journaled before it is sent, and a
//! (deployment, kind) runs at most once: a re-sent command gets the recorded result, and a
//! command a previous process died running is reported failed, never run again.

use std::collections::{BTreeMap, HashMap};
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
use crate::executor::{
    DeployEvent, DeploySpec, Domain, Executor, HealthCheck, PortSpec, RegistryAuth, StopSpec,
    TlsPair,
};
use crate::identity::{new_key_and_csr, Identity};
use crate::journal::{Begin, Journal, StoredResult};

const HEARTBEAT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A session that lasted longer than this was a good one: the next retry starts from
/// [`BACKOFF_MIN`] again even though it ended in an error.
const STABLE_SESSION: Duration = Duration::from_secs(60);

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
    /// Per application: held while one of its commands runs, so two deploys (or a deploy and
    /// a rollback) of one application never run at once, even when commands arrive together
    /// after a reconnect; the second waits for the first.
    app_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The lock of one application's commands.
fn app_lock(shared: &Shared, app: &str) -> Arc<tokio::sync::Mutex<()>> {
    shared
        .app_locks
        .lock()
        .expect("app locks")
        .entry(app.to_string())
        .or_default()
        .clone()
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
    settle_interrupted(&journal, runtime.executor.as_ref()).await?;
    let shared = Arc::new(Shared {
        runtime,
        journal,
        outbound: Mutex::new(None),
        identity: Mutex::new(identity),
        app_locks: Mutex::new(HashMap::new()),
    });
    tokio::pin!(shutdown);
    let mut backoff = Backoff::new();
    loop {
        let started = tokio::time::Instant::now();
        let outcome = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            outcome = session(&shared) => outcome,
        };
        *shared.outbound.lock().expect("outbound lock") = None;
        match outcome {
            Ok(()) => backoff.succeeded(),
            Err(e) => {
                let step = backoff.step();
                if backoff.failed(started.elapsed()) {
                    tracing::warn!(error = %e, retry_in_ms = step.as_millis() as u64, "control plane stream lost");
                }
            }
        }
        let delay = backoff.next_delay(rand::thread_rng().gen_range(JITTER));
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Each pause is this fraction of the current step, drawn at random, so agents cut off
/// together (a control plane restart) do not all dial back in the same instant.
const JITTER: std::ops::Range<f64> = 0.5..1.0;

/// The pause between two connection attempts: a step that doubles from [`BACKOFF_MIN`] to
/// [`BACKOFF_MAX`] with each attempt, jittered, and back to the minimum after a good session.
#[derive(Debug)]
struct Backoff {
    /// The step the next pause is drawn from.
    step: Duration,
    /// Failed sessions in a row, so a streak is logged once every ten and not on each retry.
    failures: u32,
}

impl Backoff {
    fn new() -> Self {
        Self {
            step: BACKOFF_MIN,
            failures: 0,
        }
    }

    /// The step before jitter, as a failure reports it.
    fn step(&self) -> Duration {
        self.step
    }

    /// A session ended on purpose (a renewed certificate needs a new connection).
    fn succeeded(&mut self) {
        self.failures = 0;
        self.step = BACKOFF_MIN;
    }

    /// A session that had run for `lasted` broke. Returns whether to log it: the first failure
    /// of a streak and then every tenth. A session that had run long was a good one, so the
    /// step starts over (the streak still counts, so a flapping stream is not logged each time).
    // `u32::is_multiple_of` needs Rust 1.87; the workspace's rust-version is 1.85.
    #[allow(clippy::manual_is_multiple_of)]
    fn failed(&mut self, lasted: Duration) -> bool {
        let log = self.failures % 10 == 0;
        self.failures += 1;
        if lasted > STABLE_SESSION {
            self.step = BACKOFF_MIN;
        }
        log
    }

    /// The pause before the next attempt, `jitter` (drawn from [`JITTER`]) times the step;
    /// the step then doubles, up to [`BACKOFF_MAX`].
    fn next_delay(&mut self, jitter: f64) -> Duration {
        let delay = self.step.mul_f64(jitter);
        self.step = (self.step * 2).min(BACKOFF_MAX);
        delay
    }
}

/// Commands a previous process was running when it died: never run a second time. A deploy
/// the host shows serving (the executor recovers it) is reported as it ended; any other
/// outcome is unknown here, so it is reported failed.
async fn settle_interrupted(journal: &Journal, executor: &dyn Executor) -> anyhow::Result<()> {
    for (id, kind, app) in journal.unfinished()? {
        let recovered = if kind == pb::CommandKind::Deploy as i32 {
            executor.recover(&app, &id).await
        } else {
            None
        };
        let result = match recovered {
            Some(outcome) => {
                tracing::warn!(deployment = %id, %app, success = outcome.success, "command interrupted by an agent restart; its outcome recovered from the host");
                stored(outcome)
            }
            None => {
                tracing::warn!(deployment = %id, %app, "command interrupted by an agent restart");
                StoredResult {
                    success: false,
                    container_id: String::new(),
                    error: "the agent restarted while running this command".into(),
                    rolled_back: false,
                }
            }
        };
        journal.finish(&id, kind, &result)?;
    }
    Ok(())
}

/// The results a new stream starts with: every one the control plane has not acknowledged,
/// whether it was produced while the stream was down or sent on a stream that then broke.
fn replay(journal: &Journal) -> anyhow::Result<Vec<pb::AgentMessage>> {
    Ok(journal
        .unacked()?
        .into_iter()
        .map(|(deployment_id, kind, result)| result_message(&deployment_id, kind, &result))
        .collect())
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
    // From here on a finishing command sends its result on this stream (queued behind the
    // Hello). Set before the journal is read, so no result can finish between the replay and
    // the switch and wait, unsent, for the next reconnect; one finishing during the replay
    // may go twice, which the control plane ignores (a target is finished once).
    *shared.outbound.lock().expect("outbound lock") = Some(tx.clone());
    // Results produced while the stream was down.
    for message in replay(&shared.journal)? {
        tx.send(message).await?;
    }
    let mut inbound = client
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("stream refused: {} ({:?})", s.message(), s.code()))?
        .into_inner();
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

/// Renews the certificate over the current mTLS identity (R-5.3), then saves it; the next
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
        Some(Msg::Routes(routes)) => {
            // Under the app's lock, like a deploy: it routes to whatever container serves once
            // a running deploy is done.
            let shared = shared.clone();
            tokio::spawn(async move {
                let lock = app_lock(&shared, &routes.app);
                let _serving = lock.lock().await;
                let domains = domains_from(routes.domains);
                if let Err(error) = shared
                    .runtime
                    .executor
                    .set_domains(&routes.app, &domains)
                    .await
                {
                    tracing::warn!(app = %routes.app, %error, "cannot route the app's domains");
                }
            });
        }
        Some(Msg::AcmeChallenge(challenge)) => {
            // Not under the app's lock: the proxy answers tokens for any Host, and a deploy
            // in progress must not hold the CA's validation up. The reply tells the control
            // plane when the proxy answers (or why it cannot).
            let shared = shared.clone();
            tokio::spawn(async move {
                let key_authorization = SecretString::from(challenge.key_authorization);
                let outcome = shared
                    .runtime
                    .executor
                    .set_challenge(
                        &challenge.token,
                        &key_authorization,
                        Duration::from_secs(challenge.ttl_seconds.into()),
                    )
                    .await;
                if let Err(error) = &outcome {
                    tracing::warn!(token = %challenge.token, %error, "cannot set an acme challenge");
                }
                if challenge.ttl_seconds > 0 {
                    send(
                        &shared,
                        msg(pb::agent_message::Msg::ChallengeReply(pb::ChallengeReply {
                            token: challenge.token,
                            error: outcome.err().unwrap_or_default(),
                        })),
                    );
                }
            });
        }
        Some(Msg::Ack(ack)) => {
            let journal = shared.journal.clone();
            tokio::spawn(async move {
                if let Err(e) = blocking(move || journal.ack(&ack.deployment_id, ack.kind)).await {
                    tracing::warn!(error = %e, "cannot record ack");
                }
            });
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
    let shared = shared.clone();
    tokio::spawn(async move {
        // The journal fsyncs: it runs on the blocking pool, never on the threads that read
        // the stream, send heartbeats and serve the proxy (a fleet simulator's thousands of
        // agents in one process showed it: each fsync stalled every other stream).
        // Commands of one app run one at a time under its lock, in the order they take it;
        // the control plane sends a rollback of a deployment only after that deploy answered
        // or timed out, so a deploy and its rollback never race for the lock here.
        let begun = {
            let (journal, id, app) = (shared.journal.clone(), deployment_id.clone(), app.clone());
            blocking(move || journal.begin(&id, kind, &app)).await
        };
        match begun {
            Ok(Begin::Run) => {}
            Ok(Begin::Running) => return,
            Ok(Begin::Done(result)) => {
                send(&shared, result_message(&deployment_id, kind, &result));
                return;
            }
            Err(e) => {
                tracing::error!(deployment = %deployment_id, error = %e, "cannot journal command");
                return;
            }
        }
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
        let result = {
            let lock = app_lock(&shared, &app);
            let _running = lock.lock().await;
            work(shared.clone(), events_tx).await
        };
        let _ = forward.await;
        let finished = {
            let (journal, id, result) = (
                shared.journal.clone(),
                deployment_id.clone(),
                result.clone(),
            );
            blocking(move || journal.finish(&id, kind, &result)).await
        };
        if let Err(e) = finished {
            tracing::error!(deployment = %deployment_id, error = %e, "cannot journal result");
        }
        send_result(&shared, result_message(&deployment_id, kind, &result)).await;
    });
}

/// Runs a journal write on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("journal task: {e}"))?
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
        domains: domains_from(cmd.domains),
        stop: cmd
            .stop
            .map(|stop| StopSpec {
                drain: Duration::from_secs(u64::from(stop.drain_seconds)),
                timeout: (stop.timeout_seconds > 0)
                    .then(|| Duration::from_secs(u64::from(stop.timeout_seconds))),
                signal: (!stop.signal.is_empty()).then_some(stop.signal),
            })
            // A control plane that sends no stop settings: a drain that lets short requests
            // finish, the engine's grace and the image's signal.
            .unwrap_or(StopSpec {
                drain: DEFAULT_DRAIN,
                ..StopSpec::default()
            }),
    }
}

/// How long the previous container's connections may drain when the command says nothing.
const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

fn domains_from(domains: Vec<pb::ProxyDomain>) -> Vec<Domain> {
    domains
        .into_iter()
        .map(|d| Domain {
            host: d.host,
            container_port: d.container_port as u16,
            tls: (!d.tls_cert_pem.is_empty()).then(|| TlsPair {
                cert_pem: d.tls_cert_pem,
                key_pem: SecretString::from(d.tls_key_pem),
            }),
        })
        .collect()
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use pb::agent_message::Msg as Out;
    use pb::control_message::Msg as In;

    use super::*;
    use crate::fake::FakeExecutor;

    const DEPLOY: i32 = pb::CommandKind::Deploy as i32;

    /// Every pause of a failure streak, with the jitter at its top.
    fn pauses(backoff: &mut Backoff, failures: usize) -> Vec<Duration> {
        (0..failures)
            .map(|_| {
                backoff.failed(Duration::from_secs(1));
                backoff.next_delay(1.0)
            })
            .collect()
    }

    #[test]
    fn the_step_doubles_from_the_minimum_to_the_maximum() {
        let seconds: Vec<f64> = pauses(&mut Backoff::new(), 9)
            .iter()
            .map(Duration::as_secs_f64)
            .collect();
        assert_eq!(
            seconds,
            [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0],
            "BACKOFF_MIN and BACKOFF_MAX changed?"
        );
    }

    #[test]
    fn jitter_keeps_each_pause_between_half_and_the_whole_step() {
        let mut backoff = Backoff::new();
        for _ in 0..1000 {
            let step = backoff.step();
            let pause = backoff.next_delay(rand::thread_rng().gen_range(JITTER));
            assert!(pause >= step / 2 && pause < step, "{pause:?} of {step:?}");
        }
        assert_eq!(Backoff::new().next_delay(JITTER.start), BACKOFF_MIN / 2);
    }

    #[test]
    fn a_good_session_starts_over_from_the_minimum() {
        let mut backoff = Backoff::new();
        pauses(&mut backoff, 5);
        assert_eq!(backoff.step(), Duration::from_secs(16));
        backoff.succeeded();
        assert_eq!(backoff.next_delay(1.0), BACKOFF_MIN);
    }

    #[test]
    fn a_long_session_that_breaks_starts_over_and_a_short_one_does_not() {
        let mut backoff = Backoff::new();
        pauses(&mut backoff, 4);
        backoff.failed(STABLE_SESSION);
        assert_eq!(backoff.step(), Duration::from_secs(8));
        backoff.failed(STABLE_SESSION + Duration::from_millis(1));
        assert_eq!(backoff.next_delay(1.0), BACKOFF_MIN);
    }

    #[test]
    fn a_failure_streak_is_logged_once_every_ten() {
        let mut backoff = Backoff::new();
        let logged: Vec<usize> = (1..=25)
            .filter(|_| backoff.failed(Duration::ZERO))
            .collect();
        assert_eq!(logged, [1, 11, 21]);
        backoff.succeeded();
        assert!(backoff.failed(Duration::ZERO), "a new streak is logged");
        assert!(!backoff.failed(Duration::ZERO));
    }

    /// An agent whose stream is `outbound` (`None`: down), deploying with `executor`.
    fn agent(
        dir: &std::path::Path,
        executor: Arc<dyn Executor>,
        outbound: Option<mpsc::Sender<pb::AgentMessage>>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            runtime: AgentRuntime {
                data_dir: dir.to_owned(),
                executor,
                version: "test".to_owned(),
                on_command: None,
                endpoint_override: None,
            },
            journal: Journal::open(dir).unwrap(),
            outbound: Mutex::new(outbound),
            app_locks: Mutex::new(HashMap::new()),
            identity: Mutex::new(Identity {
                name: "agent-1".to_owned(),
                endpoint: "127.0.0.1:1".to_owned(),
                ca_pem: String::new(),
                cert_pem: String::new(),
                key_pem: SecretString::from(String::new()),
                issued_at_unix: 0,
                not_after_unix: 0,
            }),
        })
    }

    fn deploy(deployment_id: &str) -> pb::ControlMessage {
        pb::ControlMessage {
            msg: Some(In::Deploy(pb::DeployCommand {
                deployment_id: deployment_id.to_owned(),
                app: "web".to_owned(),
                image: "registry/web".to_owned(),
                version: "v1".to_owned(),
                ..Default::default()
            })),
        }
    }

    fn ack(deployment_id: &str) -> pb::ControlMessage {
        pb::ControlMessage {
            msg: Some(In::Ack(pb::ResultAck {
                deployment_id: deployment_id.to_owned(),
                kind: DEPLOY,
            })),
        }
    }

    /// The next result on the stream, skipping events.
    async fn next_result(rx: &mut mpsc::Receiver<pb::AgentMessage>) -> pb::DeployResult {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a result within 10s")
                .expect("stream open");
            if let Some(Out::Result(result)) = message.msg {
                return result;
            }
        }
    }

    fn results(messages: Vec<pb::AgentMessage>) -> Vec<pb::DeployResult> {
        messages
            .into_iter()
            .filter_map(|m| match m.msg {
                Some(Out::Result(result)) => Some(result),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_deployment_id_runs_once_and_a_resent_command_gets_its_result() {
        let dir = tempfile::tempdir().unwrap();
        let executor = Arc::new(FakeExecutor::new());
        let (tx, mut rx) = mpsc::channel(64);
        let shared = agent(dir.path(), executor.clone(), Some(tx));

        handle(&shared, deploy("d-1"));
        // Delivered again while it runs: the journal says running, nothing starts.
        handle(&shared, deploy("d-1"));
        let first = next_result(&mut rx).await;
        assert!(first.success, "{first:?}");
        assert_eq!((first.deployment_id.as_str(), first.kind), ("d-1", DEPLOY));

        // Delivered again once it ran (a control plane that lost the result): the same
        // result, from the journal.
        handle(&shared, deploy("d-1"));
        assert_eq!(next_result(&mut rx).await, first);
        assert_eq!(executor.deploy_count(), 1);

        // Even after an agent restart.
        let (tx, mut rx) = mpsc::channel(64);
        let restarted = agent(dir.path(), executor.clone(), Some(tx));
        handle(&restarted, deploy("d-1"));
        assert_eq!(next_result(&mut rx).await, first);
        assert_eq!(executor.deploy_count(), 1);
    }

    #[tokio::test]
    async fn results_survive_a_restart_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let executor = Arc::new(FakeExecutor::new());
        // The stream is down: the results can only go to the journal.
        let shared = agent(dir.path(), executor.clone(), None);
        handle(&shared, deploy("d-1"));
        handle(&shared, deploy("d-2"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while shared.journal.unacked().unwrap().len() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "results journaled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // A new process on the same directory replays both on its first stream.
        let (tx, _rx) = mpsc::channel(64);
        let restarted = agent(dir.path(), executor.clone(), Some(tx));
        settle_interrupted(&restarted.journal, executor.as_ref())
            .await
            .unwrap();
        let mut replayed: Vec<_> = results(replay(&restarted.journal).unwrap())
            .into_iter()
            .map(|r| (r.deployment_id, r.kind, r.success))
            .collect();
        replayed.sort();
        assert_eq!(
            replayed,
            [("d-1".into(), DEPLOY, true), ("d-2".into(), DEPLOY, true)]
        );

        // An acknowledged result is not replayed again; an ack of nothing is harmless. Acks
        // are journaled off the stream's task: wait for them.
        handle(&restarted, ack("d-9"));
        handle(&restarted, ack("d-1"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left: Vec<_> = results(replay(&restarted.journal).unwrap())
                .into_iter()
                .map(|r| r.deployment_id)
                .collect();
            if left == ["d-2"] {
                break;
            }
            assert!(left == ["d-1", "d-2"] || left == ["d-2", "d-1"], "{left:?}");
            assert!(tokio::time::Instant::now() < deadline, "ack journaled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(executor.deploy_count(), 2);
    }

    #[tokio::test]
    async fn a_command_interrupted_by_a_restart_is_reported_failed_not_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        // The process died after journaling the start.
        assert_eq!(journal.begin("d-1", DEPLOY, "web").unwrap(), Begin::Run);

        let journal = Journal::open(dir.path()).unwrap();
        settle_interrupted(&journal, &FakeExecutor::new())
            .await
            .unwrap();
        assert!(journal.unfinished().unwrap().is_empty());
        let failed = StoredResult {
            success: false,
            container_id: String::new(),
            error: "the agent restarted while running this command".to_owned(),
            rolled_back: false,
        };
        assert_eq!(
            journal.begin("d-1", DEPLOY, "web").unwrap(),
            Begin::Done(failed.clone())
        );
        assert_eq!(
            results(replay(&journal).unwrap()),
            [pb::DeployResult {
                deployment_id: "d-1".to_owned(),
                kind: DEPLOY,
                success: false,
                container_id: String::new(),
                error: failed.error,
                rolled_back: false,
            }]
        );
    }

    #[test]
    fn commands_become_specs_with_the_documented_defaults() {
        let spec = spec_from(pb::DeployCommand {
            deployment_id: "d-1".to_owned(),
            app: "web".to_owned(),
            env: [("KEY".to_owned(), "value".to_owned())].into(),
            ports: vec![pb::PortMapping {
                host: 8080,
                container: 80,
                protocol: String::new(),
            }],
            registry: Some(pb::RegistryCredentials {
                server: "r".to_owned(),
                username: String::new(),
                password: "ignored".to_owned(),
            }),
            health_check: Some(pb::HealthCheckSpec {
                kind: "http".to_owned(),
                port: 80,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            spec.health_check,
            HealthCheck::Http {
                port: 80,
                path: "/".to_owned(),
                timeout: Duration::from_secs(60),
            }
        );
        assert_eq!(spec.ports[0].protocol, "tcp");
        assert_eq!(spec.restart_policy, "unless-stopped");
        assert!(spec.registry_auth.is_none(), "no username, no login");
        assert_eq!(format!("{spec:?}").matches("value").count(), 0);
        let default = spec_from(pb::DeployCommand {
            health_check: Some(pb::HealthCheckSpec {
                grace_seconds: 3,
                timeout_seconds: 20,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            default.health_check,
            HealthCheck::Default {
                timeout: Duration::from_secs(20),
                grace: Duration::from_secs(3),
            }
        );
    }

    /// Counts how many deploys run at once, per application and in all.
    #[derive(Default)]
    struct Overlap {
        now: std::sync::Mutex<HashMap<String, usize>>,
        most_per_app: std::sync::Mutex<HashMap<String, usize>>,
        total_now: std::sync::atomic::AtomicUsize,
        most_total: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Executor for Overlap {
        async fn deploy(
            &self,
            spec: &DeploySpec,
            _events: &crate::executor::EventSink,
        ) -> crate::executor::DeployOutcome {
            use std::sync::atomic::Ordering::SeqCst;
            {
                let mut now = self.now.lock().unwrap();
                let n = now.entry(spec.app.clone()).or_default();
                *n += 1;
                let mut most = self.most_per_app.lock().unwrap();
                let m = most.entry(spec.app.clone()).or_default();
                *m = (*m).max(*n);
            }
            let total = self.total_now.fetch_add(1, SeqCst) + 1;
            self.most_total.fetch_max(total, SeqCst);
            tokio::time::sleep(Duration::from_millis(150)).await;
            self.total_now.fetch_sub(1, SeqCst);
            *self.now.lock().unwrap().get_mut(&spec.app).unwrap() -= 1;
            crate::executor::DeployOutcome {
                success: true,
                container_id: Some(format!("c-{}", spec.deployment_id)),
                error: None,
                rolled_back: false,
            }
        }

        async fn commit(&self, _app: &str, _id: &str, _events: &crate::executor::EventSink) {}

        async fn rollback(
            &self,
            _app: &str,
            _id: &str,
            _events: &crate::executor::EventSink,
        ) -> crate::executor::DeployOutcome {
            unreachable!("no rollback in this test")
        }

        async fn runtime_version(&self) -> String {
            "overlap".into()
        }
    }

    #[tokio::test]
    async fn two_commands_of_one_app_never_run_at_once_but_other_apps_do() {
        let dir = tempfile::tempdir().unwrap();
        let executor = Arc::new(Overlap::default());
        let (tx, mut rx) = mpsc::channel(64);
        let shared = agent(dir.path(), executor.clone(), Some(tx));
        // As after a reconnect: three commands arrive together, two of them for `web`.
        let command = |id: &str, app: &str| pb::ControlMessage {
            msg: Some(In::Deploy(pb::DeployCommand {
                deployment_id: id.to_owned(),
                app: app.to_owned(),
                image: "registry/x".to_owned(),
                version: "v1".to_owned(),
                ..Default::default()
            })),
        };
        handle(&shared, command("d-web-1", "web"));
        handle(&shared, command("d-web-2", "web"));
        handle(&shared, command("d-api-1", "api"));
        for _ in 0..3 {
            assert!(next_result(&mut rx).await.success);
        }
        assert_eq!(
            executor.most_per_app.lock().unwrap()["web"],
            1,
            "web ran twice at once"
        );
        assert_eq!(
            executor
                .most_total
                .load(std::sync::atomic::Ordering::SeqCst),
            2,
            "another application is not held back"
        );
    }
}
