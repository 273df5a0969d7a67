//! Every row of a checked plan decided against berth inside the import transaction, in the
//! order rows depend on each other: the group, its secrets, repositories, providers,
//! applications (which name repositories), variables (which name applications and secrets),
//! allowlist patterns, domains (which name applications). Rows are written as they are
//! decided; a conflict anywhere, or a dry run, drops the transaction at the end.

use std::collections::{HashMap, HashSet};

use secrecy::{ExposeSecret as _, SecretString};

use super::check::{Checked, MappedProvider};
use super::{row, ImportPlan, ImportReport, ItemKind, Outcome, PlanValue, ReportItem};
use crate::crypto::Sealer;
use crate::crypto::{generate_token, token_digest, token_preview, Aad};
use crate::error::{Error, Result};
use crate::model::{EnvScope, NewEnvVar, PortMapping};
use crate::service::applications::{TOKEN_PREVIEW_CHARS, WEBHOOK_TOKEN_PREFIX};
use crate::service::providers::DEFAULT_SYNC_INTERVAL;
use crate::service::{Actor, Service};
use crate::store::{ImportTx, ImportedEnvRow, ImportedSecret, NewImportedApplication};

/// The description of a group the import creates (the seed's Step 2.3).
const GROUP_DESCRIPTION: &str = "Default secret group (migrated from old data)";
/// The description of an imported allowlist pattern.
const PATTERN_DESCRIPTION: &str = "imported from V1";

/// An application of the plan as the later rows need it.
struct AppRef {
    id: i64,
    /// Its ports in berth (a domain needs a container port).
    ports: Vec<PortMapping>,
    /// It was in berth before this run: its variables are compared, its routes pushed.
    existed: bool,
}

struct Run<'a> {
    svc: &'a Service,
    tx: ImportTx,
    /// Encryptions reserved before the import's transaction began (a reservation writes).
    sealer: Sealer,
    items: Vec<ReportItem>,
    tokens: Vec<(String, SecretString)>,
    routed: Vec<i64>,
    /// Secret name -> id in the import's group.
    secret_ids: HashMap<String, i64>,
    /// Repository name -> id, berth's and the plan's.
    repository_ids: HashMap<String, i64>,
    apps: HashMap<String, AppRef>,
}

pub(super) async fn apply(
    svc: &Service,
    actor: &Actor,
    tx: ImportTx,
    sealer: Sealer,
    plan: &ImportPlan,
    checked: &Checked,
    dry_run: bool,
) -> Result<ImportReport> {
    let mut run = Run {
        svc,
        tx,
        sealer,
        items: Vec::new(),
        tokens: Vec::new(),
        routed: Vec::new(),
        secret_ids: HashMap::new(),
        repository_ids: HashMap::new(),
        apps: HashMap::new(),
    };
    let group_id = run.group(&plan.group).await?;
    run.secrets(group_id, plan).await?;
    run.repositories(plan).await?;
    run.providers(plan, &checked.providers).await?;
    run.applications(plan).await?;
    run.variables(plan).await?;
    run.image_patterns(plan, &checked.patterns).await?;
    run.domains(plan, &checked.domains).await?;

    let conflicts = run.items.iter().any(|i| i.outcome == Outcome::Conflict);
    let applied = !dry_run && !conflicts;
    let Run {
        mut tx,
        items,
        tokens,
        routed,
        ..
    } = run;
    if applied {
        tx.audit(&actor.name, "import.v1", &plan.group, &summary(&items))
            .await?;
        tx.commit().await?;
    }
    // Otherwise `tx` is dropped here: everything written above is rolled back.
    Ok(ImportReport {
        dry_run,
        applied,
        items,
        tokens: if applied { tokens } else { Vec::new() },
        routed_applications: if applied { routed } else { Vec::new() },
    })
}

