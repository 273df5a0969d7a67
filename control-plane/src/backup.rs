//! Backup and restore.
//!
//! `berth backup create` asks the running control plane for an archive: an online, consistent
//! snapshot of the database (`VACUUM INTO`, a read transaction: writers go on) and the PKI of
//! the data directory (CA key and certificate, server key and certificate), in one archive
//! encrypted under a key derived from the root key ([`crate::crypto::archive`]). The key ring
//! is in the database; the root key is never in the archive.
//!
//! Inside the encryption, the archive is a list of entries (`u16 name length, name, u64 data
//! length, data`), ended by an empty name; the first entry is `manifest.json`.
//!
//! `verify` and `restore` are offline and need the root key: they extract into a fresh
//! temporary directory, run `PRAGMA integrity_check`, and open every ciphertext of every
//! registered column with the ring. A restore then renames that directory into place, so a
//! wrong key, a truncated or a tampered archive leaves nothing behind.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::crypto::archive::{ArchiveReader, FORMAT_VERSION};
use crate::crypto::columns::{ENCRYPTED_COLUMNS, KEY_CHECK_SETTING};
use crate::crypto::{Aad, KeyRing, MasterKey};
use crate::error::{Error, Result};
use crate::service::{Actor, Permission, Service};
use crate::store::Store;

const MANIFEST: &str = "manifest.json";
const DATABASE: &str = "berth.db";
/// The PKI files of a data directory, relative to it; the CA ones are required.
const PKI_FILES: &[(&str, bool)] = &[
    ("pki/ca.crt", true),
    ("pki/ca.key", true),
    ("pki/server.crt", false),
    ("pki/server.key", false),
];
const MAX_NAME: usize = 256;

/// What an archive holds, written first inside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u8,
    pub created_at: String,
    pub root_key_id: String,
    pub berth_version: String,
    pub database_bytes: u64,
    pub files: Vec<String>,
}

/// What `backup verify` (and a restore) checked.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub manifest: Manifest,
    /// Ciphertexts opened, per `table.column`.
    pub ciphertexts: Vec<(String, usize)>,
    pub ring_keys: usize,
}

impl VerifyReport {
    pub fn total_ciphertexts(&self) -> usize {
        self.ciphertexts.iter().map(|(_, n)| n).sum()
    }
}

fn io_err(what: &str) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::FailedPrecondition(format!("{what}: {e}"))
}

impl Service {
    /// Writes an archive of the running node to `out` (a blocking writer, run off the async
    /// threads): snapshot first, then the PKI files of `data_dir`. Admin only.
    pub async fn write_backup<W: Write + Send + 'static>(
        &self,
        actor: &Actor,
        data_dir: &Path,
        out: W,
    ) -> Result<Manifest> {
        actor.require(Permission::ManageEncryption)?;
        let snapshot = data_dir.join(format!(".backup-{}.db", uuid::Uuid::new_v4()));
        let result = async {
            self.store().snapshot_into(&snapshot).await?;
            let key = self.key_arc();
            let dir = data_dir.to_path_buf();
            let path = snapshot.clone();
            tokio::task::spawn_blocking(move || write_archive(&key, &dir, &path, out))
                .await
                .map_err(|e| Error::Internal(format!("backup task: {e}")))?
        }
        .await;
        let _ = std::fs::remove_file(&snapshot);
        let manifest = result?;
        self.store()
            .audit(&actor.name, "backup.create", &manifest.created_at, None)
            .await?;
        Ok(manifest)
    }
}

