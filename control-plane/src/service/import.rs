//! `berth import-v1` (SPEC §9, R-9.1): a database of the seed's V1 system, read by the CLI
//! into an [`ImportPlan`], applied here in one transaction.
//!
//! The plan is checked as a whole first ([`check`]): a row berth cannot hold faithfully is an
//! error naming the V1 row, and nothing is written. Then every row is decided against what
//! berth holds, inside the transaction ([`apply`]):
//!
//! - **created** — berth has no row of that name: written (a dry run: would be);
//! - **already imported** — berth's row is equal to the one the plan would create (a second
//!   run creates nothing);
//! - **conflict** — berth's row of that name differs: left as it is, and the whole run
//!   writes nothing (the report says what differs, never a value);
//! - **skipped** — berth has no place for it (a provider config that maps to none of berth's
//!   settings, an allowlist pattern or a host name berth refuses), with the reason.
//!
//! A dry run decides exactly as the real run, in the same transaction, and rolls it back.
//!
//! Architecture invariant: the import writes only through [`crate::store::ImportTx`], one
//! transaction, encrypting through the same AAD constructors as every other write
//! (`crypto/columns.rs`); values, passwords, provider credentials and the new webhook tokens
//! exist in plaintext only in memory, inside `SecretString`, and never reach the report, an
//! error or the audit row.

mod apply;
mod check;
mod providers;
#[cfg(test)]
mod tests;

use secrecy::SecretString;

use super::{Actor, Permission, Service};
use crate::error::Result;
use crate::model::PortMapping;

/// Everything one V1 database holds that berth can take, in V1's own terms.
#[derive(Default)]
pub struct ImportPlan {
    /// The group the V1 secrets go into (the seed's `default`); created if missing.
    pub group: String,
    pub secrets: Vec<PlanSecret>,
    pub repositories: Vec<PlanRepository>,
    pub applications: Vec<PlanApplication>,
    pub variables: Vec<PlanVariable>,
    pub image_patterns: Vec<PlanImagePattern>,
    pub domains: Vec<PlanDomain>,
    pub providers: Vec<PlanProvider>,
}

/// A V1 `secrets` row: `reference` is the value, `metadata` the description (seed Step 2.4).
pub struct PlanSecret {
    pub v1_id: i64,
    pub name: String,
    pub value: SecretString,
    pub description: Option<String>,
    /// `YYYY-MM-DD HH:MM:SS` (UTC), kept as the seed's migration keeps them.
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

pub struct PlanRepository {
    pub v1_id: i64,
    pub name: String,
    pub url: String,
    pub username: Option<String>,
    pub password: Option<SecretString>,
}

pub struct PlanApplication {
    pub v1_id: i64,
    pub name: String,
    /// Without tag.
    pub image: String,
    pub version: Option<String>,
    /// A repository of the plan, or one berth already has.
    pub repository: Option<String>,
    pub ports: Vec<PortMapping>,
    /// `running`, `stopped` or `error` (no deployment of an imported app runs).
    pub status: String,
    pub last_deployed_at: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// A V1 `environment_variables` row or one entry of an application's `env_vars`.
pub struct PlanVariable {
    /// The V1 row, for the report and errors: `environment_variables row 7`.
    pub source: String,
    /// `None`: global.
    pub application: Option<String>,
    pub key: String,
    pub value: PlanValue,
}

/// A variable's value. A plain V1 value may be a credential: it is never printed.
pub enum PlanValue {
    Plain(SecretString),
    /// A reference to this secret of the plan (a V1 value `@secret:<id>`).
    Secret(String),
}

pub struct PlanImagePattern {
    pub v1_id: i64,
    pub pattern: String,
}

pub struct PlanDomain {
    pub v1_id: i64,
    pub application: String,
    pub host: String,
}

/// A V1 `secret_providers` row; `config` is V1's JSON with the credential inside.
pub struct PlanProvider {
    pub v1_id: i64,
    pub name: String,
    pub provider_type: String,
    pub config: SecretString,
}

/// What kind of row a report item is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ItemKind {
    Group,
    Secret,
    Repository,
    Provider,
    Application,
    Variable,
    ImagePattern,
    Domain,
    /// A V1 `system_settings` row (never imported; reported by the CLI).
    Setting,
}

impl ItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Group => "group",
            ItemKind::Secret => "secret",
            ItemKind::Repository => "repository",
            ItemKind::Provider => "provider",
            ItemKind::Application => "application",
            ItemKind::Variable => "variable",
            ItemKind::ImagePattern => "image_pattern",
            ItemKind::Domain => "domain",
            ItemKind::Setting => "setting",
        }
    }
}

/// How one row of the plan was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    AlreadyImported,
    Conflict,
    Skipped,
}

/// One row of the report. `detail` names what differs or why; never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportItem {
    pub kind: ItemKind,
    /// `GROUP/NAME`, an application, `APP:KEY` / `(global):KEY`, a pattern, a host.
    pub name: String,
    /// The V1 row: `secrets row 12`.
    pub source: String,
    pub outcome: Outcome,
    pub detail: String,
}

/// What an import did (or, dry or in conflict, would do).
pub struct ImportReport {
    pub dry_run: bool,
    /// The transaction committed.
    pub applied: bool,
    pub items: Vec<ReportItem>,
    /// Webhook tokens of the applications this run created, by application (applied only).
    pub tokens: Vec<(String, SecretString)>,
    /// Applications that existed before and got a domain: their routes must be pushed.
    pub routed_applications: Vec<i64>,
}

impl ImportReport {
    pub fn count(&self, outcome: Outcome) -> usize {
        self.items.iter().filter(|i| i.outcome == outcome).count()
    }
}

impl Service {
    /// Checks the whole plan, decides every row against berth in one transaction, and commits
    /// it unless this is a dry run or a row conflicts. Admin only.
    pub async fn import_v1(
        &self,
        actor: &Actor,
        plan: &ImportPlan,
        dry_run: bool,
    ) -> Result<ImportReport> {
        actor.require(Permission::Write)?;
        let started = std::time::Instant::now();
        let checked = check::check(plan)?;
        let checked_in = started.elapsed();
        // Reserved before the transaction: a reservation is a write of its own.
        let sealer = self
            .key
            .sealer(plan.secrets.len() + plan.repositories.len() + plan.providers.len())
            .await?;
        let tx = self.store.begin_import().await?;
        let report = apply::apply(self, actor, tx, sealer, plan, &checked, dry_run).await?;
        tracing::info!(
            dry_run,
            applied = report.applied,
            created = report.count(Outcome::Created),
            already_imported = report.count(Outcome::AlreadyImported),
            conflicts = report.count(Outcome::Conflict),
            skipped = report.count(Outcome::Skipped),
            check_ms = checked_in.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "v1 import"
        );
        Ok(report)
    }
}

/// `V1 secrets row 12`: how errors and the report name a V1 row.
fn row(table: &str, v1_id: i64) -> String {
    format!("{table} row {v1_id}")
}
