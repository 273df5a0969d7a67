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
    #[command(subcommand)]
    command: Option<Offline>,
}

/// Maintenance of a stopped control plane's data directory.
#[derive(clap::Subcommand, Debug)]
enum Offline {
    /// Rewrap the key ring under a new root key (BERTH_MASTER_KEY); the control plane must be
    /// stopped. Rows must already be under a ring key (`berth key rotate` does that online).
    RotateRootKey {
        /// Data directory of the stopped control plane.
        #[arg(long, env = "BERTH_DATA_DIR", default_value = "/var/lib/berth")]
        data_dir: PathBuf,
        /// File (mode 0600) with the new root key: 64 hex characters or base64 of 32 bytes.
        /// The current key comes from BERTH_MASTER_KEY, BERTH_MASTER_KEY_FILE or
        /// <data-dir>/master.key (which is then replaced by the new key).
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
    },
    /// Restore a backup archive (`berth backup create`) into a new or empty data directory;
    /// agents reconnect without enrolling again (same CA)
    Restore {
        /// The archive
        file: PathBuf,
        /// The data directory to create (refused if it is not empty)
        #[arg(long)]
        data_dir: PathBuf,
        /// File with the master key of the backed-up node; copied to <data-dir>/master.key.
        /// Without it, BERTH_MASTER_KEY or BERTH_MASTER_KEY_FILE (and start the node with it).
        #[arg(long, value_name = "FILE")]
        master_key_file: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    berth_control_plane::exit::status(run().await)
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a journal or a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Some(Offline::Restore {
        file,
        data_dir,
        master_key_file,
    }) = &args.command
    {
        let key = match master_key_file {
            Some(path) => berth_control_plane::crypto::MasterKey::read_file(path)?,
            None => match MasterKeySource::from_vars(|k| std::env::var(k).ok()) {
                MasterKeySource::DataDir => anyhow::bail!(
                    "restore needs the master key of the backed-up node: --master-key-file, \
                     BERTH_MASTER_KEY or BERTH_MASTER_KEY_FILE"
                ),
                source => node::offline::existing_root_key(data_dir, &source)?,
            },
        };
        let report =
            berth_control_plane::backup::restore(&key, file, data_dir, master_key_file.as_deref())
                .await?;
        println!(
            "restored {} into {} (taken {}): integrity check ok, {} encrypted values open",
            file.display(),
            data_dir.display(),
            report.manifest.created_at,
            report.total_ciphertexts()
        );
        return Ok(());
    }
    if let Some(Offline::RotateRootKey {
        data_dir,
        new_key_file,
    }) = &args.command
    {
        let source = MasterKeySource::from_vars(|k| std::env::var(k).ok());
        let done = node::offline::rotate_root_key(data_dir, &source, new_key_file).await?;
        println!(
            "the key ring ({} keys) is now wrapped under root key {} (was {})",
            done.ring_keys, done.new_id, done.old_id
        );
        if done.replaced_key_file {
            println!(
                "{} now holds the new key",
                data_dir.join("master.key").display()
            );
        } else {
            println!("start the control plane with the new key (BERTH_MASTER_KEY / BERTH_MASTER_KEY_FILE)");
        }
        return Ok(());
    }
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// As the README says: every option of the server reads an environment variable (the
    /// offline maintenance commands aside).
    #[test]
    fn every_option_reads_an_environment_variable() {
        let missing = berth_control_plane::node::options_without_env(&super::Args::command());
        assert!(missing.is_empty(), "without a variable: {missing:?}");
    }
}
