//! Environment variables and their resolution.

use std::collections::BTreeMap;

use secrecy::SecretString;

use super::{Actor, Permission, Service};
use crate::error::{Error, Result};
use crate::model::{EnvScope, EnvVar, NewEnvVar};
use crate::store::ImportOutcome;
use crate::validate;

/// What a variable is set to.
#[derive(Debug, Clone)]
pub enum SetEnvValue {
    Plain(String),
    /// `GROUP/NAME` of an existing secret.
    Secret(String),
    /// Name of an existing group.
    Group(String),
    /// The seed's `@secret:<id>`.
    SecretId(i64),
}

impl SetEnvValue {
    /// A plain value written in the seed's reference syntax (`@secret:<id>`, `@group:<name>`)
    /// is taken as that reference, as the seed's `value` column means it.
    fn from_seed_syntax(value: SetEnvValue) -> Result<SetEnvValue> {
        let SetEnvValue::Plain(text) = &value else {
            return Ok(value);
        };
        if let Some(id) = text.strip_prefix("@secret:") {
            let id = id.parse::<i64>().map_err(|_| {
                Error::invalid(format!(
                    "{text:?} is not a secret reference: expected @secret:<id>"
                ))
            })?;
            return Ok(SetEnvValue::SecretId(id));
        }
        if let Some(group) = text.strip_prefix("@group:") {
            return Ok(SetEnvValue::Group(group.to_string()));
        }
        Ok(value)
    }
}

mod resolve;

pub use resolve::{EffectiveVar, EnvOrigin, EnvSource};

/// An application's resolved environment: key -> plaintext, sorted by key. Values are
/// `SecretString`s so the map cannot be logged by accident.
pub type ResolvedEnvironment = BTreeMap<String, SecretString>;

impl Service {
    pub async fn set_env(
        &self,
        actor: &Actor,
        app: Option<&str>,
        key: &str,
        value: SetEnvValue,
        description: Option<&str>,
    ) -> Result<EnvVar> {
        actor.require(Permission::Write)?;
        validate::env_key(key)?;
        validate::description(description)?;
        let scope = self.env_scope(app).await?;
        let value = SetEnvValue::from_seed_syntax(value)?;
        let var = match value {
            SetEnvValue::Plain(value) => {
                validate::env_value(key, &value)?;
                NewEnvVar {
                    key: key.to_string(),
                    value,
                    value_type: "plain",
                    secret_id: None,
                    description: None,
                }
            }
            SetEnvValue::SecretId(id) => {
                let secret = self.store.secret_by_id(id).await?.ok_or_else(|| {
                    Error::not_found(format!(
                        "variable {key}: secret @secret:{id} does not exist"
                    ))
                })?;
                NewEnvVar {
                    key: key.to_string(),
                    value: format!("@secret:{}", secret.id),
                    value_type: "secret_ref",
                    secret_id: Some(secret.id),
                    description: None,
                }
            }
            SetEnvValue::Secret(path) => {
                let (group, name) = path.split_once('/').ok_or_else(|| {
                    Error::invalid(format!("secret reference {path:?} must be GROUP/NAME"))
                })?;
                let secret = self.store.secret(group, name).await?;
                NewEnvVar {
                    key: key.to_string(),
                    value: format!("@secret:{}", secret.id),
                    value_type: "secret_ref",
                    secret_id: Some(secret.id),
                    description: None,
                }
            }
            SetEnvValue::Group(group) => {
                let group = self.store.group(&group).await?;
                NewEnvVar {
                    key: key.to_string(),
                    value: format!("@group:{}", group.name),
                    value_type: "group_ref",
                    secret_id: None,
                    description: None,
                }
            }
        };
        let var = NewEnvVar {
            description: description.map(str::to_string),
            ..var
        };
        let stored = self.store.upsert_env(scope, &var).await?;
        self.audit(
            actor,
            "env.set",
            &scope_label(app, key),
            Some(var.value_type),
        )
        .await?;
        Ok(stored)
    }

    pub async fn list_env(&self, actor: &Actor, app: Option<&str>) -> Result<Vec<EnvVar>> {
        actor.require(Permission::Read)?;
        let scope = self.env_scope(app).await?;
        self.store.list_env(scope).await
    }

