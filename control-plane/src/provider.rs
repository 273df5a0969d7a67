//! External secret providers (SPEC §8): where a group's `synced` secrets come from.
//!
//! A provider is a [`SecretSource`]: it logs in and returns every secret under its configured
//! path as `(reference, field) -> value`. Everything after the fetch is the same for every
//! type and lives here and in `service/providers.rs`: the documented name rule
//! ([`variable_name`]), the plan of a sync ([`plan`]: create / update / remove / unchanged /
//! stale), and its all-or-nothing application.
//!
//! Architecture invariants: a source only reads from its provider, never writes; values
//! travel in `SecretString` and never reach an error, a log line or a `secret_syncs` row; a
//! sync fetches everything before it changes anything.

pub mod aws;
pub mod azure_keyvault;
pub mod gcp;
pub mod http;
pub mod infisical;
pub mod vault;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// The seed's five provider types (`secret_providers.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderType {
    HashicorpVault,
    AwsSecretsManager,
    Infisical,
    AzureKeyvault,
    GcpSecretManager,
}

impl ProviderType {
    pub const ALL: [ProviderType; 5] = [
        Self::HashicorpVault,
        Self::AwsSecretsManager,
        Self::Infisical,
        Self::AzureKeyvault,
        Self::GcpSecretManager,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HashicorpVault => "hashicorp-vault",
            Self::AwsSecretsManager => "aws-secrets-manager",
            Self::Infisical => "infisical",
            Self::AzureKeyvault => "azure-keyvault",
            Self::GcpSecretManager => "gcp-secret-manager",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
                Error::invalid(format!(
                    "unknown provider type {s:?}: one of {}",
                    known.join(", ")
                ))
            })
    }
}

impl fmt::Display for ProviderType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The non-secret settings of one provider type, stored as `secret_providers.config` (JSON).
/// Deserialized from the `key=value` settings of `berth provider add` (unknown keys are
/// refused: `#[serde(deny_unknown_fields)]`), validated with the credential in hand.
pub trait ProviderConfig: Serialize + DeserializeOwned {
    fn validate(&self, credential: &SecretString) -> Result<()>;
}

/// The one place a type's settings are parsed: returns the JSON to store.
pub fn config_json(
    provider_type: ProviderType,
    settings: &BTreeMap<String, String>,
    credential: &SecretString,
) -> Result<String> {
    let value = serde_json::Value::Object(
        settings
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    );
    match provider_type {
        ProviderType::HashicorpVault => {
            typed::<vault::VaultConfig>(provider_type, value, credential)
        }
        ProviderType::AwsSecretsManager => {
            typed::<aws::AwsConfig>(provider_type, value, credential)
        }
        ProviderType::GcpSecretManager => typed::<gcp::GcpConfig>(provider_type, value, credential),
        ProviderType::Infisical => {
            typed::<infisical::InfisicalConfig>(provider_type, value, credential)
        }
        ProviderType::AzureKeyvault => {
            typed::<azure_keyvault::AzureKeyvaultConfig>(provider_type, value, credential)
        }
    }
}

/// The one place a stored provider becomes a client.
pub fn source(
    provider_type: ProviderType,
    config_json: &str,
    credential: SecretString,
    timeout: Duration,
) -> Result<Box<dyn SecretSource>> {
    match provider_type {
        ProviderType::HashicorpVault => Ok(Box::new(vault::VaultSource::new(
            stored(provider_type, config_json)?,
            credential,
            timeout,
        )?)),
        ProviderType::AwsSecretsManager => Ok(Box::new(aws::AwsSource::new(
            stored(provider_type, config_json)?,
            credential,
            timeout,
        )?)),
        ProviderType::GcpSecretManager => Ok(Box::new(gcp::GcpSource::new(
            stored(provider_type, config_json)?,
            credential,
            timeout,
        )?)),
        ProviderType::Infisical => Ok(Box::new(infisical::InfisicalSource::new(
            stored(provider_type, config_json)?,
            credential,
            timeout,
        )?)),
        ProviderType::AzureKeyvault => Ok(Box::new(azure_keyvault::AzureKeyvaultSource::new(
            stored(provider_type, config_json)?,
            credential,
            timeout,
        )?)),
    }
}

