//! Key rotation: `berth key rotate`, `status`, `retire`.
//!
//! A rotation adds a data key, makes it the active one and records the rewrap to do, in one
//! transaction; then a background task rewraps every ciphertext of every registered column
//! (except the root-wrapped ones) that is not under the active key, in batches of
//! [`REWRAP_BATCH`] rows per transaction, each row compare-and-swap on its old value so a
//! concurrent write is never overwritten. Every row is readable at every moment (under its old
//! key or the new one), so a crash anywhere only leaves work for the resume: at the next start,
//! or `berth key rotate --resume`.

use std::collections::BTreeMap;

use super::{Actor, Permission, Service};
use crate::crypto::columns::{EncryptedColumn, ENCRYPTED_COLUMNS};
use crate::crypto::ring::ENCRYPTION_WARN_AT;
use crate::error::{Error, Result};
use crate::store::ROTATION_SETTING;

/// Rows rewrapped per transaction.
pub const REWRAP_BATCH: i64 = 200;
/// A rewrap makes passes until one finds nothing left; writes racing it (made under the key
/// that was active when they began) are few, so more passes than this means something is
/// wrong.
const MAX_PASSES: usize = 10;

/// The rotation task of this node, if one ran.
#[derive(Default)]
pub struct RotationState {
    task: Option<tokio::task::JoinHandle<()>>,
    /// Why the last rewrap stopped early, if it did.
    last_error: Option<String>,
}

/// What `berth key rotate` started.
#[derive(Debug, Clone)]
pub struct RotationStarted {
    pub key_id: String,
    pub resumed: bool,
}

/// One key as `berth key status` shows it.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub id: String,
    /// `active`, `old`, `root`, or `unknown` (rows under a key neither root nor in the ring).
    pub state: &'static str,
    /// Encryptions counted (an upper bound); `None` for the root key (not counted).
    pub encryptions: Option<i64>,
    /// Rows per column (`table.column`) using the key.
    pub rows: Vec<(String, i64)>,
    pub created_at: Option<String>,
    pub warning: Option<String>,
}

impl KeyInfo {
    pub fn total_rows(&self) -> i64 {
        self.rows.iter().map(|(_, n)| n).sum()
    }
}

#[derive(Debug, Clone)]
pub struct KeyStatus {
    pub keys: Vec<KeyInfo>,
    /// The unfinished rotation's target key, rows still to rewrap, and whether it runs now.
    pub rotation: Option<RotationProgress>,
}

#[derive(Debug, Clone)]
pub struct RotationProgress {
    pub target: String,
    pub remaining: i64,
    pub running: bool,
    pub last_error: Option<String>,
}

fn column_name(c: &EncryptedColumn) -> String {
    format!("{}.{}", c.table, c.column)
}

impl Service {
    /// `berth key rotate`: a new active data key and the rewrap of every row to it, in the
    /// background. With `resume`, only restarts the rewrap of an unfinished rotation.
    pub async fn rotate_key(&self, actor: &Actor, resume: bool) -> Result<RotationStarted> {
        actor.require(Permission::ManageEncryption)?;
        let mut state = self.rotation.lock().await;
        if let Some(task) = &state.task {
            if !task.is_finished() {
                return Err(Error::FailedPrecondition(
                    "a key rotation is already running: follow it with `berth key status`"
                        .to_string(),
                ));
            }
        }
        let pending = self.store.setting(ROTATION_SETTING).await?;
        let key_id = match (resume, pending) {
            (true, Some(target)) => target,
            (true, None) => {
                return Err(Error::FailedPrecondition(
                    "there is no unfinished key rotation to resume".to_string(),
                ))
            }
            (false, Some(target)) => {
                return Err(Error::FailedPrecondition(format!(
                    "the rotation to key {target} is unfinished: `berth key rotate --resume` \
                     finishes it"
                )))
            }
            (false, None) => self.key.add_active_key(true).await?,
        };
        self.audit(
            actor,
            if resume {
                "key.rotate_resume"
            } else {
                "key.rotate"
            },
            &key_id,
            None,
        )
        .await?;
        state.last_error = None;
        state.task = Some(self.spawn_rewrap(key_id.clone()));
        Ok(RotationStarted {
            key_id,
            resumed: resume,
        })
    }

