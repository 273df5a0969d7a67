//! A running control plane: opens the store, loads the master key and the PKI, bootstraps
//! the first admin key, and serves the admin gRPC API over TLS (with health and reflection).
//!
//! At stop, the order is: refuse new agent streams and end the live ones, let both servers
//! drain, wait for every stream handler to record its disconnect, stop the background tasks,
//! and only then close the store. Connected agents never hold the stop up.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret as _, SecretString};
use tokio::net::TcpListener;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1 as pb;
use tonic::transport::Certificate;

use crate::acme::{AcmeConfig, CertificateAuthority, LETS_ENCRYPT_DIRECTORY};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::fleet::webhook::RegistrySecret;
use crate::fleet::{Fleet, FleetConfig};
use crate::grpc::{
    AdminServices, AgentAdminApi, AgentApi, AgentEnrollmentApi, DeployApi, DomainApi, ImportApi,
    WebhookApi, MAX_IMPORT_REQUEST_BYTES,
};
use crate::notify::DestinationPolicy;
use crate::pki::{write_new_private, write_private, Pki};
use crate::service::applications::WEBHOOK_URL_SETTING;
use crate::service::Service;
use crate::store::Store;

pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:7443";
pub const DEFAULT_AGENT_ADDR: &str = "127.0.0.1:7444";
/// Streams silent for this long are dropped (agents heartbeat every 10 s).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(45);
/// At stop, how long agent stream handlers get to record their disconnect.
const STREAM_DRAIN: Duration = Duration::from_secs(10);
/// A client that has not finished its TLS handshake by then is disconnected (a socket that
/// never speaks must not hold a file descriptor).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DATABASE_FILE: &str = "berth.db";
const MASTER_KEY_FILE: &str = "master.key";
/// Where a node leaves its first admin key (mode 0600), never printed or logged.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Where the master key comes from, in priority order.
pub enum MasterKeySource {
    /// `BERTH_MASTER_KEY`: the key itself (hex or base64).
    Value(SecretString),
    /// `BERTH_MASTER_KEY_FILE`: a file holding it.
    File(PathBuf),
    /// `<data-dir>/master.key`, created 0600 on first start.
    DataDir,
}

impl MasterKeySource {
    /// Reads `BERTH_MASTER_KEY` / `BERTH_MASTER_KEY_FILE` from a variable lookup (the process
    /// env in binaries, a map in tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        if let Some(value) = get("BERTH_MASTER_KEY").filter(|v| !v.is_empty()) {
            MasterKeySource::Value(SecretString::from(value))
        } else if let Some(path) = get("BERTH_MASTER_KEY_FILE").filter(|v| !v.is_empty()) {
            MasterKeySource::File(PathBuf::from(path))
        } else {
            MasterKeySource::DataDir
        }
    }
}

/// The registry notification secret as `berth-control-plane` and `berth dev` take it.
/// Unset: every registry notification is refused. Set: it must be at least
/// [`RegistrySecret::MIN_CHARS`] characters, from whichever source, or the node refuses to
/// start.
#[derive(clap::Args, Default)]
pub struct RegistrySecretArgs {
    /// Enables registry notifications (POST /webhook/registry on the shim): the secret
    /// registries send as `Authorization: Bearer <secret>`, at least 16 characters. Command
    /// lines are visible to other users of this machine: prefer the environment variable or
    /// --registry-secret-file.
    #[arg(long, env = "BERTH_REGISTRY_NOTIFY_SECRET", hide_env_values = true)]
    pub registry_secret: Option<String>,
    /// File holding the registry notification secret (surrounding whitespace is ignored).
    #[arg(
        long,
        env = "BERTH_REGISTRY_NOTIFY_SECRET_FILE",
        value_name = "PATH",
        conflicts_with = "registry_secret"
    )]
    pub registry_secret_file: Option<PathBuf>,
}

impl RegistrySecretArgs {
    /// The configured secret; an error names the source of an empty, short or unreadable one.
    pub fn load(&self) -> anyhow::Result<Option<RegistrySecret>> {
        let (secret, source) = match (&self.registry_secret, &self.registry_secret_file) {
            (Some(value), _) => (
                SecretString::from(value.clone()),
                "--registry-secret (BERTH_REGISTRY_NOTIFY_SECRET)".to_string(),
            ),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot read the registry secret file {}: {e}",
                        path.display()
                    )
                })?;
                (SecretString::from(text), format!("{}", path.display()))
            }
            (None, None) => return Ok(None),
        };
        RegistrySecret::new(&secret)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{source}: {e}"))
    }
}