    pub async fn unset_env(&self, actor: &Actor, app: Option<&str>, key: &str) -> Result<()> {
        actor.require(Permission::Write)?;
        let scope = self.env_scope(app).await?;
        self.store.delete_env(scope, key).await?;
        self.audit(actor, "env.unset", &scope_label(app, key), None)
            .await
    }

    /// The seed's scenario 3: import every secret of a group as a `secret_ref` variable,
    /// skipping keys the application already defines.
    pub async fn import_group(
        &self,
        actor: &Actor,
        group: &str,
        app: &str,
    ) -> Result<ImportOutcome> {
        actor.require(Permission::Write)?;
        let group = self.store.group(group).await?;
        let app_row = self.store.application(app).await?;
        let outcome = self
            .store
            .import_group_into_app(group.id, &group.name, app_row.id)
            .await?;
        let details = format!(
            "imported {} skipped {}",
            outcome.imported,
            outcome.skipped_keys.len()
        );
        self.audit(
            actor,
            "env.import_group",
            &format!("{app} <- {}", group.name),
            Some(&details),
        )
        .await?;
        Ok(outcome)
    }

    /// The resolved environment in plaintext, for a human: needs the reveal right and
    /// confirmation, and is audited.
    pub async fn export_env(
        &self,
        actor: &Actor,
        app: &str,
        confirm: bool,
    ) -> Result<ResolvedEnvironment> {
        actor.require(Permission::Reveal)?;
        if !confirm {
            return Err(Error::FailedPrecondition(
                "exporting an environment reveals secrets and needs explicit confirmation (--yes)"
                    .to_string(),
            ));
        }
        let app_row = self.store.application(app).await?;
        let env = self.resolve_environment(app_row.id).await?;
        self.audit(
            actor,
            "env.export",
            app,
            Some(&format!("{} variables", env.len())),
        )
        .await?;
        Ok(env)
    }

    async fn env_scope(&self, app: Option<&str>) -> Result<EnvScope> {
        Ok(match app {
            None => EnvScope::Global,
            Some(name) => EnvScope::Project(self.store.application(name).await?.id),
        })
    }
}

