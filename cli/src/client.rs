//! The connection to the control plane's admin API: address, TLS, and the API key sent as
//! `authorization: Bearer bk_...` on every request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use berth_proto::v1::agent_admin_service_client::AgentAdminServiceClient;
use berth_proto::v1::allowlist_service_client::AllowlistServiceClient;
use berth_proto::v1::api_key_service_client::ApiKeyServiceClient;
use berth_proto::v1::application_service_client::ApplicationServiceClient;
use berth_proto::v1::deploy_service_client::DeployServiceClient;
use berth_proto::v1::env_service_client::EnvServiceClient;
use berth_proto::v1::repository_service_client::RepositoryServiceClient;
use berth_proto::v1::secret_service_client::SecretServiceClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

/// Where the control plane is and how to prove who we are. Global flags, also read from the
/// environment. Deliberately not `Debug`: it holds the API key. `Default` is what `berth dev`
/// gets: it connects to nothing.
#[derive(clap::Args, Default)]
pub struct ConnectOptions {
    /// Address of the control plane's admin API (http:// connects without TLS)
    #[arg(
        long,
        env = "BERTH_ADDR",
        global = true,
        default_value = "https://127.0.0.1:7443"
    )]
    addr: String,

    /// API key (bk_...), sent as a bearer token. A command line is visible to other users of
    /// this machine (ps, /proc): prefer BERTH_TOKEN or --token-file
    #[arg(long, env = "BERTH_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,

    /// File holding the API key; "-" reads it from the first line of stdin (what follows is
    /// the command's own input, e.g. the value of `berth secret set`)
    #[arg(long, env = "BERTH_TOKEN_FILE", global = true, value_name = "PATH")]
    token_file: Option<PathBuf>,

    /// The key read from stdin (`--token-file -`), before the command reads its own input.
    #[arg(skip)]
    stdin_token: Option<String>,

    /// PEM file of the CA certificate that signed the control plane's certificate
    #[arg(
        long = "ca-cert",
        env = "BERTH_CA_CERT",
        global = true,
        value_name = "PATH"
    )]
    ca_cert: Option<PathBuf>,
}

impl ConnectOptions {
    /// The admin API address as given (`--addr` or `BERTH_ADDR`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// With `--token-file -`, reads the key from stdin now: called before a command reads
    /// its own input from stdin, so the key is always the first line.
    pub fn read_stdin_token(&mut self) -> anyhow::Result<()> {
        if self.token.is_none() && self.token_file.as_deref() == Some(Path::new("-")) {
            self.stdin_token = Some(read_token_file(Path::new("-"))?);
        }
        Ok(())
    }

    /// The API key from `--token` or `--token-file` (one of them).
    fn api_key(&self) -> anyhow::Result<String> {
        if let Some(token) = &self.stdin_token {
            return Ok(token.clone());
        }
        match (self.token.as_deref(), &self.token_file) {
            (Some(_), Some(_)) => bail!(
                "an api key is given twice: pass --token (BERTH_TOKEN) or --token-file (BERTH_TOKEN_FILE), not both"
            ),
            (Some(token), None) if !token.trim().is_empty() => Ok(token.trim().to_string()),
            (None, Some(path)) => read_token_file(path),
            _ => bail!("no api key: set BERTH_TOKEN or pass --token-file"),
        }
    }

    /// Connects now; called by each command that needs the server, never up front.
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        let auth = BearerAuth::new(&self.api_key()?)?;

        let mut endpoint = Endpoint::from_shared(self.addr.clone())
            .with_context(|| format!("invalid address {:?}", self.addr))?
            .connect_timeout(Duration::from_secs(10));
        if self.addr.starts_with("https://") {
            let Some(path) = &self.ca_cert else {
                bail!("an https address needs the CA certificate: pass --ca-cert or set BERTH_CA_CERT");
            };
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read CA certificate {}", path.display()))?;
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            endpoint = endpoint
                .tls_config(tls)
                .context("invalid TLS configuration")?;
        } else if !self.addr.starts_with("http://") {
            bail!(
                "address {:?} must start with https:// or http://",
                self.addr
            );
        }