/// The audit row's details: what was created, by kind (names and values stay out).
fn summary(items: &[ReportItem]) -> String {
    let mut created: Vec<(ItemKind, usize)> = Vec::new();
    for item in items.iter().filter(|i| i.outcome == Outcome::Created) {
        match created.iter_mut().find(|(k, _)| *k == item.kind) {
            Some((_, n)) => *n += 1,
            None => created.push((item.kind, 1)),
        }
    }
    let created: Vec<String> = created
        .iter()
        .map(|(k, n)| format!("{n} {}", k.as_str()))
        .collect();
    let count = |o: Outcome| items.iter().filter(|i| i.outcome == o).count();
    format!(
        "created: {}; already imported: {}; skipped: {}",
        if created.is_empty() {
            "nothing".to_string()
        } else {
            created.join(", ")
        },
        count(Outcome::AlreadyImported),
        count(Outcome::Skipped)
    )
}

/// "berth's repository differs: url, password".
fn differs(kind: &str, fields: &[&str]) -> Option<String> {
    (!fields.is_empty()).then(|| format!("berth's {kind} differs: {}", fields.join(", ")))
}

fn sorted(ports: &[PortMapping]) -> Vec<(u16, u16, &str)> {
    let mut out: Vec<(u16, u16, &str)> = ports
        .iter()
        .map(|p| (p.host, p.container, p.protocol.as_str()))
        .collect();
    out.sort_unstable();
    out
}

