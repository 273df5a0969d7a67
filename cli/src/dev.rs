//! `berth dev`: the all-in-one node — control plane with embedded SQLite and a
//! generated PKI under one data directory. A second start reuses everything.
//!
//! The first admin key is written to `<data-dir>/admin.token` (0600) and never printed, so
//! the node's output can be kept as a log without holding a credential.

use std::net::SocketAddr;
use std::path::PathBuf;

use berth_control_plane::node::{self, MasterKeySource, NodeConfig};

/// `berth dev`'s options: the listen options have the names and environment variables of
/// `berth-control-plane`'s and `berth-webhook`'s, so a setup moves from one to the other as
/// it is. `berth dev` takes none of the client options (`--addr`, `--token`, `-o`).
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Directory for the database, PKI, master key and admin key.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = ".berth")]
    pub data_dir: PathBuf,
    /// Address of the admin gRPC API (TLS).
    #[arg(long, alias = "grpc-listen", env = "BERTH_LISTEN", default_value = node::DEFAULT_GRPC_ADDR)]
    pub listen: SocketAddr,
    /// Public base URL of the webhook shim, shown by `berth app show`.
    #[arg(long, env = "BERTH_WEBHOOK_PUBLIC_URL")]
    pub webhook_public_url: Option<String>,
    /// Address of the agent API (mTLS).
    #[arg(long, env = "BERTH_AGENT_LISTEN", default_value = node::DEFAULT_AGENT_ADDR)]
    pub agent_listen: SocketAddr,
    /// host:port agents are told to dial (defaults to the agent listen address).
    #[arg(long, env = "BERTH_AGENT_ENDPOINT")]
    pub agent_endpoint: Option<String>,
    /// Lifetime of agent certificates in seconds (agents renew at two thirds).
    #[arg(long, env = "BERTH_AGENT_CERT_TTL", default_value_t = 30 * 86400)]
    pub agent_cert_ttl: u64,
    /// After a restart, seconds to wait for agents to report unfinished deployments.
    #[arg(long, env = "BERTH_RECONCILE_TIMEOUT", default_value_t = 120)]
    pub reconcile_timeout: u64,
    /// Do not run the local agent (no Docker on this machine).
    #[arg(
        long,
        env = "BERTH_DEV_NO_AGENT",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub no_agent: bool,
    /// Address of the webhook shim for CI callers (HTTP) [default: 127.0.0.1:7480, or a
    /// free port when that one is taken]; `berth-webhook --listen`.
    #[arg(long, env = "BERTH_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,
    /// The shim serves the deprecated seed route POST /deploy (registered applications only,
    /// each with its own token); `berth-webhook --enable-legacy-deploy`.
    #[arg(
        long,
        env = "BERTH_WEBHOOK_ENABLE_LEGACY_DEPLOY",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub enable_legacy_deploy: bool,
    #[command(flatten)]
    pub registry: node::RegistrySecretArgs,
    #[command(flatten)]
    pub acme: node::AcmeArgs,
    #[command(flatten)]
    pub notify: node::NotifyArgs,
    /// HTTP listener of the host proxy, for domains (and ACME HTTP-01); "none" disables it.
    #[arg(long, env = "BERTH_PROXY_HTTP_LISTEN", default_value = "0.0.0.0:80", value_parser = listen_addr)]
    pub proxy_http_listen: Listen,
    /// HTTPS listener of the host proxy, for domains with a certificate; "none" disables it.
    #[arg(long, env = "BERTH_PROXY_HTTPS_LISTEN", default_value = "0.0.0.0:443", value_parser = listen_addr)]
    pub proxy_https_listen: Listen,
    /// Run the local agent without the host proxy: containers publish their host ports
    /// themselves, and a deploy has a short gap while the ports change hands.
    #[arg(
        long,
        env = "BERTH_DEV_NO_PROXY",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub no_proxy: bool,
}

/// A listen address, or none.
#[derive(Clone, Copy, Debug)]
pub struct Listen(pub Option<SocketAddr>);

