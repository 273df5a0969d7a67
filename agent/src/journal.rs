//! The agent's durable memory of commands: one small JSON file per (deployment,
//! command kind) under `<data-dir>/journal/`. It makes commands idempotent — a re-sent
//! command gets the recorded result, never a second run — and keeps results until the
//! control plane acknowledges them, across reconnects and restarts.
//!
//! Architecture invariant: the journal never holds an environment value; only ids, states
//! and results.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::{remove_stale_temporaries, write_atomic};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredResult {
    pub success: bool,
    pub container_id: String,
    pub error: String,
    pub rolled_back: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    deployment_id: String,
    kind: i32,
    app: String,
    result: Option<StoredResult>,
    acked: bool,
}

/// What to do with a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// First time: run it.
    Run,
    /// It is running now: its result will come.
    Running,
    /// It already ran: send this result again.
    Done(StoredResult),
}

#[derive(Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = data_dir.join("journal");
        std::fs::create_dir_all(&dir)?;
        // Nothing else writes here while the agent runs: leftovers are a crash's.
        remove_stale_temporaries(data_dir)?;
        remove_stale_temporaries(&dir)?;
        Ok(Journal { dir })
    }

    fn path(&self, deployment_id: &str, kind: i32) -> anyhow::Result<PathBuf> {
        if deployment_id.is_empty()
            || deployment_id.len() > 64
            || !deployment_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            anyhow::bail!("invalid deployment id");
        }
        Ok(self.dir.join(format!("{deployment_id}.{kind}.json")))
    }

    /// Records the start of a command unless it is known. Creation is atomic (create_new), so
    /// two deliveries racing cannot both get `Run`.
    pub fn begin(&self, deployment_id: &str, kind: i32, app: &str) -> anyhow::Result<Begin> {
        let path = self.path(deployment_id, kind)?;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                use std::io::Write as _;
                let entry = Entry {
                    deployment_id: deployment_id.into(),
                    kind,
                    app: app.into(),
                    result: None,
                    acked: false,
                };
                file.write_all(serde_json::to_string(&entry)?.as_bytes())?;
                file.sync_all()?;
                Ok(Begin::Run)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let entry = self.read(&path)?;
                Ok(match entry.result {
                    Some(result) => Begin::Done(result),
                    None => Begin::Running,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    fn read(&self, path: &Path) -> anyhow::Result<Entry> {
        // A crash between create_new and the first write leaves an empty file: still running.
        let text = std::fs::read_to_string(path)?;
        if text.is_empty() {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let mut parts = name.split('.');
            return Ok(Entry {
                deployment_id: parts.next().unwrap_or_default().to_string(),
                kind: parts.next().and_then(|k| k.parse().ok()).unwrap_or(0),
                app: String::new(),
                result: None,
                acked: false,
            });
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// Records the result (durably, before it is sent).
    pub fn finish(
        &self,
        deployment_id: &str,
        kind: i32,
        result: &StoredResult,
    ) -> anyhow::Result<()> {
        let path = self.path(deployment_id, kind)?;
        let mut entry = self.read(&path)?;
        entry.result = Some(result.clone());
        write_atomic(&path, &serde_json::to_string(&entry)?)
    }

    pub fn ack(&self, deployment_id: &str, kind: i32) -> anyhow::Result<()> {
        let path = self.path(deployment_id, kind)?;
        if !path.exists() {
            return Ok(());
        }
        let mut entry = self.read(&path)?;
        if entry.result.is_some() {
            entry.acked = true;
            write_atomic(&path, &serde_json::to_string(&entry)?)?;
        }
        Ok(())
    }

    fn entries(&self) -> anyhow::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for file in std::fs::read_dir(&self.dir)? {
            let path = file?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("json") {
                if let Ok(entry) = self.read(&path) {
                    out.push(entry);
                }
            }
        }
        Ok(out)
    }

    /// Results not yet acknowledged: (deployment id, kind, result).
    pub fn unacked(&self) -> anyhow::Result<Vec<(String, i32, StoredResult)>> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|e| !e.acked)
            .filter_map(|e| e.result.map(|r| (e.deployment_id, e.kind, r)))
            .collect())
    }

    /// Commands started and not finished.
    pub fn unfinished(&self) -> anyhow::Result<Vec<(String, i32, String)>> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|e| e.result.is_none())
            .map(|e| (e.deployment_id, e.kind, e.app))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_runs_once_and_its_result_waits_for_the_ack() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.begin("d-1", 1, "web").unwrap(), Begin::Run);
        assert_eq!(journal.begin("d-1", 1, "web").unwrap(), Begin::Running);
        assert_eq!(journal.unfinished().unwrap().len(), 1);
        let result = StoredResult {
            success: true,
            container_id: "c".into(),
            error: String::new(),
            rolled_back: false,
        };
        journal.finish("d-1", 1, &result).unwrap();
        assert_eq!(
            journal.begin("d-1", 1, "web").unwrap(),
            Begin::Done(result.clone())
        );
        // A fresh journal on the same directory (an agent restart) remembers.
        let reopened = Journal::open(dir.path()).unwrap();
        assert_eq!(
            reopened.unacked().unwrap(),
            vec![("d-1".to_string(), 1, result)]
        );
        reopened.ack("d-1", 1).unwrap();
        assert!(reopened.unacked().unwrap().is_empty());
        assert!(journal.begin("../etc/passwd", 1, "web").is_err());
    }

    fn result(success: bool) -> StoredResult {
        StoredResult {
            success,
            container_id: if success { "c".into() } else { String::new() },
            error: if success { String::new() } else { "no".into() },
            rolled_back: false,
        }
    }

    #[test]
    fn each_command_kind_of_a_deployment_runs_once() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        // Deploy (1), commit (2) and rollback (3) of one deployment are separate commands.
        for kind in 1..=3 {
            assert_eq!(journal.begin("d-1", kind, "web").unwrap(), Begin::Run);
        }
        journal.finish("d-1", 1, &result(true)).unwrap();
        journal.ack("d-1", 1).unwrap();
        // An acknowledged result is not replayed, yet a re-sent command still gets it.
        assert!(journal.unacked().unwrap().is_empty());
        assert_eq!(
            journal.begin("d-1", 1, "web").unwrap(),
            Begin::Done(result(true))
        );
        assert_eq!(journal.begin("d-1", 2, "web").unwrap(), Begin::Running);
        let mut unfinished = journal.unfinished().unwrap();
        unfinished.sort();
        assert_eq!(
            unfinished,
            [
                ("d-1".into(), 2, "web".into()),
                ("d-1".into(), 3, "web".into())
            ]
        );
    }

    #[test]
    fn an_ack_before_the_result_does_not_lose_it() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        journal.begin("d-1", 1, "web").unwrap();
        journal.ack("d-1", 1).unwrap();
        journal.ack("d-unknown", 1).unwrap();
        journal.finish("d-1", 1, &result(false)).unwrap();
        assert_eq!(
            Journal::open(dir.path()).unwrap().unacked().unwrap(),
            [("d-1".into(), 1, result(false))]
        );
    }

    #[test]
    fn a_start_cut_short_by_a_crash_is_still_running() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        // create_new succeeded, the first write did not.
        std::fs::write(dir.path().join("journal").join("d-1.1.json"), "").unwrap();
        assert_eq!(journal.begin("d-1", 1, "web").unwrap(), Begin::Running);
        assert_eq!(
            journal.unfinished().unwrap(),
            [("d-1".into(), 1, String::new())]
        );
        journal.finish("d-1", 1, &result(false)).unwrap();
        assert_eq!(
            journal.begin("d-1", 1, "web").unwrap(),
            Begin::Done(result(false))
        );
    }

    #[test]
    fn only_plain_deployment_ids_name_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let long = "a".repeat(65);
        for id in ["", "d/1", "d.1", "..", "d 1", long.as_str()] {
            assert!(journal.begin(id, 1, "web").is_err(), "{id:?}");
        }
        assert!(journal.begin(&"a".repeat(64), 1, "web").is_ok());
        assert!(journal.unacked().unwrap().is_empty());
    }
}
