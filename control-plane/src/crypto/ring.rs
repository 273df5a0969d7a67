//! The key ring: random 32-byte data keys, each stored wrapped (AES-256-GCM, AAD = its
//! ring row) under the operator's root key (`BERTH_MASTER_KEY` / file / `master.key`).
//!
//! Exactly one ring key is *active*: every new encryption uses it. Decryption picks the key by
//! the ciphertext's key id, so rows written by an older ring key, or directly by the root key
//! (every database from before the ring), stay readable until `berth key rotate` rewraps them.
//!
//! Encryptions per key are counted durably without an fsync per encryption: a [`Sealer`] draws
//! from a block reserved on disk first (`count += 1000`, like a sequence cache), so a crash can
//! only over-count. The count exists to warn before the random-nonce bound of AES-GCM (2^32
//! encryptions under one key).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rand::RngCore as _;
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::{Aad, MasterKey, KEY_LEN};
use crate::error::{Error, Result};
use crate::store::{KeyRingRow, Store};

/// Encryptions reserved on disk at a time.
pub const RESERVATION_BLOCK: u64 = 1000;
/// `berth key status` warns from this many encryptions under one key (half the 2^32 bound of
/// random 96-bit nonces; OpenBao/Vault rotate automatically before it).
pub const ENCRYPTION_WARN_AT: u64 = 1 << 31;

/// The root key and the data keys it wraps. Cheap to share behind an `Arc`.
pub struct KeyRing {
    root: MasterKey,
    store: Store,
    ring: RwLock<Ring>,
    /// Serializes reservations (one `UPDATE` at a time per ring).
    reserving: tokio::sync::Mutex<()>,
}

struct Ring {
    keys: HashMap<String, Arc<DataKey>>,
    active: Option<Arc<DataKey>>,
}

struct DataKey {
    key: MasterKey,
    /// Encryptions reserved on disk and not yet used by this process.
    available: AtomicU64,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = self.ring.read().expect("ring lock");
        let mut ids: Vec<&String> = ring.keys.keys().collect();
        ids.sort();
        f.debug_struct("KeyRing")
            .field("root", &self.root.id())
            .field("keys", &ids)
            .field("active", &ring.active.as_ref().map(|k| k.key.id()))
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Loads the ring stored in the database, unwrapping every key with `root`. Writes nothing:
    /// an empty ring stays empty until [`KeyRing::ensure_active`].
    pub async fn load(root: MasterKey, store: Store) -> Result<Self> {
        let rows = store.key_ring().await?;
        let mut keys = HashMap::new();
        let mut active = None;
        for row in rows {
            let key = Arc::new(DataKey {
                key: unwrap(&root, &row)?,
                available: AtomicU64::new(0),
            });
            if row.state == "active" {
                active = Some(key.clone());
            }
            keys.insert(row.id.clone(), key);
        }
        Ok(KeyRing {
            root,
            store,
            ring: RwLock::new(Ring { keys, active }),
            reserving: tokio::sync::Mutex::new(()),
        })
    }

    /// Creates the first data key when the ring has none (a new database, or one from before
    /// the ring): from then on new encryptions use a ring key, never the root key.
    pub async fn ensure_active(&self) -> Result<()> {
        if self.active_id().is_none() {
            self.add_active_key(false).await?;
        }
        Ok(())
    }

    /// Adds a new data key and makes it the active one, in one transaction that also records
    /// the rewrap still to do with `start_rotation`. Returns the new key's id.
    pub async fn add_active_key(&self, start_rotation: bool) -> Result<String> {
        let _guard = self.reserving.lock().await;
        loop {
            let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
            rand::thread_rng().fill_bytes(bytes.as_mut());
            let key = MasterKey::from_bytes(bytes.as_ref())?;
            let id = key.id().to_string();
            if id == self.root.id() || self.ring.read().expect("ring lock").keys.contains_key(&id) {
                continue; // a 32-bit id collision: draw again
            }
            let wrapped = self.root.encrypt(bytes.as_ref(), &Aad::key_ring(&id));
            // The first block is reserved with the row itself.
            self.store
                .insert_active_key(&id, &wrapped, RESERVATION_BLOCK as i64, start_rotation)
                .await?;
            let key = Arc::new(DataKey {
                key,
                available: AtomicU64::new(RESERVATION_BLOCK),
            });
            let mut ring = self.ring.write().expect("ring lock");
            ring.keys.insert(id.clone(), key.clone());
            ring.active = Some(key);
            return Ok(id);
        }
    }

    /// The root key's id.
    pub fn root_id(&self) -> &str {
        self.root.id()
    }

    /// The active data key's id (`None` only before [`KeyRing::ensure_active`]).
    pub fn active_id(&self) -> Option<String> {
        let ring = self.ring.read().expect("ring lock");
        ring.active.as_ref().map(|k| k.key.id().to_string())
    }

    /// Forgets a retired key (its row is already deleted).
    pub(crate) fn forget(&self, id: &str) {
        self.ring.write().expect("ring lock").keys.remove(id);
    }

