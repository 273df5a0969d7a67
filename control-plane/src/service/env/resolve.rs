//! Environment resolution: which value each key of an application's
//! environment takes, and from where. One plan serves both callers: the deploy path
//! ([`Service::resolve_environment`], which then decrypts) and the effective view
//! ([`Service::describe_environment`], `berth env list --effective`, which never decrypts
//! and shows provenance, overrides and unresolvable references instead of failing).
//!
//! Architecture invariant: the rules (global then application rows, group expansions under
//! explicit keys, two groups defining one name in a scope is an error) exist only in
//! [`plan`], so the view cannot disagree with what a deploy sends.

use std::collections::BTreeMap;
use std::sync::Arc;

use secrecy::SecretString;

use super::super::Service;
use super::ResolvedEnvironment;
use crate::crypto::Aad;
use crate::error::{Error, Result};
use crate::service::{Actor, Permission};
use crate::store::{EnvResolutionRow, EnvStructure};

/// What a key of the effective environment is taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    /// A plain row.
    Plain,
    /// A `secret_ref` row; `path` is the secret's `GROUP/NAME`, `None` when it is gone.
    Secret { path: Option<String> },
    /// A secret of a `group_ref` row: the group, and the row's own key.
    Group { group: String, via: String },
}

/// Where a key comes from: the scope of its row and the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvOrigin {
    /// The application's name for its own rows, `None` for a global row.
    pub app: Option<String>,
    pub source: EnvSource,
}

impl EnvOrigin {
    fn scope_name(&self) -> &str {
        self.app.as_deref().unwrap_or("global")
    }
}

/// One key of the effective environment, as `env list --effective` shows it. Never holds
/// a secret value: a secret's stored masked preview only.
#[derive(Debug, Clone)]
pub struct EffectiveVar {
    pub key: String,
    pub origin: EnvOrigin,
    /// The type of the row it comes from: `plain`, `secret_ref` or `group_ref`.
    pub value_type: &'static str,
    /// A plain value as stored (as `env list` shows it), a secret's masked preview, or
    /// empty for an unresolvable reference.
    pub shown: String,
    /// The rows this key replaced, nearest first (an application row over a global one, an
    /// explicit key over a group's secret).
    pub overrides: Vec<EnvOrigin>,
    /// Why it cannot be resolved: a deploy of the application is refused until it is fixed.
    pub problem: Option<String>,
}

/// What resolution reads: the application's rows and every group they name.
struct Inputs {
    app: String,
    structure: Arc<EnvStructure>,
}

/// A key's value as decided, before any decryption.
enum Value<'a> {
    Plain(&'a str),
    Secret {
        group_id: i64,
        name: &'a str,
        ciphertext: &'a str,
        preview: &'a str,
    },
}

struct Planned<'a> {
    origin: EnvOrigin,
    value_type: &'static str,
    value: Value<'a>,
    overrides: Vec<EnvOrigin>,
}

/// A reference that cannot be resolved, in the order found.
struct Problem {
    key: String,
    origin: EnvOrigin,
    value_type: &'static str,
    error: Error,
}

struct Plan<'a> {
    keys: BTreeMap<String, Planned<'a>>,
    problems: Vec<Problem>,
}

fn value_type(stored: &str) -> &'static str {
    match stored {
        "secret_ref" => "secret_ref",
        "group_ref" => "group_ref",
        _ => "plain",
    }
}

/// The resolution rules (the seed's `buildEnvironmentForProject`): global rows, then the
/// application's rows overriding by key. Within a scope, `@group:` references expand to one
/// variable per secret of the group, explicit keys win over expanded ones, and two groups
/// defining the same name are an error naming both. An unresolvable reference is a problem
/// naming the variable.
fn plan(inputs: &Inputs) -> Plan<'_> {
    let mut plan = Plan {
        keys: BTreeMap::new(),
        problems: Vec::new(),
    };
    let (project, global): (Vec<&EnvResolutionRow>, Vec<&EnvResolutionRow>) =
        inputs.structure.rows.iter().partition(|r| r.project);
    for (app, rows) in [(None, global), (Some(inputs.app.clone()), project)] {
        let scope = plan_scope(app, &rows, inputs, &mut plan.problems);
        for (key, mut planned) in scope {
            if let Some(replaced) = plan.keys.remove(&key) {
                planned.overrides.push(replaced.origin);
                planned.overrides.extend(replaced.overrides);
            }
            plan.keys.insert(key, planned);
        }
    }
    plan
}

