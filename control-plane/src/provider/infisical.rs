//! `infisical`: Infisical Cloud or a self-hosted Infisical.
//!
//! Login is Universal Auth: `POST /api/v1/auth/universal-auth/login` with the machine
//! identity's client id and client secret returns an access token. The sync then reads every
//! secret of one environment at and below the configured folder in one call:
//! `GET /api/v3/secrets/raw?workspaceId=…&environment=…&secretPath=…&recursive=true
//! &expandSecretReferences=true&viewSecretValue=true&include_imports=false`.
//!
//! Which list endpoint: SPEC names `GET /api/v4/secrets`; Infisical's own Python SDK
//! (`infisicalsdk` 1.0.18, the newest) still lists through `/api/v3/secrets/raw`, which the API
//! docs file under "deprecated" but which takes the same query (with `workspaceId` for
//! `projectId`) and answers the same body. berth speaks what the SDK speaks, so the test
//! double (`tests/providers/doubles/infisical.py`) is checked by the vendor's client on exactly
//! the path berth uses. Moving to v4 is the one path and the one query key below.
//!
//! The listing is not paged: one answer holds every secret below the folder. A folder that
//! does not exist lists as empty (Infisical's behaviour), so a sync then removes what it had
//! synced, as for any other provider whose path was emptied. An unknown environment or
//! project is an error. References (`${KEY}`, `${env.folder.KEY}`) are expanded by Infisical,
//! so a value is what an application would see. Secret imports are not followed: sync the
//! imported folder through its own provider. Personal secrets (a user's overrides) are
//! skipped; a machine identity has none.
//!
//! How keys become names: a secret in the configured folder keeps its key (`DATABASE_URL`); a
//! secret in a folder below it is prefixed with its folder path relative to the configured
//! one, then mapped by [`super::variable_name`] (`/app` configured, `STRIPE_KEY` in
//! `/app/billing/live` -> `billing/live/STRIPE_KEY` -> `billing_live_STRIPE_KEY`). The
//! reference is `/{environment}{folder}/{KEY}`, as in the seed (`/production/DATABASE_URL`).

use std::time::Duration;

use http::Method;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::http::{segment, Answer, ProviderHttp};
use super::{FetchedSecret, ProviderConfig, SecretSource};
use crate::error::{Error, Result};

/// Secrets one sync may read.
const MAX_SECRETS: usize = 10_000;

/// The non-secret settings, stored as `secret_providers.config`. The credential is the
/// machine identity's client secret. The seed's camelCase names are accepted as well.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfisicalConfig {
    /// `https://app.infisical.com` (the default), `https://eu.infisical.com`, or a
    /// self-hosted instance.
    #[serde(default = "default_site_url", alias = "siteUrl")]
    pub site_url: String,
    /// The Universal Auth client id of the machine identity (not a secret by itself).
    #[serde(alias = "clientId")]
    pub client_id: String,
    /// The project's id (Infisical's API still calls it `workspaceId`).
    #[serde(alias = "projectId")]
    pub project_id: String,
    /// The environment's slug: `dev`, `staging`, `prod`, …
    pub environment: String,
    /// The folder synced, with everything below it: `/` by default.
    #[serde(default = "default_secret_path", alias = "secretPath")]
    pub secret_path: String,
    /// PEM of the CA that signed a self-hosted instance's certificate.
    #[serde(default)]
    pub ca_cert: Option<String>,
}

fn default_site_url() -> String {
    "https://app.infisical.com".into()
}

fn default_secret_path() -> String {
    "/".into()
}

impl InfisicalConfig {
    /// `/a/b/` -> `/a/b`; the root stays `/`.
    fn folder(&self) -> &str {
        match self.secret_path.trim_end_matches('/') {
            "" => "/",
            folder => folder,
        }
    }
}

