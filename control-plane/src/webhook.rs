//! `berth-webhook`, the HTTP-to-gRPC shim for CI systems, as a library so
//! that both the `berth-webhook` binary and `berth dev` run it.
//!
//! The shim holds no state and no database. It authenticates to the control plane with its
//! own narrow API key (role `webhook`) and forwards each request to `berth.v1.WebhookService`,
//! adding the one thing only it knows: the client IP, resolved with its trusted-proxy rules.
//!
//! Architecture invariant: the shim decides nothing about applications, tokens or registry
//! secrets, and holds none; the control plane does every check, so calling the RPC directly
//! skips nothing. What the shim adds is protection of the control plane: body limit,
//! JSON-only, version syntax, the failed-auth limit per client, and timeouts.
//!
//! Routes:
//! - `POST /webhook/deploy` — the seed's body; token in the body or `Authorization: Bearer`;
//!   `?wait=false` answers 202 at once
//! - `GET /webhook/deployments/{id}` — the deployment's state, with the same token
//! - `POST /webhook/registry` — Docker distribution notifications: the registry's secret
//!   (`Authorization: Bearer`) is forwarded and checked by the control plane, which holds it
//!   (`--registry-secret-file` of `berth-control-plane`); no header is a 401 here
//! - `POST /deploy` — the seed's legacy route, off unless enabled
//! - `GET /healthz`

mod client_ip;
pub mod connections;
mod limiter;
mod reply;
mod request;
mod routes;

#[cfg(test)]
mod properties;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use berth_proto::v1::webhook_service_client::WebhookServiceClient;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::error::ErrorCode;
use crate::service::Service;

pub use client_ip::TrustedProxies;
pub use limiter::FailedAuthLimiter;
pub use request::MAX_BODY_BYTES;
pub use routes::LEGACY_SUNSET;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7480";
/// Where `berth dev` keeps its shim's API key (mode 0600).
pub const DEV_API_KEY_FILE: &str = "webhook.token";
const DEV_API_KEY_NAME: &str = "webhook-shim";

#[derive(Debug, Clone)]
pub struct ShimConfig {
    /// URL of the control plane's admin API, e.g. `https://127.0.0.1:7443`.
    pub control_plane: String,
    /// PEM of the CA the control plane's certificate chains to (its own CA).
    pub ca_cert_pem: Option<String>,
    /// The shim's own API key (role `webhook`); never logged (`SecretString`).
    pub api_key: SecretString,
    /// Peers whose `X-Forwarded-For` is believed; everyone else is their own client IP.
    pub trusted_proxies: TrustedProxies,
    /// Serve the seed's legacy `POST /deploy`.
    pub enable_legacy_deploy: bool,
    /// Public base URL of this shim, for absolute status URLs; relative ones without it.
    pub public_url: Option<String>,
    /// How long `POST /webhook/deploy` waits for the deployment before answering 202.
    pub wait_timeout: Duration,
    /// Failed authentication attempts allowed per client and minute.
    pub failed_auth_per_minute: u32,
    /// Connection cap and header timeout (slowloris).
    pub limits: connections::Limits,
}

impl ShimConfig {
    pub fn new(
        control_plane: impl Into<String>,
        ca_cert_pem: Option<String>,
        api_key: SecretString,
    ) -> Self {
        ShimConfig {
            control_plane: control_plane.into(),
            ca_cert_pem,
            api_key,
            trusted_proxies: TrustedProxies::default(),
            enable_legacy_deploy: false,
            public_url: None,
            wait_timeout: Duration::from_secs(30),
            failed_auth_per_minute: 20,
            limits: connections::Limits::default(),
        }
    }
}

/// What every handler shares. Cheap to clone the client (a multiplexed HTTP/2 channel).
pub(crate) struct Shim {
    client: WebhookServiceClient<Channel>,
    api_key: SecretString,
    proxies: TrustedProxies,
    limiter: FailedAuthLimiter,
    legacy_deploy: bool,
    public_url: Option<String>,
    wait_timeout: Duration,
}

