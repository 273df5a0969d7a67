//! `azure-keyvault`: the secrets of one Azure Key Vault.
//!
//! Login is the OAuth 2.0 client-credentials grant of Microsoft Entra ID (an app registration
//! or service principal with its client secret): `POST {authority_host}/{tenant_id}/oauth2/
//! v2.0/token`, form-encoded `client_id`, `client_secret`, `grant_type=client_credentials`,
//! `scope=https://vault.azure.net/.default`, returns an `access_token`. The sync lists
//! `GET {vault_url}/secrets?api-version=7.4&maxresults=25`, following each page's `nextLink`
//! until there is none, then reads each secret's current value with
//! `GET {vault_url}/secrets/{name}?api-version=7.4`.
//!
//! A `nextLink` is followed only when it points at the configured vault (same scheme, host and
//! port): the bearer token is never sent anywhere else. Both addresses must be `https://`.
//! Disabled secrets (`attributes.enabled == false`) are skipped — Key Vault refuses to read
//! them (`403 Forbidden`, inner code `SecretDisabled`), and a secret disabled or deleted between
//! the listing and its read is skipped the same way — so disabling a secret upstream removes
//! it from the group at the next sync (or marks it stale while something references it).
//!
//! The token's scope follows the vault's cloud: a vault at `*.vault.<suffix>` asks for
//! `https://vault.<suffix>/.default` (`vault.azure.cn`, `vault.usgovcloudapi.net`, …); any other
//! address (a test double) asks for `https://vault.azure.net/.default`.
//!
//! How names map: Key Vault names allow only letters, digits and dashes, so a name maps by
//! [`super::variable_name`]: `my-db-url` -> `my_db_url` (case kept; a name starting with a digit
//! cannot be a variable and fails the sync, naming it). The reference is
//! `{vault_url}/secrets/{name}`.

use std::time::Duration;

use http::{Method, Uri};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::http::{segment, Answer, ProviderHttp};
use super::{FetchedSecret, ProviderConfig, SecretSource};
use crate::error::{Error, Result};

/// The Key Vault REST version berth speaks.
const API_VERSION: &str = "7.4";
/// Key Vault's own largest page.
const PAGE_SIZE: usize = 25;
/// Secrets one sync may read.
const MAX_SECRETS: usize = 10_000;

/// The non-secret settings, stored as `secret_providers.config`. The credential is the client
/// secret of the app registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureKeyvaultConfig {
    /// `https://myvault.vault.azure.net`
    pub vault_url: String,
    /// The directory (tenant) id, or its domain (`contoso.onmicrosoft.com`).
    pub tenant_id: String,
    /// The application (client) id.
    pub client_id: String,
    /// Microsoft Entra ID's address: `https://login.microsoftonline.com` by default
    /// (`https://login.microsoftonline.us`, `https://login.chinacloudapi.cn`, …).
    #[serde(default = "default_authority_host")]
    pub authority_host: String,
    /// PEM of a CA to trust instead of the system's roots, for both addresses (a TLS-inspecting
    /// proxy, or a test double).
    #[serde(default)]
    pub ca_cert: Option<String>,
}

fn default_authority_host() -> String {
    "https://login.microsoftonline.com".into()
}

impl AzureKeyvaultConfig {
    fn vault_url(&self) -> &str {
        self.vault_url.trim_end_matches('/')
    }

    fn authority_host(&self) -> &str {
        self.authority_host.trim_end_matches('/')
    }

    /// The scope the token is asked for, from the vault's cloud.
    fn scope(&self) -> String {
        let host = self
            .vault_url()
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_ascii_lowercase))
            .unwrap_or_default();
        match host.split_once(".vault.") {
            Some((name, suffix)) if !name.is_empty() && suffix.contains('.') => {
                format!("https://vault.{suffix}/.default")
            }
            _ => "https://vault.azure.net/.default".into(),
        }
    }
}