fn typed<C: ProviderConfig>(
    provider_type: ProviderType,
    value: serde_json::Value,
    credential: &SecretString,
) -> Result<String> {
    let config: C = serde_json::from_value(value)
        .map_err(|e| Error::invalid(format!("{provider_type} settings: {e}")))?;
    config.validate(credential)?;
    Ok(serde_json::to_string(&config).expect("config serializes"))
}

fn stored<C: ProviderConfig>(provider_type: ProviderType, json: &str) -> Result<C> {
    serde_json::from_str(json)
        .map_err(|e| Error::Internal(format!("stored {provider_type} config: {e}")))
}

/// One value read from a provider.
pub struct FetchedSecret {
    /// Where it lives upstream (path and field, ARN, …): `secrets.provider_reference`.
    pub reference: String,
    /// The key it is known by upstream, before [`variable_name`].
    pub key: String,
    pub value: SecretString,
}

impl fmt::Debug for FetchedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchedSecret")
            .field("reference", &self.reference)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A provider client. `fetch` returns everything the configured path holds, or an error
/// (then nothing is changed).
#[async_trait::async_trait]
pub trait SecretSource: Send + Sync {
    async fn fetch(&self) -> Result<Vec<FetchedSecret>>;
}

/// The documented rule from an upstream key to a variable name: `/`, `-`, `.` and spaces
/// become `_`; the result must then be a valid variable name (`[A-Za-z_][A-Za-z0-9_]*`).
/// Case is kept.
pub fn variable_name(key: &str) -> Option<String> {
    let mapped: String = key
        .trim_matches('/')
        .chars()
        .map(|c| {
            if matches!(c, '/' | '-' | '.' | ' ') {
                '_'
            } else {
                c
            }
        })
        .collect();
    crate::validate::secret_name(&mapped).ok().map(|_| mapped)
}

/// Maps fetched keys to variable names; two keys on one name, or a key with no valid name,
/// fail the whole sync with both keys named.
pub fn map_names(fetched: Vec<FetchedSecret>) -> Result<BTreeMap<String, FetchedSecret>> {
    let mut out: BTreeMap<String, FetchedSecret> = BTreeMap::new();
    for secret in fetched {
        let Some(name) = variable_name(&secret.key) else {
            return Err(Error::invalid(format!(
                "provider key {:?} ({}) cannot be mapped to a variable name: \
                 after mapping / - . and spaces to _, it must match [A-Za-z_][A-Za-z0-9_]*",
                secret.key, secret.reference
            )));
        };
        if let Some(first) = out.get(&name) {
            return Err(Error::invalid(format!(
                "provider keys {:?} ({}) and {:?} ({}) both map to the variable name {name}",
                first.key, first.reference, secret.key, secret.reference
            )));
        }
        out.insert(name, secret);
    }
    Ok(out)
}

/// A secret of the group as the plan sees it.
pub struct ExistingSecret {
    pub id: i64,
    /// Synced from this provider (otherwise manual, or from another provider).
    pub synced_here: bool,
    /// Kept although it was gone upstream.
    pub stale: bool,
    /// The stored value, decrypted to compare: only for a secret this provider owns and
    /// still holds (nothing else is ever compared).
    pub value: Option<SecretString>,
    /// Environment variables referencing it (`app:KEY`, `(global):KEY`): only looked up for
    /// a secret this provider owns and no longer holds (nothing else needs them).
    pub references: Vec<String>,
}

