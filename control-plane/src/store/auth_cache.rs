//! Who may call, kept in memory (issue 11): API keys by their public prefix, webhook gates
//! by application name and id — and which applications have domains, which every agent's
//! connect reads.
//!
//! Every admin call and every webhook request reads these rows; a refused webhook token reads
//! nothing else. Read from SQLite each time, they were the whole cost of a refusal (two reads,
//! each a hand-off to sqlx's connection thread). Here they are answered from memory while the
//! *auth generation* has not moved since they were read.
//!
//! Invariants:
//! - Every store method that writes `api_keys`, `applications` or `domains` moves the generation once its
//!   write has committed or failed ([`AuthCache::changed`] through a guard held across the
//!   write), so the caller's answer ("revoked", "rotated", "disabled") means the change is in
//!   force for the next request. The test `every_write_to_the_auth_tables_moves_the_generation`
//!   finds the statements that write those tables and fails on one whose function does not
//!   (or is not listed as leaving who-may-call unchanged).
//! - An entry is stored with the generation read *before* its rows were read, so a read that
//!   raced a write is never used after the write's bump (it carries the older generation).
//! - The generation lives in the control plane's process, which is the database's only
//!   writer while it runs (the offline commands — restore, root key rotation — run with it
//!   stopped, and touch none of these tables).
//! - Nothing secret is kept: token digests (as stored in the database) and public prefixes;
//!   the presented token is compared in constant time by the caller, as before.
//! - Bounded: at most [`MAX_ENTRIES`] per map (unknown prefixes and names are cached too, so
//!   a flood of made-up ones cannot grow it); a full map starts over.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::applications::WebhookGate;
use crate::error::Result;
use crate::model::ApiKey;

/// Entries per map before it starts over.
const MAX_ENTRIES: usize = 4096;

#[derive(Default)]
pub(super) struct AuthCache {
    generation: AtomicU64,
    pub(super) keys_by_prefix: Generational<String, Arc<[ApiKey]>>,
    pub(super) gates_by_name: Generational<String, Option<WebhookGate>>,
    pub(super) gates_by_id: Generational<i64, Option<WebhookGate>>,
    pub(super) apps_with_domains: Generational<(), Arc<[i64]>>,
}

impl AuthCache {
    /// The generation to store the rows about to be read with.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Invalidates every entry: something who-may-call depends on has changed.
    pub(super) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The value of `key` in `map`: from memory when it was read at the current generation,
    /// else by `read` (started only after the generation is taken, so a write that commits
    /// meanwhile leaves the stored entry stale, never wrong).
    pub(super) async fn remembered<K, Q, V, F, Fut>(
        &self,
        map: &Generational<K, V>,
        key: &Q,
        read: F,
    ) -> Result<V>
    where
        K: Eq + Hash + Borrow<Q>,
        Q: Eq + Hash + ToOwned<Owned = K> + ?Sized,
        V: Clone,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V>>,
    {
        let generation = self.generation();
        if let Some(value) = map.get(key, generation) {
            return Ok(value);
        }
        let value = read().await?;
        map.put(key.to_owned(), value.clone(), generation);
        Ok(value)
    }

    /// Moves the generation when dropped: held across a write, it bumps after the write has
    /// committed, failed, or been abandoned.
    pub(super) fn change_guard(self: &Arc<Self>) -> ChangeGuard {
        ChangeGuard(self.clone())
    }
}

pub(super) struct ChangeGuard(Arc<AuthCache>);

impl Drop for ChangeGuard {
    fn drop(&mut self) {
        self.0.changed();
    }
}

/// Values tagged with the generation they were read at.
pub(super) struct Generational<K, V> {
    entries: Mutex<HashMap<K, (u64, V)>>,
}

