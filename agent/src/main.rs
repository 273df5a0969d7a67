//! `berth-agent`: enrolls once (token + pinned CA fingerprint), then holds the mTLS stream to
//! the control plane and runs deploys on the local Docker Engine.

use std::path::PathBuf;
use std::sync::Arc;

use berth_agent::docker::DockerExecutor;
use berth_agent::{enroll, AgentRuntime, Identity};
use clap::Parser;
use secrecy::{ExposeSecret as _, SecretString};

/// The berth agent: runs deploys on this host's Docker Engine.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The control plane's admin URL, used once for enrollment (e.g. https://cp.example:7443).
    #[arg(long, env = "BERTH_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// One-time enrollment token from `berth agent token create`. A command line is visible
    /// to other users of this host (ps, /proc): prefer BERTH_ENROLL_TOKEN or
    /// --enroll-token-file.
    #[arg(long, env = "BERTH_ENROLL_TOKEN", hide_env_values = true)]
    enroll_token: Option<String>,
    /// File holding the enrollment token; "-" reads it from stdin.
    #[arg(long, env = "BERTH_ENROLL_TOKEN_FILE", value_name = "PATH")]
    enroll_token_file: Option<PathBuf>,
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
    /// Unix socket of this host's berth-proxy (e.g. /run/berth/proxy.sock). With it, the
    /// proxy owns the apps' host ports and domains and deploys switch routes with no gap
    /// without it, containers publish their host ports themselves.
    #[arg(long, env = "BERTH_PROXY_SOCKET", value_name = "PATH")]
    proxy_socket: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    berth_agent::exit::status(run().await)
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // bollard logs request bodies (with the container env) at debug: never below info.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into())
                .add_directive("bollard=info".parse().expect("valid directive"))
                .add_directive("hyper=info".parse().expect("valid directive")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a journal or a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let version = env!("CARGO_PKG_VERSION").to_string();
    if !Identity::exists(&args.data_dir) {
        let token = match (&args.enroll_token, &args.enroll_token_file) {
            (Some(_), Some(_)) => anyhow::bail!(
                "the enrollment token is given twice: pass --enroll-token (BERTH_ENROLL_TOKEN) or --enroll-token-file, not both"
            ),
            (Some(token), None) => Some(SecretString::from(token.trim().to_string())),
            (None, Some(path)) => Some(read_token_file(path)?),
            (None, None) => None,
        };
        let (Some(url), Some(token), Some(fingerprint)) =
            (&args.control_plane, token, &args.ca_fingerprint)
        else {
            anyhow::bail!(
                "{} holds no identity: enroll with --control-plane URL --ca-fingerprint sha256:… and the token in BERTH_ENROLL_TOKEN or --enroll-token-file",
                args.data_dir.display()
            );
        };
        let identity = enroll::enroll(url, &token, fingerprint, &version).await?;
        identity.save(&args.data_dir)?;
        tracing::info!(agent = %identity.name, endpoint = %identity.endpoint, "enrolled");
    }
    let executor = Arc::new(
        DockerExecutor::connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the docker engine: {e}"))?
            .with_scope(Identity::load(&args.data_dir)?.name),
    );
    let executor = match &args.proxy_socket {
        Some(socket) => {
            let executor = Arc::new(Arc::unwrap_or_clone(executor).with_proxy(socket));
            // An agent killed mid-deploy left a candidate or a retirement behind.
            if let Err(error) = executor.repair().await {
                tracing::warn!(%error, "could not check the host proxy's routes against the containers; deploys will retry");
            }
            executor
        }
        None => executor,
    };
    let runtime = AgentRuntime {
        data_dir: args.data_dir,
        executor,
        version,
        on_command: None,
        endpoint_override: None,
    };
    berth_agent::run(runtime, shutdown_signal()).await
}

/// The enrollment token from a file, or from stdin for `-`; surrounding whitespace is not
/// part of it.
fn read_token_file(path: &std::path::Path) -> anyhow::Result<SecretString> {
    use std::io::Read as _;
    let mut text = String::new();
    if path == std::path::Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| anyhow::anyhow!("cannot read the enrollment token from stdin: {e}"))?;
    } else {
        text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the enrollment token file {}: {e}",
                path.display()
            )
        })?;
    }
    let token = SecretString::from(text.trim().to_string());
    if token.expose_secret().is_empty() {
        anyhow::bail!("the enrollment token in {} is empty", path.display());
    }
    Ok(token)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
