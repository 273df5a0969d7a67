//! External secret providers (SPEC §8, R-8.1, R-8.2): registering one (its credentials
//! encrypted, bound to its row), linking a group, and syncs — fetch everything, plan, then
//! apply in one transaction or change nothing and record why.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret as _, SecretString};

use super::{mask_value, Actor, Permission, Service};
use crate::crypto::Aad;
use crate::error::{Error, Result};
use crate::provider::{self, ExistingSecret, ProviderType, SyncSummary};
use crate::store::{GroupSecretRow, ProviderRow, SyncRow, SyncWrite, SyncedSecret};
use crate::validate;

/// A whole sync (login, every page, every value) must finish within this.
/// Below the admin API's 60 s request limit, so `berth provider sync` always gets the
/// sync's own answer (a timeout recorded in the history), never a cut connection.
pub const SYNC_TIME_LIMIT: Duration = Duration::from_secs(50);
/// One request to a provider.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Auto-sync interval: the default, and the least allowed.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(300);
pub const MIN_SYNC_INTERVAL: Duration = Duration::from_secs(30);

/// A provider as `berth provider add` gives it: its type and its non-secret settings
/// (`key=value`, the type's config fields); the credential travels separately.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub provider_type: ProviderType,
    pub settings: BTreeMap<String, String>,
    /// Auto-sync interval; `None`: [`DEFAULT_SYNC_INTERVAL`].
    pub sync_interval: Option<Duration>,
}

fn interval_seconds(interval: Option<Duration>) -> Result<i64> {
    let interval = interval.unwrap_or(DEFAULT_SYNC_INTERVAL);
    if interval < MIN_SYNC_INTERVAL {
        return Err(Error::invalid(format!(
            "sync interval {}s is below the minimum of {}s",
            interval.as_secs(),
            MIN_SYNC_INTERVAL.as_secs()
        )));
    }
    Ok(i64::try_from(interval.as_secs()).unwrap_or(i64::MAX))
}

/// `berth provider update`: settings to change (an empty value removes one), a new
/// credential, a new interval.
#[derive(Debug, Clone, Default)]
pub struct ProviderPatch {
    pub settings: BTreeMap<String, String>,
    pub credential: Option<SecretString>,
    pub sync_interval: Option<Duration>,
}

/// What a sync did (or, dry, would do).
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    pub provider: String,
    pub group: String,
    pub summary: SyncSummary,
    pub dry_run: bool,
    /// Where the time went: the provider's part apart from berth's own (the benchmark's
    /// figures; `secret_syncs.duration_ms` keeps only the whole).
    pub timings: SyncTimings,
}

/// The phases of one sync, in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncTimings {
    /// Login and every read from the provider.
    pub fetch: Duration,
    /// Reading and decrypting the group's secrets, the diff, encrypting what changed.
    pub plan: Duration,
    /// The transaction that applies the plan and records the sync (zero for a dry run).
    pub apply: Duration,
}

impl Service {
    /// `berth provider add`: validated, credentials encrypted for the new row, audited
    /// (names only).
    pub async fn add_provider(
        &self,
        actor: &Actor,
        name: &str,
        settings: ProviderSettings,
        credential: &SecretString,
    ) -> Result<ProviderRow> {
        actor.require(Permission::Write)?;
        validate::name("provider", name)?;
        let config = provider::config_json(settings.provider_type, &settings.settings, credential)?;
        let interval = interval_seconds(settings.sync_interval)?;
        let sealer = self.key.sealer(1).await?;
        let row = self
            .store
            .insert_provider(
                name,
                settings.provider_type.as_str(),
                &config,
                interval,
                |id| {
                    sealer.encrypt(
                        credential.expose_secret().as_bytes(),
                        &Aad::provider_credentials(id),
                    )
                },
            )
            .await?;
        self.audit(
            actor,
            "provider.add",
            name,
            Some(settings.provider_type.as_str()),
        )
        .await?;
        Ok(row)
    }

    pub async fn list_providers(&self, actor: &Actor) -> Result<Vec<ProviderRow>> {
        actor.require(Permission::Read)?;
        self.store.list_providers().await
    }

    pub async fn get_provider(&self, actor: &Actor, name: &str) -> Result<ProviderRow> {
        actor.require(Permission::Read)?;
        self.store.provider(name).await
    }

