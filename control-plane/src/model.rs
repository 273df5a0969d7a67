//! Domain types shared by the store and the services. They carry no transport concerns (no
//! prost) and no plaintext secret values: a secret's value here is always its ciphertext.

use serde::{Deserialize, Serialize};

mod status;

pub use status::{DeploymentStatus, TargetStatus, ACTIVE_SQL, UNFINISHED_SQL};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SecretGroup {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
    pub provider_id: Option<i64>,
    pub auto_sync: bool,
    pub secret_count: i64,
    pub created_at: String,
    pub updated_at: String,
    /// Name of the linked provider.
    pub provider_name: Option<String>,
}

/// A `secrets` row joined with its group's name. `value` is the stored ciphertext.
#[derive(Clone, sqlx::FromRow)]
pub struct Secret {
    pub id: i64,
    pub name: String,
    pub group_id: i64,
    pub group_name: String,
    pub value: String,
    pub value_preview: String,
    pub description: Option<String>,
    pub source: String,
    /// When a sync last wrote this row (created, updated, or back from stale). A sync that
    /// finds the value unchanged writes nothing: the provider's `last_sync_at` says when the
    /// group was last confirmed upstream.
    pub last_synced_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// For synced secrets: the provider's name.
    pub provider_name: Option<String>,
    /// Gone upstream but still referenced, since then.
    pub stale_since: Option<String>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("id", &self.id)
            .field("group", &self.group_name)
            .field("name", &self.name)
            .field("value_preview", &self.value_preview)
            .finish_non_exhaustive()
    }
}

/// A secret about to be written: ciphertext and preview already computed.
pub struct NewSecret {
    pub name: String,
    pub value: String,
    pub value_preview: String,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvScope {
    Global,
    Project(i64),
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EnvVar {
    pub id: i64,
    pub scope: String,
    pub project_id: Option<i64>,
    pub app_name: Option<String>,
    pub key: String,
    pub value: String,
    pub value_type: String,
    pub secret_id: Option<i64>,
    /// `group/name` of the referenced secret, for secret_ref rows whose secret exists.
    pub secret_path: Option<String>,
    pub description: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// An environment variable about to be written.
#[derive(Debug, Clone)]
pub struct NewEnvVar {
    pub key: String,
    pub value: String,
    pub value_type: &'static str,
    pub secret_id: Option<i64>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub host: u16,
    pub container: u16,
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

fn default_protocol() -> String {
    "tcp".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Agent(String),
    Label { key: String, value: String },
}

#[derive(Debug, Clone)]
pub struct Application {
    pub id: i64,
    pub name: String,
    pub image: String,
    pub version: Option<String>,
    pub repository: Option<String>,
    pub ports: Vec<PortMapping>,
    pub status: String,
    pub webhook_enabled: bool,
    pub webhook_token_prefix: Option<String>,
    pub auto_deploy: bool,
    pub last_deployed_at: Option<String>,
    pub targets: Vec<Target>,
    pub created_at: String,
    pub updated_at: String,
    /// How many targets a rolling deploy updates at once.
    pub deploy_batch_size: i64,
    pub health_check: Option<HealthCheckConfig>,
    pub restart_policy: String,
    /// Overrides the image's CMD when not empty.
    pub command: Vec<String>,
    /// How the previous container is let go after a host-proxy switch.
    pub stop: StopSettings,
    /// Every deploy of this app cancels its running deployment (issue 14), as if it asked
    /// with `--cancel-in-progress`.
    pub cancel_in_progress: bool,
}

/// After the route switch, connections to the previous container get `drain_timeout_s` to
/// end; then it gets `stop_signal` ('' = the image's STOPSIGNAL) and is killed after
/// `stop_timeout_s`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopSettings {
    pub drain_timeout_s: u32,
    pub stop_timeout_s: u32,
    pub stop_signal: String,
}

impl Default for StopSettings {
    /// The schema's defaults.
    fn default() -> Self {
        StopSettings {
            drain_timeout_s: 30,
            stop_timeout_s: 10,
            stop_signal: String::new(),
        }
    }
}

/// How a domain's HTTPS is served. Stored as text in `domains.tls_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain HTTP only.
    None,
    /// A certificate and key given by an admin (`--tls-cert`, `--tls-key`).
    Files,
    /// A certificate the control plane obtains and renews from its ACME CA (`--acme`).
    Acme,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::None => "none",
            TlsMode::Files => "files",
            TlsMode::Acme => "acme",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(TlsMode::None),
            "files" => Some(TlsMode::Files),
            "acme" => Some(TlsMode::Acme),
            _ => None,
        }
    }
}

/// Where an ACME domain's certificate stands. Stored as text in `domains.acme_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeStatus {
    /// No certificate yet: an order runs or is scheduled.
    Pending,
    /// A certificate was stored by the last order.
    Issued,
    /// The last order failed (`acme_error` says why); a certificate issued before, if any,
    /// keeps serving.
    Failed,
}

