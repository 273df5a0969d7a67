//! `berth-agent`: enrolls once (token + pinned CA fingerprint), then holds the mTLS stream to
//! the control plane and runs deploys on the local Docker Engine.

use std::path::PathBuf;
use std::sync::Arc;

use berth_agent::docker::DockerExecutor;
use berth_agent::{enroll, AgentRuntime, Identity};
use clap::Parser;
use secrecy::SecretString;

/// The berth agent: runs deploys on this host's Docker Engine.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The control plane's admin URL, used once for enrollment (e.g. https://cp.example:7443).
    #[arg(long, env = "BERTH_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// One-time enrollment token from `berth agent token create`.
    #[arg(long, env = "BERTH_ENROLL_TOKEN", hide_env_values = true)]
    enroll_token: Option<String>,
    /// sha256:… fingerprint of the control plane's CA, printed by `berth agent token create`.
    #[arg(long, env = "BERTH_CA_FINGERPRINT")]
    ca_fingerprint: Option<String>,
    /// Directory for the agent's key, certificate and command journal.
    #[arg(
        long,
        env = "BERTH_AGENT_DATA_DIR",
        default_value = "/var/lib/berth-agent"
    )]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // bollard logs request bodies (with the container env) at debug: never below info.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into())
                .add_directive("bollard=info".parse().expect("valid directive"))
                .add_directive("hyper=info".parse().expect("valid directive")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let version = env!("CARGO_PKG_VERSION").to_string();
    if !Identity::exists(&args.data_dir) {
        let (Some(url), Some(token), Some(fingerprint)) = (
            &args.control_plane,
            &args.enroll_token,
            &args.ca_fingerprint,
        ) else {
            anyhow::bail!(
                "{} holds no identity: enroll with --control-plane URL --enroll-token TOKEN --ca-fingerprint sha256:…",
                args.data_dir.display()
            );
        };
        let identity = enroll::enroll(
            url,
            &SecretString::from(token.clone()),
            fingerprint,
            &version,
        )
        .await?;
        identity.save(&args.data_dir)?;
        tracing::info!(agent = %identity.name, endpoint = %identity.endpoint, "enrolled");
    }
    let executor = Arc::new(
        DockerExecutor::connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the docker engine: {e}"))?
            .with_scope(Identity::load(&args.data_dir)?.name),
    );
    let runtime = AgentRuntime {
        data_dir: args.data_dir,
        executor,
        version,
        on_command: None,
        endpoint_override: None,
    };
    berth_agent::run(runtime, shutdown_signal()).await
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
