//! `hashicorp-vault`: HashiCorp Vault and OpenBao, KV version 2.
//!
//! Login is a token (`X-Vault-Token`) or AppRole (`POST /v1/auth/approle/login`). The sync
//! reads the secret at the configured path itself (`GET /v1/{mount}/data/{path}`) and every
//! secret below it, listing folders recursively (`GET /v1/{mount}/metadata/{path}?list=true`).
//!
//! How fields become names: a KV secret holds several fields. The fields of the secret at the
//! configured path keep their own names (`myapp/prod` with `DATABASE_URL` -> `DATABASE_URL`);
//! a secret below it is prefixed with its relative path (`myapp/prod/stripe` with `key` ->
//! `stripe/key` -> `stripe_key`). String fields are taken as they are; numbers and booleans
//! as their JSON text; objects and arrays as compact JSON.

use std::time::Duration;

use http::Method;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

use super::http::{segment, Answer, ProviderHttp};
use super::{FetchedSecret, ProviderConfig, SecretSource};
use crate::error::{Error, Result};

/// A folder tree deeper than this is refused (a listing loop, or a misconfigured path).
const MAX_DEPTH: usize = 16;
/// Secrets one sync may read.
const MAX_SECRETS: usize = 10_000;

/// The non-secret settings, stored as `secret_providers.config`. The credential is the
/// token (`auth=token`) or the AppRole secret id (`auth=approle`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault.example:8200`
    pub address: String,
    /// KV v2 mount, `secret` by default.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// Path under the mount; empty for the whole mount.
    #[serde(default)]
    pub path: String,
    /// Vault Enterprise / OpenBao namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `token` (default) or `approle`.
    #[serde(default = "default_auth")]
    pub auth: String,
    /// AppRole role id (not a secret by itself; the secret id is).
    #[serde(default)]
    pub role_id: Option<String>,
    /// PEM of the CA that signed the server's certificate.
    #[serde(default)]
    pub ca_cert: Option<String>,
}

fn default_mount() -> String {
    "secret".into()
}

fn default_auth() -> String {
    "token".into()
}

impl ProviderConfig for VaultConfig {
    fn validate(&self, credential: &SecretString) -> Result<()> {
        ProviderHttp::new(
            &self.address,
            self.ca_cert.as_deref(),
            Duration::from_secs(1),
        )?;
        if self.mount.trim_matches('/').is_empty() {
            return Err(Error::invalid("--mount must not be empty"));
        }
        match self.auth.as_str() {
            "token" => {}
            "approle" if self.role_id.as_deref().is_some_and(|r| !r.is_empty()) => {}
            "approle" => return Err(Error::invalid("AppRole login needs --role-id")),
            other => {
                return Err(Error::invalid(format!(
                    "unknown vault auth {other:?}: token or approle"
                )))
            }
        }
        if credential.expose_secret().trim().is_empty() {
            return Err(Error::invalid(match self.auth.as_str() {
                "token" => "the vault token is empty",
                _ => "the AppRole secret id is empty",
            }));
        }
        Ok(())
    }
}

pub struct VaultSource {
    config: VaultConfig,
    /// The token, or the AppRole secret id.
    credential: SecretString,
    http: ProviderHttp,
}

impl VaultSource {
    pub fn new(config: VaultConfig, credential: SecretString, timeout: Duration) -> Result<Self> {
        config.validate(&credential)?;
        let http = ProviderHttp::new(&config.address, config.ca_cert.as_deref(), timeout)?;
        Ok(VaultSource {
            config,
            credential,
            http,
        })
    }