fn plan_scope<'a>(
    app: Option<String>,
    rows: &[&'a EnvResolutionRow],
    inputs: &'a Inputs,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, Planned<'a>> {
    let scope_name = app.as_deref().unwrap_or("global").to_string();
    let unresolvable = |key: &str, why: String| {
        Error::FailedPrecondition(format!(
            "variable {key} ({scope_name}) cannot be resolved: {why}"
        ))
    };
    let origin = |source: EnvSource| EnvOrigin {
        app: app.clone(),
        source,
    };
    // Group expansions first.
    let mut keys: BTreeMap<String, Planned<'a>> = BTreeMap::new();
    for row in rows.iter().copied().filter(|r| r.value_type == "group_ref") {
        let group = row.value.strip_prefix("@group:").unwrap_or_default();
        let source = EnvSource::Group {
            group: group.to_string(),
            via: row.key.clone(),
        };
        if !inputs.structure.existing_groups.contains(group) {
            problems.push(Problem {
                key: row.key.clone(),
                origin: origin(source),
                value_type: "group_ref",
                error: unresolvable(&row.key, format!("group {group:?} does not exist")),
            });
            continue;
        }
        for secret in inputs
            .structure
            .group_secrets
            .get(group)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some(first) = keys.get(&secret.name) {
                let EnvSource::Group { group: other, .. } = &first.origin.source else {
                    unreachable!("only group expansions are planned yet");
                };
                problems.push(Problem {
                    key: secret.name.clone(),
                    origin: origin(source.clone()),
                    value_type: "group_ref",
                    error: Error::FailedPrecondition(format!(
                        "groups {other:?} and {group:?} both define {} in scope {scope_name}",
                        secret.name
                    )),
                });
                continue;
            }
            keys.insert(
                secret.name.clone(),
                Planned {
                    origin: origin(source.clone()),
                    value_type: "group_ref",
                    value: Value::Secret {
                        group_id: secret.group_id,
                        name: &secret.name,
                        ciphertext: &secret.value,
                        preview: &secret.value_preview,
                    },
                    overrides: Vec::new(),
                },
            );
        }
    }
    // Explicit keys override expanded ones.
    for row in rows.iter().copied() {
        let (source, value) = match row.value_type.as_str() {
            "plain" => (EnvSource::Plain, Value::Plain(&row.value)),
            "secret_ref" => {
                let path = match (&row.secret_group_name, &row.secret_name) {
                    (Some(g), Some(n)) => Some(format!("{g}/{n}")),
                    _ => None,
                };
                let source = EnvSource::Secret { path };
                let (Some(group_id), Some(name), Some(ciphertext)) =
                    (row.secret_group_id, &row.secret_name, &row.secret_value)
                else {
                    problems.push(Problem {
                        key: row.key.clone(),
                        origin: origin(source),
                        value_type: "secret_ref",
                        error: unresolvable(&row.key, format!("{} does not exist", row.value)),
                    });
                    continue;
                };
                let value = Value::Secret {
                    group_id,
                    name,
                    ciphertext,
                    preview: row.secret_preview.as_deref().unwrap_or("****"),
                };
                (source, value)
            }
            _ => continue,
        };
        let mut planned = Planned {
            origin: origin(source),
            value_type: value_type(&row.value_type),
            value,
            overrides: Vec::new(),
        };
        if let Some(expanded) = keys.remove(&row.key) {
            planned.overrides.push(expanded.origin);
        }
        keys.insert(row.key.clone(), planned);
    }
    keys
}

impl Service {
    /// What resolution reads, from the store's structure cache (never plaintext: rows and
    /// ciphertexts, valid for one value of the environment change counter).
    async fn resolution_inputs(&self, app_id: i64) -> Result<Inputs> {
        let structure = self.store.env_structure(app_id).await?;
        let app = if structure.rows.iter().any(|r| r.project) {
            structure
                .app_name
                .clone()
                .ok_or_else(|| Error::not_found(format!("application {app_id} not found")))?
        } else {
            String::new()
        };
        Ok(Inputs { app, structure })
    }

    /// Resolves an application's environment to plaintext, for a deployment. Any
    /// unresolvable reference is an error naming the variable: the first found,
    /// global rows first.
    pub async fn resolve_environment(&self, app_id: i64) -> Result<ResolvedEnvironment> {
        let inputs = self.resolution_inputs(app_id).await?;
        let plan = plan(&inputs);
        if let Some(problem) = plan.problems.into_iter().next() {
            return Err(problem.error);
        }
        let mut env = ResolvedEnvironment::new();
        for (key, planned) in plan.keys {
            let value = match planned.value {
                Value::Plain(text) => SecretString::from(text.to_string()),
                Value::Secret {
                    group_id,
                    name,
                    ciphertext,
                    ..
                } => self
                    .key
                    .decrypt_string(ciphertext, &Aad::secret(group_id, name))
                    .map_err(|e| {
                        Error::FailedPrecondition(format!(
                            "variable {key} ({}) cannot be resolved: {e}",
                            planned.origin.scope_name()
                        ))
                    })?,
            };
            env.insert(key, value);
        }
        Ok(env)
    }

