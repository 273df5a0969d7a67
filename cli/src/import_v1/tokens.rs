//! `--tokens-out FILE`: the webhook tokens of the created applications, written once to a
//! file created for them (0600 from its creation, never an existing file), as JSON
//! `{"app": "whk_…"}`.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use berth_proto::v1::ImportedToken;

/// The file, created empty before the import runs so that a path that cannot be written is
/// found before any token exists.
pub struct TokensFile {
    path: PathBuf,
    file: File,
}

impl TokensFile {
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let file = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow::anyhow!(
                    "{} exists: --tokens-out never overwrites a file (it may hold the tokens of an earlier import); give a new path",
                    path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("cannot create {}", path.display()))
            }
        })?;
        Ok(TokensFile {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Writes the tokens and makes them durable; returns the path.
    pub fn write(mut self, tokens: &[ImportedToken]) -> anyhow::Result<PathBuf> {
        let map: serde_json::Map<String, serde_json::Value> = tokens
            .iter()
            .map(|t| (t.application.clone(), t.webhook_token.clone().into()))
            .collect();
        let mut text = serde_json::to_string_pretty(&map).expect("a json map serializes");
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.sync_all())
            .with_context(|| format!("cannot write the tokens to {}", self.path.display()))?;
        Ok(self.path)
    }

    /// Removes the file when there is nothing to put in it (a failed import, no application
    /// created), so the same path can be given again.
    pub fn discard(self) {
        drop(self.file);
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_private_and_an_existing_one_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let file = TokensFile::create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        file.write(&[ImportedToken {
            application: "web".into(),
            webhook_token: "whk_abc".into(),
        }])
        .unwrap();
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(written["web"], "whk_abc");

        let refused = TokensFile::create(&path).err().unwrap().to_string();
        assert!(refused.contains("never overwrites"), "{refused}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&path).unwrap())
                .unwrap(),
            written
        );
    }

    #[test]
    fn a_discarded_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        TokensFile::create(&path).unwrap().discard();
        assert!(!path.exists());
    }
}