impl ProviderConfig for InfisicalConfig {
    fn validate(&self, credential: &SecretString) -> Result<()> {
        ProviderHttp::new(
            &self.site_url,
            self.ca_cert.as_deref(),
            Duration::from_secs(1),
        )?;
        for (what, value) in [
            ("client_id", &self.client_id),
            ("project_id", &self.project_id),
            ("environment", &self.environment),
        ] {
            if value.trim().is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(Error::invalid(format!(
                    "infisical {what} must be non-empty, without spaces"
                )));
            }
        }
        let path = &self.secret_path;
        let bad_segment = path
            .trim_matches('/')
            .split('/')
            .any(|s| matches!(s, "." | "..") || s.chars().any(|c| c.is_control()));
        if !path.starts_with('/') || path.contains("//") || bad_segment {
            return Err(Error::invalid(format!(
                "infisical secret_path {path:?} must be an absolute folder path such as / or /app/prod"
            )));
        }
        if credential.expose_secret().trim().is_empty() {
            return Err(Error::invalid("the infisical client secret is empty"));
        }
        Ok(())
    }
}

pub struct InfisicalSource {
    config: InfisicalConfig,
    /// The machine identity's client secret.
    client_secret: SecretString,
    http: ProviderHttp,
}

impl InfisicalSource {
    pub fn new(
        config: InfisicalConfig,
        client_secret: SecretString,
        timeout: Duration,
    ) -> Result<Self> {
        config.validate(&client_secret)?;
        let http = ProviderHttp::new(&config.site_url, config.ca_cert.as_deref(), timeout)?;
        Ok(InfisicalSource {
            config,
            client_secret,
            http,
        })
    }

    async fn login(&self) -> Result<SecretString> {
        let body = serde_json::json!({
            "clientId": self.config.client_id,
            "clientSecret": self.client_secret.expose_secret(),
        });
        let answer = self
            .http
            .call(
                Method::POST,
                "/api/v1/auth/universal-auth/login",
                &[],
                Some(&body),
            )
            .await?;
        let json = ok(answer, "universal auth login")?.json()?;
        json["accessToken"]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(|t| SecretString::from(t.to_string()))
            .ok_or_else(|| {
                Error::Unavailable("infisical login answered without an access token".into())
            })
    }

    fn list_path(&self) -> String {
        format!(
            "/api/v3/secrets/raw?workspaceId={}&environment={}&secretPath={}\
             &recursive=true&expandSecretReferences=true&viewSecretValue=true\
             &include_imports=false",
            segment(&self.config.project_id),
            segment(&self.config.environment),
            segment(self.config.folder()),
        )
    }

    /// The key a secret in `folder` is known by before [`super::variable_name`]: its own key
    /// in the configured folder, prefixed by the relative folder path below it.
    fn key(&self, folder: &str, key: &str) -> Result<String> {
        let base = self.config.folder();
        let relative = if folder == base {
            ""
        } else if base == "/" {
            folder.trim_start_matches('/')
        } else {
            folder
                .strip_prefix(base)
                .and_then(|r| r.strip_prefix('/'))
                .ok_or_else(|| {
                    Error::Unavailable(format!(
                        "malformed infisical answer: secret {key:?} in folder {folder:?}, \
                         outside the configured {base:?}"
                    ))
                })?
        };
        Ok(if relative.is_empty() {
            key.to_string()
        } else {
            format!("{relative}/{key}")
        })
    }

    fn reference(&self, folder: &str, key: &str) -> String {
        let folder = folder.trim_end_matches('/');
        format!("/{}{folder}/{key}", self.config.environment)
    }
}

#[async_trait::async_trait]
impl SecretSource for InfisicalSource {
    async fn fetch(&self) -> Result<Vec<FetchedSecret>> {
        let token = self.login().await?;
        let bearer = Zeroizing::new(format!("Bearer {}", token.expose_secret()));
        let answer = self
            .http
            .call(
                Method::GET,
                &self.list_path(),
                &[("authorization", bearer.as_str())],
                None,
            )
            .await?;
        let json = ok(answer, "secret listing")?.json()?;
        let secrets = json["secrets"].as_array().ok_or_else(|| {
            Error::Unavailable("malformed infisical answer: no secrets array".into())
        })?;
        if secrets.len() > MAX_SECRETS {
            return Err(Error::FailedPrecondition(format!(
                "more than {MAX_SECRETS} secrets below the configured path"
            )));
        }
        let mut out = Vec::with_capacity(secrets.len());
        for secret in secrets {
            let Some(key) = secret["secretKey"].as_str() else {
                return Err(Error::Unavailable(
                    "malformed infisical answer: a secret without a key".into(),
                ));
            };
            if secret["type"].as_str() == Some("personal") {
                continue;
            }
            if secret["secretValueHidden"].as_bool() == Some(true) {
                return Err(Error::PermissionDenied(format!(
                    "the machine identity may list infisical secret {key:?} but not read its value"
                )));
            }
            let Some(value) = secret["secretValue"].as_str() else {
                return Err(Error::Unavailable(format!(
                    "malformed infisical answer: secret {key:?} has no string value"
                )));
            };
            let folder = secret["secretPath"]
                .as_str()
                .map(|p| match p.trim_end_matches('/') {
                    "" => "/",
                    p => p,
                })
                .unwrap_or(self.config.folder());
            out.push(FetchedSecret {
                reference: self.reference(folder, key),
                key: self.key(folder, key)?,
                value: SecretString::from(value.to_string()),
            });
        }
        Ok(out)
    }
}

