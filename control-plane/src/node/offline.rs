//! Offline maintenance of a data directory (the control plane stopped): rotating the root key.
//!
//! A root-key rotation rewraps the key ring and the key check only, never a row: rows still
//! encrypted directly under the old root key (databases from before the ring) must be moved
//! to a ring key first, which `berth key rotate` does online. The ring rows and the key check
//! change in one transaction, so a crash leaves the database wholly under the old root key or
//! wholly under the new one.

use std::path::Path;

use crate::crypto::columns::ENCRYPTED_COLUMNS;
use crate::crypto::ring::rewrap_ring;
use crate::crypto::{Aad, MasterKey};
use crate::error::{Error, Result};
use crate::service::Service;
use crate::store::Store;

use super::{MasterKeySource, DATABASE_FILE, MASTER_KEY_FILE};

/// What a root-key rotation did.
#[derive(Debug)]
pub struct RootKeyRotated {
    pub old_id: String,
    pub new_id: String,
    /// Ring keys rewrapped.
    pub ring_keys: usize,
    /// Whether `<data-dir>/master.key` was replaced by the new key.
    pub replaced_key_file: bool,
}

/// The root key as a stopped node would load it; never creates one.
pub fn existing_root_key(data_dir: &Path, source: &MasterKeySource) -> Result<MasterKey> {
    use secrecy::ExposeSecret as _;
    match source {
        MasterKeySource::Value(value) => MasterKey::parse(value.expose_secret()),
        MasterKeySource::File(path) => MasterKey::read_file(path),
        MasterKeySource::DataDir => MasterKey::read_file(&data_dir.join(MASTER_KEY_FILE)),
    }
}

/// `berth-control-plane rotate-root-key`: rewraps the ring of the database in `data_dir` from
/// the current root key (`source`) to the key in `new_key_file`.
pub async fn rotate_root_key(
    data_dir: &Path,
    source: &MasterKeySource,
    new_key_file: &Path,
) -> Result<RootKeyRotated> {
    let db = data_dir.join(DATABASE_FILE);
    if !db.exists() {
        return Err(Error::FailedPrecondition(format!(
            "no database at {}: give the --data-dir of the control plane",
            db.display()
        )));
    }
    let old = existing_root_key(data_dir, source)?;
    let new = MasterKey::read_file(new_key_file)?;
    if old.id() == new.id() {
        return Err(Error::invalid(format!(
            "{} holds the current root key {}: give a new key (e.g. `openssl rand -hex 32`)",
            new_key_file.display(),
            old.id()
        )));
    }
    let old_id = old.id().to_string();
    let store = Store::open(&db).await?;
    let result = rotate(&store, old, existing_root_key(data_dir, source)?, new).await;
    store.close().await;
    let (ring_keys, new_id) = result?;
    let replaced_key_file = matches!(source, MasterKeySource::DataDir);
    if replaced_key_file {
        replace_key_file(&data_dir.join(MASTER_KEY_FILE), new_key_file)?;
    }
    Ok(RootKeyRotated {
        old_id,
        new_id,
        ring_keys,
        replaced_key_file,
    })
}

/// `old` and `old_again` are the same root key (one goes into the verifying [`Service`]).
async fn rotate(
    store: &Store,
    old_again: MasterKey,
    old: MasterKey,
    new: MasterKey,
) -> Result<(usize, String)> {
    let old_id = old.id().to_string();
    let new_id = new.id().to_string();
    // Verifies the root key (key check, ring) and gives the ring its first key if it has none.
    let service = Service::new(store.clone(), old_again).await?;
    let mut under_root = Vec::new();
    for column in ENCRYPTED_COLUMNS.iter().filter(|c| !c.under_root) {
        for (kid, n) in store.key_usage(column).await? {
            if kid == old_id {
                under_root.push(format!("{}.{}: {n}", column.table, column.column));
            }
        }
    }
    drop(service);
    if !under_root.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "rows are still encrypted directly under the root key {old_id} ({}): start the \
             control plane and run `berth key rotate` (it rewraps them to a ring key online), \
             then rotate the root key",
            under_root.join(", ")
        )));
    }
    let rows = store.key_ring().await?;
    let wrapped = rewrap_ring(&old, &new, &rows)?;
    let ring: Vec<(String, String, String)> = rows
        .iter()
        .zip(wrapped)
        .map(|(row, (id, new_wrapped))| (id, row.wrapped.clone(), new_wrapped))
        .collect();
    let check = match store
        .setting(crate::crypto::columns::KEY_CHECK_SETTING)
        .await?
    {
        Some(stored) => {
            let plain = old.decrypt(&stored, &Aad::key_check())?;
            Some((stored, new.encrypt(&plain, &Aad::key_check())))
        }
        None => None,
    };
    store.replace_root_wrapped(&ring, check).await?;
    Ok((ring.len(), new_id))
}

/// Replaces `<data-dir>/master.key` with the new key: a 0600 temp file, synced, renamed.
fn replace_key_file(target: &Path, new_key_file: &Path) -> Result<()> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(new_key_file).map_err(|e| {
        Error::FailedPrecondition(format!("cannot read {}: {e}", new_key_file.display()))
    })?);
    let temp = target.with_extension("key.new");
    let _ = std::fs::remove_file(&temp);
    crate::pki::write_new_private(&temp, &text)?;
    std::fs::rename(&temp, target).map_err(|e| {
        Error::FailedPrecondition(format!(
            "the database is now under the new root key, but {} could not be replaced ({e}): \
             copy {} there (mode 0600)",
            target.display(),
            new_key_file.display()
        ))
    })?;
    if let Some(dir) = target.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
