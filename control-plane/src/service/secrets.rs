//! Secret groups and secrets (R-3.7 to R-3.9, the seed's secret management page).

use secrecy::{ExposeSecret as _, SecretString};

use super::{Actor, Permission, Service};
use crate::crypto::Aad;
use crate::error::{Error, Result};
use crate::model::{NewSecret, Secret, SecretGroup};
use crate::store::WriteCounts;
use crate::validate;

/// Largest import document accepted (about 1,000 typical secrets).
const MAX_IMPORT_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    Dotenv,
    Json,
}

impl Service {
    pub async fn create_group(
        &self,
        actor: &Actor,
        name: &str,
        description: Option<&str>,
    ) -> Result<SecretGroup> {
        actor.require(Permission::Write)?;
        validate::name("group", name)?;
        validate::description(description)?;
        let group = self.store.create_group(name, description).await?;
        self.audit(actor, "group.create", name, None).await?;
        Ok(group)
    }

    /// `berth group create --provider P [--auto-sync]`: the provider is checked before the
    /// group is created, so a typo creates nothing.
    pub async fn create_group_linked(
        &self,
        actor: &Actor,
        name: &str,
        description: Option<&str>,
        provider: Option<&str>,
        auto_sync: bool,
    ) -> Result<SecretGroup> {
        actor.require(Permission::Write)?;
        if auto_sync && provider.is_none() {
            return Err(Error::invalid("--auto-sync needs --provider"));
        }
        if let Some(p) = provider {
            // Everything the link needs is checked before the group exists.
            if let Some(linked) = self.store.provider(p).await?.group_name {
                return Err(Error::FailedPrecondition(format!(
                    "provider {p:?} already syncs into group {linked:?}; one provider feeds one group"
                )));
            }
        }
        self.create_group(actor, name, description).await?;
        if let Some(p) = provider {
            self.link_group(actor, name, Some(p), auto_sync).await?;
        }
        self.store.group(name).await
    }

    /// `berth group update`: description, provider link (`Some("")` unlinks) and auto-sync.
    pub async fn update_group(
        &self,
        actor: &Actor,
        name: &str,
        description: Option<&str>,
        provider: Option<&str>,
        auto_sync: Option<bool>,
    ) -> Result<SecretGroup> {
        actor.require(Permission::Write)?;
        validate::description(description)?;
        let group = self.store.group(name).await?;
        // Everything is checked before anything is written.
        let link = if provider.is_some() || auto_sync.is_some() {
            let provider = match provider {
                Some("") => None,
                Some(p) => Some(self.store.provider(p).await?.name),
                None => group.provider_name.clone(),
            };
            let auto_sync = auto_sync.unwrap_or(group.auto_sync && provider.is_some());
            if auto_sync && provider.is_none() {
                return Err(Error::invalid(format!(
                    "group {name:?} has no provider to sync from: link one with --provider"
                )));
            }
            Some((provider, auto_sync))
        } else {
            None
        };
        if let Some(description) = description {
            let description = (!description.is_empty()).then_some(description);
            self.store
                .set_group_description(group.id, description)
                .await?;
            self.audit(actor, "group.update", name, None).await?;
        }
        if let Some((provider, auto_sync)) = link {
            self.link_group(actor, name, provider.as_deref(), auto_sync)
                .await?;
        }
        self.store.group(name).await
    }

    pub async fn list_groups(&self, actor: &Actor) -> Result<Vec<SecretGroup>> {
        actor.require(Permission::Read)?;
        self.store.list_groups().await
    }

    pub async fn get_group(&self, actor: &Actor, name: &str) -> Result<(SecretGroup, Vec<Secret>)> {
        actor.require(Permission::Read)?;
        let group = self.store.group(name).await?;
        let secrets = self.store.list_secrets(Some(group.id)).await?;
        Ok((group, secrets))
    }

    pub async fn delete_group(
        &self,
        actor: &Actor,
        name: &str,
        force: bool,
    ) -> Result<Vec<String>> {
        actor.require(Permission::Write)?;
        let group = self.store.group(name).await?;
        let removed = self.store.delete_group(&group, force).await?;
        let details =
            (!removed.is_empty()).then(|| format!("removed references: {}", removed.join(", ")));
        self.audit(actor, "group.delete", name, details.as_deref())
            .await?;
        Ok(removed)
    }

    /// Creates the secret or replaces its value.
    pub async fn set_secret(
        &self,
        actor: &Actor,
        group: &str,
        name: &str,
        value: &SecretString,
        description: Option<&str>,
    ) -> Result<Secret> {
        actor.require(Permission::Write)?;
        validate::secret_name(name)?;
        validate::secret_value(name, value.expose_secret())?;
        validate::description(description)?;
        let group_row = self.store.group(group).await?;
        self.refuse_synced(group_row.id, group, &[name]).await?;
        let new = self.seal(group_row.id, name, value, description.map(str::to_string));
        self.store.write_secrets(group_row.id, &[new], true).await?;
        self.audit(actor, "secret.set", &format!("{group}/{name}"), None)
            .await?;
        self.store.secret(group, name).await
    }