impl AcmeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeStatus::Pending => "pending",
            AcmeStatus::Issued => "issued",
            AcmeStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(AcmeStatus::Pending),
            "issued" => Some(AcmeStatus::Issued),
            "failed" => Some(AcmeStatus::Failed),
            _ => None,
        }
    }
}

/// The ACME state of a domain with `tls_mode` acme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeState {
    pub status: AcmeStatus,
    /// Why the last order failed (never key material).
    pub error: Option<String>,
    /// Orders failed in a row since the last success.
    pub attempts: u32,
    /// When the next order starts (a retry or the renewal), `YYYY-MM-DD HH:MM:SS` UTC; `None`
    /// when the retries gave up.
    pub next_attempt_at: Option<String>,
}

/// A `domains` row with its application's name. `private_key` is the stored ciphertext.
#[derive(Clone)]
pub struct Domain {
    pub id: i64,
    pub application_id: i64,
    pub app_name: String,
    /// Lower case, no port, no trailing dot (the seed's `domain` column).
    pub host: String,
    /// 0: the app's first container port.
    pub container_port: u16,
    pub tls_mode: TlsMode,
    /// PEM chain, leaf first.
    pub certificate_pem: Option<String>,
    /// Ciphertext of the PEM key.
    pub private_key: Option<String>,
    /// Expiry of the leaf certificate, `YYYY-MM-DD HH:MM:SS` UTC.
    pub not_after: Option<String>,
    /// `Some` exactly when `tls_mode` is acme.
    pub acme: Option<AcmeState>,
    pub created_at: String,
    pub updated_at: String,
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("host", &self.host)
            .field("app", &self.app_name)
            .field("container_port", &self.container_port)
            .field("tls_mode", &self.tls_mode)
            .field("not_after", &self.not_after)
            .field("acme", &self.acme)
            .finish_non_exhaustive()
    }
}

/// A domain about to be written: the key already encrypted.
pub struct NewDomain {
    pub application_id: i64,
    pub host: String,
    pub container_port: u16,
    pub tls_mode: TlsMode,
    pub certificate_pem: Option<String>,
    pub private_key: Option<String>,
    pub not_after: Option<String>,
}

/// An application's health check, stored as JSON in `applications.health_check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckConfig {
    /// `http` or `tcp`.
    #[serde(rename = "type")]
    pub kind: String,
    pub port: u16,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub timeout_s: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct NewApplication {
    pub name: String,
    pub image: String,
    pub version: Option<String>,
    pub repository_id: Option<i64>,
    pub ports: Vec<PortMapping>,
    pub webhook_enabled: bool,
    pub webhook_token_digest: String,
    pub webhook_token_prefix: String,
    pub auto_deploy: bool,
    pub targets: Vec<Target>,
    pub deploy_batch_size: i64,
    pub health_check: Option<HealthCheckConfig>,
    pub restart_policy: String,
    pub stop: StopSettings,
    pub cancel_in_progress: bool,
}

/// A partial update; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ApplicationPatch {
    pub image: Option<String>,
    pub version: Option<String>,
    pub repository_id: Option<Option<i64>>,
    pub ports: Option<Vec<PortMapping>>,
    pub webhook_enabled: Option<bool>,
    pub auto_deploy: Option<bool>,
    pub targets: Option<Vec<Target>>,
    pub deploy_batch_size: Option<i64>,
    /// `Some(None)` removes the health check.
    pub health_check: Option<Option<HealthCheckConfig>>,
    pub restart_policy: Option<String>,
    pub drain_timeout_s: Option<u32>,
    pub stop_timeout_s: Option<u32>,
    pub stop_signal: Option<String>,
    pub cancel_in_progress: Option<bool>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeploymentLog {
    pub id: i64,
    pub application_id: i64,
    pub version: String,
    pub deployment_id: String,
    pub trigger_type: String,
    pub trigger_source: Option<String>,
    pub status: DeploymentStatus,
    pub error_message: Option<String>,
    pub started_at: String,
    pub completed_at: Option<String>,
    pub duration_ms: Option<i64>,
    /// For a superseded deployment: the newer one that replaced it.
    pub superseded_by: Option<String>,
    /// For a failed one: the category CI callers and notification receivers read instead of
    /// `error_message` (see `fleet::failure`).
    pub public_reason: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKey {
    pub id: i64,
    pub name: String,
    pub key_hash: String,
    pub prefix: String,
    pub role: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Repository {
    pub id: i64,
    pub name: String,
    pub url: String,
    pub username: Option<String>,
    /// Ciphertext of the password.
    pub password: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ImagePattern {
    pub id: i64,
    pub pattern: String,
    pub description: Option<String>,
    pub created_at: String,
}