/// Where outgoing notifications may be delivered, as `berth-control-plane` and `berth dev`
/// take it.
#[derive(clap::Args, Debug, Default)]
pub struct NotifyArgs {
    /// Let notification webhooks deliver to loopback, link-local and private addresses
    /// (RFC 1918, fc00::/7, 100.64.0.0/10, …), e.g. a receiver on this host or the internal
    /// network. Off: such destinations are refused before any connection (the check is on the
    /// resolved address).
    #[arg(
        long,
        env = "BERTH_NOTIFY_ALLOW_PRIVATE",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub notify_allow_private: bool,
}

impl NotifyArgs {
    pub fn policy(&self) -> DestinationPolicy {
        if self.notify_allow_private {
            DestinationPolicy::AllowPrivate
        } else {
            DestinationPolicy::PublicOnly
        }
    }
}

/// Where certificates for domains added with `--acme` come from, as `berth-control-plane`
/// and `berth dev` take it.
#[derive(clap::Args, Debug)]
pub struct AcmeArgs {
    /// ACME directory URL of the CA that issues certificates for domains added with --acme.
    #[arg(long, env = "BERTH_ACME_DIRECTORY", default_value = LETS_ENCRYPT_DIRECTORY)]
    pub acme_directory: String,
    /// Contact e-mail of the ACME account (the CA's expiry notices go there).
    #[arg(long, env = "BERTH_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// PEM root trusted for the ACME directory's TLS besides the system's (a test CA such as
    /// Pebble).
    #[arg(long, env = "BERTH_ACME_CA_FILE", value_name = "PEM")]
    pub acme_ca_file: Option<PathBuf>,
}

impl AcmeArgs {
    /// The ACME configuration; an unreadable CA file or a bad URL refuses the start.
    pub fn load(&self) -> anyhow::Result<AcmeConfig> {
        let url: http::Uri = self.acme_directory.parse().map_err(|_| {
            anyhow::anyhow!(
                "--acme-directory {:?} is not a URL: give the CA's ACME directory, e.g. {LETS_ENCRYPT_DIRECTORY}",
                self.acme_directory
            )
        })?;
        if !matches!(url.scheme_str(), Some("https" | "http")) || url.host().is_none() {
            anyhow::bail!(
                "--acme-directory {:?} must be an https:// URL of the CA's ACME directory",
                self.acme_directory
            );
        }
        let extra_root_pem = match &self.acme_ca_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read the --acme-ca-file {}: {e}", path.display())
            })?),
            None => None,
        };
        Ok(AcmeConfig {
            directory_url: self.acme_directory.clone(),
            email: self.acme_email.clone().filter(|e| !e.is_empty()),
            extra_root_pem,
            ..AcmeConfig::default()
        })
    }
}

impl std::fmt::Debug for RegistrySecretArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySecretArgs")
            .field(
                "registry_secret",
                &self.registry_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("registry_secret_file", &self.registry_secret_file)
            .finish()
    }
}

pub struct NodeConfig {
    /// SQLite file, PKI, and (by default) the master key live here.
    pub data_dir: PathBuf,
    /// Admin gRPC API (TLS). Port 0 picks a free port.
    pub grpc_listen: SocketAddr,
    /// Names and addresses the server certificate is valid for.
    pub server_names: Vec<String>,
    pub master_key: MasterKeySource,
    /// Public base URL of the webhook shim, shown in `berth app show`.
    pub webhook_public_url: Option<String>,
    /// Agent API (mTLS). Port 0 picks a free port.
    pub agent_listen: SocketAddr,
    /// host:port agents are told to dial; defaults to the agent listen address.
    pub agent_endpoint: Option<String>,
    /// Certificate lifetime, rollout and reconcile timeouts.
    pub fleet: FleetConfig,
    /// The ACME CA of domains added with `--acme`.
    pub acme: AcmeConfig,
    /// Which addresses outgoing notifications may be delivered to.
    pub notify_destinations: DestinationPolicy,
}