impl ProviderConfig for AzureKeyvaultConfig {
    fn validate(&self, credential: &SecretString) -> Result<()> {
        for (what, url) in [
            ("vault_url", self.vault_url()),
            ("authority_host", self.authority_host()),
        ] {
            ProviderHttp::new(url, self.ca_cert.as_deref(), Duration::from_secs(1))?;
            let uri: Uri = url.parse().expect("checked by ProviderHttp::new");
            if uri.scheme_str() != Some("https") {
                return Err(Error::invalid(format!(
                    "azure {what} {url:?} must start with https://"
                )));
            }
            if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                return Err(Error::invalid(format!(
                    "azure {what} {url:?} must be an address without a path, such as https://myvault.vault.azure.net"
                )));
            }
        }
        let id_like = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        };
        if !id_like(&self.tenant_id) {
            return Err(Error::invalid(
                "azure tenant_id must be a directory id (a GUID) or a domain",
            ));
        }
        if !id_like(&self.client_id) {
            return Err(Error::invalid(
                "azure client_id must be an application id (a GUID)",
            ));
        }
        if credential.expose_secret().trim().is_empty() {
            return Err(Error::invalid("the azure client secret is empty"));
        }
        Ok(())
    }
}

pub struct AzureKeyvaultSource {
    config: AzureKeyvaultConfig,
    /// The app registration's client secret.
    client_secret: SecretString,
    /// Microsoft Entra ID (the token endpoint).
    login: ProviderHttp,
    /// The vault.
    vault: ProviderHttp,
    /// The vault's address, to check every `nextLink` against.
    vault_uri: Uri,
}

impl AzureKeyvaultSource {
    pub fn new(
        config: AzureKeyvaultConfig,
        client_secret: SecretString,
        timeout: Duration,
    ) -> Result<Self> {
        config.validate(&client_secret)?;
        let ca = config.ca_cert.as_deref();
        let login = ProviderHttp::new(config.authority_host(), ca, timeout)?;
        let vault = ProviderHttp::new(config.vault_url(), ca, timeout)?;
        let vault_uri = config.vault_url().parse().expect("validated");
        Ok(AzureKeyvaultSource {
            config,
            client_secret,
            login,
            vault,
            vault_uri,
        })
    }

    async fn token(&self) -> Result<SecretString> {
        let scope = self.config.scope();
        let answer = self
            .login
            .call_form(
                &format!("/{}/oauth2/v2.0/token", segment(&self.config.tenant_id)),
                &[],
                &[
                    ("client_id", &self.config.client_id),
                    ("client_secret", self.client_secret.expose_secret()),
                    ("grant_type", "client_credentials"),
                    ("scope", &scope),
                ],
            )
            .await?;
        if !(200..300).contains(&answer.status) {
            // {"error": "invalid_client", "error_description": "AADSTS7000215: …\r\nTrace ID: …"}
            let detail = serde_json::from_slice::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|j| {
                    let code = j["error"].as_str()?.to_string();
                    let description = j["error_description"]
                        .as_str()
                        .and_then(|d| d.lines().next())
                        .map(|d| format!(": {}", d.chars().take(200).collect::<String>()))
                        .unwrap_or_default();
                    Some(format!("{code}{description}"))
                })
                .unwrap_or_else(|| format!("HTTP {}", answer.status));
            return Err(match answer.status {
                400 | 401 | 403 => {
                    Error::PermissionDenied(format!("azure token request refused: {detail}"))
                }
                status => {
                    Error::Unavailable(format!("azure token request failed ({status}): {detail}"))
                }
            });
        }
        answer.json()?["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(|t| SecretString::from(t.to_string()))
            .ok_or_else(|| {
                Error::Unavailable("azure token endpoint answered without an access_token".into())
            })
    }