/// A 2xx answer, or Infisical's error named by the step. Its error bodies are
/// `{"reqId", "statusCode", "message", "error"}`; the message names what failed (never a
/// value), so it is shown, shortened.
fn ok(answer: Answer, what: &str) -> Result<Answer> {
    if (200..300).contains(&answer.status) {
        return Ok(answer);
    }
    let detail = serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|j| {
            let message = j["message"].as_str()?.lines().next()?.to_string();
            Some(match j["error"].as_str() {
                Some(kind) => format!("{kind}: {message}"),
                None => message,
            })
        })
        .map(|d| d.chars().take(200).collect::<String>())
        .unwrap_or_else(|| format!("HTTP {}", answer.status));
    Err(match answer.status {
        401 | 403 => Error::PermissionDenied(format!("infisical {what} refused: {detail}")),
        400 | 404 | 422 => Error::FailedPrecondition(format!(
            "infisical {what} failed ({}): {detail}",
            answer.status
        )),
        _ => Error::Unavailable(format!(
            "infisical {what} failed ({}): {detail}",
            answer.status
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret_path: &str) -> InfisicalConfig {
        InfisicalConfig {
            site_url: default_site_url(),
            client_id: "id".into(),
            project_id: "p".into(),
            environment: "prod".into(),
            secret_path: secret_path.into(),
            ca_cert: None,
        }
    }

    fn source(secret_path: &str) -> InfisicalSource {
        InfisicalSource::new(
            config(secret_path),
            SecretString::from("s".to_string()),
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[test]
    fn keys_below_the_folder_are_prefixed_with_their_relative_path() {
        let root = source("/");
        assert_eq!(root.key("/", "DATABASE_URL").unwrap(), "DATABASE_URL");
        assert_eq!(
            root.key("/billing/live", "KEY").unwrap(),
            "billing/live/KEY"
        );
        assert_eq!(root.reference("/", "DATABASE_URL"), "/prod/DATABASE_URL");
        let app = source("/app/");
        assert_eq!(app.key("/app", "PORT").unwrap(), "PORT");
        assert_eq!(app.key("/app/db", "URL").unwrap(), "db/URL");
        assert_eq!(app.reference("/app/db", "URL"), "/prod/app/db/URL");
        assert!(app.key("/application", "X").is_err(), "a sibling folder");
        assert!(app.key("/other", "X").is_err());
    }

    #[test]
    fn settings_are_checked() {
        let s = SecretString::from("s".to_string());
        assert!(config("/").validate(&s).is_ok());
        assert!(config("relative").validate(&s).is_err());
        assert!(config("/a//b").validate(&s).is_err());
        assert!(config("/a/../b").validate(&s).is_err());
        assert!(config("/")
            .validate(&SecretString::from(" ".to_string()))
            .is_err());
        let spaced = InfisicalConfig {
            environment: "pro d".into(),
            ..config("/")
        };
        assert!(spaced.validate(&s).is_err());
        // The seed's names.
        let seed: InfisicalConfig = serde_json::from_value(serde_json::json!({
            "clientId": "c", "projectId": "p", "environment": "production", "secretPath": "/"
        }))
        .unwrap();
        assert_eq!(seed.site_url, "https://app.infisical.com");
        assert_eq!(seed.client_id, "c");
    }
}