    async fn login(&self) -> Result<SecretString> {
        if self.config.auth == "token" {
            return Ok(self.credential.clone());
        }
        let body = serde_json::json!({
            "role_id": self.config.role_id.clone().unwrap_or_default(),
            "secret_id": self.credential.expose_secret(),
        });
        let answer = self
            .request(Method::POST, "/v1/auth/approle/login", None, Some(&body))
            .await?;
        let answer = ok(answer, "AppRole login")?;
        let json = answer.json()?;
        json["auth"]["client_token"]
            .as_str()
            .map(|t| SecretString::from(t.to_string()))
            .ok_or_else(|| {
                Error::Unavailable("AppRole login answered without a client token".into())
            })
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&SecretString>,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer> {
        let mut headers: Vec<(&'static str, &str)> = Vec::new();
        if let Some(token) = token {
            headers.push(("x-vault-token", token.expose_secret()));
        }
        if let Some(ns) = &self.config.namespace {
            headers.push(("x-vault-namespace", ns));
        }
        self.http.call(method, path, &headers, body).await
    }

    fn api_path(&self, kind: &str, relative: &str) -> String {
        let mut parts: Vec<String> =
            vec![segment(self.config.mount.trim_matches('/')), kind.into()];
        for p in self
            .config
            .path
            .split('/')
            .chain(relative.split('/'))
            .filter(|p| !p.is_empty())
        {
            parts.push(segment(p));
        }
        format!("/v1/{}", parts.join("/"))
    }

    /// Keys under a folder (`x/` for sub-folders); an absent folder is empty.
    async fn list(&self, token: &SecretString, relative: &str) -> Result<Vec<String>> {
        let path = format!("{}?list=true", self.api_path("metadata", relative));
        let answer = self.request(Method::GET, &path, Some(token), None).await?;
        if answer.status == 404 {
            return Ok(Vec::new());
        }
        let json = ok(answer, "list")?.json()?;
        let keys = json["data"]["keys"]
            .as_array()
            .ok_or_else(|| Error::Unavailable("malformed list answer: no data.keys".into()))?;
        keys.iter()
            .map(|k| {
                k.as_str().map(str::to_string).ok_or_else(|| {
                    Error::Unavailable("malformed list answer: a key is not a string".into())
                })
            })
            .collect()
    }

    /// The fields of one secret; `None` when there is no secret at that path.
    async fn read(
        &self,
        token: &SecretString,
        relative: &str,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
        let answer = self
            .request(
                Method::GET,
                &self.api_path("data", relative),
                Some(token),
                None,
            )
            .await?;
        if answer.status == 404 {
            return Ok(None);
        }
        let json = ok(answer, "read")?.json()?;
        match &json["data"]["data"] {
            serde_json::Value::Object(fields) => Ok(Some(fields.clone())),
            // A deleted (soft) latest version: nothing to sync.
            serde_json::Value::Null => Ok(None),
            _ => Err(Error::Unavailable(
                "malformed read answer: data.data is not an object".into(),
            )),
        }
    }

    fn reference(&self, relative: &str, field: &str) -> String {
        let path: Vec<&str> = [self.config.path.as_str(), relative]
            .into_iter()
            .flat_map(|p| p.split('/'))
            .filter(|p| !p.is_empty())
            .collect();
        format!(
            "{}/{}#{field}",
            self.config.mount.trim_matches('/'),
            path.join("/")
        )
    }
}

#[async_trait::async_trait]
impl SecretSource for VaultSource {
    async fn fetch(&self) -> Result<Vec<FetchedSecret>> {
        let token = self.login().await?;
        let mut out = Vec::new();
        // (relative path of a secret or folder, depth)
        let mut pending: Vec<(String, usize)> = vec![(String::new(), 0)];
        while let Some((relative, depth)) = pending.pop() {
            if depth > MAX_DEPTH {
                return Err(Error::FailedPrecondition(format!(
                    "folders nest deeper than {MAX_DEPTH} levels below the configured path"
                )));
            }
            let is_folder = relative.is_empty() || relative.ends_with('/');
            if !relative.ends_with('/') {
                if let Some(fields) = self.read(&token, &relative).await? {
                    for (field, value) in fields {
                        let key = if relative.is_empty() {
                            field.clone()
                        } else {
                            format!("{relative}/{field}")
                        };
                        let value = match value {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        };
                        out.push(FetchedSecret {
                            reference: self.reference(&relative, &field),
                            key,
                            value: SecretString::from(value),
                        });
                    }
                }
            }
            if is_folder {
                for key in self.list(&token, &relative).await? {
                    pending.push((format!("{relative}{key}"), depth + 1));
                }
            }
            if out.len() > MAX_SECRETS {
                return Err(Error::FailedPrecondition(format!(
                    "more than {MAX_SECRETS} values below the configured path"
                )));
            }
        }
        Ok(out)
    }
}

/// A 2xx answer, or the provider's error named by what failed (never the body's values:
/// Vault error bodies are `{"errors": [...]}` messages, which are safe to show).
fn ok(answer: Answer, what: &str) -> Result<Answer> {
    if (200..300).contains(&answer.status) {
        return Ok(answer);
    }
    let detail = serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|j| {
            j["errors"].as_array().map(|e| {
                e.iter()
                    .filter_map(|m| m.as_str())
                    .map(|m| m.chars().take(200).collect::<String>())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        })
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| format!("HTTP {}", answer.status));
    Err(match answer.status {
        401 | 403 => Error::PermissionDenied(format!("vault {what} refused: {detail}")),
        _ => Error::Unavailable(format!("vault {what} failed ({}): {detail}", answer.status)),
    })
}
