//! A V1 `secret_providers.config` (one JSON object, the credential in plaintext inside, e.g.
//! the seed's Infisical `{clientId, clientSecret, projectId, environment, secretPath}`) split
//! into berth's settings for the type and its credential, which berth stores encrypted.
//!
//! The rule, documented in the README: keys are taken in snake_case (`clientId` is
//! `client_id`); the type's credential key is taken out (below); every other key must be a
//! setting of the type (`berth provider add --help`), or the provider is skipped with the
//! reason — names only, never a value.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret as _, SecretString};

use super::check::MappedProvider;
use crate::provider::{self, ProviderType};

/// The key of the credential in a V1 config, per type (snake_case), and the settings it
/// implies.
fn credential_keys(
    provider_type: ProviderType,
) -> &'static [(&'static str, &'static [(&'static str, &'static str)])] {
    match provider_type {
        ProviderType::HashicorpVault => &[("token", &[]), ("secret_id", &[("auth", "approle")])],
        ProviderType::AwsSecretsManager => &[("secret_access_key", &[])],
        ProviderType::Infisical | ProviderType::AzureKeyvault => &[("client_secret", &[])],
        ProviderType::GcpSecretManager => &[("service_account_key", &[]), ("credentials", &[])],
    }
}

/// `clientId` -> `client_id`; `secret_path` stays.
fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c == '-' {
            out.push('_');
        } else {
            out.push(c);
        }
    }
    out
}

/// Maps one V1 provider, or says why berth cannot take it (names only).
pub(super) fn provider_from_v1(
    provider_type: &str,
    config: &SecretString,
) -> Result<MappedProvider, String> {
    let provider_type =
        ProviderType::parse(provider_type).map_err(|e| format!("berth has no such type: {e}"))?;
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(config.expose_secret())
            .map_err(|_| "its config is not a JSON object".to_string())?;
    let mut settings = BTreeMap::new();
    let mut credentials: Vec<(String, SecretString)> = Vec::new();
    let keys = credential_keys(provider_type);
    for (key, value) in object {
        let key = snake_case(&key);
        let is_credential = keys.iter().any(|(k, _)| *k == key);
        let text = match value {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) => s,
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            // A service-account key may be kept as an object.
            object @ serde_json::Value::Object(_) if is_credential => object.to_string(),
            _ => {
                return Err(format!(
                    "config key {key} is not a string, number or boolean"
                ))
            }
        };
        if is_credential {
            credentials.push((key, SecretString::from(text)));
        } else {
            settings.insert(key, text);
        }
    }
    let (key, credential) = match credentials.len() {
        1 => credentials.pop().expect("one"),
        0 => {
            let expected: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
            return Err(format!(
                "its config has no credential (expected {})",
                expected.join(" or ")
            ));
        }
        _ => {
            let found: Vec<&str> = credentials.iter().map(|(k, _)| k.as_str()).collect();
            return Err(format!(
                "its config has more than one credential ({})",
                found.join(", ")
            ));
        }
    };
    let implied = keys
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, implied)| *implied)
        .unwrap_or_default();
    for (k, v) in implied {
        settings
            .entry((*k).to_string())
            .or_insert_with(|| (*v).to_string());
    }
    let config = provider::config_json(provider_type, &settings, &credential)
        .map_err(|e| format!("its config does not map: {e}"))?;
    Ok(MappedProvider {
        provider_type,
        config,
        credential,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> SecretString {
        SecretString::from(json.to_string())
    }

    #[test]
    fn the_seeds_infisical_config_maps_with_its_client_secret_as_the_credential() {
        let mapped = provider_from_v1(
            "infisical",
            &config(
                r#"{"clientId":"id-1","clientSecret":"s3cr3t-client","projectId":"p1",
                    "environment":"production","secretPath":"/"}"#,
            ),
        )
        .unwrap();
        assert_eq!(mapped.provider_type, ProviderType::Infisical);
        assert_eq!(mapped.credential.expose_secret(), "s3cr3t-client");
        assert!(!mapped.config.contains("s3cr3t"), "{}", mapped.config);
        let settings: serde_json::Value = serde_json::from_str(&mapped.config).unwrap();
        assert_eq!(settings["client_id"], "id-1");
        assert_eq!(settings["project_id"], "p1");
        assert_eq!(settings["environment"], "production");
    }

    #[test]
    fn a_vault_secret_id_means_approle() {
        let mapped = provider_from_v1(
            "hashicorp-vault",
            &config(r#"{"address":"https://vault.example:8200","roleId":"r1","secretId":"sid"}"#),
        )
        .unwrap();
        let settings: serde_json::Value = serde_json::from_str(&mapped.config).unwrap();
        assert_eq!(settings["auth"], "approle");
        assert_eq!(settings["role_id"], "r1");
        assert_eq!(mapped.credential.expose_secret(), "sid");
    }

    #[test]
    fn what_berth_cannot_take_is_a_reason_that_names_keys_never_values() {
        let cases = [
            (
                "infisical",
                r#"{"clientId":"id","projectId":"p","environment":"e"}"#,
                "no credential",
            ),
            ("infisical", r#"["not", "an object"]"#, "not a JSON object"),
            (
                "hashicorp-vault",
                r#"{"url":"https://v.example","token":"s3cr3t-token"}"#,
                "does not map",
            ),
            (
                "hashicorp-vault",
                r#"{"address":"https://v.example","token":"s3cr3t-token","secretId":"s3cr3t-id"}"#,
                "more than one credential",
            ),
            (
                "aws-secrets-manager",
                r#"{"region":{"nested":"s3cr3t"}}"#,
                "not a string",
            ),
            ("consul", r#"{}"#, "no such type"),
        ];
        for (provider_type, json, expected) in cases {
            let reason = provider_from_v1(provider_type, &config(json))
                .err()
                .unwrap_or_else(|| panic!("{json} mapped"));
            assert!(reason.contains(expected), "{json}: {reason}");
            assert!(!reason.contains("s3cr3t"), "{json}: {reason}");
        }
    }

    #[test]
    fn keys_are_taken_in_snake_case() {
        assert_eq!(snake_case("clientId"), "client_id");
        assert_eq!(snake_case("secretAccessKey"), "secret_access_key");
        assert_eq!(snake_case("secret_path"), "secret_path");
        assert_eq!(snake_case("vault-url"), "vault_url");
    }
}