    /// `berth provider update`: the merged settings are validated as a whole, with the new
    /// credential or the stored one.
    pub async fn update_provider(
        &self,
        actor: &Actor,
        name: &str,
        patch: ProviderPatch,
    ) -> Result<ProviderRow> {
        actor.require(Permission::Write)?;
        let row = self.store.provider(name).await?;
        let provider_type = ProviderType::parse(&row.provider_type)?;
        let mut settings = provider_settings(&row)?;
        for (key, value) in &patch.settings {
            if value.is_empty() {
                settings.remove(key);
            } else {
                settings.insert(key.clone(), value.clone());
            }
        }
        let credential = match &patch.credential {
            Some(c) => c.clone(),
            None => self.credential(&row)?,
        };
        let config = provider::config_json(provider_type, &settings, &credential)?;
        let interval = match patch.sync_interval {
            Some(i) => interval_seconds(Some(i))?,
            None => row.sync_interval_s,
        };
        let sealed = match &patch.credential {
            Some(c) => Some(
                self.key
                    .encrypt(
                        c.expose_secret().as_bytes(),
                        &Aad::provider_credentials(row.id),
                    )
                    .await?,
            ),
            None => None,
        };
        self.store
            .update_provider(row.id, &config, sealed.as_deref(), interval)
            .await?;
        let mut changed: Vec<&str> = patch.settings.keys().map(String::as_str).collect();
        if patch.credential.is_some() {
            changed.push("credential");
        }
        if patch.sync_interval.is_some() {
            changed.push("sync interval");
        }
        self.audit(actor, "provider.update", name, Some(&changed.join(", ")))
            .await?;
        self.store.provider(name).await
    }

    /// `berth provider remove`: its group and secrets stay, as manual ones.
    pub async fn remove_provider(&self, actor: &Actor, name: &str) -> Result<()> {
        actor.require(Permission::Write)?;
        let row = self.store.provider(name).await?;
        self.store.delete_provider(row.id).await?;
        self.audit(actor, "provider.remove", name, None).await
    }

    /// Links `group` to `provider` (`None`: unlinks it). A group syncs from one provider.
    pub async fn link_group(
        &self,
        actor: &Actor,
        group: &str,
        provider: Option<&str>,
        auto_sync: bool,
    ) -> Result<()> {
        actor.require(Permission::Write)?;
        let group_row = self.store.group(group).await?;
        let provider_id = match provider {
            Some(name) => {
                let p = self.store.provider(name).await?;
                if let Some(linked) = p.group_name.as_deref().filter(|g| *g != group) {
                    return Err(Error::FailedPrecondition(format!(
                        "provider {name:?} already syncs into group {linked:?}; one provider feeds one group"
                    )));
                }
                Some(p.id)
            }
            None => None,
        };
        self.store
            .link_group(
                group_row.id,
                provider_id,
                auto_sync && provider_id.is_some(),
            )
            .await?;
        self.audit(actor, "group.link", group, provider).await
    }

    /// `berth provider history`.
    pub async fn sync_history(&self, actor: &Actor, name: &str) -> Result<Vec<SyncRow>> {
        actor.require(Permission::Read)?;
        let row = self.store.provider(name).await?;
        self.store.sync_history(row.id, 50).await
    }

    /// `berth provider test`: logs in and lists, writes nothing; the number of values found.
    pub async fn test_provider(&self, actor: &Actor, name: &str) -> Result<usize> {
        actor.require(Permission::Write)?;
        let row = self.store.provider(name).await?;
        let fetched = self.fetch(&row).await?;
        Ok(provider::map_names(fetched)?.len())
    }

    /// `berth provider sync [--dry-run]`: fetch, plan, apply all or nothing. A failure
    /// changes no secret and is recorded in `secret_syncs` and on the provider.
    pub async fn sync_provider(
        &self,
        actor: &Actor,
        name: &str,
        dry_run: bool,
    ) -> Result<SyncOutcome> {
        actor.require(Permission::Write)?;
        let row = self.store.provider(name).await?;
        let Some(group) = row.group_name.clone() else {
            return Err(Error::FailedPrecondition(format!(
                "provider {name:?} is linked to no group: `berth group create GROUP --provider {name}`"
            )));
        };
        let group_id = self.store.group(&group).await?.id;
        let _running = SyncGuard::take(self, row.id, name)?;
        let started = Instant::now();
        let mut timings = SyncTimings::default();
        let planned = self.plan_sync(&row, group_id, &mut timings).await;
        let elapsed = |s: Instant| i64::try_from(s.elapsed().as_millis()).unwrap_or(i64::MAX);
        let (summary, write) = match planned {
            Ok(p) => p,
            Err(e) => {
                if !dry_run {
                    self.store
                        .record_failed_sync(
                            row.id,
                            Some(group_id),
                            &e.to_string(),
                            elapsed(started),
                        )
                        .await?;
                }
                return Err(e);
            }
        };
        if !dry_run {
            let write = SyncWrite {
                duration_ms: elapsed(started),
                ..write
            };
            let applying = Instant::now();
            self.store.apply_sync(&write).await?;
            timings.apply = applying.elapsed();
            let details = format!(
                "{} created, {} updated, {} removed, {} unchanged, {} stale",
                summary.created.len(),
                summary.updated.len(),
                summary.removed.len(),
                summary.unchanged,
                summary.stale.len()
            );
            self.audit(actor, "provider.sync", name, Some(&details))
                .await?;
        }
        Ok(SyncOutcome {
            provider: row.name,
            group,
            summary,
            dry_run,
            timings,
        })
    }

