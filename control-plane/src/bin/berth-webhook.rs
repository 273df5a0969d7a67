//! `berth-webhook`: parses config, sets up logging, serves the webhook shim until
//! SIGINT/SIGTERM. Everything else is in `berth_control_plane::webhook`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use berth_control_plane::webhook::{self, ShimConfig, TrustedProxies};
use clap::Parser;
use secrecy::SecretString;

/// The berth webhook shim: CI webhooks (HTTP) in, control-plane RPCs out. Stateless: it
/// holds no webhook token and no registry secret (the control plane checks both).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to serve HTTP on (put TLS in front of it: a reverse proxy).
    #[arg(long, env = "BERTH_WEBHOOK_LISTEN", default_value = webhook::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// URL of the control plane's admin API.
    #[arg(long, env = "BERTH_ADDR", default_value = "https://127.0.0.1:7443")]
    control_plane: String,
    /// CA certificate of the control plane (its data dir's pki/ca.crt).
    #[arg(long, env = "BERTH_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// File holding the shim's API key (role webhook); or set BERTH_WEBHOOK_API_KEY.
    #[arg(long, env = "BERTH_WEBHOOK_API_KEY_FILE")]
    token_file: Option<PathBuf>,
    /// Proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For is believed.
    #[arg(long, env = "BERTH_WEBHOOK_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxy: Vec<String>,
    /// Serve the deprecated seed route POST /deploy (registered applications only).
    #[arg(long, env = "BERTH_WEBHOOK_ENABLE_LEGACY_DEPLOY")]
    enable_legacy_deploy: bool,
    /// Public base URL of this shim, for absolute status URLs.
    #[arg(long, env = "BERTH_WEBHOOK_PUBLIC_URL")]
    public_url: Option<String>,
    /// Seconds POST /webhook/deploy waits for the deployment before answering 202 (max 50).
    #[arg(long, env = "BERTH_WEBHOOK_WAIT_TIMEOUT", default_value_t = 30)]
    wait_timeout: u64,
    /// Failed authentication attempts allowed per client IP and minute.
    #[arg(
        long,
        env = "BERTH_WEBHOOK_FAILED_AUTH_PER_MINUTE",
        default_value_t = 20
    )]
    failed_auth_per_minute: u32,
    /// Earlier releases checked the registry secret here; given now, it stops the start
    /// with the reason (a shim that silently ignored it would look protected).
    #[arg(long, hide = true, num_args = 0..=1, value_name = "IGNORED")]
    registry_secret: Option<Option<String>>,
    #[arg(long, hide = true, num_args = 0..=1, value_name = "IGNORED")]
    registry_secret_file: Option<Option<String>>,
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
    if args.registry_secret.is_some() || args.registry_secret_file.is_some() {
        anyhow::bail!(
            "--registry-secret/--registry-secret-file moved to berth-control-plane: the control plane holds and checks the registry notification secret, the shim only forwards what registries send"
        );
    }
    let api_key = match (&args.token_file, std::env::var("BERTH_WEBHOOK_API_KEY")) {
        (Some(path), _) => read_secret(path)?,
        (None, Ok(key)) if !key.trim().is_empty() => SecretString::from(key.trim().to_string()),
        _ => anyhow::bail!("no api key: pass --token-file or set BERTH_WEBHOOK_API_KEY (an api key of role webhook)"),
    };
    let ca_cert_pem = match &args.ca_cert {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => None,
    };
    for var in [
        "BERTH_REGISTRY_NOTIFY_SECRET",
        "BERTH_REGISTRY_NOTIFY_SECRET_FILE",
    ] {
        if std::env::var_os(var).is_some() {
            tracing::warn!(
                var,
                "ignored: the control plane checks registry notifications; set it on berth-control-plane"
            );
        }
    }
    let mut config = ShimConfig::new(args.control_plane, ca_cert_pem, api_key);
    config.trusted_proxies =
        TrustedProxies::parse(&args.trusted_proxy).map_err(anyhow::Error::msg)?;
    config.enable_legacy_deploy = args.enable_legacy_deploy;
    config.public_url = args.public_url;
    config.wait_timeout = Duration::from_secs(args.wait_timeout);
    config.failed_auth_per_minute = args.failed_auth_per_minute;
    let listener = webhook::bind(Some(args.listen), "--listen").await?;
    webhook::serve(config, listener, shutdown_signal()).await
}

fn read_secret(path: &std::path::Path) -> anyhow::Result<SecretString> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(SecretString::from(text.trim().to_string()))
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
