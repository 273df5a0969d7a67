//! From V1 rows to the import plan: the seed's reference syntax, `env_vars` and `ports` JSON,
//! image tags, statuses, timestamps. What berth cannot take at all is an error naming the V1
//! row (never a value); what the V1 data itself leaves undecided (a dangling reference, a
//! duplicate key) is decided here by a documented rule and reported.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{anyhow, bail};
use berth_control_plane::model::PortMapping;
use berth_control_plane::service::import::{
    ImportPlan, ItemKind, PlanApplication, PlanDomain, PlanImagePattern, PlanProvider,
    PlanRepository, PlanSecret, PlanValue, PlanVariable,
};
use secrecy::{ExposeSecret as _, SecretString};
use serde::de::{MapAccess, Visitor};

use super::read::{V1Application, V1Data, V1EnvVar};

/// A row decided by the CLI, reported beside the control plane's: not imported (skipped), or
/// imported with a change worth knowing (a note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalItem {
    pub kind: ItemKind,
    pub name: String,
    pub source: String,
    pub skipped: bool,
    pub detail: String,
}

/// The plan and what the CLI decided on its own.
pub struct Mapped {
    pub plan: ImportPlan,
    pub local: Vec<LocalItem>,
}

/// A V1 variable value in the seed's reference syntax.
#[derive(Debug, PartialEq, Eq)]
pub enum Reference<'a> {
    /// Not a reference: the value stays plain.
    None,
    /// `@secret:<id>` of a V1 secret: its name.
    Secret(&'a str),
    /// `@secret:<id>` in the seed's exact form, but no V1 secret has that id.
    Dangling(i64),
}

/// The seed writes a reference as `` `@secret:${secret.id}` ``: exactly `@secret:` and the id
/// in decimal, nothing around it. Anything else (`@secret: 1`, `@secret:01`, a reference
/// inside a longer value) is not one, and stays plain.
pub fn reference<'a>(value: &str, secrets: &'a HashMap<i64, String>) -> Reference<'a> {
    let Some(digits) = value.strip_prefix("@secret:") else {
        return Reference::None;
    };
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    let Some(id) = canonical.then(|| digits.parse::<i64>().ok()).flatten() else {
        return Reference::None;
    };
    match secrets.get(&id) {
        Some(name) => Reference::Secret(name),
        None => Reference::Dangling(id),
    }
}

/// A JSON object's entries in document order, duplicates kept (serde_json's map sorts them
/// and keeps the last).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// One value of `env_vars`, as V1's JavaScript put it in a process environment.
#[derive(Debug, PartialEq, Eq)]
pub enum EnvEntry {
    Value(String),
    /// Not text: with the reason.
    Unusable(&'static str),
}

/// `env_vars`: a JSON object, in document order; for a key given twice the last value wins
/// (as `JSON.parse` did) and the earlier are dropped. Errors never carry the text.
pub fn env_vars(json: &str) -> Result<Vec<(String, EnvEntry)>, &'static str> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let Entries(entries) = serde::Deserialize::deserialize(&mut de)
        .and_then(|e| de.end().map(|()| e))
        .map_err(|_| "env_vars is not a JSON object")?;
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, (k, _)) in entries.iter().enumerate() {
        last.insert(k.clone(), i);
    }
    Ok(entries
        .into_iter()
        .enumerate()
        .filter(|(i, (k, _))| last[k] == *i)
        .map(|(_, (k, v))| {
            let entry = match v {
                serde_json::Value::String(s) => EnvEntry::Value(s),
                serde_json::Value::Number(n) => EnvEntry::Value(n.to_string()),
                serde_json::Value::Bool(b) => EnvEntry::Value(b.to_string()),
                serde_json::Value::Null => EnvEntry::Unusable("its value is null"),
                _ => EnvEntry::Unusable("its value is a JSON object or array, not text"),
            };
            (k, entry)
        })
        .collect())
}