        let channel = endpoint.connect().await.map_err(|e| {
            if refused(&e) {
                anyhow::anyhow!(
                    "cannot connect to {addr}: connection refused. Is the control plane running at \
                     {addr}? Start it (`berth dev`, or `berth-control-plane`), or point \
                     BERTH_ADDR (--addr) at it",
                    addr = self.addr
                )
            } else {
                anyhow::Error::new(e).context(format!("cannot connect to {}", self.addr))
            }
        })?;
        Ok(Connection { channel, auth })
    }
}

/// Whether nothing listens at the address (as opposed to TLS, DNS or a timeout).
fn refused(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A token from a file, or from the first line of stdin for `-` (the rest of stdin stays for
/// the command: `berth secret set` reads its value after it). Surrounding whitespace is not
/// part of it; an empty one is an error.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = if path == Path::new("-") {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the api key from stdin")?;
        line
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the api key file {}", path.display()))?
    };
    let token = text.trim();
    if token.is_empty() {
        bail!("the api key in {} is empty", path.display());
    }
    Ok(token.to_string())
}

/// An open channel plus the interceptor that authenticates each request on it.
pub struct Connection {
    channel: Channel,
    auth: BearerAuth,
}

/// The channel type every client of [`Connection`] uses.
pub type AuthChannel = InterceptedService<Channel, BearerAuth>;