    /// `berth env list --app APP --effective`: every key the application's containers
    /// would get, where it comes from and what it overrides, values masked as `env list`
    /// shows them (plain values as stored, secrets by their preview); then every
    /// unresolvable reference, marked. Decrypts nothing.
    pub async fn describe_environment(
        &self,
        actor: &Actor,
        app: &str,
    ) -> Result<Vec<EffectiveVar>> {
        actor.require(Permission::Read)?;
        let app_row = self.store.application(app).await?;
        let mut inputs = self.resolution_inputs(app_row.id).await?;
        inputs.app = app_row.name;
        let plan = plan(&inputs);
        let mut vars: Vec<EffectiveVar> = plan
            .keys
            .into_iter()
            .map(|(key, planned)| EffectiveVar {
                key,
                origin: planned.origin,
                value_type: planned.value_type,
                shown: match planned.value {
                    Value::Plain(text) => text.to_string(),
                    Value::Secret { preview, .. } => preview.to_string(),
                },
                overrides: planned.overrides,
                problem: None,
            })
            .collect();
        vars.extend(plan.problems.into_iter().map(|p| EffectiveVar {
            key: p.key,
            origin: p.origin,
            value_type: p.value_type,
            shown: String::new(),
            overrides: Vec::new(),
            problem: Some(p.error.to_string()),
        }));
        Ok(vars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::env::SetEnvValue;
    use crate::service::testing::{admin, service, viewer};

    #[tokio::test]
    async fn the_effective_view_shows_provenance_overrides_and_problems_without_values() {
        let svc = service().await;
        svc.create_application(
            &admin(),
            crate::service::applications::tests::new_app("web"),
        )
        .await
        .unwrap();
        svc.create_group(&admin(), "db", None).await.unwrap();
        svc.create_group(&admin(), "other", None).await.unwrap();
        for (group, name, value) in [
            ("db", "PASSWORD", "s3cr3t-db"),
            ("db", "USER", "s3cr3t-user"),
            ("other", "USER", "s3cr3t-other"),
        ] {
            svc.set_secret(
                &admin(),
                group,
                name,
                &SecretString::from(value.to_string()),
                None,
            )
            .await
            .unwrap();
        }
        let set = |app: Option<&'static str>, key: &'static str, value: SetEnvValue| {
            let svc = svc.clone();
            async move { svc.set_env(&admin(), app, key, value, None).await.unwrap() }
        };
        set(None, "LOG", SetEnvValue::Plain("info".into())).await;
        set(None, "REGION", SetEnvValue::Plain("eu".into())).await;
        set(None, "ALL_DB", SetEnvValue::Group("db".into())).await;
        set(Some("web"), "LOG", SetEnvValue::Plain("debug".into())).await;
        set(
            Some("web"),
            "USER",
            SetEnvValue::Secret("other/USER".into()),
        )
        .await;
        let vars = svc.describe_environment(&viewer(), "web").await.unwrap();
        let row = |key: &str| vars.iter().find(|v| v.key == key).unwrap();
        assert_eq!(
            vars.iter().map(|v| v.key.as_str()).collect::<Vec<_>>(),
            ["LOG", "PASSWORD", "REGION", "USER"]
        );
        let log = row("LOG");
        assert_eq!(
            (log.origin.app.as_deref(), log.shown.as_str()),
            (Some("web"), "debug")
        );
        assert_eq!(
            log.overrides,
            [EnvOrigin {
                app: None,
                source: EnvSource::Plain
            }]
        );
        let password = row("PASSWORD");
        assert_eq!(
            password.origin.source,
            EnvSource::Group {
                group: "db".into(),
                via: "ALL_DB".into()
            }
        );
        assert_eq!(password.value_type, "group_ref");
        let user = row("USER");
        assert_eq!(
            user.origin.source,
            EnvSource::Secret {
                path: Some("other/USER".into())
            }
        );
        assert_eq!(
            user.overrides[0].source,
            EnvSource::Group {
                group: "db".into(),
                via: "ALL_DB".into()
            }
        );
        assert!(vars.iter().all(|v| v.problem.is_none()));
        assert!(!format!("{vars:?}").contains("s3cr3t"), "{vars:?}");

        // A second group defining USER in the same scope: the deploy refuses, the view marks.
        set(None, "ALL_OTHER", SetEnvValue::Group("other".into())).await;
        let id = svc.store().application("web").await.unwrap().id;
        let refused = svc.resolve_environment(id).await.unwrap_err().to_string();
        let vars = svc.describe_environment(&admin(), "web").await.unwrap();
        let marked: Vec<_> = vars.iter().filter_map(|v| v.problem.clone()).collect();
        assert_eq!(marked, [refused]);
        assert!(marked[0].contains("both define USER"), "{marked:?}");
    }
}