impl NodeConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            data_dir: data_dir.into(),
            grpc_listen: DEFAULT_GRPC_ADDR.parse().expect("valid default"),
            server_names: vec!["localhost".to_string(), "127.0.0.1".to_string()],
            master_key: MasterKeySource::DataDir,
            webhook_public_url: None,
            agent_listen: DEFAULT_AGENT_ADDR.parse().expect("valid default"),
            agent_endpoint: None,
            fleet: FleetConfig::default(),
            acme: AcmeConfig::default(),
            notify_destinations: DestinationPolicy::PublicOnly,
        }
    }
}

/// A started node, not yet serving.
pub struct Node {
    pub grpc_addr: SocketAddr,
    pub agent_addr: SocketAddr,
    pub fleet: Fleet,
    pub ca_cert_path: PathBuf,
    pub ca_fingerprint: String,
    /// The first admin key, on the very first start only (also in [`Node::admin_token_file`]).
    pub initial_admin_key: Option<SecretString>,
    /// Where the first admin key was written (`<data-dir>/admin.token`), while it is there.
    pub admin_token_file: Option<PathBuf>,
    pub service: Service,
    /// The data directory (backups read its PKI).
    data_dir: PathBuf,
    /// Issues the certificates of domains added with `--acme`.
    acme: Arc<dyn CertificateAuthority>,
    /// Which addresses the notifier may deliver to.
    notify_destinations: DestinationPolicy,
    listener: TcpListener,
    agent_listener: TcpListener,
    pki: Arc<Pki>,
}

/// Prepares a node: everything that can fail at start fails here, before anything listens.
pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
    create_private_dir(&config.data_dir)?;
    let store = Store::open(&config.data_dir.join(DATABASE_FILE)).await?;
    let key = load_master_key(&config, &store).await?;
    let service = Service::new(store, key).await?;
    let pki = Pki::load_or_create(&config.data_dir, &config.server_names)?;
    if let Some(url) = &config.webhook_public_url {
        // Written only when it changes: a restart with the same config writes nothing.
        if service
            .store()
            .setting(WEBHOOK_URL_SETTING)
            .await?
            .as_deref()
            != Some(url.as_str())
        {
            service
                .store()
                .put_setting(WEBHOOK_URL_SETTING, url)
                .await?;
        }
    }

    // The first admin key goes to a private file, never to the output: a service's output
    // ends up in a journal that more people read than the data directory.
    let token_path = config.data_dir.join(ADMIN_TOKEN_FILE);
    let initial_admin_key = match service.bootstrap_admin_key().await? {
        Some(created) => {
            write_private(&token_path, created.key.expose_secret())?;
            tracing::info!(path = %token_path.display(), "created the first admin api key");
            Some(created.key)
        }
        None => None,
    };
    let admin_token_file = token_path.exists().then_some(token_path);

    let listener = incoming::listen(config.grpc_listen)
        .map_err(|e| listen_error(config.grpc_listen, "--listen", &e))?;
    let agent_listener = incoming::listen(config.agent_listen)
        .map_err(|e| listen_error(config.agent_listen, "--agent-listen", &e))?;
    let agent_addr = agent_listener.local_addr()?;
    let pki = Arc::new(pki);
    let mut fleet_config = config.fleet.clone();
    fleet_config.agent_endpoint = config
        .agent_endpoint
        .clone()
        .unwrap_or_else(|| agent_addr.to_string());
    let fleet = Fleet::new(service.clone(), pki.clone(), fleet_config);
    let acme = Arc::new(crate::acme::client::AcmeClient::new(
        config.acme.clone(),
        service.clone(),
    )?);
    Ok(Node {
        data_dir: config.data_dir.clone(),
        acme,
        notify_destinations: config.notify_destinations,
        grpc_addr: listener.local_addr()?,
        agent_addr,
        fleet,
        agent_listener,
        ca_cert_path: pki.paths.ca_cert.clone(),
        ca_fingerprint: pki.ca_fingerprint.clone(),
        initial_admin_key,
        admin_token_file,
        service,
        listener,
        pki,
    })
}