    pub async fn list_secrets(&self, actor: &Actor, group: Option<&str>) -> Result<Vec<Secret>> {
        actor.require(Permission::Read)?;
        let group_id = match group {
            Some(name) => Some(self.store.group(name).await?.id),
            None => None,
        };
        self.store.list_secrets(group_id).await
    }

    /// The seed's "view plaintext, second confirmation": needs `confirm`, the reveal right, and
    /// leaves an audit row.
    pub async fn reveal_secret(
        &self,
        actor: &Actor,
        group: &str,
        name: &str,
        confirm: bool,
    ) -> Result<(Secret, SecretString)> {
        actor.require(Permission::Reveal)?;
        if !confirm {
            return Err(Error::FailedPrecondition(
                "revealing a secret needs explicit confirmation (confirm=true, or --yes)"
                    .to_string(),
            ));
        }
        let secret = self.store.secret(group, name).await?;
        let value = self
            .key
            .decrypt_string(&secret.value, &Aad::secret(secret.group_id, &secret.name))?;
        self.audit(actor, "secret.reveal", &format!("{group}/{name}"), None)
            .await?;
        Ok((secret, value))
    }

    pub async fn delete_secret(
        &self,
        actor: &Actor,
        group: &str,
        name: &str,
        force: bool,
    ) -> Result<Vec<String>> {
        actor.require(Permission::Write)?;
        let secret = self.store.secret(group, name).await?;
        self.refuse_synced(secret.group_id, group, &[name]).await?;
        let removed = self.store.delete_secret(&secret, force).await?;
        let details =
            (!removed.is_empty()).then(|| format!("removed references: {}", removed.join(", ")));
        self.audit(
            actor,
            "secret.delete",
            &format!("{group}/{name}"),
            details.as_deref(),
        )
        .await?;
        Ok(removed)
    }

    /// Imports a .env or JSON document into a group: every entry is validated first, then all
    /// are written in one transaction (all or nothing).
    pub async fn import_secrets(
        &self,
        actor: &Actor,
        group: &str,
        format: ImportFormat,
        document: &SecretString,
        overwrite: bool,
    ) -> Result<WriteCounts> {
        actor.require(Permission::Write)?;
        let group_row = self.store.group(group).await?;
        let document = document.expose_secret();
        if document.len() > MAX_IMPORT_BYTES {
            return Err(Error::invalid(format!(
                "import document is larger than {MAX_IMPORT_BYTES} bytes"
            )));
        }
        let entries = match format {
            ImportFormat::Dotenv => parse_dotenv(document)?,
            ImportFormat::Json => parse_json(document)?,
        };
        if entries.is_empty() {
            return Err(Error::invalid("import document has no entries"));
        }
        let mut seen = std::collections::HashSet::new();
        let mut sealed = Vec::with_capacity(entries.len());
        for (name, value) in &entries {
            validate::secret_name(name)?;
            validate::secret_value(name, value.expose_secret())?;
            if !seen.insert(name.clone()) {
                return Err(Error::invalid(format!(
                    "import document defines {name} twice"
                )));
            }
            sealed.push(self.seal(group_row.id, name, value, None));
        }
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        self.refuse_synced(group_row.id, group, &names).await?;
        let counts = self
            .store
            .write_secrets(group_row.id, &sealed, overwrite)
            .await?;
        let details = format!(
            "created {} updated {} skipped {}",
            counts.created, counts.updated, counts.skipped
        );
        self.audit(actor, "secret.import", group, Some(&details))
            .await?;
        Ok(counts)
    }

    /// A synced secret is the provider's: editing it here would be undone by the next sync.
    async fn refuse_synced(&self, group_id: i64, group: &str, names: &[&str]) -> Result<()> {
        let synced = self.store.synced_secrets(group_id).await?;
        if let Some((name, provider)) = synced.iter().find(|(n, _)| names.contains(&n.as_str())) {
            return Err(Error::FailedPrecondition(format!(
                "secret {group}/{name} is synced from provider {provider:?}: change it there and run \
                 `berth provider sync {provider}` (a change made here would be undone by the next sync)"
            )));
        }
        Ok(())
    }

    pub(super) fn seal(
        &self,
        group_id: i64,
        name: &str,
        value: &SecretString,
        description: Option<String>,
    ) -> NewSecret {
        NewSecret {
            name: name.to_string(),
            value: self.key.encrypt(
                value.expose_secret().as_bytes(),
                &Aad::secret(group_id, name),
            ),
            value_preview: mask_value(value.expose_secret()),
            description,
        }
    }
}