fn listen_addr(text: &str) -> Result<Listen, String> {
    if text == "none" {
        return Ok(Listen(None));
    }
    text.parse()
        .map(|addr| Listen(Some(addr)))
        .map_err(|e| format!("{e}: expected host:port (e.g. 0.0.0.0:80) or none"))
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // bollard logs request bodies (with the container env) at debug: never below info.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into())
                .add_directive("bollard=info".parse().expect("valid directive"))
                .add_directive("hyper=info".parse().expect("valid directive")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a journal or a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let registry_secret = args.registry.load()?;
    let acme = args.acme.load()?;
    std::fs::create_dir_all(&args.data_dir)?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let webhook_listener =
        berth_control_plane::webhook::bind(args.webhook_listen, "--webhook-listen").await?;
    let webhook_url = format!("http://{}", webhook_listener.local_addr()?);
    let webhook_public_url = args
        .webhook_public_url
        .clone()
        .unwrap_or_else(|| webhook_url.clone());
    let node = node::start(NodeConfig {
        data_dir: data_dir.clone(),
        grpc_listen: args.listen,
        server_names: vec!["localhost".to_string(), "127.0.0.1".to_string()],
        master_key: MasterKeySource::from_vars(|k| std::env::var(k).ok()),
        // Stored (for `berth app show`) when chosen; the default matches the default address.
        webhook_public_url: (args.webhook_public_url.is_some() || args.webhook_listen.is_some())
            .then(|| webhook_public_url.clone()),
        agent_listen: args.agent_listen,
        agent_endpoint: args.agent_endpoint,
        fleet: {
            let mut fleet = berth_control_plane::fleet::FleetConfig::default();
            fleet.rollout.reconcile_timeout =
                std::time::Duration::from_secs(args.reconcile_timeout);
            fleet.cert_ttl = std::time::Duration::from_secs(args.agent_cert_ttl);
            fleet.registry_secret = registry_secret;
            fleet
        },
        acme,
        notify_destinations: args.notify.policy(),
    })
    .await?;

    // The host proxy runs in this process (production runs it as its own unit): it owns the
    // local agent's published ports and domains, so deploys switch routes with no gap.
    let proxy = if args.no_agent || args.no_proxy {
        None
    } else {
        let config = berth_agent::proxy::ProxyConfig {
            state_dir: data_dir.join("proxy"),
            socket_path: data_dir.join("proxy.sock"),
            http_listen: args.proxy_http_listen.0,
            https_listen: args.proxy_https_listen.0,
            port_bind_ip: std::net::IpAddr::from([0, 0, 0, 0]),
            socket_group_access: false,
        };
        let proxy = berth_agent::proxy::start(config).await.map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\n(the host proxy listens on 80/443 by default: pass --proxy-http-listen/--proxy-https-listen ADDR|none, or --no-proxy)"
            )
        })?;
        Some(proxy)
    };
    let addr = format!("https://{}", node.grpc_addr);
    println!("berth dev node running; data in {}", data_dir.display());
    println!();
    println!("  admin api:       {addr}");
    println!("  ca fingerprint:  {}", node.ca_fingerprint);
    println!("  webhook:         {webhook_url}/webhook/deploy");
    if let Some(proxy) = &proxy {
        let show = |a: Option<SocketAddr>| a.map_or("off".to_owned(), |a| a.to_string());
        println!(
            "  host proxy:      http {}, https {} (domains; owns published ports)",
            show(proxy.http_addr()),
            show(proxy.https_addr())
        );
    }
    match (&node.initial_admin_key, &node.admin_token_file) {
        (Some(_), Some(path)) => println!(
            "  admin api key:   new, written to {} (mode 0600)",
            path.display()
        ),
        (None, Some(path)) => println!("  admin api key:   {}", path.display()),
        _ => println!("  admin api key:   created on first start (admin.token was removed)"),
    }
    println!();
    println!("In another shell:");
    println!();
    println!("  export BERTH_ADDR={addr}");
    println!("  export BERTH_CA_CERT={}", node.ca_cert_path.display());
    if let Some(path) = &node.admin_token_file {
        println!("  export BERTH_TOKEN=$(cat {})", path.display());
    }
    println!();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The node's own webhook shim, with its own narrow key (role webhook), over the admin API.
    let mut shim_config = berth_control_plane::webhook::ShimConfig::new(
        addr.clone(),
        Some(std::fs::read_to_string(&node.ca_cert_path)?),
        berth_control_plane::webhook::dev_api_key(&node.service, &data_dir).await?,
    );
    shim_config.public_url = Some(webhook_public_url);
    shim_config.enable_legacy_deploy = args.enable_legacy_deploy;
    let mut shim_stop = stop_rx.clone();
    let local_agent = if args.no_agent {
        None
    } else {
        Some(LocalAgent {
            proxy_socket: proxy.as_ref().map(|p| p.socket_path().to_path_buf()),
            data_dir: data_dir.join("agent"),
            admin_url: addr.clone(),
            endpoint: node.agent_addr.to_string(),
            ca_fingerprint: node.ca_fingerprint.clone(),
            fleet: node.fleet.clone(),
        })
    };
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(node.serve(stopped(stop_rx.clone())));
    let agent = local_agent.map(|a| tokio::spawn(a.run(stopped(stop_rx.clone()))));
    let shim = tokio::spawn(berth_control_plane::webhook::serve(
        shim_config,
        webhook_listener,
        async move {
            let _ = shim_stop.wait_for(|s| *s).await;
        },
    ));
    shutdown_signal().await;
    // Everything stops together; the node ends the agent streams itself and closes its
    // store last, once every stream has recorded its disconnect.
    let _ = stop_tx.send(true);
    let others = async {
        if let Some(agent) = agent {
            let _ = agent.await;
        }
        let _ = shim.await;
    };
    if tokio::time::timeout(std::time::Duration::from_secs(20), others)
        .await
        .is_err()
    {
        tracing::warn!("the local agent or the shim did not stop in time");
    }
    let served = server.await?;
    if let Some(proxy) = proxy {
        proxy.shutdown().await;
    }
    served
}

