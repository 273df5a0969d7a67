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

mod service_account;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use bytes::Bytes;
use http::Method;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use zeroize::Zeroizing;

use super::http::{form_encode, segment, split_url, Answer, ProviderHttp};
use super::{FetchedSecret, ProviderConfig, SecretSource};
use crate::error::{Error, Result};
pub use service_account::ServiceAccount;

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
                return Err(ok(answer, &what).err().expect("not a 2xx answer"));
            }
            _ => {}
        }
        let json = ok(answer, &what)?.json()?;
        let value = payload(&json, &self.id)?;
        Ok((self.id, Some(value)))
    }
}

/// One page of `secrets.list`: the secret ids, and the next page's token.
struct Page {
    ids: Vec<String>,
    next: Option<String>,
}

fn parse_page(json: &serde_json::Value) -> Result<Page> {
    let malformed = |what: &str| Error::Unavailable(format!("malformed list answer: {what}"));
    if !json.is_object() {
        return Err(malformed("not a JSON object"));
    }
    let secrets = match &json["secrets"] {
        // An empty page (or project) leaves the field out.
        serde_json::Value::Null => &Vec::new(),
        serde_json::Value::Array(a) => a,
        _ => return Err(malformed("secrets is not a list")),
    };
    let ids = secrets
        .iter()
        .map(|s| {
            // `projects/{number}/secrets/{id}` (Google answers with the project number).
            let name = s["name"]
                .as_str()
                .ok_or_else(|| malformed("a secret has no name"))?;
            match name.rsplit_once("/secrets/") {
                Some((_, id)) if !id.is_empty() && id.chars().all(secret_id_char) => {
                    Ok(id.to_string())
                }
                _ => Err(malformed(&format!(
                    "{:?} is not a secret name",
                    name.chars().take(200).collect::<String>()
                ))),
            }
        })
        .collect::<Result<_>>()?;
    let next = match &json["nextPageToken"] {
        serde_json::Value::Null => None,
        serde_json::Value::String(t) if t.is_empty() => None,
        serde_json::Value::String(t) => Some(t.clone()),
        _ => return Err(malformed("nextPageToken is not a string")),
    };
    Ok(Page { ids, next })
}

/// The text of an `AccessSecretVersionResponse`. Errors name the secret, never the data.
fn payload(json: &serde_json::Value, id: &str) -> Result<SecretString> {
    let malformed =
        |what: &str| Error::Unavailable(format!("malformed answer for secret {id}: {what}"));
    let data = json["payload"]["data"]
        .as_str()
        .ok_or_else(|| malformed("no payload.data"))?;
    // proto3 JSON: bytes are base64, standard or URL-safe, padded or not.
    let lenient =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let bytes = GeneralPurpose::new(&alphabet::STANDARD, lenient)
        .decode(data)
        .or_else(|_| GeneralPurpose::new(&alphabet::URL_SAFE, lenient).decode(data))
        .map(Zeroizing::new)
        .map_err(|_| malformed("payload.data is not base64"))?;
    let expected = match &json["payload"]["dataCrc32c"] {
        serde_json::Value::Null => None,
        // int64 is a string in proto3 JSON; accept a number too.
        serde_json::Value::String(s) => Some(s.parse::<u64>().ok()),
        serde_json::Value::Number(n) => Some(n.as_u64()),
        _ => Some(None),
    };
    match expected {
        None => {}
        Some(Some(sum)) if sum == u64::from(crc32c(&bytes)) => {}
        Some(Some(_)) => {
            return Err(malformed(
                "the payload does not match its dataCrc32c checksum (corrupted on the way)",
            ))
        }
        Some(None) => return Err(malformed("payload.dataCrc32c is not a number")),
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        Error::FailedPrecondition(format!(
            "secret {id} holds binary data, not UTF-8 text: leave it out with --prefix or --filter"
        ))
    })?;
    Ok(SecretString::from(text.to_string()))
}

/// Google's error body `{"error": {"code", "message", "status"}}`: (status, message), the
/// message cut short. Both name resources, never values.
fn google_error(body: &[u8]) -> (String, String) {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let error = &json["error"];
    let status = error["status"].as_str().unwrap_or("").to_string();
    let message = error["message"]
        .as_str()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect();
    (status, message)
}

/// A 2xx answer, or the API's error named by what failed.
fn ok(answer: Answer, what: &str) -> Result<Answer> {
    if (200..300).contains(&answer.status) {
        return Ok(answer);
    }
    let (status, message) = google_error(&answer.body);
    let detail = match (status.is_empty(), message.is_empty()) {
        (false, false) => format!("{status}: {message}"),
        (false, true) => status,
        (true, false) => message,
        (true, true) => format!("HTTP {}", answer.status),
    };
    let text = format!("gcp secret manager {what} refused ({detail})");
    Err(match answer.status {
        401 | 403 => Error::PermissionDenied(text),
        400 | 404 | 409 => Error::FailedPrecondition(text),
        _ => Error::Unavailable(format!(
            "gcp secret manager {what} failed ({}): {detail}",
            answer.status
        )),
    })
}

