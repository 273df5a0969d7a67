//! The persisted routes: `routes.json` in the state directory.
//!
//! Architecture invariant: the file is replaced atomically (temporary file in the same
//! directory, fsync, rename, fsync of the directory), is mode 0600 in a 0700 directory since
//! it holds TLS keys, and a file that cannot be read is an error naming it: the proxy never
//! starts empty in place of routes it could not read.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::route::Route;

const FILE_NAME: &str = "routes.json";
const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Document {
    /// Bumped when the layout changes, so an older proxy refuses a newer file.
    version: u32,
    routes: Vec<Route>,
}

/// The routes file of one state directory.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
    path: PathBuf,
}

impl StateFile {
    /// Creates the directory (0700) if needed.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| {
                format!(
                    "cannot create the state directory {}: create it (mode 0700) or pass another --state-dir",
                    dir.display()
                )
            })?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot set {} to mode 0700", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            path: dir.join(FILE_NAME),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The persisted routes; none when the file does not exist yet.
    pub fn load(&self) -> anyhow::Result<Vec<Route>> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.path.display()))
            }
        };
        let document: Document = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "the routes file {} is corrupt ({e}): restore it, or move it away to start with no routes (each app's next deploy sets its route again)",
                self.path.display()
            )
        })?;
        if document.version != FORMAT_VERSION {
            anyhow::bail!(
                "the routes file {} has format version {} and this berth-proxy reads {FORMAT_VERSION}: run the berth-proxy that wrote it",
                self.path.display(),
                document.version
            );
        }
        Ok(document.routes)
    }

    /// Replaces the file with `routes`, atomically and durably.
    pub fn save(&self, routes: Vec<Route>) -> std::io::Result<()> {
        let document = Document {
            version: FORMAT_VERSION,
            routes,
        };
        let bytes =
            Zeroizing::new(serde_json::to_vec_pretty(&document).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
            })?);
        let temp = self.dir.join(format!(".{FILE_NAME}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        // A temp file left by a crash keeps its old mode: make sure.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, &self.path)?;
        File::open(&self.dir)?.sync_all()
    }
}
