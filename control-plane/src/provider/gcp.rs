//! `gcp-secret-manager`: Google Cloud Secret Manager, REST API v1.
//!
//! Login: the credential is a service-account key file ([`service_account`]). berth signs a
//! JWT with its private key (RS256) and posts it, form-encoded, to the key's `token_uri`
//! (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=…`) for an access
//! token with the `cloud-platform` scope. The account needs `roles/secretmanager.viewer`
//! (list secrets, read version metadata) and `roles/secretmanager.secretAccessor` (values).
//!
//! Reading: `GET /v1/projects/{project}/secrets?pageSize=…&pageToken=…[&filter=…]` following
//! `nextPageToken`, then for each secret `GET …/secrets/{id}/versions/latest:access`. The
//! value is the payload's `data` (base64), checked against its `dataCrc32c` when the answer
//! carries one (Google's own integrity check); it must be UTF-8 text.
//!
//! Names: the secret id (letters, digits, `-` and `_`), less the configured `prefix`, mapped by
//! [`super::variable_name`]: `-` becomes `_` (`stripe-key` -> `stripe_key`; with
//! `prefix=myapp-`, `myapp-DATABASE_URL` -> `DATABASE_URL`). An id that still starts with a
//! digit cannot be mapped and fails the sync with its name.
//!
//! Secrets with no value to read are skipped, like a deleted latest version in Vault: one
//! with no version yet (Terraform creates a secret, then its first version) or whose latest
//! version is disabled or destroyed (someone withdrew the value; `latest` is the most
//! recently created version, whatever its state). Locally it is then removed, or kept and
//! marked stale while an environment references it. Anything else refused (the permission on
//! one secret, a Cloud KMS key problem) fails the whole sync.
//!
//! Errors are Google's `{"error": {"code", "message", "status"}}`: the status and message are
//! shown (they name resources, never values); 401 and 403 become `PermissionDenied`.

mod answers;
mod service_account;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Method;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use zeroize::Zeroizing;

use super::http::{form_encode, segment, split_url, ProviderHttp};
use super::{FetchedSecret, ProviderConfig, SecretSource};
use crate::error::{Error, Result};
use answers::{google_error, ok, parse_page, payload, token_error};
use service_account::ServiceAccount;

/// Secrets one sync may read.
const MAX_SECRETS: usize = 10_000;
/// Secrets asked for per list page (Google caps it at 25,000 and may answer fewer).
const PAGE_SIZE: usize = 250;
/// Values read at once: one request per secret, so a large project would otherwise pay
/// one round trip (and TLS handshake) after the other.
const PARALLEL_READS: usize = 8;
/// The OAuth scope Secret Manager accepts.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The non-secret settings, stored as `secret_providers.config`. The credential is the whole
/// service-account key file (JSON with `client_email`, `private_key`, `token_uri`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpConfig {
    /// The Google Cloud project id (or number) whose secrets are synced.
    pub project: String,
    /// The Secret Manager API, `https://secretmanager.googleapis.com` by default (a private
    /// endpoint, or a local server in tests).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Only secrets whose id starts with this are synced, and it is removed from their names.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Google's list filter, passed as it is (`labels.env=prod`; see "Filter lists of
    /// secrets" in Google's documentation).
    #[serde(default)]
    pub filter: Option<String>,
    /// PEM of the CA that signed the servers' certificates: the API endpoint's and the token
    /// endpoint's (the system roots otherwise).
    #[serde(default)]
    pub ca_cert: Option<String>,
}

fn default_endpoint() -> String {
    "https://secretmanager.googleapis.com".into()
}

impl ProviderConfig for GcpConfig {
    fn validate(&self, credential: &SecretString) -> Result<()> {
        let check = Duration::from_secs(1);
        ProviderHttp::new(&self.endpoint, self.ca_cert.as_deref(), check)?;
        let project_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':');
        if self.project.is_empty() || !self.project.chars().all(project_ok) {
            return Err(Error::invalid(format!(
                "--project {:?} is not a Google Cloud project id or number",
                self.project
            )));
        }
        if let Some(prefix) = &self.prefix {
            if prefix.is_empty() || !prefix.chars().all(secret_id_char) {
                return Err(Error::invalid(format!(
                    "--prefix {prefix:?}: secret ids hold only letters, digits, - and _"
                )));
            }
        }
        if self.filter.as_deref().is_some_and(|f| f.trim().is_empty()) {
            return Err(Error::invalid("--filter must not be empty"));
        }
        let account = ServiceAccount::parse(credential)?;
        let (origin, _) = split_url(&account.token_uri)
            .map_err(|_| Error::invalid("service-account key: token_uri is not an http(s) URL"))?;
        ProviderHttp::new(&origin, self.ca_cert.as_deref(), check)
            .map_err(|_| Error::invalid("service-account key: token_uri is not an http(s) URL"))?;
        Ok(())
    }
}