/// What a sync will do; computed before anything is written.
#[derive(Default)]
pub struct SyncPlan {
    pub create: Vec<(String, FetchedSecret)>,
    pub update: Vec<(i64, String, FetchedSecret)>,
    /// Synced secrets gone upstream and referenced by nobody.
    pub remove: Vec<(i64, String)>,
    pub unchanged: Vec<(i64, String)>,
    /// Of the unchanged, those that were stale: back upstream.
    pub revived: Vec<i64>,
    /// Synced secrets gone upstream but still referenced: kept, marked stale.
    pub stale: Vec<(i64, String, Vec<String>)>,
}

impl SyncPlan {
    /// Names only, never values: what `sync --dry-run` and the result print.
    pub fn summary(&self) -> SyncSummary {
        SyncSummary {
            created: self.create.iter().map(|(n, _)| n.clone()).collect(),
            updated: self.update.iter().map(|(_, n, _)| n.clone()).collect(),
            removed: self.remove.iter().map(|(_, n)| n.clone()).collect(),
            unchanged: self.unchanged.len(),
            stale: self
                .stale
                .iter()
                .map(|(_, n, refs)| (n.clone(), refs.clone()))
                .collect(),
        }
    }
}

/// A sync's outcome by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncSummary {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
    /// Names kept although gone upstream, with what references them.
    pub stale: Vec<(String, Vec<String>)>,
}

impl SyncSummary {
    /// `success`, or `partial` when something gone upstream had to be kept.
    pub fn status(&self) -> &'static str {
        if self.stale.is_empty() {
            "success"
        } else {
            "partial"
        }
    }
}