/// The node's own agent, on the local Docker socket, enrolled through the same path as any
/// other agent (token, pinned CA, CSR, mTLS).
struct LocalAgent {
    data_dir: PathBuf,
    /// The in-process host proxy's control socket, if it runs.
    proxy_socket: Option<PathBuf>,
    admin_url: String,
    endpoint: String,
    ca_fingerprint: String,
    fleet: berth_control_plane::fleet::Fleet,
}

impl LocalAgent {
    async fn run(self, stop: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Err(e) = self.try_run(stop).await {
            tracing::error!(error = %e, "local agent stopped");
        }
    }

    async fn try_run(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let executor = match berth_agent::docker::DockerExecutor::connect().await {
            Ok(executor) => {
                let executor = executor.with_scope("local");
                let executor = match &self.proxy_socket {
                    Some(socket) => {
                        let executor = executor.with_proxy(socket);
                        if let Err(error) = executor.repair().await {
                            tracing::warn!(%error, "could not check the host proxy's routes against the containers");
                        }
                        executor
                    }
                    None => executor,
                };
                std::sync::Arc::new(executor)
            }
            Err(e) => {
                tracing::warn!(error = %e, "local agent disabled: cannot reach the docker engine");
                return Ok(());
            }
        };
        let version = env!("CARGO_PKG_VERSION").to_string();
        if !berth_agent::Identity::exists(&self.data_dir) {
            let labels = [("host".to_string(), "local".to_string())]
                .into_iter()
                .collect();
            let (token, _) = self
                .fleet
                .create_enrollment_token(
                    &berth_control_plane::service::Actor::system(),
                    "local",
                    &labels,
                    Some(300),
                )
                .await?;
            let identity = berth_agent::enroll::enroll(
                &self.admin_url,
                &token,
                &self.ca_fingerprint,
                &version,
            )
            .await?;
            identity.save(&self.data_dir)?;
            tracing::info!(agent = %identity.name, "local agent enrolled");
        }
        let runtime = berth_agent::AgentRuntime {
            data_dir: self.data_dir,
            executor,
            version,
            on_command: None,
            endpoint_override: Some(self.endpoint),
        };
        berth_agent::run(runtime, stop).await
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