fn write_archive<W: Write>(
    key: &KeyRing,
    data_dir: &Path,
    snapshot: &Path,
    out: W,
) -> Result<Manifest> {
    let mut files = Vec::new();
    for (name, required) in PKI_FILES {
        let path = data_dir.join(name);
        if path.exists() {
            files.push(*name);
        } else if *required {
            return Err(Error::FailedPrecondition(format!(
                "{} is missing: the backup needs the CA of the data directory",
                path.display()
            )));
        }
    }
    let database_bytes = std::fs::metadata(snapshot)
        .map_err(io_err("read the database snapshot"))?
        .len();
    let manifest = Manifest {
        format: FORMAT_VERSION,
        created_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        root_key_id: key.root_id().to_string(),
        berth_version: env!("CARGO_PKG_VERSION").to_string(),
        database_bytes,
        files: std::iter::once(DATABASE)
            .chain(files.iter().copied())
            .map(str::to_string)
            .collect(),
    };
    let write = || -> io::Result<()> {
        let mut w = key.archive_writer(io::BufWriter::with_capacity(1 << 20, out))?;
        let json = serde_json::to_vec(&manifest).expect("manifest serializes");
        entry(&mut w, MANIFEST, json.len() as u64, &mut json.as_slice())?;
        let mut db = std::fs::File::open(snapshot)?;
        entry(&mut w, DATABASE, database_bytes, &mut db)?;
        for name in &files {
            let data = std::fs::read(data_dir.join(name))?;
            entry(&mut w, name, data.len() as u64, &mut data.as_slice())?;
        }
        w.write_all(&0u16.to_be_bytes())?;
        w.finish()?.flush()
    };
    write().map_err(|e| Error::Unavailable(format!("cannot write the backup: {e}")))?;
    Ok(manifest)
}

fn entry(w: &mut impl Write, name: &str, len: u64, data: &mut impl Read) -> io::Result<()> {
    w.write_all(&(name.len() as u16).to_be_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&len.to_be_bytes())?;
    let copied = io::copy(&mut data.take(len), w)?;
    if copied != len {
        return Err(io::Error::other(format!(
            "{name} changed while it was read"
        )));
    }
    Ok(())
}

/// Extracts an archive into `dir` (which must exist and be empty): the database and the PKI
/// files, 0600. Returns the manifest. Errors name what is wrong with the archive.
pub fn extract(root: &MasterKey, archive: impl Read, dir: &Path) -> Result<Manifest> {
    let bad = |e: io::Error| Error::FailedPrecondition(format!("{e}"));
    let mut r =
        ArchiveReader::new(root, io::BufReader::with_capacity(1 << 20, archive)).map_err(bad)?;
    let mut manifest: Option<Manifest> = None;
    loop {
        let mut len = [0u8; 2];
        r.read_exact(&mut len).map_err(bad)?;
        let name_len = u16::from_be_bytes(len) as usize;
        if name_len == 0 {
            break;
        }
        if name_len > MAX_NAME {
            return Err(Error::FailedPrecondition(
                "the backup archive is damaged (bad entry name)".into(),
            ));
        }
        let mut name = vec![0u8; name_len];
        r.read_exact(&mut name).map_err(bad)?;
        let name = String::from_utf8(name).map_err(|_| {
            Error::FailedPrecondition("the backup archive is damaged (bad entry name)".into())
        })?;
        let mut size = [0u8; 8];
        r.read_exact(&mut size).map_err(bad)?;
        let size = u64::from_be_bytes(size);
        if name == MANIFEST {
            let mut json = Vec::new();
            (&mut r).take(size).read_to_end(&mut json).map_err(bad)?;
            manifest = Some(serde_json::from_slice(&json).map_err(|e| {
                Error::FailedPrecondition(format!("the backup manifest is unreadable: {e}"))
            })?);
            continue;
        }
        // Only the names this code writes: never a path outside `dir`.
        if name != DATABASE && !PKI_FILES.iter().any(|(n, _)| *n == name) {
            return Err(Error::FailedPrecondition(format!(
                "the backup archive holds an unexpected entry {name:?}"
            )));
        }
        let path = dir.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("create a directory"))?;
        }
        let mut file = private_file(&path)?;
        let copied = io::copy(&mut (&mut r).take(size), &mut file).map_err(bad)?;
        if copied != size {
            return Err(Error::FailedPrecondition(
                "the backup archive is truncated".into(),
            ));
        }
        file.sync_all().map_err(io_err("sync a restored file"))?;
    }
    // The end marker is inside the last chunk; reading on checks nothing follows it.
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).map_err(bad)?;
    if !rest.is_empty() {
        return Err(Error::FailedPrecondition(
            "the backup archive is damaged (data after its end)".into(),
        ));
    }
    let manifest = manifest
        .ok_or_else(|| Error::FailedPrecondition("the backup archive has no manifest".into()))?;
    for name in &manifest.files {
        if !dir.join(name).exists() {
            return Err(Error::FailedPrecondition(format!(
                "the backup archive lacks {name}, which its manifest lists"
            )));
        }
    }
    Ok(manifest)
}