    /// Reserves `n` encryptions under the active key (persisting a new block first when the
    /// reserved ones run out) and returns a [`Sealer`] for them.
    pub async fn sealer(&self, n: usize) -> Result<Sealer> {
        let n = n as u64;
        let active = {
            let ring = self.ring.read().expect("ring lock");
            ring.active
                .clone()
                .ok_or_else(|| Error::Internal("the key ring has no active key".to_string()))?
        };
        if take(&active.available, n) {
            return Ok(Sealer {
                key: active,
                left: AtomicU64::new(n),
            });
        }
        let _guard = self.reserving.lock().await;
        if !take(&active.available, n) {
            let block = n.max(RESERVATION_BLOCK);
            self.store
                .reserve_encryptions(active.key.id(), block as i64)
                .await?;
            active.available.fetch_add(block - n, Ordering::SeqCst);
        }
        Ok(Sealer {
            key: active,
            left: AtomicU64::new(n),
        })
    }

    /// Encrypts one value (reserving as needed): the convenient form of [`KeyRing::sealer`].
    pub async fn encrypt(&self, plaintext: &[u8], aad: &Aad) -> Result<String> {
        Ok(self.sealer(1).await?.encrypt(plaintext, aad))
    }

    /// Decrypts a value stored under the root key or any ring key, chosen by its key id.
    pub fn decrypt(&self, stored: &str, aad: &Aad) -> Result<Zeroizing<Vec<u8>>> {
        match key_id(stored) {
            Some(id) if id == self.root.id() => self.root.decrypt(stored, aad),
            Some(id) => {
                let key = self.ring.read().expect("ring lock").keys.get(id).cloned();
                match key {
                    Some(k) => k.key.decrypt(stored, aad),
                    None => Err(Error::FailedPrecondition(format!(
                        "cannot decrypt {aad}: encrypted with key {id}, which is neither the root \
                         key {} nor in the key ring (retired, or a database from another node)",
                        self.root.id()
                    ))),
                }
            }
            // Let the primitive name the format problem.
            None => self.root.decrypt(stored, aad),
        }
    }

    /// Decrypts a stored value that must be UTF-8 text.
    pub fn decrypt_string(&self, stored: &str, aad: &Aad) -> Result<SecretString> {
        let bytes = self.decrypt(stored, aad)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            Error::FailedPrecondition(format!("cannot decrypt {aad}: value is not utf-8"))
        })?;
        Ok(SecretString::from(text.to_owned()))
    }

    /// A backup archive writer, under a key derived from the root key.
    pub fn archive_writer<W: std::io::Write>(
        &self,
        out: W,
    ) -> std::io::Result<super::archive::ArchiveWriter<W>> {
        super::archive::ArchiveWriter::new(&self.root, out)
    }

    /// Encrypts directly under the root key: only for root-wrapped columns (the key check).
    pub(crate) fn encrypt_under_root(&self, plaintext: &[u8], aad: &Aad) -> String {
        self.root.encrypt(plaintext, aad)
    }
}

/// Re-wraps every ring key from `old` to `new` root key: the wrapped values to store, by key
/// id. Fails (naming the key) if one does not unwrap under `old`.
pub fn rewrap_ring(
    old: &MasterKey,
    new: &MasterKey,
    rows: &[KeyRingRow],
) -> Result<Vec<(String, String)>> {
    rows.iter()
        .map(|row| {
            let aad = Aad::key_ring(&row.id);
            let bytes = old.decrypt(&row.wrapped, &aad).map_err(|e| {
                Error::FailedPrecondition(format!(
                    "key ring entry {} does not unwrap with the current root key {}: {e}",
                    row.id,
                    old.id()
                ))
            })?;
            Ok((row.id.clone(), new.encrypt(&bytes, &aad)))
        })
        .collect()
}

fn unwrap(root: &MasterKey, row: &KeyRingRow) -> Result<MasterKey> {
    let bytes = root
        .decrypt(&row.wrapped, &Aad::key_ring(&row.id))
        .map_err(|_| {
            Error::FailedPrecondition(format!(
                "the master key (id {}) does not match this database: it cannot unwrap key ring \
                 entry {}; start with the root key this database's ring was wrapped with \
                 (BERTH_MASTER_KEY, BERTH_MASTER_KEY_FILE or master.key in the data directory)",
                root.id(),
                row.id
            ))
        })?;
    let key = MasterKey::from_bytes(&bytes)?;
    if key.id() != row.id {
        return Err(Error::FailedPrecondition(format!(
            "key ring entry {} holds a key whose id is {}",
            row.id,
            key.id()
        )));
    }
    Ok(key)
}

/// The key id of a stored value (`v1:<key-id>:…`), if it has the format.
pub fn key_id(stored: &str) -> Option<&str> {
    let mut parts = stored.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(id), Some(_)) => Some(id),
        _ => None,
    }
}

fn take(available: &AtomicU64, n: u64) -> bool {
    available
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| a.checked_sub(n))
        .is_ok()
}

/// `n` encryptions under one data key, already counted on disk. Unused ones go back to the
/// key's reserve when it is dropped.
pub struct Sealer {
    key: Arc<DataKey>,
    left: AtomicU64,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("key", &self.key.key.id())
            .field("left", &self.left.load(Ordering::SeqCst))
            .finish()
    }
}

impl Sealer {
    /// The key id this sealer encrypts under.
    pub fn key_id(&self) -> &str {
        self.key.key.id()
    }

    /// Encrypts `plaintext` for the row named by `aad`. More encryptions than reserved are a
    /// bug of the caller: they are still made, and debug builds stop on them.
    pub fn encrypt(&self, plaintext: &[u8], aad: &Aad) -> String {
        let reserved = take(&self.left, 1);
        debug_assert!(reserved, "a sealer was used more times than it reserved");
        self.key.key.encrypt(plaintext, aad)
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        let left = self.left.load(Ordering::SeqCst);
        self.key.available.fetch_add(left, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests;
