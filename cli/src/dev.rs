//! `berth dev`: the all-in-one node — control plane with embedded SQLite and a
//! generated PKI under one data directory. A second start reuses everything.
//!
//! The first admin key is written to `<data-dir>/admin.token` (0600) and never printed, so
//! the node's output can be kept as a log without holding a credential.

use std::net::SocketAddr;
use std::path::PathBuf;

use berth_control_plane::node::{self, MasterKeySource, NodeConfig};

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Directory for the database, PKI, master key and admin key.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = ".berth")]
    pub data_dir: PathBuf,
    /// Address of the admin gRPC API (TLS).
    #[arg(long, default_value = node::DEFAULT_GRPC_ADDR)]
    pub grpc_listen: SocketAddr,
    /// Public base URL of the webhook shim, shown by `berth app show`.
    #[arg(long)]
    pub webhook_public_url: Option<String>,
    /// Address of the agent API (mTLS).
    #[arg(long, default_value = node::DEFAULT_AGENT_ADDR)]
    pub agent_listen: SocketAddr,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    std::fs::create_dir_all(&args.data_dir)?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let node = node::start(NodeConfig {
        data_dir: data_dir.clone(),
        grpc_listen: args.grpc_listen,
        server_names: vec!["localhost".to_string(), "127.0.0.1".to_string()],
        master_key: MasterKeySource::from_vars(|k| std::env::var(k).ok()),
        write_admin_token_file: true,
        webhook_public_url: args.webhook_public_url,
        agent_listen: args.agent_listen,
        agent_endpoint: None,
        fleet: Default::default(),
    })
    .await?;

    let addr = format!("https://{}", node.grpc_addr);
    println!("berth dev node running; data in {}", data_dir.display());
    println!();
    println!("  admin api:       {addr}");
    println!("  ca fingerprint:  {}", node.ca_fingerprint);
    match (&node.initial_admin_key, &node.admin_token_file) {
        (Some(_), Some(path)) => println!("  admin api key:   new, written to {} (mode 0600)", path.display()),
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
    node.serve(shutdown_signal()).await
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