fn private_file(path: &Path) -> Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options
        .open(path)
        .map_err(|e| Error::FailedPrecondition(format!("cannot write {}: {e}", path.display())))
}

/// Checks an extracted data directory: `PRAGMA integrity_check`, the key check, and every
/// ciphertext of every registered column opened with the ring under `root`.
pub async fn verify_dir(root: MasterKey, dir: &Path, manifest: Manifest) -> Result<VerifyReport> {
    let store = Store::open(&dir.join(DATABASE)).await?;
    let result = verify_store(root, &store, manifest).await;
    store.close().await;
    result
}

async fn verify_store(root: MasterKey, store: &Store, manifest: Manifest) -> Result<VerifyReport> {
    let problems = store.integrity_check().await?;
    if problems != ["ok"] {
        return Err(Error::FailedPrecondition(format!(
            "the database in the backup is damaged: {}",
            problems.join("; ")
        )));
    }
    if let Some(check) = store.setting(KEY_CHECK_SETTING).await? {
        root.decrypt(&check, &Aad::key_check()).map_err(|_| {
            Error::FailedPrecondition(format!(
                "the master key (id {}) does not match the database in the backup",
                root.id()
            ))
        })?;
    }
    let ring = KeyRing::load(root, store.clone()).await?;
    let mut ciphertexts = Vec::new();
    for column in ENCRYPTED_COLUMNS {
        let values = store.encrypted_values(column, None).await?;
        for (aad, ciphertext) in &values {
            ring.decrypt(ciphertext, aad)?;
        }
        ciphertexts.push((format!("{}.{}", column.table, column.column), values.len()));
    }
    Ok(VerifyReport {
        manifest,
        ciphertexts,
        ring_keys: store.key_ring().await?.len(),
    })
}

/// `berth backup verify`: extracts into a temporary directory, verifies, removes it.
pub async fn verify_archive(root: &MasterKey, archive: &Path) -> Result<VerifyReport> {
    let tmp = tempdir_near(&std::env::temp_dir())?;
    let result = async {
        let file = std::fs::File::open(archive).map_err(|e| {
            Error::FailedPrecondition(format!("cannot read {}: {e}", archive.display()))
        })?;
        let manifest = extract(root, file, &tmp)?;
        verify_dir(root.clone(), &tmp, manifest).await
    }
    .await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// `berth-control-plane restore`: into `data_dir`, which must not exist or be empty. With
/// `key_file`, its content becomes `<data-dir>/master.key`. Nothing is left behind on error.
pub async fn restore(
    root: &MasterKey,
    archive: &Path,
    data_dir: &Path,
    key_file: Option<&Path>,
) -> Result<VerifyReport> {
    if data_dir.exists() {
        let mut entries = std::fs::read_dir(data_dir).map_err(io_err("read the data directory"))?;
        if entries.next().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "{} is not empty: restore into a new or empty directory",
                data_dir.display()
            )));
        }
    }
    let parent = data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err("create the parent directory"))?;
    let tmp = tempdir_near(parent)?;
    let result = async {
        let file = std::fs::File::open(archive).map_err(|e| {
            Error::FailedPrecondition(format!("cannot read {}: {e}", archive.display()))
        })?;
        let manifest = extract(root, file, &tmp)?;
        let report = verify_dir(root.clone(), &tmp, manifest).await?;
        if let Some(key_file) = key_file {
            let text = zeroize::Zeroizing::new(std::fs::read_to_string(key_file).map_err(|e| {
                Error::FailedPrecondition(format!("cannot read {}: {e}", key_file.display()))
            })?);
            crate::pki::write_new_private(&tmp.join("master.key"), &text)?;
        }
        // The database was opened (and migrated) by the check: drop its side files.
        for side in ["berth.db-wal", "berth.db-shm"] {
            let _ = std::fs::remove_file(tmp.join(side));
        }
        if data_dir.exists() {
            std::fs::remove_dir(data_dir).map_err(io_err("replace the empty data directory"))?;
        }
        std::fs::rename(&tmp, data_dir).map_err(io_err("move the restored directory"))?;
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
        Ok(report)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// A new private (0700) directory next to where the result goes (same file system, so the
/// final rename is atomic).
fn tempdir_near(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(format!(".berth-restore-{}", uuid::Uuid::new_v4()));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder
        .create(&dir)
        .map_err(|e| Error::FailedPrecondition(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

#[cfg(test)]
mod tests;