/// The seed's masked preview (`postgres://****@****`, `sk_****`): the shape of a value, never
/// any of its secret characters.
pub fn mask_value(value: &str) -> String {
    if let Some((scheme, rest)) = value.split_once("://") {
        if !scheme.is_empty()
            && scheme.len() <= 16
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        {
            return if rest.contains('@') {
                format!("{scheme}://****@****")
            } else {
                format!("{scheme}://****")
            };
        }
    }
    if let Some((prefix, _)) = value.split_once('_') {
        if (1..=4).contains(&prefix.len())
            && prefix.chars().all(|c| c.is_ascii_lowercase())
            && value.len() >= 16
        {
            return format!("{prefix}_****");
        }
    }
    "****".to_string()
}

/// Parses a .env document: `KEY=value`, optional `export `, `#` comments, blank lines,
/// single-quoted (literal) and double-quoted (with `\n`, `\"`, `\\` escapes) values.
///
/// Written here rather than taken from a crate because errors must name the line number only:
/// a malformed line may hold a secret, and common parsers echo the line back.
pub fn parse_dotenv(document: &str) -> Result<Vec<(String, SecretString)>> {
    let mut out = Vec::new();
    for (index, raw) in document.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let Some((key, written)) = line.split_once('=') else {
            return Err(Error::invalid(format!(
                "line {line_no}: expected KEY=value"
            )));
        };
        let key = key.trim();
        validate::env_key(key)
            .map_err(|_| Error::invalid(format!("line {line_no}: invalid key")))?;
        let rest = written.trim();
        let value = if let Some(body) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = body.chars();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some('t') => value.push('\t'),
                        Some(other) => value.push(other),
                        None => break,
                    },
                    c => value.push(c),
                }
            }
            let trailing = chars.as_str().trim();
            if !closed || !(trailing.is_empty() || trailing.starts_with('#')) {
                return Err(Error::invalid(format!(
                    "line {line_no}: unterminated or malformed double quotes"
                )));
            }
            value
        } else if let Some(body) = rest.strip_prefix('\'') {
            let Some((value, trailing)) = body.split_once('\'') else {
                return Err(Error::invalid(format!(
                    "line {line_no}: unterminated single quote"
                )));
            };
            let trailing = trailing.trim();
            if !(trailing.is_empty() || trailing.starts_with('#')) {
                return Err(Error::invalid(format!(
                    "line {line_no}: text after closing quote"
                )));
            }
            value.to_string()
        } else {
            without_inline_comment(written).trim().to_string()
        };
        out.push((key.to_string(), SecretString::from(value)));
    }
    Ok(out)
}

/// An unquoted value up to its inline comment, which starts at a `#` that follows whitespace,
/// also the whitespace right after `=`: `A=x # note` is `x`, `A= # note` is empty, `A=#x`
/// is `#x`.
fn without_inline_comment(written: &str) -> &str {
    let mut after_space = false;
    for (i, c) in written.char_indices() {
        if c == '#' && after_space {
            return &written[..i];
        }
        after_space = c.is_whitespace();
    }
    written
}