/// `ports`: the seed's `[{"host":8080,"container":80}]` (a `protocol` may follow), or Docker's
/// `"8080:80[/udp]"` strings. Errors never carry the text.
pub fn ports(json: &str) -> Result<Vec<PortMapping>, String> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|_| "ports is not JSON".to_string())?;
    let serde_json::Value::Array(items) = value else {
        return Err("ports is not a JSON array".into());
    };
    let number = |v: &serde_json::Value, what: &str, i: usize| -> Result<u16, String> {
        let n = match v {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        n.and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("ports entry {}: {what} is not a port (1-65535)", i + 1))
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            serde_json::Value::Object(o) => {
                let protocol = match o.get("protocol") {
                    None | Some(serde_json::Value::Null) => "tcp".to_string(),
                    Some(serde_json::Value::String(p)) => p.to_ascii_lowercase(),
                    Some(_) => return Err(format!("ports entry {}: protocol is not text", i + 1)),
                };
                Ok(PortMapping {
                    host: number(o.get("host").unwrap_or(&serde_json::Value::Null), "host", i)?,
                    container: number(
                        o.get("container").unwrap_or(&serde_json::Value::Null),
                        "container",
                        i,
                    )?,
                    protocol,
                })
            }
            serde_json::Value::String(s) => {
                let (pair, protocol) = s.split_once('/').unwrap_or((s, "tcp"));
                let (host, container) = pair
                    .split_once(':')
                    .ok_or_else(|| format!("ports entry {}: expected HOST:CONTAINER", i + 1))?;
                Ok(PortMapping {
                    host: number(&serde_json::Value::String(host.into()), "host", i)?,
                    container: number(
                        &serde_json::Value::String(container.into()),
                        "container",
                        i,
                    )?,
                    protocol: protocol.to_ascii_lowercase(),
                })
            }
            _ => Err(format!(
                "ports entry {} is neither an object nor HOST:CONTAINER",
                i + 1
            )),
        })
        .collect()
}

/// A V1 image may carry its tag or digest (`team/web:1.2`, `team/web@sha256:…`); berth keeps
/// the image without it and the version apart. Returns (image, tag or digest).
pub fn split_image(image: &str) -> (&str, Option<&str>) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name, Some(digest));
    }
    let last = image.rfind('/').map_or(0, |i| i + 1);
    match image[last..].rfind(':') {
        Some(i) => (&image[..last + i], Some(&image[last + i + 1..])),
        None => (image, None),
    }
}

/// V1 timestamps as berth stores them (`YYYY-MM-DD HH:MM:SS`, UTC): SQLite's `datetime()`
/// form as it is, an ISO form (`…T…[.fff][Z]`) rewritten; anything else is dropped (the row
/// then gets the time of the import).
pub fn timestamp(value: Option<&str>) -> Option<String> {
    let v = value?.trim();
    let v = v.strip_suffix('Z').unwrap_or(v);
    let v = v.split_once('.').map_or(v, |(whole, _)| whole);
    let b = v.as_bytes();
    let shape = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ' || *c == b'T',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    shape.then(|| v.replacen('T', " ", 1))
}

/// Where a V1 row is: `applications row 3`.
fn row(table: &str, id: i64) -> String {
    format!("{table} row {id}")
}