/// Plans a sync of `fetched` into a group holding `existing` (by name). A fetched name that
/// is a manual secret (or another provider's) fails the sync: a sync never touches them.
pub fn plan(
    fetched: BTreeMap<String, FetchedSecret>,
    mut existing: BTreeMap<String, ExistingSecret>,
) -> Result<SyncPlan> {
    let mut plan = SyncPlan::default();
    for (name, secret) in fetched {
        match existing.remove(&name) {
            None => plan.create.push((name, secret)),
            Some(e) if !e.synced_here => {
                return Err(Error::FailedPrecondition(format!(
                    "the group already has a secret {name} that this provider does not own \
                     (a manual one, or another provider's); rename or delete it, or rename {:?} upstream",
                    secret.key
                )))
            }
            Some(e)
                if e.value.as_ref().map(|v| v.expose_secret())
                    == Some(secret.value.expose_secret()) =>
            {
                if e.stale {
                    plan.revived.push(e.id);
                }
                plan.unchanged.push((e.id, name))
            }
            Some(e) => plan.update.push((e.id, name, secret)),
        }
    }
    let gone: BTreeSet<String> = existing
        .iter()
        .filter(|(_, e)| e.synced_here)
        .map(|(n, _)| n.clone())
        .collect();
    for name in gone {
        let e = existing.remove(&name).expect("listed above");
        if e.references.is_empty() {
            plan.remove.push((e.id, name));
        } else {
            plan.stale.push((e.id, name, e.references));
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(key: &str, value: &str) -> FetchedSecret {
        FetchedSecret {
            reference: format!("kv/{key}"),
            key: key.to_string(),
            value: SecretString::from(value.to_string()),
        }
    }

    fn existing(id: i64, value: &str, synced_here: bool, references: &[&str]) -> ExistingSecret {
        ExistingSecret {
            id,
            synced_here,
            stale: false,
            value: Some(SecretString::from(value.to_string())),
            references: references.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn settings_are_typed_per_provider_and_unknown_ones_refused() {
        let token = SecretString::from("t".to_string());
        let settings = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let json = config_json(
            ProviderType::HashicorpVault,
            &settings(&[("address", "https://vault.example:8200")]),
            &token,
        )
        .unwrap();
        assert!(
            json.contains("\"mount\":\"secret\"") && json.contains("\"auth\":\"token\""),
            "{json}"
        );
        let e = config_json(
            ProviderType::HashicorpVault,
            &settings(&[("address", "https://v"), ("adress", "typo")]),
            &token,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("adress"), "{e}");
        let e = config_json(
            ProviderType::HashicorpVault,
            &settings(&[("address", "https://v"), ("auth", "approle")]),
            &token,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--role-id"), "{e}");
        let e = config_json(
            ProviderType::HashicorpVault,
            &settings(&[("address", "ftp://v")]),
            &token,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("https://"), "{e}");
    }

    #[test]
    fn keys_map_by_the_documented_rule() {
        assert_eq!(
            variable_name("DATABASE_URL").as_deref(),
            Some("DATABASE_URL")
        );
        assert_eq!(variable_name("db/password").as_deref(), Some("db_password"));
        assert_eq!(variable_name("api-key.v2").as_deref(), Some("api_key_v2"));
        assert_eq!(variable_name("/nested/x/").as_deref(), Some("nested_x"));
        assert_eq!(variable_name("1st"), None);
        assert_eq!(variable_name("naïve"), None);
        assert_eq!(variable_name(""), None);
    }

    #[test]
    fn colliding_or_unmappable_keys_fail_with_both_names() {
        let e = map_names(vec![fetched("api-key", "a"), fetched("api_key", "b")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"api-key\"") && e.contains("\"api_key\""),
            "{e}"
        );
        let e = map_names(vec![fetched("9lives", "a")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("9lives"), "{e}");
        assert!(!e.contains("\"a\""), "no value in errors: {e}");
    }

    #[test]
    fn a_plan_creates_updates_keeps_removes_and_marks_stale() {
        let fetched = map_names(vec![
            fetched("NEW", "n"),
            fetched("CHANGED", "new-value"),
            fetched("SAME", "same"),
        ])
        .unwrap();
        let existing = BTreeMap::from([
            ("CHANGED".to_string(), existing(1, "old-value", true, &[])),
            ("SAME".to_string(), existing(2, "same", true, &[])),
            ("GONE".to_string(), existing(3, "x", true, &[])),
            ("GONE_USED".to_string(), existing(4, "x", true, &["web:DB"])),
            ("MANUAL".to_string(), existing(5, "m", false, &[])),
        ]);
        let summary = plan(fetched, existing).unwrap().summary();
        assert_eq!(summary.created, vec!["NEW"]);
        assert_eq!(summary.updated, vec!["CHANGED"]);
        assert_eq!(summary.unchanged, 1);
        assert_eq!(summary.removed, vec!["GONE"]);
        assert_eq!(
            summary.stale,
            vec![("GONE_USED".to_string(), vec!["web:DB".to_string()])]
        );
        assert_eq!(summary.status(), "partial");
    }

    #[test]
    fn an_unchanged_value_is_not_rewritten_and_a_stale_one_back_upstream_is_revived() {
        let fetched = map_names(vec![fetched("BACK", "same"), fetched("SAME", "s")]).unwrap();
        let back = ExistingSecret {
            stale: true,
            ..existing(1, "same", true, &[])
        };
        let existing = BTreeMap::from([
            ("BACK".to_string(), back),
            ("SAME".to_string(), existing(2, "s", true, &[])),
        ]);
        let plan = plan(fetched, existing).unwrap();
        assert!(plan.create.is_empty() && plan.update.is_empty());
        assert_eq!(plan.unchanged.len(), 2);
        assert_eq!(plan.revived, vec![1]);
        assert_eq!(plan.summary().status(), "success");
    }

    #[test]
    fn a_manual_secret_is_never_overwritten_by_a_sync() {
        let fetched = map_names(vec![fetched("MANUAL", "upstream")]).unwrap();
        let existing = BTreeMap::from([("MANUAL".to_string(), existing(5, "m", false, &[]))]);
        let e = plan(fetched, existing).err().unwrap().to_string();
        assert!(e.contains("MANUAL") && e.contains("does not own"), "{e}");
    }
}