/// The shim's HTTP routes over a (lazily connected) channel to the control plane.
pub fn router(config: ShimConfig) -> anyhow::Result<Router> {
    let mut endpoint = Channel::from_shared(config.control_plane.clone())
        .map_err(|e| anyhow::anyhow!("invalid control plane url {:?}: {e}", config.control_plane))?
        .connect_timeout(Duration::from_secs(5));
    if config.control_plane.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(pem) = &config.ca_cert_pem {
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let wait_timeout = config.wait_timeout.min(crate::fleet::webhook::MAX_WAIT);
    let shim = Arc::new(Shim {
        client: WebhookServiceClient::new(endpoint.connect_lazy()),
        api_key: config.api_key,
        proxies: config.trusted_proxies,
        limiter: FailedAuthLimiter::new(config.failed_auth_per_minute),
        legacy_deploy: config.enable_legacy_deploy,
        public_url: config.public_url,
        wait_timeout,
    });
    Ok(Router::new()
        .route("/webhook/deploy", post(routes::deploy))
        .route("/webhook/deployments/{id}", get(routes::status))
        .route("/webhook/registry", post(routes::registry))
        .route("/deploy", post(routes::legacy_deploy))
        .route("/healthz", get(routes::healthz))
        .fallback(routes::not_found)
        .with_state(shim)
        // Bodies over the limit are refused while they are read, before any parsing.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Outermost: a request that outlives this (a slow body) gets 408. A waiting deploy
        // answers 202 with its status URL well before.
        .layer(axum::middleware::from_fn_with_state(
            wait_timeout + Duration::from_secs(15),
            routes::with_timeout,
        )))
}

/// Serves the shim on `listener` until `shutdown` resolves.
pub async fn serve(
    config: ShimConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let legacy = config.enable_legacy_deploy;
    let config_limits = config.limits;
    let app = router(config)?;
    tracing::info!(addr = %listener.local_addr()?, legacy_deploy = legacy, "webhook shim listening");
    connections::serve(listener, app, config_limits, shutdown).await?;
    Ok(())
}

/// Binds the shim's address. An explicit address must be free; the default one falls back to
/// a free port (with a warning) so that several dev nodes can run side by side. `flag` is the
/// option that chose it, named when the address is taken.
pub async fn bind(explicit: Option<SocketAddr>, flag: &str) -> anyhow::Result<TcpListener> {
    match explicit {
        Some(addr) => TcpListener::bind(addr)
            .await
            .map_err(|e| crate::node::listen_error(addr, flag, &e)),
        None => match TcpListener::bind(DEFAULT_LISTEN).await {
            Ok(listener) => Ok(listener),
            Err(e) => {
                tracing::warn!(addr = DEFAULT_LISTEN, error = %e, "webhook address taken; using a free port (pass --webhook-listen so that berth app show shows it)");
                Ok(TcpListener::bind("127.0.0.1:0").await?)
            }
        },
    }
}

/// The all-in-one node's shim key: created (role `webhook`) on first start and kept in
/// `<data-dir>/webhook.token` (0600); reused while it still authenticates.
pub async fn dev_api_key(service: &Service, data_dir: &Path) -> anyhow::Result<SecretString> {
    let path = data_dir.join(DEV_API_KEY_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let key = SecretString::from(text.trim().to_string());
        if service.authenticate(&key).await.is_ok() {
            return Ok(key);
        }
        tracing::warn!(path = %path.display(), "stored webhook shim key no longer works; creating a new one");
    }
    let created = match service.create_webhook_key(DEV_API_KEY_NAME).await {
        Err(e) if e.code() == ErrorCode::AlreadyExists => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            service
                .create_webhook_key(&format!("{DEV_API_KEY_NAME}-{}", now.as_secs()))
                .await?
        }
        other => other?,
    };
    crate::pki::write_private(&path, created.key.expose_secret())?;
    Ok(created.key)
}