/// Maps everything read into a plan for `group`.
pub fn map(data: V1Data, group: &str) -> anyhow::Result<Mapped> {
    let mut local = Local(Vec::new());
    for column in &data.missing_columns {
        local.skip(
            kind_of_table(column.split('.').next().unwrap_or_default()),
            format!("(column {column})"),
            "the V1 schema".into(),
            format!(
                "the V1 database has no column {column}: {}",
                missing_column_effect(column)
            ),
        );
    }
    for (table, present) in [
        ("repositories", data.repositories.is_some()),
        ("image_whitelists", data.image_patterns.is_some()),
        ("domains", data.domains.is_some()),
        ("secret_providers", data.providers.is_some()),
        ("system_settings", data.settings.is_some()),
    ] {
        if !present {
            local.skip(
                kind_of_table(table),
                format!("(table {table})"),
                "the V1 schema".into(),
                format!("the V1 database has no table {table}: nothing of it to import"),
            );
        }
    }
    for key in data.settings.iter().flatten() {
        local.skip(
            ItemKind::Setting,
            key.clone(),
            format!("system_settings key {key}"),
            "V1 settings are not imported: berth's legacy POST /deploy checks each application's \
             webhook token, not a shared secret"
                .into(),
        );
    }

    let secret_names: HashMap<i64, String> = data
        .secrets
        .iter()
        .map(|s| (s.id, s.name.clone()))
        .collect();
    let secrets = data
        .secrets
        .into_iter()
        .map(|s| PlanSecret {
            v1_id: s.id,
            name: s.name,
            value: s.reference,
            description: s.metadata.filter(|m| !m.is_empty()),
            created_at: timestamp(s.created_at.as_deref()),
            updated_at: timestamp(s.updated_at.as_deref()),
        })
        .collect();

    let repository_names: HashMap<i64, String> = data
        .repositories
        .iter()
        .flatten()
        .map(|r| (r.id, r.name.clone()))
        .collect();
    let repositories = data
        .repositories
        .unwrap_or_default()
        .into_iter()
        .map(|r| PlanRepository {
            v1_id: r.id,
            name: r.name,
            url: r.url,
            username: r.username.filter(|u| !u.is_empty()),
            password: r.password.filter(|p| !p.expose_secret().is_empty()),
        })
        .collect();

    let app_names: HashMap<i64, String> = data
        .applications
        .iter()
        .map(|a| (a.id, a.name.clone()))
        .collect();
    // Project keys set by `environment_variables` rows: they win over `env_vars`.
    let mut table_keys: HashMap<(i64, String), i64> = HashMap::new();
    for v in &data.variables {
        if let (true, Some(app)) = (v.scope == "project", v.project_id) {
            table_keys.insert((app, v.key.clone()), v.id);
        }
    }

    let mut applications = Vec::with_capacity(data.applications.len());
    let mut variables = Vec::new();
    for a in &data.applications {
        let (app, notes) = application(a, &repository_names)?;
        for detail in notes {
            local.note(
                ItemKind::Application,
                &a.name,
                row("applications", a.id),
                detail,
            );
        }
        applications.push(app);
        let source = format!("applications row {} env_vars", a.id);
        let Some(json) = &a.env_vars else { continue };
        let entries = env_vars(json.expose_secret())
            .map_err(|why| anyhow!("V1 applications row {} ({}): {why}", a.id, a.name))?;
        for (position, (key, entry)) in entries.into_iter().enumerate() {
            if berth_control_plane::validate::env_key(&key).is_err() {
                bail!(
                    "V1 applications row {} ({}): env_vars entry {} has a key that cannot be a \
                     variable name ([A-Za-z_][A-Za-z0-9_]*, at most 128 characters); fix it in a \
                     copy of the V1 database and import the copy",
                    a.id,
                    a.name,
                    position + 1
                );
            }
            let name = format!("{}:{key}", a.name);
            if let Some(row_id) = table_keys.get(&(a.id, key.clone())) {
                local.skip(
                    ItemKind::Variable,
                    name,
                    source.clone(),
                    format!("environment_variables row {row_id} sets it too and wins"),
                );
                continue;
            }
            let value = match entry {
                EnvEntry::Value(v) => v,
                EnvEntry::Unusable(why) => {
                    local.skip(ItemKind::Variable, name, source.clone(), why.into());
                    continue;
                }
            };
            match value_of(&value, &secret_names) {
                Ok(value) => variables.push(PlanVariable {
                    source: source.clone(),
                    application: Some(a.name.clone()),
                    key,
                    value,
                }),
                Err(why) => local.skip(ItemKind::Variable, name, source.clone(), why),
            }
        }
    }

    table_variables(
        &data.variables,
        &app_names,
        &secret_names,
        &mut variables,
        &mut local,
    )?;

    let image_patterns = data
        .image_patterns
        .unwrap_or_default()
        .into_iter()
        .map(|p| PlanImagePattern {
            v1_id: p.id,
            pattern: p.pattern,
        })
        .collect();

    let mut domains = Vec::new();
    for d in data.domains.unwrap_or_default() {
        match app_names.get(&d.application_id) {
            Some(app) => domains.push(PlanDomain {
                v1_id: d.id,
                application: app.clone(),
                host: d.domain,
            }),
            None => local.skip(
                ItemKind::Domain,
                d.domain,
                row("domains", d.id),
                format!("its application row {} does not exist", d.application_id),
            ),
        }
    }

    let providers = data
        .providers
        .unwrap_or_default()
        .into_iter()
        .map(|p| PlanProvider {
            v1_id: p.id,
            name: p.name,
            provider_type: p.provider_type,
            config: p.config,
        })
        .collect();

    Ok(Mapped {
        plan: ImportPlan {
            group: group.to_string(),
            secrets,
            repositories,
            applications,
            variables,
            image_patterns,
            domains,
            providers,
        },
        local: local.0,
    })
}