impl Node {
    /// Serves the admin API and the agent API until `shutdown` resolves, then drains and
    /// closes the store. Deployments a previous run left unfinished are reconciled first.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        // Outgoing notifications: subscribed before reconcile so no finished deployment is
        // missed; one notifier per node, its queue is the webhook_deliveries table.
        let notifier = crate::notify::Notifier::new(self.service.clone(), self.notify_destinations);
        self.fleet.on_finished(notifier.finished_hook());
        let notifier_task = tokio::spawn(notifier.run(stopped(stop_rx.clone())));
        self.fleet.reconcile().await?;
        // A key rotation a previous run left unfinished (a crash, a stop) goes on.
        self.service.resume_unfinished_rotation().await?;
        // Auto-sync of external secret providers: its own tasks, bounded in time.
        let auto_sync = tokio::spawn(crate::service::providers::auto_sync::run(
            self.service.clone(),
            stopped(stop_rx.clone()),
        ));
        // ACME orders (first issuance, retries, renewals) of domains added with --acme.
        let acme_orders = tokio::spawn(crate::acme::orders::run(
            self.fleet.clone(),
            self.acme.clone(),
            stopped(stop_rx.clone()),
        ));
        let reaper = {
            let fleet = self.fleet.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                for n in 0u64.. {
                    tick.tick().await;
                    // Refusal counts are written a few seconds after their window closes.
                    fleet.flush_refusals(false).await;
                    if n % 3 == 0 {
                        fleet.reap_silent(HEARTBEAT_TIMEOUT);
                    }
                }
            })
        };
        // The admin port presents the CA with the server certificate, so an enrolling agent
        // can verify it against the pinned CA fingerprint.
        let chain = format!("{}{}", self.pki.server_cert_pem, self.pki.ca_cert_pem);
        let agent_tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&chain, &self.pki.server_key_pem))
            .client_ca_root(Certificate::from_pem(&self.pki.ca_cert_pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        let mut agent_served = reflection::Served::default();
        let agent_router = Server::builder()
            .tls_config(agent_tls)?
            // Dead peers behind NAT are found by keepalive, not only by missing heartbeats.
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(
                agent_served.named(pb::agent_service_server::AgentServiceServer::new(
                    AgentApi::new(self.fleet.clone()),
                )),
            );
        let (reflection_v1, reflection_v1alpha) = agent_served.reflection()?;
        let agent_server = agent_router
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(
                incoming::capped(self.agent_listener, incoming::MAX_CONNECTIONS, "agent"),
                stopped(stop_rx.clone()),
            );
        tracing::info!(addr = %self.agent_addr, "agent api listening (mtls)");
        let agent_task = tokio::spawn(agent_server);
        // Agent streams never end on their own: at stop they are ended here, so that the
        // agent server can drain, and their handlers finish before the store closes.
        let streams_closed = {
            let fleet = self.fleet.clone();
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move {
                stop.await;
                fleet.close_streams(STREAM_DRAIN).await;
            })
        };
        // A follow stream of the audit trail ends when the node stops: an open one would
        // otherwise hold the admin server's graceful shutdown until its client leaves.
        let audit = pb::audit_service_server::AuditServiceServer::new(crate::grpc::AuditApi::new(
            self.service.clone(),
            stop_rx.clone(),
        ));
        let shutdown = stopped(stop_rx);
        let (health_reporter, health) = tonic_health::server::health_reporter();
        let admin = AdminServices::new(self.service.clone());
        health_reporter.set_serving::<berth_proto::v1::secret_service_server::SecretServiceServer<crate::grpc::SecretApi>>().await;
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&chain, &self.pki.server_key_pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT);

        tracing::info!(addr = %self.grpc_addr, ca_fingerprint = %self.ca_fingerprint, "admin api listening");
        let mut served = reflection::Served::default();
        let router = Server::builder()
            .tls_config(tls)?
            // A stuck client must not hold a connection slot forever.
            .timeout(std::time::Duration::from_secs(60))
            // Peers that vanished are found by keepalive; no connection lives forever (a
            // watch stream reconnects, as gRPC clients do after GOAWAY).
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .max_connection_age(Duration::from_secs(3600))
            .add_service(served.named(health))
            .add_service(served.named(admin.secrets))
            .add_service(served.named(admin.env))
            .add_service(served.named(admin.applications))
            .add_service(served.named(admin.api_keys))
            .add_service(served.named(admin.repositories))
            .add_service(served.named(admin.allowlist))
            .add_service(served.named(admin.providers))
            .add_service(served.named(admin.keys))
            .add_service(served.named(audit))
            .add_service(
                served.named(pb::backup_service_server::BackupServiceServer::new(
                    crate::grpc::BackupApi::new(self.service.clone(), self.data_dir.clone()),
                )),
            )
            .add_service(
                served.named(pb::deploy_service_server::DeployServiceServer::new(
                    DeployApi::new(self.fleet.clone()),
                )),
            )
            .add_service(
                served.named(pb::domain_service_server::DomainServiceServer::new(
                    DomainApi::new(self.fleet.clone()),
                )),
            )
            // One import carries a whole V1 database.
            .add_service(
                served.named(
                    pb::import_service_server::ImportServiceServer::new(ImportApi::new(
                        self.fleet.clone(),
                    ))
                    .max_decoding_message_size(MAX_IMPORT_REQUEST_BYTES),
                ),
            )
            .add_service(served.named(
                pb::agent_admin_service_server::AgentAdminServiceServer::new(AgentAdminApi::new(
                    self.fleet.clone(),
                )),
            ))
            .add_service(
                served.named(pb::agent_enrollment_server::AgentEnrollmentServer::new(
                    AgentEnrollmentApi::new(self.fleet.clone()),
                )),
            )
            .add_service(
                served.named(pb::webhook_service_server::WebhookServiceServer::new(
                    WebhookApi::new(self.fleet.clone()),
                )),
            )
            .add_service(served.named(
                pb::notification_service_server::NotificationServiceServer::new(
                    crate::grpc::NotifyApi::new(self.service.clone()),
                ),
            ));
        let (reflection_v1, reflection_v1alpha) = served.reflection()?;
        router
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(
                incoming::capped(self.listener, incoming::MAX_CONNECTIONS, "admin"),
                shutdown,
            )
            .await?;
        agent_task.await??;
        let _ = streams_closed.await;
        reaper.abort();
        self.fleet.flush_refusals(true).await;
        let _ = auto_sync.await;
        let _ = acme_orders.await;
        let _ = notifier_task.await;
        self.service.stop_rotation().await;
        self.service.store().close().await;
        tracing::info!("control plane stopped");
        Ok(())
    }
}

