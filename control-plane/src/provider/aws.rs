//! `aws-secrets-manager`: AWS Secrets Manager's JSON API, every request signed with
//! Signature Version 4 ([`sigv4`]) by an access key: `access_key_id` is a setting, the
//! provider's credential is the secret access key.
//!
//! A sync lists the secrets with `ListSecrets`, following `NextToken`, with the filter
//! `{Key: "name", Values: [prefix]}` when a prefix is set (AWS matches it case-sensitively at
//! the start of the name; secrets scheduled for deletion are not listed), then reads their
//! current values 20 at a time with `BatchGetSecretValue`. Where that call is refused (an IAM
//! policy granting only `ListSecrets` and `GetSecretValue`, the classic least privilege) or
//! unknown to the endpoint, the values come from one `GetSecretValue` each instead.
//!
//! A secret that answers `ResourceNotFoundException` when read (deleted since it was listed, or
//! created without a value yet, as Terraform's `aws_secretsmanager_secret` does) has nothing to
//! sync and is left out. Any other per-secret error (the `Errors` of a batch answer, or a
//! refused `GetSecretValue`) fails the whole sync, naming the secret: leaving it out would
//! remove its local copy.
//!
//! How names become variable names: the secret's name with the prefix stripped, then the
//! documented rule ([`super::variable_name`]). The prefix is a plain string prefix, as AWS's
//! filter is: with `prefix = myapp/prod/`, `myapp/prod/DATABASE_URL` -> `DATABASE_URL` and
//! `myapp/prod/stripe/api-key` -> `stripe_api_key`; `prefix = myapp/prod` would also select
//! `myapp/production/...`, so end a folder prefix with `/`.
//!
//! Values: one secret is one variable. `SecretString` is taken as it is, and a JSON object in
//! it (the console's "key/value" secrets) is not split into fields: the variable holds the JSON
//! text, as ECS and the Lambda extension inject a secret unless asked for one key, and a JSON
//! value such as a service-account key stays whole (splitting by shape would change what an
//! application receives when someone stores JSON). Keep one secret per variable to get one
//! variable each. `SecretBinary` (base64 in the answer) is decoded and taken as text when it is
//! valid UTF-8; other bytes fail the sync with the secret's name, since berth's values are text
//! (store such data base64-encoded in `SecretString`).
//!
//! `secrets.provider_reference` is the secret's ARN.

mod answer;
mod sigv4;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use self::answer::{collect_batch, malformed, ok, secret_text, AwsError, Listed};
use super::http::{Answer, ProviderHttp};
use super::{FetchedSecret, ProviderConfig, SecretSource};
use crate::error::{Error, Result};

/// Secrets one sync may read.
const MAX_SECRETS: usize = 10_000;
/// `ListSecrets` `MaxResults` (AWS's largest).
const LIST_PAGE_SIZE: u32 = 100;
/// Secrets per `BatchGetSecretValue` (AWS's largest).
const BATCH_SIZE: usize = 20;
/// Pages of one batch call's own `NextToken` before the answer is taken as looping.
const MAX_BATCH_PAGES: usize = 100;
/// The AWS JSON protocol's content type (`application/json` is not it).
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The non-secret settings, stored as `secret_providers.config`. The credential is the secret
/// access key of `access_key_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// `eu-central-1`: where the secrets live, and part of every signature.
    pub region: String,
    /// The API's URL; `https://secretsmanager.<region>.amazonaws.com` (`.amazonaws.com.cn` in
    /// China's regions) when unset. A VPC endpoint, a FIPS endpoint, or a local emulator.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Only secrets whose name starts with this (case-sensitive), stripped from their names.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `AKIA…`: the access key's id (not a secret by itself; the secret access key is).
    pub access_key_id: String,
    /// PEM of the CA that signed the endpoint's certificate (a private endpoint or proxy).
    #[serde(default)]
    pub ca_cert: Option<String>,
}

impl AwsConfig {
    fn endpoint(&self) -> String {
        match self.endpoint.as_deref().filter(|e| !e.is_empty()) {
            Some(endpoint) => endpoint.to_string(),
            None if self.region.starts_with("cn-") => {
                format!("https://secretsmanager.{}.amazonaws.com.cn", self.region)
            }
            None => format!("https://secretsmanager.{}.amazonaws.com", self.region),
        }
    }

    fn prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or("")
    }
}

