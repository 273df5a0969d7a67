//! The structure of an application's environment, cached (issue 11).
//!
//! Resolution needs, per application: its variable rows (global and project) with the
//! ciphertexts they reference, the secrets of the groups that `@group:` rows expand, which
//! groups exist, and the application's name (for errors). Reading all of that is a transaction
//! of three queries whose rows cost far more than the decryptions they feed, so it is kept in
//! memory keyed by the application and the value of the `environment` change counter it was
//! read at (migration 0013: triggers bump the counter in the transaction of every change to
//! those rows). A resolution then costs one read of the counter plus the decryptions.
//!
//! Invariants:
//! - Nothing here is a plaintext secret: rows hold ciphertexts (and plain variables' values,
//!   which the database holds in plaintext too). Decryption happens per resolution, by the
//!   caller.
//! - A structure is only used with the counter value it was read at, and it was read in the
//!   same transaction (snapshot) as that value, so a hit is exactly what a fresh read in the
//!   same snapshot would return: no write path can leave it stale, as triggers keep the counter.
//! - Bounded: at most [`MAX_APPS`] structures; the older counter values are dropped first.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::{internal, Store};
use crate::error::Result;
use crate::model::Secret;

pub use super::env::EnvResolutionRow;

/// Applications whose structure is kept.
const MAX_APPS: usize = 4096;

/// What resolving one application's environment reads from the database.
#[derive(Debug)]
pub struct EnvStructure {
    /// The application's name (None when it does not exist).
    pub app_name: Option<String>,
    /// Global and project variable rows, with the ciphertexts `secret_ref` rows reference.
    pub rows: Vec<EnvResolutionRow>,
    /// The secrets of every group an `@group:` row names, by group name.
    pub group_secrets: HashMap<String, Vec<Secret>>,
    /// Which of the groups `@group:` rows name exist.
    pub existing_groups: HashSet<String>,
}

/// Structures by application id, each with the counter value it was read at.
#[derive(Default)]
pub(super) struct EnvCache {
    entries: HashMap<i64, (i64, Arc<EnvStructure>)>,
}

impl EnvCache {
    fn get(&self, app_id: i64, version: i64) -> Option<Arc<EnvStructure>> {
        match self.entries.get(&app_id) {
            Some((v, s)) if *v == version => Some(s.clone()),
            _ => None,
        }
    }

    fn put(&mut self, app_id: i64, version: i64, structure: Arc<EnvStructure>) {
        // A newer counter makes every older entry useless: drop them.
        if self.entries.values().any(|(v, _)| *v < version) {
            self.entries.retain(|_, (v, _)| *v >= version);
        }
        if self.entries.len() >= MAX_APPS {
            self.entries.clear();
        }
        self.entries.insert(app_id, (version, structure));
    }
}

pub(super) type SharedEnvCache = Arc<Mutex<EnvCache>>;

const COUNTER: &str = "SELECT value FROM change_counters WHERE name = 'environment'";

impl Store {
    /// The structure of application `app_id`'s environment: from memory when the change
    /// counter has not moved since it was read, otherwise read in one transaction.
    pub async fn env_structure(&self, app_id: i64) -> Result<Arc<EnvStructure>> {
        let version: i64 = sqlx::query_scalar(COUNTER)
            .fetch_one(&self.pool)
            .await
            .map_err(internal)?;
        if let Some(hit) = self
            .env_cache
            .lock()
            .expect("env cache")
            .get(app_id, version)
        {
            return Ok(hit);
        }
        let (version, structure) = self.read_env_structure(app_id).await?;
        let structure = Arc::new(structure);
        self.env_cache
            .lock()
            .expect("env cache")
            .put(app_id, version, structure.clone());
        Ok(structure)
    }

    /// Reads the counter and the structure in one read transaction (one snapshot).
    async fn read_env_structure(&self, app_id: i64) -> Result<(i64, EnvStructure)> {
        let mut tx = self.pool.begin().await.map_err(internal)?;
        let version: i64 = sqlx::query_scalar(COUNTER)
            .fetch_one(&mut *tx)
            .await
            .map_err(internal)?;
        let rows = Self::env_rows(&mut tx, app_id).await?;
        let app_name: Option<String> =
            sqlx::query_scalar("SELECT name FROM applications WHERE id = ?")
                .bind(app_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(internal)?;
        let names: Vec<String> = rows
            .iter()
            .filter(|r| r.value_type == "group_ref")
            .filter_map(|r| r.value.strip_prefix("@group:"))
            .map(str::to_string)
            .collect();
        let mut group_secrets: HashMap<String, Vec<Secret>> = HashMap::new();
        let mut existing_groups = HashSet::new();
        if !names.is_empty() {
            for secret in Self::secrets_of_groups(&mut tx, &names).await? {
                group_secrets
                    .entry(secret.group_name.clone())
                    .or_default()
                    .push(secret);
            }
            let json = serde_json::to_string(&names).expect("strings serialize");
            existing_groups = sqlx::query_scalar::<_, String>(
                "SELECT name FROM secret_groups WHERE name IN (SELECT value FROM json_each(?))",
            )
            .bind(json)
            .fetch_all(&mut *tx)
            .await
            .map_err(internal)?
            .into_iter()
            .collect();
        }
        tx.commit().await.map_err(internal)?;
        Ok((
            version,
            EnvStructure {
                app_name,
                rows,
                group_secrets,
                existing_groups,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn structure() -> Arc<EnvStructure> {
        Arc::new(EnvStructure {
            app_name: None,
            rows: Vec::new(),
            group_secrets: HashMap::new(),
            existing_groups: HashSet::new(),
        })
    }

    #[test]
    fn an_entry_serves_only_its_own_counter_value() {
        let mut cache = EnvCache::default();
        cache.put(1, 7, structure());
        assert!(cache.get(1, 7).is_some());
        assert!(cache.get(1, 8).is_none());
        assert!(cache.get(2, 7).is_none());
    }

    #[test]
    fn a_newer_counter_drops_older_entries_and_the_size_is_bounded() {
        let mut cache = EnvCache::default();
        cache.put(1, 7, structure());
        cache.put(2, 8, structure());
        assert_eq!(cache.entries.len(), 1);
        for app in 0..(MAX_APPS as i64 + 10) {
            cache.put(app, 8, structure());
        }
        assert!(cache.entries.len() <= MAX_APPS);
    }
}