impl<K, V> Default for Generational<K, V> {
    fn default() -> Self {
        Generational {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, V: Clone> Generational<K, V> {
    /// The value read at `generation`, if any.
    pub(super) fn get<Q>(&self, key: &Q, generation: u64) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let entries = self.entries.lock().expect("auth cache lock");
        match entries.get(key) {
            Some((g, v)) if *g == generation => Some(v.clone()),
            _ => None,
        }
    }

    pub(super) fn put(&self, key: K, value: V, generation: u64) {
        let mut entries = self.entries.lock().expect("auth cache lock");
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (g, _)| *g >= generation);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (generation, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_only_used_at_the_generation_it_was_read_at() {
        let cache = Arc::new(AuthCache::default());
        let before = cache.generation();
        cache.gates_by_id.put(1, None, before);
        assert!(cache.gates_by_id.get(&1, cache.generation()).is_some());
        drop(cache.change_guard());
        assert!(cache.gates_by_id.get(&1, cache.generation()).is_none());
        // A read that started before the bump and is stored after it is never used.
        cache.gates_by_id.put(2, None, before);
        assert!(cache.gates_by_id.get(&2, cache.generation()).is_none());
    }

    #[test]
    fn the_maps_are_bounded() {
        let cache = AuthCache::default();
        for i in 0..(MAX_ENTRIES as i64 * 3) {
            cache.gates_by_id.put(i, None, 0);
        }
        assert!(cache.gates_by_id.entries.lock().unwrap().len() <= MAX_ENTRIES);
    }

    /// `file:function`s that write `applications` without changing a webhook gate (id, name,
    /// `webhook_enabled`, `webhook_token`): a deployment's status and version; and the
    /// import's inserts, whose transaction's `commit` holds the guard; a domain's certificate
    /// state.
    const EXEMPT: &[&str] = &[
        "deployments.rs:finish_deployment_as",
        "deployments.rs:mark_deploying",
        "import.rs:insert_application",
        "import.rs:insert_domain",
        "acme.rs:acme_issued",
        "acme.rs:acme_failed",
    ];

    /// Every statement under `store/` that inserts, updates or deletes `api_keys`,
    /// `applications` or `domains` sits in a function that holds a change guard, or is listed above.
    #[test]
    fn every_write_to_the_auth_tables_moves_the_generation() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
        // Whitespace-normalised, upper-case text: does it write one of the tables?
        let writes = |body: &str| {
            let flat = body.split_whitespace().collect::<Vec<_>>().join(" ");
            let flat = flat.to_uppercase();
            ["INSERT INTO ", "UPDATE ", "DELETE FROM ", "REPLACE INTO "]
                .iter()
                .any(|verb| {
                    ["API_KEYS", "APPLICATIONS", "DOMAINS"].iter().any(|table| {
                        flat.match_indices(&format!("{verb}{table}")).any(|(i, m)| {
                            let next = flat[i + m.len()..].chars().next();
                            !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                        })
                    })
                })
        };
        let function = |line: &str| {
            let mut rest = line.trim_start();
            for prefix in ["pub(crate) ", "pub(super) ", "pub ", "async "] {
                rest = rest.strip_prefix(prefix).unwrap_or(rest);
            }
            let name = rest.strip_prefix("fn ")?;
            Some(
                name.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<String>(),
            )
        };
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            // Production code only: tests set up rows directly.
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            // Split into functions: (name, body).
            let mut functions: Vec<(String, String)> = Vec::new();
            for line in code.lines() {
                if let Some(name) = function(line) {
                    functions.push((name, String::new()));
                }
                if let Some((_, body)) = functions.last_mut() {
                    body.push_str(line);
                    body.push('\n');
                }
            }
            for (name, body) in &functions {
                if !writes(body) {
                    continue;
                }
                checked += 1;
                let file = path.file_name().unwrap().to_string_lossy();
                let key = format!("{file}:{name}");
                assert!(
                    body.contains("change_guard()") || EXEMPT.contains(&key.as_str()),
                    "{}: fn {name} writes api_keys, applications or domains without moving the auth \
                     generation (hold self.auth.change_guard() across the write)",
                    path.display()
                );
            }
        }
        assert!(
            checked >= 8,
            "the scan found only {checked} writing functions"
        );
    }
}