fn parse_json(document: &str) -> Result<Vec<(String, SecretString)>> {
    let value: serde_json::Value = serde_json::from_str(document).map_err(|e| {
        Error::invalid(format!(
            "invalid json at line {} column {}",
            e.line(),
            e.column()
        ))
    })?;
    let serde_json::Value::Object(map) = value else {
        return Err(Error::invalid(
            "json import must be an object of NAME: \"value\"",
        ));
    };
    map.into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(s) => Ok((key, SecretString::from(s))),
            _ => Err(Error::invalid(format!(
                "json import: value of {:?} must be a string",
                key.chars().take(64).collect::<String>()
            ))),
        })
        .collect()
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::testing::{admin, service, viewer};

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[test]
    fn masks_keep_only_the_shape() {
        assert_eq!(
            mask_value("postgresql://user:pass@host:5432/db"),
            "postgresql://****@****"
        );
        assert_eq!(mask_value("redis://host:6379"), "redis://****");
        assert_eq!(mask_value("sk_live_abcdefghijklmnop"), "sk_****");
        assert_eq!(mask_value("hunter2"), "****");
        assert_eq!(mask_value("a_b"), "****");
    }

    #[test]
    fn dotenv_parsing() {
        let doc =
            "# comment\n\nexport A=1\nB = \"two words\\n\" # c\nC='lit$eral'\nD=x #comment\nE=\n";
        let parsed: Vec<(String, String)> = parse_dotenv(doc)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.expose_secret().to_string()))
            .collect();
        assert_eq!(
            parsed,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words\n".into()),
                ("C".into(), "lit$eral".into()),
                ("D".into(), "x".into()),
                ("E".into(), "".into()),
            ]
        );
    }

    /// Found by `properties::dotenv_variables_read_back_as_written`: `A= # note` was read as
    /// the value "# note".
    #[test]
    fn an_inline_comment_after_an_empty_value_is_no_value() {
        let parsed: Vec<(String, String)> = parse_dotenv("A= # note\nB=#x\nC=x\t# note\n")
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.expose_secret().to_string()))
            .collect();
        assert_eq!(
            parsed,
            vec![
                ("A".into(), "".into()),
                ("B".into(), "#x".into()),
                ("C".into(), "x".into()),
            ]
        );
    }

    #[test]
    fn malformed_dotenv_lines_name_the_line_not_the_content() {
        for (doc, line) in [
            ("A=1\nnot a line with s3cr3t\n", 2),
            ("A=\"s3cr3t", 1),
            ("1BAD=s3cr3t", 1),
            ("A='s3cr3t", 1),
        ] {
            let err = parse_dotenv(doc).unwrap_err().to_string();
            assert!(err.starts_with(&format!("line {line}:")), "{err}");
            assert!(!err.contains("s3cr3t"), "{err}");
        }
    }

    #[tokio::test]
    async fn import_is_all_or_nothing() {
        let svc = service().await;
        svc.create_group(&admin(), "g", None).await.unwrap();
        let err = svc
            .import_secrets(
                &admin(),
                "g",
                ImportFormat::Dotenv,
                &secret("A=1\nB=2\nbad line\n"),
                false,
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("line 3"));
        assert!(svc
            .list_secrets(&admin(), Some("g"))
            .await
            .unwrap()
            .is_empty());
        let err = svc
            .import_secrets(
                &admin(),
                "g",
                ImportFormat::Json,
                &secret(r#"{"A":"1","B":2}"#),
                false,
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("\"B\""));
        assert!(svc
            .list_secrets(&admin(), Some("g"))
            .await
            .unwrap()
            .is_empty());
        let counts = svc
            .import_secrets(
                &admin(),
                "g",
                ImportFormat::Json,
                &secret(r#"{"A":"1","B":"2"}"#),
                false,
            )
            .await
            .unwrap();
        assert_eq!((counts.created, counts.updated, counts.skipped), (2, 0, 0));
        let counts = svc
            .import_secrets(
                &admin(),
                "g",
                ImportFormat::Dotenv,
                &secret("A=3\nC=4"),
                false,
            )
            .await
            .unwrap();
        assert_eq!((counts.created, counts.updated, counts.skipped), (1, 0, 1));
    }

    #[tokio::test]
    async fn reveal_needs_confirmation_and_the_right_role_and_is_audited() {
        let svc = service().await;
        svc.create_group(&admin(), "g", None).await.unwrap();
        svc.set_secret(&admin(), "g", "TOKEN", &secret("s3cr3t-value"), None)
            .await
            .unwrap();
        assert!(svc
            .reveal_secret(&viewer(), "g", "TOKEN", true)
            .await
            .is_err());
        assert!(svc
            .reveal_secret(&admin(), "g", "TOKEN", false)
            .await
            .is_err());
        let (_, value) = svc
            .reveal_secret(&admin(), "g", "TOKEN", true)
            .await
            .unwrap();
        assert_eq!(value.expose_secret(), "s3cr3t-value");
        let audit = svc.store().list_audit(10).await.unwrap();
        assert!(audit
            .iter()
            .any(|a| a.action == "secret.reveal" && a.target.as_deref() == Some("g/TOKEN")));
        assert!(audit.iter().all(|a| !format!("{a:?}").contains("s3cr3t")));
    }

    #[tokio::test]
    async fn bad_input_is_refused_and_nothing_is_stored() {
        let svc = service().await;
        assert!(svc.create_group(&admin(), "bad name", None).await.is_err());
        svc.create_group(&admin(), "g", None).await.unwrap();
        let dup = svc.create_group(&admin(), "g", None).await.unwrap_err();
        assert_eq!(dup.code(), crate::error::ErrorCode::AlreadyExists);
        let unknown = svc
            .set_secret(&admin(), "nope", "A", &secret("v"), None)
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), crate::error::ErrorCode::NotFound);
        let huge = "x".repeat(validate::MAX_SECRET_VALUE_BYTES + 1);
        assert!(svc
            .set_secret(&admin(), "g", "A", &secret(&huge), None)
            .await
            .is_err());
        assert!(svc
            .set_secret(&admin(), "g", "1A", &secret("v"), None)
            .await
            .is_err());
        assert!(svc.list_secrets(&admin(), None).await.unwrap().is_empty());
    }
}
