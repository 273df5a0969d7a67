//! `berth backup`: encrypted backups of the control plane (BackupService, R-3.10). `create`
//! streams an archive from the running control plane into a file; `verify` checks a file
//! offline with the master key. Restoring is `berth-control-plane restore` (offline).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use berth_control_plane::backup;
use berth_control_plane::crypto::MasterKey;
use berth_proto::v1::CreateBackupRequest;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::ConnectOptions;
use crate::output::{self, Format};

#[derive(Args)]
pub struct BackupArgs {
    #[command(subcommand)]
    command: BackupCommand,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Write an encrypted archive of the running control plane (database snapshot, key ring,
    /// CA) to FILE; the master key is NOT in it
    #[command(
        after_help = "The snapshot is online and consistent: deploys and writes go on while it runs. \
                      The archive is encrypted under a key derived from the master (root) key: \
                      keep that key (BERTH_MASTER_KEY, or master.key of the data directory) safe \
                      and apart from the backups, or they cannot be restored."
    )]
    Create {
        /// The archive to write (created 0600; refused if it exists)
        file: PathBuf,
    },
    /// Check an archive without restoring it: decrypts it, runs the SQLite integrity check,
    /// and opens every encrypted value with the key ring
    Verify {
        /// The archive to check
        file: PathBuf,
        /// File with the master key (default: BERTH_MASTER_KEY or BERTH_MASTER_KEY_FILE)
        #[arg(long, value_name = "FILE")]
        master_key_file: Option<PathBuf>,
    },
}

pub async fn run(args: BackupArgs, connect: &ConnectOptions, format: Format) -> anyhow::Result<()> {
    match args.command {
        BackupCommand::Create { file } => create(&file, connect, format).await,
        BackupCommand::Verify {
            file,
            master_key_file,
        } => {
            let key = master_key(master_key_file.as_deref())?;
            let report = backup::verify_archive(&key, &file).await?;
            match format {
                Format::Json => output::print_json(&json!({
                    "ok": true,
                    "created_at": output::rfc3339(&report.manifest.created_at),
                    "root_key_id": report.manifest.root_key_id,
                    "database_bytes": report.manifest.database_bytes,
                    "files": report.manifest.files,
                    "ring_keys": report.ring_keys,
                    "ciphertexts": report.ciphertexts.iter().map(|(c, n)| json!({"column": c, "rows": n})).collect::<Vec<_>>(),
                })),
                Format::Table => {
                    println!(
                        "{}: ok (taken {}, {} bytes of database, files {})",
                        file.display(),
                        output::short_time(&report.manifest.created_at),
                        report.manifest.database_bytes,
                        report.manifest.files.join(", ")
                    );
                    println!(
                        "integrity check ok; {} encrypted values open with the key ring ({} keys) under root key {}",
                        report.total_ciphertexts(),
                        report.ring_keys,
                        report.manifest.root_key_id
                    );
                }
            }
            Ok(())
        }
    }
}

async fn create(file: &Path, connect: &ConnectOptions, format: Format) -> anyhow::Result<()> {
    let partial = file.with_extension(format!(
        "{}partial",
        file.extension()
            .map(|e| format!("{}.", e.to_string_lossy()))
            .unwrap_or_default()
    ));
    if file.exists() {
        anyhow::bail!("{} exists: give a new file name", file.display());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut out = options
        .open(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let result = async {
        let mut client = connect.connect().await?.backups();
        let mut stream = client
            .create_backup(CreateBackupRequest {})
            .await?
            .into_inner();
        let mut bytes = 0u64;
        let mut root_key_id = None;
        let progress = output::progress(&format!("writing {}", file.display()), true);
        while let Some(chunk) = stream.message().await? {
            out.write_all(&chunk.data)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            bytes += chunk.data.len() as u64;
            progress.set_position(bytes);
            if chunk.root_key_id.is_some() {
                root_key_id = chunk.root_key_id;
            }
        }
        progress.finish_and_clear();
        let root_key_id = root_key_id
            .context("the control plane ended the backup stream before the archive was complete")?;
        out.sync_all()?;
        std::fs::rename(&partial, file).with_context(|| {
            format!("cannot rename {} to {}", partial.display(), file.display())
        })?;
        anyhow::Ok((bytes, root_key_id))
    }
    .await;
    let (bytes, root_key_id) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    match format {
        Format::Json => output::print_json(&json!({
            "file": file.display().to_string(),
            "bytes": bytes,
            "root_key_id": root_key_id,
            "contains_master_key": false,
        })),
        Format::Table => {
            println!("wrote {} ({bytes} bytes)", file.display());
            println!(
                "The master key is NOT in the backup: restoring needs the master key {root_key_id} \
                 (BERTH_MASTER_KEY, or master.key of the data directory). Keep it safe, apart from the backups."
            );
        }
    }
    Ok(())
}

/// The master key for verify: a file given, else the environment as the control plane reads it.
fn master_key(file: Option<&Path>) -> anyhow::Result<MasterKey> {
    if let Some(path) = file {
        return Ok(MasterKey::read_file(path)?);
    }
    if let Ok(value) = std::env::var("BERTH_MASTER_KEY") {
        if !value.is_empty() {
            return Ok(MasterKey::parse(&value)?);
        }
    }
    if let Ok(path) = std::env::var("BERTH_MASTER_KEY_FILE") {
        if !path.is_empty() {
            return Ok(MasterKey::read_file(Path::new(&path))?);
        }
    }
    anyhow::bail!(
        "no master key: give --master-key-file (the data directory's master.key) or set BERTH_MASTER_KEY / BERTH_MASTER_KEY_FILE"
    )
}
