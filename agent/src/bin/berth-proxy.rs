//! `berth-proxy`: the host-local data plane. Parses its flags, then runs
//! [`berth_agent::proxy::start`] until SIGTERM or ctrl-c and shuts down gracefully.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use berth_agent::proxy::{self, ProxyConfig};
use clap::Parser;

/// berth's host proxy: forwards each app's host ports and domains to its current container.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Directory for routes.json (the routes, with their TLS keys).
    #[arg(
        long,
        env = "BERTH_PROXY_STATE_DIR",
        default_value = "/var/lib/berth-proxy"
    )]
    state_dir: PathBuf,
    /// The control socket berth-agent calls (berth-agent --proxy-socket).
    #[arg(
        long = "socket",
        env = "BERTH_PROXY_SOCKET",
        default_value = "/run/berth/proxy.sock"
    )]
    socket: PathBuf,
    /// Where domains are served over HTTP (and ACME HTTP-01 answered); `none` disables it.
    #[arg(long, env = "BERTH_PROXY_HTTP_LISTEN", default_value = "0.0.0.0:80", value_parser = parse_listen)]
    http_listen: Listen,
    /// Where domains with a certificate are served over HTTPS; `none` disables it.
    #[arg(long, env = "BERTH_PROXY_HTTPS_LISTEN", default_value = "0.0.0.0:443", value_parser = parse_listen)]
    https_listen: Listen,
    /// The address apps' published host ports are bound on.
    #[arg(long, env = "BERTH_PROXY_BIND_IP", default_value = "0.0.0.0")]
    bind_ip: IpAddr,
    /// Let the proxy's group use the control socket (mode 0660): for an agent running as
    /// another user of that group.
    #[arg(long, env = "BERTH_PROXY_SOCKET_GROUP_ACCESS")]
    socket_group_access: bool,
}

/// A listen address, or `none`.
#[derive(Debug, Clone, Copy)]
struct Listen(Option<SocketAddr>);

fn parse_listen(value: &str) -> Result<Listen, String> {
    if value.eq_ignore_ascii_case("none") {
        return Ok(Listen(None));
    }
    value
        .parse()
        .map(|addr| Listen(Some(addr)))
        .map_err(|e| format!("{e}: expected IP:PORT (e.g. 0.0.0.0:80) or none"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    berth_agent::exit::status(run().await)
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into())
                .add_directive("hyper=info".parse().expect("valid directive"))
                .add_directive("rustls=info".parse().expect("valid directive")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a journal or a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let running = proxy::start(ProxyConfig {
        state_dir: args.state_dir,
        socket_path: args.socket,
        http_listen: args.http_listen.0,
        https_listen: args.https_listen.0,
        port_bind_ip: args.bind_ip,
        socket_group_access: args.socket_group_access,
    })
    .await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
