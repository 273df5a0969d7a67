//! The whole plan, checked before the transaction opens: a row berth cannot hold faithfully
//! is an error naming the V1 row (never a value), so nothing is written. Rows berth has no
//! place for (a provider config, an allowlist pattern, a host name it refuses) are not errors:
//! their skip reasons are decided here and reported.

use std::collections::HashSet;

use secrecy::{ExposeSecret as _, SecretString};

use super::providers::provider_from_v1;
use super::{row, ImportPlan, PlanValue};
use crate::error::{Error, Result};
use crate::provider::ProviderType;
use crate::service::applications::validate_ports;
use crate::service::registry::{validate_pattern, validate_repository};
use crate::validate;

/// The statuses an imported application may have: no deployment of it runs.
pub(super) const STATUSES: [&str; 3] = ["running", "stopped", "error"];

/// A provider whose V1 config maps onto one of berth's types.
pub(super) struct MappedProvider {
    pub provider_type: ProviderType,
    /// Its settings as berth stores them (`provider::config_json`).
    pub config: String,
    pub credential: SecretString,
}

/// What the check decided beyond "valid": per provider, pattern and domain of the plan (same
/// order), what to write or why it is skipped.
pub(super) struct Checked {
    pub providers: Vec<std::result::Result<MappedProvider, String>>,
    pub patterns: Vec<Option<String>>,
    /// The host lower-cased, or why it is skipped.
    pub domains: Vec<std::result::Result<String, String>>,
}

/// `INVALID_ARGUMENT` naming the V1 row.
fn invalid(source: &str, message: impl std::fmt::Display) -> Error {
    Error::invalid(format!(
        "V1 {source}: {message}; fix it in a copy of the V1 database and import the copy"
    ))
}

fn unique<'a>(seen: &mut HashSet<&'a str>, name: &'a str, source: &str, what: &str) -> Result<()> {
    if seen.insert(name) {
        Ok(())
    } else {
        Err(invalid(source, format!("a second {what} named {name:?}")))
    }
}

fn timestamp(source: &str, column: &str, value: Option<&str>) -> Result<()> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    match value {
        Some(v) if time::PrimitiveDateTime::parse(v, format).is_err() => Err(invalid(
            source,
            format!("{column} is not a \"YYYY-MM-DD HH:MM:SS\" time"),
        )),
        _ => Ok(()),
    }
}

pub(super) fn check(plan: &ImportPlan) -> Result<Checked> {
    validate::name("group", &plan.group)?;

    let mut secrets = HashSet::new();
    for s in &plan.secrets {
        let source = row("secrets", s.v1_id);
        // The name is a variable name when the group is expanded; never echoed, it is
        // V1 data of any shape.
        validate::secret_name(&s.name).map_err(|_| {
            invalid(
                &source,
                "the name cannot be a variable name ([A-Za-z_][A-Za-z0-9_]*, at most 128 characters)",
            )
        })?;
        unique(&mut secrets, &s.name, &source, "secret")?;
        validate::secret_value(&s.name, s.value.expose_secret())
            .map_err(|e| invalid(&source, e))?;
        validate::description(s.description.as_deref()).map_err(|_| {
            invalid(
                &source,
                format!(
                    "metadata is longer than {} bytes, the most a description holds",
                    validate::MAX_DESCRIPTION_LEN
                ),
            )
        })?;
        timestamp(&source, "created_at", s.created_at.as_deref())?;
        timestamp(&source, "updated_at", s.updated_at.as_deref())?;
    }

    let mut repositories = HashSet::new();
    for r in &plan.repositories {
        let source = row("repositories", r.v1_id);
        validate_repository(&r.name, &r.url, r.username.as_deref(), r.password.is_some())
            .map_err(|e| invalid(&source, e))?;
        unique(&mut repositories, &r.name, &source, "repository")?;
    }

    let mut applications = HashSet::new();
    for a in &plan.applications {
        let source = row("applications", a.v1_id);
        validate::name("application", &a.name).map_err(|e| invalid(&source, e))?;
        unique(&mut applications, &a.name, &source, "application")?;
        validate::image(&a.image).map_err(|e| invalid(&source, e))?;
        if let Some(v) = &a.version {
            validate::version(v).map_err(|e| invalid(&source, e))?;
        }
        validate_ports(&a.ports).map_err(|e| invalid(&source, e))?;
        if !STATUSES.contains(&a.status.as_str()) {
            return Err(invalid(
                &source,
                format!("status must be one of {}", STATUSES.join(", ")),
            ));
        }
        timestamp(&source, "last_deployed_at", a.last_deployed_at.as_deref())?;
        timestamp(&source, "created_at", a.created_at.as_deref())?;
        timestamp(&source, "updated_at", a.updated_at.as_deref())?;
    }

    let mut variables = HashSet::new();
    for v in &plan.variables {
        let source = v.source.as_str();
        validate::env_key(&v.key).map_err(|_| {
            invalid(
                source,
                "the key cannot be a variable name ([A-Za-z_][A-Za-z0-9_]*, at most 128 characters)",
            )
        })?;
        if let Some(app) = &v.application {
            if !applications.contains(app.as_str()) {
                return Err(invalid(
                    source,
                    format!("its application {app:?} is not in the import"),
                ));
            }
        }
        if !variables.insert((v.application.as_deref(), v.key.as_str())) {
            return Err(invalid(
                source,
                format!(
                    "{} is defined twice in {}",
                    v.key,
                    v.application.as_deref().unwrap_or("the global scope")
                ),
            ));
        }
        match &v.value {
            PlanValue::Plain(value) => {
                validate::env_value(&v.key, value.expose_secret())
                    .map_err(|e| invalid(source, e))?;
            }
            PlanValue::Secret(name) => {
                if !secrets.contains(name.as_str()) {
                    return Err(invalid(
                        source,
                        format!("it references secret {name:?}, which is not in the import"),
                    ));
                }
            }
        }
    }

    let mut patterns = Vec::with_capacity(plan.image_patterns.len());
    let mut seen_patterns = HashSet::new();
    for p in &plan.image_patterns {
        let source = row("image_whitelists", p.v1_id);
        unique(&mut seen_patterns, &p.pattern, &source, "pattern")?;
        patterns.push(validate_pattern(&p.pattern).err().map(|e| {
            format!(
                "berth's allowlist refuses it ({e}); add an equivalent with `berth allowlist add`"
            )
        }));
    }

    let mut domains = Vec::with_capacity(plan.domains.len());
    let mut hosts = HashSet::new();
    for d in &plan.domains {
        let source = row("domains", d.v1_id);
        if !applications.contains(d.application.as_str()) {
            return Err(invalid(
                &source,
                format!("its application {:?} is not in the import", d.application),
            ));
        }
        let host = validate::host_name(&d.host);
        if let Ok(host) = &host {
            if !hosts.insert(host.clone()) {
                return Err(invalid(&source, format!("a second domain {host}")));
            }
        }
        domains.push(host.map_err(|e| format!("berth refuses the host name: {e}")));
    }

    let mut providers = Vec::with_capacity(plan.providers.len());
    let mut seen_providers = HashSet::new();
    for p in &plan.providers {
        let source = row("secret_providers", p.v1_id);
        validate::name("provider", &p.name).map_err(|e| invalid(&source, e))?;
        unique(&mut seen_providers, &p.name, &source, "provider")?;
        providers.push(provider_from_v1(&p.provider_type, &p.config));
    }

    Ok(Checked {
        providers,
        patterns,
        domains,
    })
}