fn secret_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_')
}

pub struct GcpSource {
    config: GcpConfig,
    account: ServiceAccount,
    /// The Secret Manager API.
    api: ProviderHttp,
    /// The token endpoint (often another host than the API) and its path.
    token_endpoint: (ProviderHttp, String),
}

impl GcpSource {
    pub fn new(config: GcpConfig, credential: SecretString, timeout: Duration) -> Result<Self> {
        config.validate(&credential)?;
        let account = ServiceAccount::parse(&credential)?;
        let api = ProviderHttp::new(&config.endpoint, config.ca_cert.as_deref(), timeout)?;
        let (origin, path) = split_url(&account.token_uri)?;
        let token_http = ProviderHttp::new(&origin, config.ca_cert.as_deref(), timeout)?;
        Ok(GcpSource {
            config,
            account,
            api,
            token_endpoint: (token_http, path),
        })
    }

    /// An access token, as the `authorization` header's value (`Bearer …`).
    async fn login(&self) -> Result<SecretString> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::Internal("the system clock is before 1970".into()))?
            .as_secs();
        let assertion = self.account.assertion(SCOPE, now)?;
        let body = Zeroizing::new(form_encode(&[
            ("grant_type", GRANT_TYPE),
            ("assertion", assertion.expose_secret()),
        ]));
        let (http, path) = &self.token_endpoint;
        let answer = http
            .call_with_body(
                Method::POST,
                path,
                &[],
                "application/x-www-form-urlencoded",
                Bytes::from(body.as_bytes().to_vec()),
            )
            .await?;
        if !(200..300).contains(&answer.status) {
            return Err(token_error(&answer, &self.account.client_email));
        }
        let json = answer.json()?;
        json["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(|t| SecretString::from(format!("Bearer {t}")))
            .ok_or_else(|| {
                Error::Unavailable(
                    "malformed answer from the token endpoint: no access_token".into(),
                )
            })
    }

    fn project_path(&self) -> String {
        format!("/v1/projects/{}", segment(&self.config.project))
    }

    /// Every secret id of the project (matching `filter`), page after page.
    async fn list(&self, bearer: &SecretString) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let mut seen_tokens = std::collections::HashSet::new();
        let mut page_token: Option<String> = None;
        loop {
            let mut path = format!("{}/secrets?pageSize={PAGE_SIZE}", self.project_path());
            if let Some(token) = &page_token {
                path.push_str(&format!("&pageToken={}", segment(token)));
            }
            if let Some(filter) = &self.config.filter {
                path.push_str(&format!("&filter={}", segment(filter)));
            }
            let answer = self
                .api
                .call(
                    Method::GET,
                    &path,
                    &[("authorization", bearer.expose_secret())],
                    None,
                )
                .await?;
            let page = parse_page(&ok(answer, "list of secrets")?.json()?)?;
            ids.extend(page.ids);
            if ids.len() > MAX_SECRETS {
                return Err(Error::FailedPrecondition(format!(
                    "project {} holds more than {MAX_SECRETS} secrets: narrow the sync with \
                     --prefix or --filter",
                    self.config.project
                )));
            }
            match page.next {
                None => return Ok(ids),
                Some(next) if !seen_tokens.insert(next.clone()) => {
                    return Err(Error::Unavailable(
                        "malformed list answer: a nextPageToken came back twice".into(),
                    ))
                }
                Some(next) => page_token = Some(next),
            }
        }
    }
}