fn scope_label(app: Option<&str>, key: &str) -> String {
    format!("{}:{key}", app.unwrap_or("(global)"))
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;
    use crate::error::ErrorCode;
    use crate::service::testing::{admin, service};

    fn s(v: &str) -> SecretString {
        SecretString::from(v.to_string())
    }

    async fn app(svc: &Service, name: &str) -> i64 {
        svc.create_application(&admin(), crate::service::applications::tests::new_app(name))
            .await
            .unwrap()
            .application
            .id
    }

    fn plain(env: &ResolvedEnvironment) -> Vec<(String, String)> {
        env.iter()
            .map(|(k, v)| (k.clone(), v.expose_secret().to_string()))
            .collect()
    }

    #[tokio::test]
    async fn project_overrides_global_and_secrets_resolve() {
        let svc = service().await;
        let id = app(&svc, "myapp").await;
        svc.create_group(&admin(), "production-db", None)
            .await
            .unwrap();
        svc.set_secret(
            &admin(),
            "production-db",
            "DATABASE_URL",
            &s("postgres://u:p@h/db"),
            None,
        )
        .await
        .unwrap();
        svc.set_env(
            &admin(),
            None,
            "NODE_ENV",
            SetEnvValue::Plain("production".into()),
            None,
        )
        .await
        .unwrap();
        svc.set_env(
            &admin(),
            None,
            "LOG",
            SetEnvValue::Plain("info".into()),
            None,
        )
        .await
        .unwrap();
        svc.set_env(
            &admin(),
            Some("myapp"),
            "LOG",
            SetEnvValue::Plain("debug".into()),
            None,
        )
        .await
        .unwrap();
        svc.set_env(
            &admin(),
            Some("myapp"),
            "DATABASE_URL",
            SetEnvValue::Secret("production-db/DATABASE_URL".into()),
            None,
        )
        .await
        .unwrap();
        let env = svc.resolve_environment(id).await.unwrap();
        assert_eq!(
            plain(&env),
            vec![
                ("DATABASE_URL".into(), "postgres://u:p@h/db".into()),
                ("LOG".into(), "debug".into()),
                ("NODE_ENV".into(), "production".into()),
            ]
        );
    }

    #[tokio::test]
    async fn groups_expand_explicit_keys_win_and_clashing_groups_fail() {
        let svc = service().await;
        let id = app(&svc, "myapp").await;
        for (g, k, v) in [("a", "X", "ax"), ("a", "Y", "ay"), ("b", "Y", "by")] {
            if svc.store().group(g).await.is_err() {
                svc.create_group(&admin(), g, None).await.unwrap();
            }
            svc.set_secret(&admin(), g, k, &s(v), None).await.unwrap();
        }
        svc.set_env(
            &admin(),
            Some("myapp"),
            "ALL_A",
            SetEnvValue::Group("a".into()),
            None,
        )
        .await
        .unwrap();
        svc.set_env(
            &admin(),
            Some("myapp"),
            "X",
            SetEnvValue::Plain("explicit".into()),
            None,
        )
        .await
        .unwrap();
        let env = svc.resolve_environment(id).await.unwrap();
        assert_eq!(
            plain(&env),
            vec![("X".into(), "explicit".into()), ("Y".into(), "ay".into())]
        );

        svc.set_env(
            &admin(),
            Some("myapp"),
            "ALL_B",
            SetEnvValue::Group("b".into()),
            None,
        )
        .await
        .unwrap();
        let err = svc.resolve_environment(id).await.unwrap_err().to_string();
        assert!(
            err.contains("\"a\"") && err.contains("\"b\"") && err.contains('Y'),
            "{err}"
        );

        // The same name from a global group and a project group is an override, not a clash.
        svc.unset_env(&admin(), Some("myapp"), "ALL_B")
            .await
            .unwrap();
        svc.set_env(
            &admin(),
            None,
            "ALL_B",
            SetEnvValue::Group("b".into()),
            None,
        )
        .await
        .unwrap();
        let env = svc.resolve_environment(id).await.unwrap();
        assert_eq!(plain(&env)[1], ("Y".into(), "ay".into()));
    }

    /// The structure cache (store::env_structure) never serves a stale row: every kind of
    /// change between two resolutions shows in the second, including a key rotation that
    /// rewraps the ciphertexts and retires the key the cached ones were made with.
    #[tokio::test]
    async fn every_change_between_two_resolutions_shows_in_the_second() {
        let svc = service().await;
        let id = app(&svc, "myapp").await;
        svc.create_group(&admin(), "db", None).await.unwrap();
        svc.set_secret(&admin(), "db", "PASSWORD", &s("one"), None)
            .await
            .unwrap();
        let reference = SetEnvValue::Secret("db/PASSWORD".into());
        svc.set_env(&admin(), Some("myapp"), "DB_PASSWORD", reference, None)
            .await
            .unwrap();
        let resolve = || async { plain(&svc.resolve_environment(id).await.unwrap()) };
        assert_eq!(resolve().await, vec![("DB_PASSWORD".into(), "one".into())]);
        assert_eq!(resolve().await, vec![("DB_PASSWORD".into(), "one".into())]);

        svc.set_secret(&admin(), "db", "PASSWORD", &s("two"), None)
            .await
            .unwrap();
        assert_eq!(resolve().await, vec![("DB_PASSWORD".into(), "two".into())]);

        let global = SetEnvValue::Plain("info".into());
        svc.set_env(&admin(), None, "LOG", global, None)
            .await
            .unwrap();
        let group = SetEnvValue::Group("db".into());
        svc.set_env(&admin(), Some("myapp"), "DB", group, None)
            .await
            .unwrap();
        let with_group = vec![
            ("DB_PASSWORD".into(), "two".into()),
            ("LOG".into(), "info".into()),
            ("PASSWORD".into(), "two".into()),
        ];
        assert_eq!(resolve().await, with_group);

        // Two rotations: the cached ciphertexts are under the first ring key, which the
        // second rotation rewraps away from and which is then retired.
        svc.rotate_key(&admin(), false).await.unwrap();
        svc.wait_for_rotation().await;
        let first = svc.key().active_id().unwrap();
        assert_eq!(resolve().await, with_group);
        svc.rotate_key(&admin(), false).await.unwrap();
        svc.wait_for_rotation().await;
        svc.retire_key(&admin(), &first).await.unwrap();
        assert_eq!(resolve().await, with_group);

        svc.unset_env(&admin(), Some("myapp"), "DB").await.unwrap();
        svc.unset_env(&admin(), None, "LOG").await.unwrap();
        assert_eq!(resolve().await, vec![("DB_PASSWORD".into(), "two".into())]);
        svc.delete_group(&admin(), "db", true).await.unwrap();
        assert!(resolve().await.is_empty());
    }

    #[tokio::test]
    async fn unresolvable_references_name_the_variable() {
        let svc = service().await;
        let id = app(&svc, "myapp").await;
        svc.create_group(&admin(), "g", None).await.unwrap();
        svc.set_env(
            &admin(),
            Some("myapp"),
            "ALL",
            SetEnvValue::Group("g".into()),
            None,
        )
        .await
        .unwrap();
        svc.delete_group(&admin(), "g", true).await.unwrap();
        // force removed the referencing variable along with the group.
        assert!(svc.resolve_environment(id).await.unwrap().is_empty());

        let missing = svc
            .set_env(
                &admin(),
                Some("myapp"),
                "DB",
                SetEnvValue::Secret("g/NOPE".into()),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(missing.code(), ErrorCode::NotFound);
    }

    #[tokio::test]
    async fn referenced_secret_cannot_be_deleted_without_force() {
        let svc = service().await;
        app(&svc, "myapp").await;
        svc.create_group(&admin(), "g", None).await.unwrap();
        svc.set_secret(&admin(), "g", "DB", &s("v"), None)
            .await
            .unwrap();
        svc.set_env(
            &admin(),
            Some("myapp"),
            "DATABASE",
            SetEnvValue::Secret("g/DB".into()),
            None,
        )
        .await
        .unwrap();
        let err = svc
            .delete_secret(&admin(), "g", "DB", false)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::FailedPrecondition);
        assert!(err.to_string().contains("myapp:DATABASE"), "{err}");
        assert!(svc.store().secret("g", "DB").await.is_ok());
        let removed = svc.delete_secret(&admin(), "g", "DB", true).await.unwrap();
        assert_eq!(removed, vec!["myapp:DATABASE".to_string()]);
        assert!(svc
            .list_env(&admin(), Some("myapp"))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_referenced_group_cannot_be_deleted_without_force() {
        let svc = service().await;
        app(&svc, "myapp").await;
        svc.create_group(&admin(), "g", None).await.unwrap();
        svc.set_secret(&admin(), "g", "DB", &s("v"), None)
            .await
            .unwrap();
        svc.set_env(
            &admin(),
            Some("myapp"),
            "DATABASE",
            SetEnvValue::Secret("g/DB".into()),
            None,
        )
        .await
        .unwrap();
        svc.set_env(&admin(), None, "ALL", SetEnvValue::Group("g".into()), None)
            .await
            .unwrap();

        let err = svc.delete_group(&admin(), "g", false).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::FailedPrecondition);
        let message = err.to_string();
        assert!(
            message.contains("myapp:DATABASE") && message.contains("(global):ALL"),
            "{message}"
        );
        // Nothing went: the group, its secret and both variables are all there.
        assert!(svc.store().secret("g", "DB").await.is_ok());
        assert_eq!(
            svc.list_env(&admin(), Some("myapp")).await.unwrap().len(),
            1
        );
        assert_eq!(svc.list_env(&admin(), None).await.unwrap().len(), 1);

        let removed = svc.delete_group(&admin(), "g", true).await.unwrap();
        assert_eq!(removed, ["(global):ALL", "myapp:DATABASE"]);
        assert_eq!(
            svc.store().group("g").await.unwrap_err().code(),
            ErrorCode::NotFound
        );
        assert!(svc.list_env(&admin(), None).await.unwrap().is_empty());
        let audit = svc.store().list_audit(5).await.unwrap();
        let deleted = audit.iter().find(|e| e.action == "group.delete").unwrap();
        assert!(
            deleted
                .details
                .as_deref()
                .unwrap_or("")
                .contains("myapp:DATABASE"),
            "{deleted:?}"
        );

        // An unreferenced group needs no force.
        svc.create_group(&admin(), "lonely", None).await.unwrap();
        svc.set_secret(&admin(), "lonely", "X", &s("v"), None)
            .await
            .unwrap();
        assert!(svc
            .delete_group(&admin(), "lonely", false)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn two_global_rows_with_one_key_are_impossible() {
        let svc = service().await;
        svc.set_env(&admin(), None, "A", SetEnvValue::Plain("1".into()), None)
            .await
            .unwrap();
        svc.set_env(&admin(), None, "A", SetEnvValue::Plain("2".into()), None)
            .await
            .unwrap();
        assert_eq!(svc.list_env(&admin(), None).await.unwrap().len(), 1);
        // The partial unique index holds even for a writer that bypasses the upsert.
        let dup = svc
            .store()
            .upsert_env_raw_insert_for_test("A")
            .await
            .unwrap_err();
        assert_eq!(dup.code(), ErrorCode::AlreadyExists);
    }

    #[tokio::test]
    async fn import_group_skips_existing_keys() {
        let svc = service().await;
        app(&svc, "myapp").await;
        svc.create_group(&admin(), "g", None).await.unwrap();
        for k in ["A", "B", "C"] {
            svc.set_secret(&admin(), "g", k, &s("v"), None)
                .await
                .unwrap();
        }
        svc.set_env(
            &admin(),
            Some("myapp"),
            "B",
            SetEnvValue::Plain("mine".into()),
            None,
        )
        .await
        .unwrap();
        let outcome = svc.import_group(&admin(), "g", "myapp").await.unwrap();
        assert_eq!(outcome.imported, 2);
        assert_eq!(outcome.skipped_keys, vec!["B".to_string()]);
        let again = svc.import_group(&admin(), "g", "myapp").await.unwrap();
        assert_eq!(again.imported, 0);
    }

    #[tokio::test]
    async fn the_seed_reference_syntax_is_understood() {
        let svc = service().await;
        svc.create_group(&admin(), "g", None).await.unwrap();
        let secret = svc
            .set_secret(&admin(), "g", "A", &s("v"), None)
            .await
            .unwrap();
        let var = svc
            .set_env(
                &admin(),
                None,
                "A",
                SetEnvValue::Plain(format!("@secret:{}", secret.id)),
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            (var.value_type.as_str(), var.secret_id),
            ("secret_ref", Some(secret.id))
        );
        let var = svc
            .set_env(
                &admin(),
                None,
                "ALL",
                SetEnvValue::Plain("@group:g".into()),
                None,
            )
            .await
            .unwrap();
        assert_eq!(var.value_type, "group_ref");
        let err = svc
            .set_env(
                &admin(),
                None,
                "B",
                SetEnvValue::Plain("@secret:999".into()),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::NotFound);
        assert!(err.to_string().contains("@secret:999"));
        assert!(svc
            .set_env(
                &admin(),
                None,
                "C",
                SetEnvValue::Plain("@secret:x".into()),
                None
            )
            .await
            .is_err());
        assert_eq!(svc.list_env(&admin(), None).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn invalid_keys_and_oversized_values_store_nothing() {
        let svc = service().await;
        assert!(svc
            .set_env(&admin(), None, "1BAD", SetEnvValue::Plain("x".into()), None)
            .await
            .is_err());
        let big = "x".repeat(validate::MAX_ENV_VALUE_BYTES + 1);
        assert!(svc
            .set_env(&admin(), None, "BIG", SetEnvValue::Plain(big), None)
            .await
            .is_err());
        assert!(svc
            .set_env(
                &admin(),
                Some("nope"),
                "A",
                SetEnvValue::Plain("x".into()),
                None
            )
            .await
            .is_err());
        assert!(svc
            .set_env(&admin(), None, "G", SetEnvValue::Group("nope".into()), None)
            .await
            .is_err());
        assert!(svc.list_env(&admin(), None).await.unwrap().is_empty());
    }
}