/// The rows decided here.
struct Local(Vec<LocalItem>);

impl Local {
    fn skip(&mut self, kind: ItemKind, name: String, source: String, detail: String) {
        self.0.push(LocalItem {
            kind,
            name,
            source,
            skipped: true,
            detail,
        });
    }

    fn note(&mut self, kind: ItemKind, name: &str, source: String, detail: String) {
        self.0.push(LocalItem {
            kind,
            name: name.to_string(),
            source,
            skipped: false,
            detail,
        });
    }
}

/// A value, or the reason it is not imported.
fn value_of(value: &str, secrets: &HashMap<i64, String>) -> Result<PlanValue, String> {
    match reference(value, secrets) {
        Reference::None => Ok(PlanValue::Plain(SecretString::from(value.to_string()))),
        Reference::Secret(name) => Ok(PlanValue::Secret(name.to_string())),
        Reference::Dangling(id) => Err(format!(
            "it references V1 secret {id} (@secret:{id}), which does not exist"
        )),
    }
}

/// `environment_variables` rows. Two global rows with one key (the seed's pitfall: NULL
/// project ids are all distinct) keep the later row, as V1's resolution did.
fn table_variables(
    rows: &[V1EnvVar],
    apps: &HashMap<i64, String>,
    secrets: &HashMap<i64, String>,
    out: &mut Vec<PlanVariable>,
    local: &mut Local,
) -> anyhow::Result<()> {
    let mut latest: BTreeMap<(Option<i64>, &str), i64> = BTreeMap::new();
    for v in rows {
        let scope = (v.scope == "project").then_some(v.project_id).flatten();
        latest.insert((scope, v.key.as_str()), v.id);
    }
    let mut seen = HashSet::new();
    for v in rows {
        let source = row("environment_variables", v.id);
        if berth_control_plane::validate::env_key(&v.key).is_err() {
            bail!(
                "V1 {source}: the key cannot be a variable name ([A-Za-z_][A-Za-z0-9_]*, at most \
                 128 characters); fix it in a copy of the V1 database and import the copy"
            );
        }
        let application = match (v.scope.as_str(), v.project_id) {
            ("global", _) => None,
            ("project", Some(id)) => match apps.get(&id) {
                Some(app) => Some(app.clone()),
                None => {
                    local.skip(
                        ItemKind::Variable,
                        format!("(application row {id}):{}", v.key),
                        source,
                        format!("its application row {id} does not exist"),
                    );
                    continue;
                }
            },
            _ => {
                local.skip(
                    ItemKind::Variable,
                    v.key.clone(),
                    source,
                    "its scope is neither global nor a project with an application".into(),
                );
                continue;
            }
        };
        let name = format!("{}:{}", application.as_deref().unwrap_or("(global)"), v.key);
        let scope = (v.scope == "project").then_some(v.project_id).flatten();
        let winner = latest[&(scope, v.key.as_str())];
        if winner != v.id || !seen.insert((scope, v.key.as_str())) {
            local.skip(
                ItemKind::Variable,
                name,
                source,
                format!("environment_variables row {winner} has the same key and wins, as in V1"),
            );
            continue;
        }
        match value_of(v.value.expose_secret(), secrets) {
            Ok(value) => out.push(PlanVariable {
                source,
                application,
                key: v.key.clone(),
                value,
            }),
            Err(why) => local.skip(ItemKind::Variable, name, source, why),
        }
    }
    Ok(())
}