/// A refused token request. Google answers a bad key, a deleted key or a disabled account
/// with 400 `invalid_grant` (RFC 6749 §5.2): that is a refused credential too.
fn token_error(answer: &Answer, client_email: &str) -> Error {
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    let code = json["error"].as_str().unwrap_or("");
    let description: String = json["error_description"]
        .as_str()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect();
    let detail = match (code.is_empty(), description.is_empty()) {
        (true, _) => format!("HTTP {}", answer.status),
        (false, true) => code.to_string(),
        (false, false) => format!("{code}: {description}"),
    };
    let refused = matches!(answer.status, 401 | 403)
        || (answer.status == 400
            && matches!(
                code,
                "invalid_grant" | "invalid_client" | "unauthorized_client"
            ));
    if refused {
        Error::PermissionDenied(format!(
            "the token endpoint refused the service-account key of {client_email} ({detail})"
        ))
    } else {
        Error::Unavailable(format!(
            "the token endpoint failed for {client_email} ({}): {detail}",
            answer.status
        ))
    }
}

/// CRC-32C (Castagnoli), the checksum of `dataCrc32c`.
fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod unit_tests {
    use serde_json::json;

    use super::*;

    fn answer(status: u16, body: serde_json::Value) -> Answer {
        Answer {
            status,
            body: Bytes::from(body.to_string()),
        }
    }

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
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
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

    #[test]
    fn a_page_gives_secret_ids_and_the_next_token() {
        let page = parse_page(&json!({
            "secrets": [
                {"name": "projects/123456789012/secrets/db-password", "replication": {}},
                {"name": "projects/123456789012/secrets/API_KEY"},
            ],
            "nextPageToken": "abc",
            "totalSize": 5,
        }))
        .unwrap();
        assert_eq!(page.ids, vec!["db-password", "API_KEY"]);
        assert_eq!(page.next.as_deref(), Some("abc"));
        let last = parse_page(&json!({"secrets": [], "nextPageToken": ""})).unwrap();
        assert!(last.ids.is_empty() && last.next.is_none());
        let empty = parse_page(&json!({})).unwrap();
        assert!(empty.ids.is_empty() && empty.next.is_none());
        for bad in [
            json!([]),
            json!({"secrets": {}}),
            json!({"secrets": [{"id": "x"}]}),
            json!({"secrets": [{"name": "projects/1/secrets/a b"}]}),
            json!({"secrets": [{"name": "projects/1/topics/x"}]}),
            json!({"secrets": [], "nextPageToken": 3}),
        ] {
            let e = parse_page(&bad).err().unwrap();
            assert_eq!(e.code(), crate::error::ErrorCode::Unavailable, "{bad}: {e}");
            assert!(e.to_string().contains("malformed list answer"), "{e}");
        }
    }

    #[test]
    fn a_payload_is_base64_text_checked_against_its_crc32c() {
        let value = "postgres://u:p@db/app?x=~~~";
        let std = base64::engine::general_purpose::STANDARD.encode(value);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value);
        let sum = crc32c(value.as_bytes());
        for body in [
            json!({"payload": {"data": std, "dataCrc32c": sum.to_string()}}),
            json!({"payload": {"data": std, "dataCrc32c": sum}}),
            json!({"payload": {"data": url}}),
        ] {
            assert_eq!(payload(&body, "db").unwrap().expose_secret(), value);
        }
        let cases = [
            (json!({"payload": {}}), "no payload.data"),
            (json!({"payload": {"data": "*not base64*"}}), "not base64"),
            (
                json!({"payload": {"data": std, "dataCrc32c": (sum ^ 1).to_string()}}),
                "checksum",
            ),
            (
                json!({"payload": {"data": std, "dataCrc32c": "x"}}),
                "not a number",
            ),
            (
                json!({"payload": {"data": base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe, 0x00])}}),
                "binary data",
            ),
        ];
        for (body, expected) in cases {
            let e = payload(&body, "db").err().unwrap().to_string();
            assert!(e.contains(expected) && e.contains("db"), "{body}: {e}");
            assert!(
                !e.contains("postgres") && !e.contains(&std),
                "no value in errors: {e}"
            );
        }
    }

    #[test]
    fn google_errors_keep_status_and_message_and_refusals_are_permission_denied() {
        let refused = ok(
            answer(
                403,
                json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
                    "message": "Permission 'secretmanager.secrets.list' denied for resource 'projects/p'"}}),
            ),
            "list of secrets",
        )
        .err()
        .unwrap();
        assert_eq!(refused.code(), crate::error::ErrorCode::PermissionDenied);
        assert!(
            refused
                .to_string()
                .contains("PERMISSION_DENIED: Permission 'secretmanager.secrets.list'"),
            "{refused}"
        );
        let e = ok(answer(401, json!({})), "list").err().unwrap();
        assert_eq!(e.code(), crate::error::ErrorCode::PermissionDenied);
        assert!(e.to_string().contains("HTTP 401"), "{e}");
        let e = ok(
            answer(503, json!({"error": {"status": "UNAVAILABLE"}})),
            "list",
        )
        .err()
        .unwrap();
        assert_eq!(e.code(), crate::error::ErrorCode::Unavailable, "{e}");
        let e = ok(
            answer(
                400,
                json!({"error": {"status": "INVALID_ARGUMENT", "message": "Invalid filter"}}),
            ),
            "list",
        )
        .err()
        .unwrap();
        assert_eq!(e.code(), crate::error::ErrorCode::FailedPrecondition, "{e}");

        let bad_key = token_error(
            &answer(
                400,
                json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
            ),
            "berth@p.iam.gserviceaccount.com",
        );
        assert_eq!(bad_key.code(), crate::error::ErrorCode::PermissionDenied);
        assert!(
            bad_key.to_string().contains("Invalid JWT Signature."),
            "{bad_key}"
        );
        let down = token_error(&answer(502, json!({})), "a@b");
        assert_eq!(down.code(), crate::error::ErrorCode::Unavailable);
    }
}