async fn load_master_key(config: &NodeConfig, store: &Store) -> Result<MasterKey> {
    match &config.master_key {
        MasterKeySource::Value(value) => MasterKey::parse(value.expose_secret()),
        MasterKeySource::File(path) => MasterKey::read_file(path),
        MasterKeySource::DataDir => {
            let path = config.data_dir.join(MASTER_KEY_FILE);
            if path.exists() {
                return MasterKey::read_file(&path);
            }
            let encrypted = store.count_encrypted_rows().await?;
            if encrypted > 0 {
                return Err(Error::FailedPrecondition(format!(
                    "the database holds {encrypted} encrypted values but no master key was given: \
                     set BERTH_MASTER_KEY or BERTH_MASTER_KEY_FILE, or restore {}",
                    path.display()
                )));
            }
            let (key, text) = MasterKey::generate();
            write_new_private(&path, &text)?;
            tracing::info!(path = %path.display(), key_id = key.id(), "created master key; back it up");
            Ok(key)
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::FailedPrecondition(format!(
            "cannot create data directory {}: {e}",
            dir.display()
        ))
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            Error::FailedPrecondition(format!("cannot restrict {}: {e}", dir.display()))
        })?;
    }
    Ok(())
}

mod incoming;
pub mod offline;
mod reflection;

#[cfg(test)]
mod tests;

/// `cannot listen on ADDR: …`; when the address is taken, says what usually holds it (another
/// node started earlier) and how to choose another (`flag`).
pub fn listen_error(addr: SocketAddr, flag: &str, error: &std::io::Error) -> anyhow::Error {
    if error.kind() == std::io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "cannot listen on {addr}: address in use. Another berth node (berth dev or \
             berth-control-plane) may be running already, or another program holds the port: \
             stop it, or pass {flag} with a free address"
        )
    } else {
        anyhow::anyhow!("cannot listen on {addr}: {error}")
    }
}

/// The options of a server's command line that read no environment variable (`--help` and
/// `--version` aside): none, for every server (README, Configuration). Its tests call it.
pub fn options_without_env(command: &clap::Command) -> Vec<String> {
    command
        .get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .filter(|a| a.get_env().is_none())
        .map(|a| a.get_id().to_string())
        .collect()
}