impl Run<'_> {
    fn push(
        &mut self,
        kind: ItemKind,
        name: String,
        source: String,
        outcome: Outcome,
        detail: impl Into<String>,
    ) {
        self.items.push(ReportItem {
            kind,
            name,
            source,
            outcome,
            detail: detail.into(),
        });
    }

    /// Created, or already imported when `conflict` is `None`, else a conflict.
    fn decided(&mut self, kind: ItemKind, name: String, source: String, conflict: Option<String>) {
        match conflict {
            None => self.push(kind, name, source, Outcome::AlreadyImported, ""),
            Some(detail) => self.push(kind, name, source, Outcome::Conflict, detail),
        }
    }

    async fn group(&mut self, name: &str) -> Result<i64> {
        let source = "the group of the V1 secrets".to_string();
        Ok(match self.tx.group_id(name).await? {
            Some(id) => {
                self.push(
                    ItemKind::Group,
                    name.into(),
                    source,
                    Outcome::AlreadyImported,
                    "exists",
                );
                id
            }
            None => {
                let id = self.tx.create_group(name, GROUP_DESCRIPTION).await?;
                self.push(ItemKind::Group, name.into(), source, Outcome::Created, "");
                id
            }
        })
    }

    async fn secrets(&mut self, group_id: i64, plan: &ImportPlan) -> Result<()> {
        let existing = self.tx.group_secrets(group_id).await?;
        let mut create = Vec::new();
        for s in &plan.secrets {
            let name = format!("{}/{}", plan.group, s.name);
            let source = row("secrets", s.v1_id);
            let Some(e) = existing.get(&s.name) else {
                create.push(ImportedSecret {
                    secret: self.svc.seal(
                        &self.sealer,
                        group_id,
                        &s.name,
                        &s.value,
                        s.description.clone(),
                    ),
                    created_at: s.created_at.as_deref(),
                    updated_at: s.updated_at.as_deref(),
                });
                self.push(ItemKind::Secret, name, source, Outcome::Created, "");
                continue;
            };
            self.secret_ids.insert(s.name.clone(), e.id);
            let mut fields = Vec::new();
            if e.source != "manual" {
                fields.push("source (synced from a provider)");
            }
            let stored = self
                .svc
                .key()
                .decrypt_string(&e.value, &Aad::secret(e.group_id, &e.name))?;
            if stored.expose_secret() != s.value.expose_secret() {
                fields.push("value");
            }
            if e.description != s.description {
                fields.push("description");
            }
            self.decided(ItemKind::Secret, name, source, differs("secret", &fields));
        }
        let created = self.tx.insert_secrets(group_id, &create).await?;
        self.secret_ids.extend(created);
        Ok(())
    }

    async fn repositories(&mut self, plan: &ImportPlan) -> Result<()> {
        let existing = self.tx.repositories().await?;
        self.repository_ids = existing.values().map(|r| (r.name.clone(), r.id)).collect();
        for r in &plan.repositories {
            let source = row("repositories", r.v1_id);
            let Some(e) = existing.get(&r.name) else {
                let password = r.password.as_ref().map(|p| {
                    self.sealer.encrypt(
                        p.expose_secret().as_bytes(),
                        &Aad::repository_password(&r.name),
                    )
                });
                let id = self
                    .tx
                    .insert_repository(&r.name, &r.url, r.username.as_deref(), password.as_deref())
                    .await?;
                self.repository_ids.insert(r.name.clone(), id);
                self.push(
                    ItemKind::Repository,
                    r.name.clone(),
                    source,
                    Outcome::Created,
                    "",
                );
                continue;
            };
            let mut fields = Vec::new();
            if e.url != r.url {
                fields.push("url");
            }
            if e.username != r.username {
                fields.push("username");
            }
            let same_password = match (&e.password, &r.password) {
                (None, None) => true,
                (Some(stored), Some(given)) => {
                    let stored = self
                        .svc
                        .key()
                        .decrypt_string(stored, &Aad::repository_password(&e.name))?;
                    stored.expose_secret() == given.expose_secret()
                }
                _ => false,
            };
            if !same_password {
                fields.push("password");
            }
            self.decided(
                ItemKind::Repository,
                r.name.clone(),
                source,
                differs("repository", &fields),
            );
        }
        Ok(())
    }

    async fn providers(
        &mut self,
        plan: &ImportPlan,
        mapped: &[std::result::Result<MappedProvider, String>],
    ) -> Result<()> {
        let existing = self.tx.providers().await?;
        for (p, mapped) in plan.providers.iter().zip(mapped) {
            let source = row("secret_providers", p.v1_id);
            let m = match mapped {
                Err(reason) => {
                    self.push(
                        ItemKind::Provider,
                        p.name.clone(),
                        source,
                        Outcome::Skipped,
                        reason.clone(),
                    );
                    continue;
                }
                Ok(m) => m,
            };
            let Some(e) = existing.get(&p.name) else {
                let key = &self.sealer;
                let interval = i64::try_from(DEFAULT_SYNC_INTERVAL.as_secs()).unwrap_or(300);
                self.tx
                    .insert_provider(
                        &p.name,
                        m.provider_type.as_str(),
                        &m.config,
                        interval,
                        |id| {
                            key.encrypt(
                                m.credential.expose_secret().as_bytes(),
                                &Aad::provider_credentials(id),
                            )
                        },
                    )
                    .await?;
                self.push(
                    ItemKind::Provider,
                    p.name.clone(),
                    source,
                    Outcome::Created,
                    format!(
                        "linked to no group: `berth group update GROUP --provider {}` to sync one",
                        p.name
                    ),
                );
                continue;
            };
            let mut fields = Vec::new();
            if e.provider_type != m.provider_type.as_str() {
                fields.push("type");
            }
            if e.config != m.config {
                fields.push("settings");
            }
            let same_credential = match &e.credentials {
                Some(stored) => {
                    let stored = self
                        .svc
                        .key()
                        .decrypt_string(stored, &Aad::provider_credentials(e.id))?;
                    stored.expose_secret() == m.credential.expose_secret()
                }
                None => false,
            };
            if !same_credential {
                fields.push("credential");
            }
            self.decided(
                ItemKind::Provider,
                p.name.clone(),
                source,
                differs("provider", &fields),
            );
        }
        Ok(())
    }

    async fn applications(&mut self, plan: &ImportPlan) -> Result<()> {
        let existing = self.tx.applications().await?;
        // Who publishes each host port: berth's apps, then the plan's as they are decided.
        let mut published: HashMap<(u16, String), String> = HashMap::new();
        for app in existing.values() {
            for p in &app.ports {
                published.insert((p.host, p.protocol.clone()), app.name.clone());
            }
        }
        for a in &plan.applications {
            let source = row("applications", a.v1_id);
            let repository_id = match &a.repository {
                Some(name) => Some(*self.repository_ids.get(name).ok_or_else(|| {
                    Error::invalid(format!(
                        "V1 {source}: its repository {name:?} is neither in the import nor in berth"
                    ))
                })?),
                None => None,
            };
            if let Some(e) = existing.get(&a.name) {
                self.apps.insert(
                    a.name.clone(),
                    AppRef {
                        id: e.id,
                        ports: e.ports.clone(),
                        existed: true,
                    },
                );
                let mut fields = Vec::new();
                if e.image != a.image {
                    fields.push("image");
                }
                if e.repository != a.repository {
                    fields.push("repository");
                }
                if sorted(&e.ports) != sorted(&a.ports) {
                    fields.push("ports");
                }
                // Version, status and last deploy are deployment state: berth changes them.
                self.decided(
                    ItemKind::Application,
                    a.name.clone(),
                    source,
                    differs("application", &fields),
                );
                continue;
            }
            let taken = a.ports.iter().find_map(|p| {
                published.get(&(p.host, p.protocol.clone())).map(|other| {
                    format!(
                        "host port {}/{} is published by app {other}",
                        p.host, p.protocol
                    )
                })
            });
            let token = generate_token(WEBHOOK_TOKEN_PREFIX);
            // Written even when a host port is taken: the conflict rolls the run back, and the
            // rows after it are decided against a complete picture.
            let id = self
                .tx
                .insert_application(&NewImportedApplication {
                    name: &a.name,
                    image: &a.image,
                    version: a.version.as_deref(),
                    repository_id,
                    ports: &a.ports,
                    status: &a.status,
                    webhook_token_digest: &token_digest(token.expose_secret()),
                    webhook_token_prefix: &token_preview(
                        token.expose_secret(),
                        TOKEN_PREVIEW_CHARS,
                    ),
                    last_deployed_at: a.last_deployed_at.as_deref(),
                    created_at: a.created_at.as_deref(),
                    updated_at: a.updated_at.as_deref(),
                })
                .await?;
            for p in &a.ports {
                published
                    .entry((p.host, p.protocol.clone()))
                    .or_insert_with(|| a.name.clone());
            }
            self.apps.insert(
                a.name.clone(),
                AppRef {
                    id,
                    ports: a.ports.clone(),
                    existed: false,
                },
            );
            match taken {
                Some(detail) => self.push(
                    ItemKind::Application,
                    a.name.clone(),
                    source,
                    Outcome::Conflict,
                    detail,
                ),
                None => {
                    self.tokens.push((a.name.clone(), token));
                    self.push(
                        ItemKind::Application,
                        a.name.clone(),
                        source,
                        Outcome::Created,
                        "",
                    );
                }
            }
        }
        Ok(())
    }

    async fn variables(&mut self, plan: &ImportPlan) -> Result<()> {
        // Berth's variables per scope, read once; an app created by this run has none.
        // Keyed by project id (`None`: global).
        let mut scopes: HashMap<Option<i64>, HashMap<String, ImportedEnvRow>> = HashMap::new();
        let mut create = Vec::new();
        for v in &plan.variables {
            let (scope, name) = match &v.application {
                None => (EnvScope::Global, format!("(global):{}", v.key)),
                Some(app) => {
                    let app_ref = &self.apps[app];
                    if !app_ref.existed {
                        scopes.entry(Some(app_ref.id)).or_default();
                    }
                    (EnvScope::Project(app_ref.id), format!("{app}:{}", v.key))
                }
            };
            let new = match &v.value {
                PlanValue::Plain(value) => NewEnvVar {
                    key: v.key.clone(),
                    value: value.expose_secret().to_string(),
                    value_type: "plain",
                    secret_id: None,
                    description: None,
                },
                PlanValue::Secret(secret) => {
                    let id = self.secret_ids[secret];
                    NewEnvVar {
                        key: v.key.clone(),
                        value: format!("@secret:{id}"),
                        value_type: "secret_ref",
                        secret_id: Some(id),
                        description: None,
                    }
                }
            };
            let scope_key = match scope {
                EnvScope::Global => None,
                EnvScope::Project(id) => Some(id),
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = scopes.entry(scope_key) {
                slot.insert(self.tx.env(scope).await?);
            }
            let existing = scopes[&scope_key].get(&v.key);
            let source = v.source.clone();
            match existing {
                None => {
                    create.push((scope, new));
                    self.push(ItemKind::Variable, name, source, Outcome::Created, "");
                }
                Some(e) => {
                    let conflict = if e.value_type != new.value_type {
                        Some(format!("berth's variable is a {}", e.value_type))
                    } else if new.value_type == "secret_ref" && e.secret_id != new.secret_id {
                        Some(format!(
                            "berth's variable references another secret ({})",
                            e.value
                        ))
                    } else if new.value_type == "plain" && e.value != new.value {
                        Some("berth's value differs".to_string())
                    } else {
                        None
                    };
                    self.decided(ItemKind::Variable, name, source, conflict);
                }
            }
        }
        self.tx.insert_env(&create).await
    }

    async fn image_patterns(&mut self, plan: &ImportPlan, skips: &[Option<String>]) -> Result<()> {
        let existing: HashSet<String> = self.tx.image_patterns().await?.into_iter().collect();
        let mut was_empty = existing.is_empty();
        for (p, skip) in plan.image_patterns.iter().zip(skips) {
            let source = row("image_whitelists", p.v1_id);
            if let Some(reason) = skip {
                self.push(
                    ItemKind::ImagePattern,
                    p.pattern.clone(),
                    source,
                    Outcome::Skipped,
                    reason.clone(),
                );
            } else if existing.contains(&p.pattern) {
                self.push(
                    ItemKind::ImagePattern,
                    p.pattern.clone(),
                    source,
                    Outcome::AlreadyImported,
                    "",
                );
            } else {
                self.tx
                    .insert_image_pattern(&p.pattern, PATTERN_DESCRIPTION)
                    .await?;
                let note = if was_empty {
                    "berth's allowlist was empty: from now on only images a pattern allows are deployed"
                } else {
                    ""
                };
                was_empty = false;
                self.push(
                    ItemKind::ImagePattern,
                    p.pattern.clone(),
                    source,
                    Outcome::Created,
                    note,
                );
            }
        }
        Ok(())
    }

    async fn domains(
        &mut self,
        plan: &ImportPlan,
        hosts: &[std::result::Result<String, String>],
    ) -> Result<()> {
        let existing = self.tx.domains().await?;
        for (d, host) in plan.domains.iter().zip(hosts) {
            let source = row("domains", d.v1_id);
            let host = match host {
                Err(reason) => {
                    self.push(
                        ItemKind::Domain,
                        d.host.clone(),
                        source,
                        Outcome::Skipped,
                        reason.clone(),
                    );
                    continue;
                }
                Ok(host) => host.clone(),
            };
            let app = &self.apps[&d.application];
            let (app_id, existed, has_port) = (app.id, app.existed, !app.ports.is_empty());
            match existing.get(&host) {
                Some(owner) if *owner == d.application => {
                    self.push(ItemKind::Domain, host, source, Outcome::AlreadyImported, "");
                }
                Some(owner) => {
                    let detail = format!("berth routes it to app {owner}");
                    self.push(ItemKind::Domain, host, source, Outcome::Conflict, detail);
                }
                None if !has_port => {
                    let detail = format!(
                        "app {} has no container port to route it to: add a port, then `berth domain add {} {host}`",
                        d.application, d.application
                    );
                    self.push(ItemKind::Domain, host, source, Outcome::Skipped, detail);
                }
                None => {
                    self.tx.insert_domain(app_id, &host).await?;
                    if existed && !self.routed.contains(&app_id) {
                        self.routed.push(app_id);
                    }
                    self.push(ItemKind::Domain, host, source, Outcome::Created, "");
                }
            }
        }
        Ok(())
    }
}