    /// The path and query of a `nextLink`, if it points at the configured vault.
    fn next_page(&self, link: &str) -> Result<String> {
        let foreign = || {
            Error::Unavailable(
                "key vault answered a nextLink outside the configured vault; not followed".into(),
            )
        };
        let uri: Uri = link.parse().map_err(|_| foreign())?;
        let port = |u: &Uri| {
            u.port_u16().unwrap_or(if u.scheme_str() == Some("https") {
                443
            } else {
                80
            })
        };
        let same = uri.scheme() == self.vault_uri.scheme()
            && uri
                .host()
                .zip(self.vault_uri.host())
                .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
            && port(&uri) == port(&self.vault_uri);
        if !same {
            return Err(foreign());
        }
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        if path.starts_with("/secrets") {
            Ok(path.to_string())
        } else {
            Err(foreign())
        }
    }

    /// Every secret's name and whether it is enabled, all pages.
    async fn list(&self, bearer: &str) -> Result<Vec<(String, bool)>> {
        let mut out = Vec::new();
        let mut next = Some(format!(
            "/secrets?api-version={API_VERSION}&maxresults={PAGE_SIZE}"
        ));
        let mut seen = std::collections::BTreeSet::new();
        while let Some(path) = next.take() {
            if !seen.insert(path.clone()) {
                return Err(Error::Unavailable(
                    "key vault listing loops (a nextLink repeats)".into(),
                ));
            }
            let answer = self
                .vault
                .call(Method::GET, &path, &[("authorization", bearer)], None)
                .await?;
            let json = ok(answer, "secret listing")?.json()?;
            let items = json["value"].as_array().ok_or_else(|| {
                Error::Unavailable("malformed key vault answer: no value array".into())
            })?;
            for item in items {
                let name = item["id"]
                    .as_str()
                    .and_then(|id| id.trim_end_matches('/').rsplit_once("/secrets/"))
                    .map(|(_, name)| name)
                    .filter(|name| valid_name(name))
                    .ok_or_else(|| {
                        Error::Unavailable(
                            "malformed key vault answer: a secret id without a valid name".into(),
                        )
                    })?;
                let enabled = item["attributes"]["enabled"].as_bool().unwrap_or(true);
                out.push((name.to_string(), enabled));
            }
            if out.len() > MAX_SECRETS {
                return Err(Error::FailedPrecondition(format!(
                    "more than {MAX_SECRETS} secrets in the vault"
                )));
            }
            next = match json["nextLink"].as_str() {
                Some(link) if !link.is_empty() => Some(self.next_page(link)?),
                _ => None,
            };
        }
        Ok(out)
    }

    /// The current value of one secret; `None` when it was disabled or deleted since the
    /// listing.
    async fn value(&self, bearer: &str, name: &str) -> Result<Option<SecretString>> {
        let answer = self
            .vault
            .call(
                Method::GET,
                &format!("/secrets/{}?api-version={API_VERSION}", segment(name)),
                &[("authorization", bearer)],
                None,
            )
            .await?;
        if answer.status == 404 || (answer.status == 403 && inner_code(&answer) == "SecretDisabled")
        {
            return Ok(None);
        }
        let json = ok(answer, "secret read")?.json()?;
        if json["attributes"]["enabled"].as_bool() == Some(false) {
            return Ok(None);
        }
        json["value"]
            .as_str()
            .map(|v| Some(SecretString::from(v.to_string())))
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "malformed key vault answer: secret {name:?} has no value"
                ))
            })
    }
}

#[async_trait::async_trait]
impl SecretSource for AzureKeyvaultSource {
    async fn fetch(&self) -> Result<Vec<FetchedSecret>> {
        let token = self.token().await?;
        let bearer = Zeroizing::new(format!("Bearer {}", token.expose_secret()));
        let mut out = Vec::new();
        for (name, enabled) in self.list(&bearer).await? {
            if !enabled {
                continue;
            }
            if let Some(value) = self.value(&bearer, &name).await? {
                out.push(FetchedSecret {
                    reference: format!("{}/secrets/{name}", self.config.vault_url()),
                    key: name,
                    value,
                });
            }
        }
        Ok(out)
    }
}

