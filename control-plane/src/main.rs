//! `berth-control-plane`: parses config, sets up logging, runs the node until SIGINT/SIGTERM.

// Tells the operator where the first admin key is, and the CA fingerprint.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::PathBuf;

use berth_control_plane::node::{self, MasterKeySource, NodeConfig};
use clap::Parser;

/// The berth control plane: secrets, environments, applications and deployments.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Directory for the database, the PKI and (by default) the master key.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = "/var/lib/berth")]
    data_dir: PathBuf,
    /// Address of the admin gRPC API (TLS).
    #[arg(long, env = "BERTH_LISTEN", default_value = node::DEFAULT_GRPC_ADDR)]
    listen: SocketAddr,
    /// Names and IPs the server certificate covers (comma-separated).
    #[arg(
        long,
        env = "BERTH_SERVER_NAMES",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    server_name: Vec<String>,
    /// Public base URL of the webhook shim, shown by `berth app show`.
    #[arg(long, env = "BERTH_WEBHOOK_PUBLIC_URL")]
    webhook_public_url: Option<String>,
    /// Address of the agent API (mTLS).
    #[arg(long, env = "BERTH_AGENT_LISTEN", default_value = node::DEFAULT_AGENT_ADDR)]
    agent_listen: SocketAddr,
    /// host:port agents dial (defaults to the agent listen address).
    #[arg(long, env = "BERTH_AGENT_ENDPOINT")]
    agent_endpoint: Option<String>,
    /// Lifetime of agent certificates, in seconds (agents renew at two thirds).
    #[arg(long, env = "BERTH_AGENT_CERT_TTL", default_value_t = 30 * 86400)]
    agent_cert_ttl: u64,
    /// After a restart, seconds to wait for agents to report unfinished deployments.
    #[arg(long, env = "BERTH_RECONCILE_TIMEOUT", default_value_t = 120)]
    reconcile_timeout: u64,
    #[command(flatten)]
    registry: node::RegistrySecretArgs,
    #[command(flatten)]
    acme: node::AcmeArgs,
    #[command(flatten)]
    notify: node::NotifyArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut fleet = fleet_config(args.agent_cert_ttl, args.reconcile_timeout);
    fleet.registry_secret = args.registry.load()?;
    let config = NodeConfig {
        data_dir: args.data_dir,
        grpc_listen: args.listen,
        server_names: args.server_name,
        master_key: MasterKeySource::from_vars(|k| std::env::var(k).ok()),
        webhook_public_url: args.webhook_public_url,
        agent_listen: args.agent_listen,
        agent_endpoint: args.agent_endpoint,
        fleet,
        acme: args.acme.load()?,
        notify_destinations: args.notify.policy(),
    };
    let node = node::start(config).await?;
    if let (Some(_), Some(path)) = (&node.initial_admin_key, &node.admin_token_file) {
        // Only where it is: the output of a service is kept in its journal.
        println!(
            "Initial admin API key written to {} (mode 0600): store it safely, then delete the file\n",
            path.display()
        );
    }
    println!("CA fingerprint: {}", node.ca_fingerprint);
    node.serve(shutdown_signal()).await
}

fn fleet_config(cert_ttl: u64, reconcile_timeout: u64) -> berth_control_plane::fleet::FleetConfig {
    let defaults = berth_control_plane::fleet::FleetConfig::default();
    berth_control_plane::fleet::FleetConfig {
        cert_ttl: std::time::Duration::from_secs(cert_ttl),
        rollout: berth_control_plane::fleet::RolloutConfig {
            reconcile_timeout: std::time::Duration::from_secs(reconcile_timeout),
            ..defaults.rollout
        },
        ..defaults
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
}