    /// Fetches and plans, filling in `timings.fetch` and `timings.plan`.
    async fn plan_sync(
        &self,
        row: &ProviderRow,
        group_id: i64,
        timings: &mut SyncTimings,
    ) -> Result<(SyncSummary, SyncWrite)> {
        let fetching = Instant::now();
        let fetched = self.fetch(row).await;
        timings.fetch = fetching.elapsed();
        let planning = Instant::now();
        let fetched = provider::map_names(fetched?)?;
        let rows = self.store.group_secrets(group_id).await?;
        let synced_here =
            |s: &GroupSecretRow| s.source == "synced" && s.provider_id == Some(row.id);
        // Only what the plan reads: the values this provider owns and still holds (to
        // compare), and the references of those it no longer holds (removed, or kept stale).
        let gone: Vec<i64> = rows
            .iter()
            .filter(|s| synced_here(s) && !fetched.contains_key(&s.name))
            .map(|s| s.id)
            .collect();
        let mut references = self.store.secret_references(&gone).await?;
        let mut existing = BTreeMap::new();
        for s in rows {
            let synced_here = synced_here(&s);
            let value = if synced_here && fetched.contains_key(&s.name) {
                Some(
                    self.key
                        .decrypt_string(&s.value, &Aad::secret(group_id, &s.name))?,
                )
            } else {
                None
            };
            existing.insert(
                s.name.clone(),
                ExistingSecret {
                    id: s.id,
                    synced_here,
                    stale: s.stale,
                    value,
                    references: references.remove(&s.id).unwrap_or_default(),
                },
            );
        }
        let plan = provider::plan(fetched, existing)?;
        let summary = plan.summary();
        let sealer = self
            .key
            .sealer(plan.create.len() + plan.update.len())
            .await?;
        let seal = |name: &str, f: &provider::FetchedSecret| -> Result<SyncedSecret> {
            validate::secret_value(name, f.value.expose_secret())?;
            Ok(SyncedSecret {
                name: name.to_string(),
                value: sealer.encrypt(
                    f.value.expose_secret().as_bytes(),
                    &Aad::secret(group_id, name),
                ),
                value_preview: mask_value(f.value.expose_secret()),
                reference: f.reference.clone(),
            })
        };
        let write = SyncWrite {
            provider_id: row.id,
            group_id,
            create: plan
                .create
                .iter()
                .map(|(n, f)| seal(n, f))
                .collect::<Result<_>>()?,
            update: plan
                .update
                .iter()
                .map(|(id, n, f)| Ok((*id, seal(n, f)?)))
                .collect::<Result<_>>()?,
            remove: plan.remove.iter().map(|(id, _)| *id).collect(),
            unchanged: plan.unchanged.len(),
            revived: plan.revived.clone(),
            stale: plan.stale.iter().map(|(id, _, _)| *id).collect(),
            status: summary.status(),
            duration_ms: 0,
        };
        timings.plan = planning.elapsed();
        Ok((summary, write))
    }

    fn credential(&self, row: &ProviderRow) -> Result<SecretString> {
        match &row.credentials {
            Some(c) => self
                .key
                .decrypt_string(c, &Aad::provider_credentials(row.id)),
            None => Ok(SecretString::from(String::new())),
        }
    }

    /// Logs in and reads everything, within [`SYNC_TIME_LIMIT`].
    async fn fetch(&self, row: &ProviderRow) -> Result<Vec<provider::FetchedSecret>> {
        let credential = self.credential(row)?;
        let source = provider::source(
            ProviderType::parse(&row.provider_type)?,
            &row.config,
            credential,
            REQUEST_TIMEOUT,
        )?;
        tokio::time::timeout(SYNC_TIME_LIMIT, source.fetch())
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(format!(
                    "provider {:?} did not finish within {SYNC_TIME_LIMIT:?}",
                    row.name
                )))
            })
    }
}

/// Held while a provider syncs; a second sync of the same provider is refused meanwhile.
struct SyncGuard<'a> {
    service: &'a Service,
    provider_id: i64,
}

impl<'a> SyncGuard<'a> {
    fn take(service: &'a Service, provider_id: i64, name: &str) -> Result<Self> {
        if !service
            .syncing
            .lock()
            .expect("syncing lock")
            .insert(provider_id)
        {
            return Err(Error::FailedPrecondition(format!(
                "a sync of provider {name:?} is already running"
            )));
        }
        Ok(SyncGuard {
            service,
            provider_id,
        })
    }
}

impl Drop for SyncGuard<'_> {
    fn drop(&mut self) {
        self.service
            .syncing
            .lock()
            .expect("syncing lock")
            .remove(&self.provider_id);
    }
}

/// A stored provider's settings as `key=value` strings (what `provider show` prints and
/// `update` patches).
pub fn provider_settings(row: &ProviderRow) -> Result<BTreeMap<String, String>> {
    let json: serde_json::Value = serde_json::from_str(&row.config)
        .map_err(|e| Error::Internal(format!("stored config of provider {:?}: {e}", row.name)))?;
    let mut out = BTreeMap::new();
    if let serde_json::Value::Object(map) = json {
        for (key, value) in map {
            match value {
                serde_json::Value::Null => {}
                serde_json::Value::String(s) => {
                    out.insert(key, s);
                }
                other => {
                    out.insert(key, other.to_string());
                }
            }
        }
    }
    Ok(out)
}

pub mod auto_sync;
#[cfg(test)]
mod tests;