impl ProviderConfig for AwsConfig {
    fn validate(&self, credential: &SecretString) -> Result<()> {
        let region_ok = !self.region.is_empty()
            && self.region.len() <= 32
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Err(Error::invalid(format!(
                "invalid --region {:?}: an AWS region such as eu-central-1",
                self.region
            )));
        }
        ProviderHttp::new(
            &self.endpoint(),
            self.ca_cert.as_deref(),
            Duration::from_secs(1),
        )?;
        // What AWS's name filter accepts, less `!` (a negation there) and the space and `:`
        // that no secret name holds.
        let prefix = self.prefix();
        if prefix.len() > 512
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b))
        {
            return Err(Error::invalid(format!(
                "invalid --prefix {prefix:?}: at most 512 of A-Z a-z 0-9 / _ + = . @ - (the characters of secret names)"
            )));
        }
        if self.access_key_id.is_empty()
            || !self
                .access_key_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        {
            return Err(Error::invalid(
                "--access-key-id must be an AWS access key id (letters and digits, AKIA…)",
            ));
        }
        if credential.expose_secret().trim().is_empty() {
            return Err(Error::invalid("the AWS secret access key is empty"));
        }
        Ok(())
    }
}

/// What one `BatchGetSecretValue` gave.
enum Batch {
    /// Values by ARN (`None`: nothing to sync).
    Values(BTreeMap<String, Option<SecretString>>),
    /// Refused to this key or unknown to this endpoint: `GetSecretValue` for every secret.
    Refused,
    /// `GetSecretValue` for the secrets of this batch.
    OneByOne,
}

pub struct AwsSource {
    config: AwsConfig,
    /// The secret access key.
    secret_access_key: SecretString,
    http: ProviderHttp,
    list_page_size: u32,
    batch_size: usize,
}

impl AwsSource {
    pub fn new(config: AwsConfig, credential: SecretString, timeout: Duration) -> Result<Self> {
        config.validate(&credential)?;
        let http = ProviderHttp::new(&config.endpoint(), config.ca_cert.as_deref(), timeout)?;
        Ok(AwsSource {
            config,
            secret_access_key: credential,
            http,
            list_page_size: LIST_PAGE_SIZE,
            batch_size: BATCH_SIZE,
        })
    }

    /// Smaller pages and batches, so that tests page with a few secrets.
    #[cfg(test)]
    fn paged(mut self, list_page_size: u32, batch_size: usize) -> Self {
        self.list_page_size = list_page_size;
        self.batch_size = batch_size;
        self
    }

    /// One signed call of the JSON API: `X-Amz-Target: secretsmanager.{action}`.
    async fn call(&self, action: &str, body: &Value) -> Result<Answer> {
        let body = body.to_string();
        let amz_date = sigv4::amz_date(time::OffsetDateTime::now_utc());
        let target = format!("secretsmanager.{action}");
        let path = self.http.full_path("/");
        let signed = [
            ("content-type", CONTENT_TYPE),
            ("host", self.http.authority()),
            ("x-amz-date", amz_date.as_str()),
            ("x-amz-target", target.as_str()),
        ];
        let authorization = sigv4::Signer {
            access_key_id: &self.config.access_key_id,
            // A key read from a file or a terminal may end in a newline; keys hold none.
            secret_access_key: self.secret_access_key.expose_secret().trim(),
            region: &self.config.region,
            service: "secretsmanager",
        }
        .authorization(
            &sigv4::Request {
                method: "POST",
                path: &path,
                query: "",
                headers: &signed,
                body: body.as_bytes(),
            },
            &amz_date,
        );
        let headers = [
            ("content-type", CONTENT_TYPE),
            ("x-amz-date", amz_date.as_str()),
            ("x-amz-target", target.as_str()),
            ("authorization", authorization.as_str()),
            ("accept", "application/json"),
        ];
        self.http
            .call_exact(Method::POST, "/", &headers, Bytes::from(body))
            .await
    }

    /// Every secret under the prefix, following `NextToken`.
    async fn list(&self) -> Result<Vec<Listed>> {
        let prefix = self.config.prefix();
        let mut out = Vec::new();
        let mut seen_tokens = BTreeSet::new();
        let mut next_token: Option<String> = None;
        loop {
            let mut body = json!({ "MaxResults": self.list_page_size });
            if !prefix.is_empty() {
                body["Filters"] = json!([{ "Key": "name", "Values": [prefix] }]);
            }
            if let Some(token) = &next_token {
                body["NextToken"] = json!(token);
            }
            let answer = ok(self.call("ListSecrets", &body).await?, "ListSecrets")?;
            let page = answer.json()?;
            let secrets = page["SecretList"]
                .as_array()
                .ok_or_else(|| malformed("ListSecrets", "SecretList is missing or not a list"))?;
            for secret in secrets {
                let (Some(arn), Some(name)) = (secret["ARN"].as_str(), secret["Name"].as_str())
                else {
                    return Err(malformed("ListSecrets", "a secret without ARN or Name"));
                };
                // AWS filters already; this keeps the prefix stripping exact whatever answers.
                if name.starts_with(prefix) {
                    out.push(Listed {
                        arn: arn.to_string(),
                        name: name.to_string(),
                    });
                }
            }
            if out.len() > MAX_SECRETS {
                return Err(Error::FailedPrecondition(format!(
                    "more than {MAX_SECRETS} secrets under the prefix {prefix:?}"
                )));
            }
            match page["NextToken"].as_str().filter(|t| !t.is_empty()) {
                Some(token) if !seen_tokens.insert(token.to_string()) => {
                    return Err(malformed("ListSecrets", "a NextToken came back twice"));
                }
                Some(token) => next_token = Some(token.to_string()),
                None => return Ok(out),
            }
        }
    }

