//! The agent's side of the control socket: a tonic client of `ProxyControl` over the Unix
//! socket berth-proxy listens on.
//!
//! Architecture invariant: the proxy is only ever reached through this local socket (never
//! over TCP), so whoever can open the socket file (mode 0600) is the only one who can route.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use berth_proto::v1::proxy_control_client::ProxyControlClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// How long connecting to the socket may take before it is reported as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of the berth-proxy listening on `socket`. The channel reconnects by itself if
/// the proxy restarts; the first connection is made here, so a missing proxy is an error now.
pub async fn connect(socket: &Path) -> anyhow::Result<ProxyControlClient<Channel>> {
    let path: PathBuf = socket.to_path_buf();
    // The URI is required by tonic but never dialed: the connector below opens the socket.
    let endpoint = Endpoint::try_from("http://[::]:50051")
        .expect("a valid placeholder uri")
        // No request timeout on the channel: a Drain lasts as long as its own timeout_ms.
        .connect_timeout(CONNECT_TIMEOUT);
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .with_context(|| {
            format!(
                "cannot reach berth-proxy on {}: start it (systemctl start berth-proxy) or pass the socket it listens on",
                socket.display()
            )
        })?;
    Ok(ProxyControlClient::new(channel))
}