/// Key Vault's rule for object names.
fn valid_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// `error.innererror.code` of a Key Vault error body, or "".
fn inner_code(answer: &Answer) -> String {
    serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|j| {
            j["error"]["innererror"]["code"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// A 2xx answer, or Key Vault's error named by the step. Its error bodies are
/// `{"error": {"code", "message", "innererror"}}`; the message names what failed (never a
/// value), so it is shown, shortened.
fn ok(answer: Answer, what: &str) -> Result<Answer> {
    if (200..300).contains(&answer.status) {
        return Ok(answer);
    }
    let detail = serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|j| {
            let code = j["error"]["code"].as_str()?.to_string();
            let message = j["error"]["message"]
                .as_str()
                .and_then(|m| m.lines().next())
                .map(|m| format!(": {}", m.chars().take(200).collect::<String>()))
                .unwrap_or_default();
            Some(format!("{code}{message}"))
        })
        .unwrap_or_else(|| format!("HTTP {}", answer.status));
    Err(match answer.status {
        401 | 403 => Error::PermissionDenied(format!("key vault {what} refused: {detail}")),
        400 | 404 => Error::FailedPrecondition(format!(
            "key vault {what} failed ({}): {detail}",
            answer.status
        )),
        _ => Error::Unavailable(format!(
            "key vault {what} failed ({}): {detail}",
            answer.status
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vault_url: &str) -> AzureKeyvaultConfig {
        AzureKeyvaultConfig {
            vault_url: vault_url.into(),
            tenant_id: "00000000-0000-0000-0000-000000000001".into(),
            client_id: "00000000-0000-0000-0000-000000000002".into(),
            authority_host: default_authority_host(),
            ca_cert: None,
        }
    }

    fn secret() -> SecretString {
        SecretString::from("s".to_string())
    }

    #[test]
    fn settings_are_checked() {
        assert!(config("https://v.vault.azure.net/")
            .validate(&secret())
            .is_ok());
        let e = config("http://v.vault.azure.net")
            .validate(&secret())
            .unwrap_err()
            .to_string();
        assert!(e.contains("https://"), "{e}");
        assert!(config("https://v.vault.azure.net/x")
            .validate(&secret())
            .is_err());
        let bad_tenant = AzureKeyvaultConfig {
            tenant_id: "a tenant".into(),
            ..config("https://v.vault.azure.net")
        };
        assert!(bad_tenant.validate(&secret()).is_err());
        assert!(config("https://v.vault.azure.net")
            .validate(&SecretString::from(String::new()))
            .is_err());
    }

    #[test]
    fn the_scope_follows_the_vaults_cloud() {
        assert_eq!(
            config("https://v.vault.azure.net").scope(),
            "https://vault.azure.net/.default"
        );
        assert_eq!(
            config("https://v.vault.azure.cn").scope(),
            "https://vault.azure.cn/.default"
        );
        assert_eq!(
            config("https://127.0.0.1:8443").scope(),
            "https://vault.azure.net/.default"
        );
    }

    #[test]
    fn a_next_link_is_followed_only_within_the_vault() {
        let source = AzureKeyvaultSource::new(
            config("https://v.vault.azure.net"),
            secret(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            source
                .next_page("https://V.vault.azure.net:443/secrets?api-version=7.4&$skiptoken=abc")
                .unwrap(),
            "/secrets?api-version=7.4&$skiptoken=abc"
        );
        for foreign in [
            "https://evil.example/secrets?x",
            "http://v.vault.azure.net/secrets?x",
            "https://v.vault.azure.net:8443/secrets?x",
            "https://v.vault.azure.net/keys?x",
            "not a url",
        ] {
            assert!(source.next_page(foreign).is_err(), "{foreign}");
        }
    }

    #[test]
    fn names_map_by_the_documented_rule() {
        assert!(valid_name("my-db-url"));
        assert!(!valid_name("my_db_url") && !valid_name("") && !valid_name("a/b"));
        assert_eq!(
            super::super::variable_name("my-db-url").as_deref(),
            Some("my_db_url")
        );
    }
}