    /// The current values of `secrets` by ARN (`None`: nothing to sync), from one batch call
    /// (and its own `NextToken` pages).
    async fn batch(&self, secrets: &[Listed]) -> Result<Batch> {
        let ids: Vec<&str> = secrets.iter().map(|s| s.arn.as_str()).collect();
        let mut values = BTreeMap::new();
        let mut next_token: Option<String> = None;
        for _ in 0..MAX_BATCH_PAGES {
            let mut body = json!({ "SecretIdList": ids });
            if let Some(token) = &next_token {
                body["NextToken"] = json!(token);
            }
            let answer = self.call("BatchGetSecretValue", &body).await?;
            if !(200..300).contains(&answer.status) {
                let error = AwsError::parse(&answer);
                if error.means_no_batch_call() {
                    return Ok(Batch::Refused);
                }
                if error.code == "ResourceNotFoundException" {
                    // moto fails a whole batch for one secret without a value; GetSecretValue
                    // tells each secret's own answer.
                    return Ok(Batch::OneByOne);
                }
                return Err(error.into_error("BatchGetSecretValue"));
            }
            let page = answer.json()?;
            collect_batch(&page, secrets, &mut values)?;
            match page["NextToken"].as_str().filter(|t| !t.is_empty()) {
                Some(token) => next_token = Some(token.to_string()),
                None => break,
            }
        }
        if let Some(missing) = secrets.iter().find(|s| !values.contains_key(&s.arn)) {
            return Err(malformed(
                "BatchGetSecretValue",
                &format!(
                    "neither a value nor an error for the secret {:?}",
                    missing.name
                ),
            ));
        }
        Ok(Batch::Values(values))
    }

    /// One secret's current value (`None`: nothing to sync).
    async fn get(&self, secret: &Listed) -> Result<Option<SecretString>> {
        let answer = self
            .call("GetSecretValue", &json!({ "SecretId": secret.arn }))
            .await?;
        if !(200..300).contains(&answer.status) {
            let error = AwsError::parse(&answer);
            if error.code == "ResourceNotFoundException" {
                return Ok(None);
            }
            return Err(error.into_error(&format!("GetSecretValue of {:?}", secret.name)));
        }
        secret_text("GetSecretValue", &secret.name, &answer.json()?).map(Some)
    }

    async fn get_each(&self, secrets: &[Listed]) -> Result<BTreeMap<String, Option<SecretString>>> {
        let mut values = BTreeMap::new();
        for secret in secrets {
            values.insert(secret.arn.clone(), self.get(secret).await?);
        }
        Ok(values)
    }

    fn fetched(&self, secret: Listed, value: SecretString) -> FetchedSecret {
        let key = secret.name[self.config.prefix().len()..].to_string();
        FetchedSecret {
            reference: secret.arn,
            key,
            value,
        }
    }
}

#[async_trait::async_trait]
impl SecretSource for AwsSource {
    async fn fetch(&self) -> Result<Vec<FetchedSecret>> {
        let listed = self.list().await?;
        let mut out = Vec::with_capacity(listed.len());
        let mut refused = false;
        for chunk in listed.chunks(self.batch_size.max(1)) {
            let batch = if refused {
                Batch::Refused
            } else {
                self.batch(chunk).await?
            };
            let mut values = match batch {
                Batch::Values(values) => values,
                Batch::Refused => {
                    // A refused batch call stays refused: it is not asked again.
                    refused = true;
                    self.get_each(chunk).await?
                }
                Batch::OneByOne => self.get_each(chunk).await?,
            };
            for secret in chunk {
                if let Some(value) = values.remove(&secret.arn).flatten() {
                    out.push(self.fetched(secret.clone(), value));
                }
            }
        }
        Ok(out)
    }
}