#[async_trait::async_trait]
impl SecretSource for GcpSource {
    async fn fetch(&self) -> Result<Vec<FetchedSecret>> {
        let bearer = self.login().await?;
        let prefix = self.config.prefix.as_deref().unwrap_or("");
        let wanted: Vec<String> = self
            .list(&bearer)
            .await?
            .into_iter()
            .filter(|id| id.starts_with(prefix))
            .collect();
        let mut reads = JoinSet::new();
        let mut out = Vec::with_capacity(wanted.len());
        let mut pending = wanted.into_iter();
        loop {
            while reads.len() < PARALLEL_READS {
                let Some(id) = pending.next() else { break };
                let read = LatestRead {
                    api: self.api.clone(),
                    bearer: bearer.clone(),
                    secret_path: format!("{}/secrets/{}", self.project_path(), segment(&id)),
                    id,
                };
                reads.spawn(read.run());
            }
            let Some(done) = reads.join_next().await else {
                break;
            };
            let (id, value) =
                done.map_err(|e| Error::Internal(format!("a secret read did not finish: {e}")))??;
            if let Some(value) = value {
                out.push(FetchedSecret {
                    reference: format!("projects/{}/secrets/{id}", self.config.project),
                    key: id[prefix.len()..].to_string(),
                    value,
                });
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }
}

/// Reading one secret's latest version (a task of its own, so several run at once).
struct LatestRead {
    api: ProviderHttp,
    bearer: SecretString,
    /// `/v1/projects/{project}/secrets/{id}`
    secret_path: String,
    id: String,
}

impl LatestRead {
    /// The value, or `None` when the secret has no value to read (see the module doc).
    async fn run(self) -> Result<(String, Option<SecretString>)> {
        let auth = [("authorization", self.bearer.expose_secret())];
        let answer = self
            .api
            .call(
                Method::GET,
                &format!("{}/versions/latest:access", self.secret_path),
                &auth,
                None,
            )
            .await?;
        let what = format!("read of secret {}", self.id);
        match answer.status {
            // No version at all, or the secret went away since the listing.
            404 => return Ok((self.id, None)),
            // Disabled or destroyed latest version, or another precondition (a Cloud KMS key
            // problem): the version's state tells which.
            400 if google_error(&answer.body).0 == "FAILED_PRECONDITION" => {
                let meta = self
                    .api
                    .call(
                        Method::GET,
                        &format!("{}/versions/latest", self.secret_path),
                        &auth,
                        None,
                    )
                    .await?;
                let state = ok(meta, &format!("version lookup of secret {}", self.id))?.json()?
                    ["state"]
                    .as_str()
                    .map(str::to_string);
                if matches!(state.as_deref(), Some("DISABLED" | "DESTROYED")) {
                    return Ok((self.id, None));
                }
                // Not a withdrawn value: the refusal as it came.
                return Err(ok(answer, &what).err().expect("a 400 answer is an error"));
            }
            _ => {}
        }
        let json = ok(answer, &what)?.json()?;
        let value = payload(&json, &self.id)?;
        Ok((self.id, Some(value)))
    }
}

#[cfg(test)]
mod unit_tests {
    use serde_json::json;

    use super::*;

    fn key_file() -> SecretString {
        SecretString::from(
            json!({
                "type": "service_account",
                "private_key": include_str!("gcp/test_only_key.pem"),
                "client_email": "berth@p.iam.gserviceaccount.com",
                "token_uri": "https://oauth2.example/token",
            })
            .to_string(),
        )
    }

    #[test]
    fn settings_need_a_project_and_a_usable_key_file() {
        let config = |project: &str| GcpConfig {
            project: project.into(),
            endpoint: default_endpoint(),
            prefix: None,
            filter: None,
            ca_cert: None,
        };
        config("my-project-123").validate(&key_file()).unwrap();
        config("123456789012").validate(&key_file()).unwrap();
        let e = config("a/b").validate(&key_file()).unwrap_err().to_string();
        assert!(e.contains("--project"), "{e}");
        let e = GcpConfig {
            prefix: Some("my.app".into()),
            ..config("p")
        }
        .validate(&key_file())
        .unwrap_err()
        .to_string();
        assert!(e.contains("--prefix"), "{e}");
        let e = GcpConfig {
            endpoint: "ftp://x".into(),
            ..config("p")
        }
        .validate(&key_file())
        .unwrap_err()
        .to_string();
        assert!(e.contains("https://"), "{e}");
        let bad_uri = SecretString::from(
            key_file()
                .expose_secret()
                .replace("https://oauth2.example/token", "file:///etc/passwd"),
        );
        let e = config("p").validate(&bad_uri).unwrap_err().to_string();
        assert!(e.contains("token_uri"), "{e}");
        let e = config("p")
            .validate(&SecretString::from("s3cr3t-not-json".to_string()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("service-account key file") && !e.contains("s3cr3t"),
            "{e}"
        );
    }
}