/// One application, and the notes of what changed on the way.
fn application(
    a: &V1Application,
    repositories: &HashMap<i64, String>,
) -> anyhow::Result<(PlanApplication, Vec<String>)> {
    let mut notes = Vec::new();
    let (image, tag) = split_image(&a.image);
    let version = match (a.version.as_deref().filter(|v| !v.is_empty()), tag) {
        (Some(v), Some(t)) if v != t => {
            notes.push(format!(
                "the image's tag {t} is dropped: the version column ({v}) wins"
            ));
            Some(v)
        }
        (Some(v), _) => Some(v),
        (None, tag) => tag,
    };
    let ports = match &a.ports {
        Some(json) => ports(json)
            .map_err(|why| anyhow!("V1 applications row {} ({}): {why}", a.id, a.name))?,
        None => Vec::new(),
    };
    let status = match a.status.as_deref() {
        Some(s @ ("running" | "stopped" | "error")) => s.to_string(),
        Some("deploying") => {
            notes.push("status deploying (an interrupted V1 deploy) is imported as error".into());
            "error".into()
        }
        other => {
            notes.push(format!(
                "status {} is imported as stopped",
                other.map_or("NULL".to_string(), |s| format!("{s:?}"))
            ));
            "stopped".into()
        }
    };
    let repository = match a.repository_id {
        None => None,
        Some(id) => match repositories.get(&id) {
            Some(name) => Some(name.clone()),
            None => {
                notes.push(format!(
                    "its repository row {id} does not exist: imported without a repository"
                ));
                None
            }
        },
    };
    Ok((
        PlanApplication {
            v1_id: a.id,
            name: a.name.clone(),
            image: image.to_string(),
            version: version.map(str::to_string),
            repository,
            ports,
            status,
            last_deployed_at: timestamp(a.last_deployed_at.as_deref()),
            created_at: timestamp(a.created_at.as_deref()),
            updated_at: timestamp(a.updated_at.as_deref()),
        },
        notes,
    ))
}

fn kind_of_table(table: &str) -> ItemKind {
    match table {
        "secrets" => ItemKind::Secret,
        "repositories" => ItemKind::Repository,
        "applications" => ItemKind::Application,
        "environment_variables" => ItemKind::Variable,
        "image_whitelists" => ItemKind::ImagePattern,
        "domains" => ItemKind::Domain,
        "secret_providers" => ItemKind::Provider,
        "system_settings" => ItemKind::Setting,
        _ => ItemKind::Group,
    }
}

/// What the import does without an optional column.
fn missing_column_effect(column: &str) -> &'static str {
    match column {
        "secrets.metadata" => "secrets are imported without descriptions",
        "applications.ports" => "applications are imported without ports",
        "applications.env_vars" => "only environment_variables rows become variables",
        "applications.repository_id" => "applications are imported without a repository",
        "applications.version" => "versions come from image tags only",
        "applications.status" => "applications are imported as stopped",
        "repositories.username" | "repositories.password" => {
            "registries are imported without credentials"
        }
        _ => "imported without it",
    }
}

#[cfg(test)]
mod tests;