    /// At start: resumes the rewrap of a rotation a previous run left unfinished.
    pub async fn resume_unfinished_rotation(&self) -> Result<Option<String>> {
        let Some(target) = self.store.setting(ROTATION_SETTING).await? else {
            return Ok(None);
        };
        let mut state = self.rotation.lock().await;
        if state.task.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(Some(target));
        }
        tracing::info!(key_id = %target, "resuming an unfinished key rotation");
        state.task = Some(self.spawn_rewrap(target.clone()));
        Ok(Some(target))
    }

    /// Waits for this node's running rewrap, if any, to end.
    pub async fn wait_for_rotation(&self) {
        let task = self.rotation.lock().await.task.take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// At stop: ends a running rewrap (it resumes at the next start; every row is readable).
    pub async fn stop_rotation(&self) {
        if let Some(task) = self.rotation.lock().await.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn spawn_rewrap(&self, target: String) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(async move {
            match service.rewrap_to(&target).await {
                Ok(n) => tracing::info!(key_id = %target, rows = n, "key rotation finished"),
                Err(e) => {
                    tracing::warn!(key_id = %target, error = %e, "key rotation stopped; `berth key rotate --resume` continues it");
                    service.rotation.lock().await.last_error = Some(e.to_string());
                }
            }
        })
    }

    /// Rewraps every row of every ring-encrypted column not under `target` (which must be the
    /// active key), then ends the rotation. Returns the rows rewrapped.
    pub async fn rewrap_to(&self, target: &str) -> Result<u64> {
        if self.key.active_id().as_deref() != Some(target) {
            return Err(Error::FailedPrecondition(format!(
                "the rotation target {target} is not the active key {}",
                self.key.active_id().unwrap_or_default()
            )));
        }
        let mut total = 0;
        for _ in 0..MAX_PASSES {
            let mut this_pass = 0;
            for column in ENCRYPTED_COLUMNS.iter().filter(|c| !c.under_root) {
                this_pass += self.rewrap_column(column, target).await?;
            }
            total += this_pass;
            if this_pass == 0 {
                self.store.finish_rotation(target).await?;
                return Ok(total);
            }
        }
        Err(Error::Unavailable(format!(
            "rows kept changing under an old key after {MAX_PASSES} passes: run `berth key rotate --resume`"
        )))
    }

    async fn rewrap_column(&self, column: &EncryptedColumn, target: &str) -> Result<u64> {
        self.rewrap_column_batches(column, target, usize::MAX).await
    }

    /// At most `max_batches` batches of one column (tests stop a rewrap mid-way with it).
    pub(crate) async fn rewrap_column_batches(
        &self,
        column: &EncryptedColumn,
        target: &str,
        max_batches: usize,
    ) -> Result<u64> {
        let mut after = 0;
        let mut swapped = 0;
        for _ in 0..max_batches {
            let batch = self
                .store
                .rewrap_candidates(column, target, after, REWRAP_BATCH)
                .await?;
            let Some((last, _, _)) = batch.last() else {
                return Ok(swapped);
            };
            after = *last;
            let sealer = self.key.sealer(batch.len()).await?;
            if sealer.key_id() != target {
                return Err(Error::FailedPrecondition(format!(
                    "the active key changed to {} during the rotation to {target}",
                    sealer.key_id()
                )));
            }
            let mut swaps = Vec::with_capacity(batch.len());
            for (rowid, aad, old) in batch {
                let plain = self.key.decrypt(&old, &aad)?;
                let new = sealer.encrypt(&plain, &aad);
                swaps.push((rowid, old, new));
            }
            swapped += self.store.swap_ciphertexts(column, &swaps).await?;
            // Deploys and reveals get their turn between batches.
            tokio::task::yield_now().await;
        }
        Ok(swapped)
    }

    /// `berth key status`: per key id its state, rows per column and encryptions counted.
    pub async fn key_status(&self, actor: &Actor) -> Result<KeyStatus> {
        actor.require(Permission::ManageEncryption)?;
        let mut keys: BTreeMap<String, KeyInfo> = BTreeMap::new();
        let root = self.key.root_id().to_string();
        keys.insert(
            root.clone(),
            KeyInfo {
                id: root.clone(),
                state: "root",
                encryptions: None,
                rows: Vec::new(),
                created_at: None,
                warning: None,
            },
        );
        for row in self.store.key_ring().await? {
            let warning = (row.encryptions as u64 >= ENCRYPTION_WARN_AT).then(|| {
                format!(
                    "{} encryptions under key {}: rotate now (`berth key rotate`); AES-GCM with random nonces must stay below 2^32 per key",
                    row.encryptions, row.id
                )
            });
            keys.insert(
                row.id.clone(),
                KeyInfo {
                    id: row.id.clone(),
                    state: if row.state == "active" {
                        "active"
                    } else {
                        "old"
                    },
                    encryptions: Some(row.encryptions),
                    rows: Vec::new(),
                    created_at: Some(row.created_at),
                    warning,
                },
            );
        }
        for column in ENCRYPTED_COLUMNS {
            for (id, n) in self.store.key_usage(column).await? {
                keys.entry(id.clone())
                    .or_insert_with(|| KeyInfo {
                        id: id.clone(),
                        state: "unknown",
                        encryptions: None,
                        rows: Vec::new(),
                        created_at: None,
                        warning: Some(format!(
                            "rows under key {id}, which is neither the root key nor in the ring, cannot be decrypted"
                        )),
                    })
                    .rows
                    .push((column_name(column), n));
            }
        }
        let rotation = match self.store.setting(ROTATION_SETTING).await? {
            Some(target) => {
                let mut remaining = 0;
                for (id, info) in &keys {
                    if id != &target {
                        remaining += info
                            .rows
                            .iter()
                            .filter(|(c, _)| {
                                ENCRYPTED_COLUMNS
                                    .iter()
                                    .any(|col| !col.under_root && &column_name(col) == c)
                            })
                            .map(|(_, n)| n)
                            .sum::<i64>();
                    }
                }
                let state = self.rotation.lock().await;
                Some(RotationProgress {
                    target,
                    remaining,
                    running: state.task.as_ref().is_some_and(|t| !t.is_finished()),
                    last_error: state.last_error.clone(),
                })
            }
            None => None,
        };
        // Active first, then old keys, then the root.
        let order = |s: &str| match s {
            "active" => 0,
            "old" => 1,
            "root" => 2,
            _ => 3,
        };
        let mut keys: Vec<KeyInfo> = keys.into_values().collect();
        keys.sort_by_key(|k| order(k.state));
        Ok(KeyStatus { keys, rotation })
    }

    /// `berth key retire ID`: forgets an old ring key no row uses any more.
    pub async fn retire_key(&self, actor: &Actor, id: &str) -> Result<()> {
        actor.require(Permission::ManageEncryption)?;
        if id == self.key.root_id() {
            return Err(Error::FailedPrecondition(format!(
                "{id} is the root key (BERTH_MASTER_KEY): it is changed with \
                 `berth-control-plane rotate-root-key`, not retired"
            )));
        }
        if self.key.active_id().as_deref() == Some(id) {
            return Err(Error::FailedPrecondition(format!(
                "key {id} is the active key: `berth key rotate` first, then retire it once no row uses it"
            )));
        }
        if let Some(target) = self.store.setting(ROTATION_SETTING).await? {
            return Err(Error::FailedPrecondition(format!(
                "the rotation to key {target} is unfinished: wait for it (`berth key status`) \
                 or `berth key rotate --resume`, then retire"
            )));
        }
        let mut used = Vec::new();
        for column in ENCRYPTED_COLUMNS.iter().filter(|c| !c.under_root) {
            for (kid, n) in self.store.key_usage(column).await? {
                if kid == id {
                    used.push(format!("{}: {n}", column_name(column)));
                }
            }
        }
        if !used.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "key {id} is still used by rows ({}): `berth key rotate` rewraps them to the active key",
                used.join(", ")
            )));
        }
        if !self.store.delete_old_key(id).await? {
            return Err(Error::not_found(format!(
                "no old key {id} in the key ring (see `berth key status`)"
            )));
        }
        self.key.forget(id);
        self.audit(actor, "key.retire", id, None).await
    }
}

#[cfg(test)]
mod tests;