impl Connection {
    pub fn secrets(&self) -> SecretServiceClient<AuthChannel> {
        SecretServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn env(&self) -> EnvServiceClient<AuthChannel> {
        EnvServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn applications(&self) -> ApplicationServiceClient<AuthChannel> {
        ApplicationServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn api_keys(&self) -> ApiKeyServiceClient<AuthChannel> {
        ApiKeyServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn repositories(&self) -> RepositoryServiceClient<AuthChannel> {
        RepositoryServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn allowlist(&self) -> AllowlistServiceClient<AuthChannel> {
        AllowlistServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn deployments(&self) -> DeployServiceClient<AuthChannel> {
        DeployServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn agents(&self) -> AgentAdminServiceClient<AuthChannel> {
        AgentAdminServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn providers(
        &self,
    ) -> berth_proto::v1::provider_service_client::ProviderServiceClient<AuthChannel> {
        berth_proto::v1::provider_service_client::ProviderServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    pub fn domains(
        &self,
    ) -> berth_proto::v1::domain_service_client::DomainServiceClient<AuthChannel> {
        berth_proto::v1::domain_service_client::DomainServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    /// `berth import-v1`: its report lists every row of a V1 database.
    pub fn imports(
        &self,
    ) -> berth_proto::v1::import_service_client::ImportServiceClient<AuthChannel> {
        berth_proto::v1::import_service_client::ImportServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
        .max_decoding_message_size(berth_control_plane::grpc::MAX_IMPORT_REQUEST_BYTES)
        .max_encoding_message_size(berth_control_plane::grpc::MAX_IMPORT_REQUEST_BYTES)
    }

    pub fn backups(
        &self,
    ) -> berth_proto::v1::backup_service_client::BackupServiceClient<AuthChannel> {
        berth_proto::v1::backup_service_client::BackupServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    pub fn keys(&self) -> berth_proto::v1::key_service_client::KeyServiceClient<AuthChannel> {
        berth_proto::v1::key_service_client::KeyServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    pub fn audit(&self) -> berth_proto::v1::audit_service_client::AuditServiceClient<AuthChannel> {
        berth_proto::v1::audit_service_client::AuditServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    pub fn notifications(
        &self,
    ) -> berth_proto::v1::notification_service_client::NotificationServiceClient<AuthChannel> {
        berth_proto::v1::notification_service_client::NotificationServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }
}

/// Adds `authorization: Bearer <api key>` to every request. The header value is marked
/// sensitive, so it is redacted from `Debug` output.
#[derive(Clone)]
pub struct BearerAuth {
    header: AsciiMetadataValue,
}

impl BearerAuth {
    fn new(token: &str) -> anyhow::Result<Self> {
        let mut header: AsciiMetadataValue = format!("Bearer {token}")
            .parse()
            // Not the parse error: it could echo the key.
            .map_err(|_| {
                anyhow::anyhow!("the api key contains characters not allowed in a header")
            })?;
        header.set_sensitive(true);
        Ok(BearerAuth { header })
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

/// One line for `error: ...`: the causes joined with ": ", a gRPC status as
/// `<code in words>: <message>` rather than tonic's `Display`/`Debug`.
pub fn describe_error(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let part = match cause.downcast_ref::<Status>() {
            Some(status) => describe_status(status),
            None => cause.to_string(),
        };
        // Transport errors often repeat their source in their own message.
        if !parts.last().is_some_and(|last| last.contains(&part)) {
            parts.push(part);
        }
    }
    parts.join(": ")
}

/// `<code in words>: <message>`, or the message alone when it already says it ("application
/// \"web\" not found" is not prefixed with "not found: "). Not found names the command that
/// lists what exists.
fn describe_status(status: &Status) -> String {
    let code = code_in_words(status.code());
    let message = status.message();
    let mut text = if message.is_empty() {
        code.to_string()
    } else if message.to_ascii_lowercase().contains(code) {
        message.to_string()
    } else {
        format!("{code}: {message}")
    };
    match status.code() {
        Code::Unauthenticated => text.push_str(" (check --token or BERTH_TOKEN)"),
        Code::NotFound => {
            if let Some(list) = list_command(message) {
                text.push_str(&format!("; `{list}` lists them"));
            }
        }
        _ => {}
    }
    text
}

/// The command listing the kind of thing a not-found message names by its first words
/// (`application "web" not found`, `active api key "ci" not found`).
fn list_command(message: &str) -> Option<&'static str> {
    const LISTS: &[(&str, &str)] = &[
        ("application", "berth app list"),
        ("deployment", "berth deploy list APP"),
        ("group", "berth group list"),
        ("secret", "berth secret list"),
        ("variable", "berth env list"),
        ("provider", "berth provider list"),
        ("repository", "berth repository list"),
        ("image pattern", "berth allowlist list"),
        ("agent", "berth agent list"),
        ("active agent", "berth agent list"),
        ("api key", "berth apikey list"),
        ("active api key", "berth apikey list"),
        ("webhook", "berth webhook list"),
        ("domain", "berth domain list"),
        ("key", "berth key status"),
    ];
    let lower = message.to_ascii_lowercase();
    LISTS
        .iter()
        .filter(|(noun, _)| {
            lower
                .strip_prefix(noun)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .map(|(_, list)| *list)
        .next()
}

fn code_in_words(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_rendered_as_code_words_and_message() {
        let err = anyhow::Error::new(Status::permission_denied(
            "role viewer cannot reveal secrets",
        ));
        assert_eq!(
            describe_error(&err),
            "permission denied: role viewer cannot reveal secrets"
        );
    }

    #[test]
    fn a_message_that_names_its_code_is_not_repeated_and_not_found_names_the_list() {
        let err = anyhow::Error::new(Status::not_found("application \"web\" not found"));
        assert_eq!(
            describe_error(&err),
            "application \"web\" not found; `berth app list` lists them"
        );
        let err = anyhow::Error::new(Status::not_found("active api key \"ci\" not found"));
        assert_eq!(
            describe_error(&err),
            "active api key \"ci\" not found; `berth apikey list` lists them"
        );
        let err = anyhow::Error::new(Status::already_exists("group \"db\" already exists"));
        assert_eq!(describe_error(&err), "group \"db\" already exists");
        let err = anyhow::Error::new(Status::not_found("no such thing"));
        assert_eq!(describe_error(&err), "not found: no such thing");
    }

    #[test]
    fn context_comes_before_the_status() {
        let err = anyhow::Error::new(Status::not_found("no application named web"))
            .context("cannot show application web");
        assert_eq!(
            describe_error(&err),
            "cannot show application web: not found: no application named web"
        );
    }
}
