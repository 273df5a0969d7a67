//! `berth key`: the key ring of encryption at rest (KeyService, R-3.5). `rotate` adds a data
//! key and rewraps every row to it online; `status` shows rows and encryptions per key;
//! `retire` forgets an old key no row uses.

use std::time::Duration;

use berth_proto::v1::{
    KeyInfo, KeyStatusRequest, KeyStatusResponse, RetireKeyRequest, RotateKeyRequest,
};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::ConnectOptions;
use crate::output::{self, Format, Table};

#[derive(Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Add a data key, make it active, and rewrap every encrypted row to it (online, in
    /// batches); waits for the rewrap unless --no-wait
    #[command(
        after_help = "The rewrap runs in the control plane: deploys and reveals go on meanwhile. \
                      If the control plane stops before it ends, it resumes at the next start \
                      (or with --resume). The root key (BERTH_MASTER_KEY) is not changed: see \
                      `berth-control-plane rotate-root-key`."
    )]
    Rotate {
        /// Only restart the rewrap of an unfinished rotation
        #[arg(long)]
        resume: bool,
        /// Return once the new key is active, without waiting for the rewrap
        #[arg(long)]
        no_wait: bool,
    },
    /// Keys with their state, rows per column and encryptions; warns near the AES-GCM bound
    Status,
    /// Forget an old data key (refused while any row uses it)
    Retire {
        /// Key id, as `berth key status` shows it
        id: String,
    },
}

pub async fn run(args: KeyArgs, connect: &ConnectOptions, format: Format) -> anyhow::Result<()> {
    let mut client = connect.connect().await?.keys();
    match args.command {
        KeyCommand::Rotate { resume, no_wait } => {
            let started = client
                .rotate_key(RotateKeyRequest { resume })
                .await?
                .into_inner();
            if format == Format::Table {
                if started.resumed {
                    println!("resuming the rewrap to key {}", started.key_id);
                } else {
                    println!("key {} is active; rewrapping rows to it", started.key_id);
                }
            }
            if no_wait {
                if format == Format::Json {
                    output::print_json(&json!({ "key_id": started.key_id, "finished": false }));
                }
                return Ok(());
            }
            let mut last = None;
            loop {
                let status = client.key_status(KeyStatusRequest {}).await?.into_inner();
                let Some(rotation) = status
                    .rotation
                    .as_ref()
                    .filter(|r| r.target_key_id == started.key_id)
                else {
                    break;
                };
                if !rotation.running {
                    anyhow::bail!(
                        "the rewrap to key {} stopped with {} rows left{}: `berth key rotate --resume` continues it",
                        started.key_id,
                        rotation.remaining_rows,
                        rotation
                            .last_error
                            .as_deref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    );
                }
                if format == Format::Table && last != Some(rotation.remaining_rows) {
                    eprintln!("{} rows left", rotation.remaining_rows);
                    last = Some(rotation.remaining_rows);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            match format {
                Format::Json => {
                    output::print_json(&json!({ "key_id": started.key_id, "finished": true }))
                }
                Format::Table => println!(
                    "every row is under key {}; old keys can be retired with `berth key retire ID`",
                    started.key_id
                ),
            }
        }
        KeyCommand::Status => {
            let status = client.key_status(KeyStatusRequest {}).await?.into_inner();
            print_status(&status, format);
        }
        KeyCommand::Retire { id } => {
            client
                .retire_key(RetireKeyRequest { key_id: id.clone() })
                .await?;
            match format {
                Format::Json => output::print_json(&json!({ "retired": id })),
                Format::Table => println!("retired key {id}"),
            }
        }
    }
    Ok(())
}

fn key_json(key: &KeyInfo) -> Value {
    json!({
        "id": key.id,
        "state": key.state,
        "encryptions": key.encryptions,
        "rows": key.rows.iter().map(|r| json!({"column": r.column, "rows": r.rows})).collect::<Vec<_>>(),
        "created_at": crate::output::time_json(&key.created_at),
        "warning": key.warning,
    })
}

fn print_status(status: &KeyStatusResponse, format: Format) {
    match format {
        Format::Json => output::print_json(&json!({
            "keys": status.keys.iter().map(key_json).collect::<Vec<_>>(),
            "rotation": status.rotation.as_ref().map(|r| json!({
                "target_key_id": r.target_key_id,
                "remaining_rows": r.remaining_rows,
                "running": r.running,
                "last_error": r.last_error,
            })),
        })),
        Format::Table => {
            let mut table = Table::new(&["KEY", "STATE", "ROWS", "ENCRYPTIONS", "CREATED"]);
            for key in &status.keys {
                let rows = if key.rows.is_empty() {
                    "0".to_string()
                } else {
                    key.rows
                        .iter()
                        .map(|r| format!("{} {}", r.column, r.rows))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                table.row(vec![
                    key.id.clone(),
                    key.state.clone(),
                    rows,
                    key.encryptions
                        .map(|n| format!("≤{n}"))
                        .unwrap_or_else(|| "-".into()),
                    key.created_at
                        .as_deref()
                        .map(output::short_time)
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            table.print_or("no keys");
            for key in &status.keys {
                if let Some(warning) = &key.warning {
                    println!("warning: {warning}");
                }
            }
            if let Some(r) = &status.rotation {
                println!(
                    "rotation to key {}: {} rows left, {}",
                    r.target_key_id,
                    r.remaining_rows,
                    if r.running {
                        "running".to_string()
                    } else {
                        format!(
                            "stopped{}: `berth key rotate --resume` continues it",
                            r.last_error
                                .as_deref()
                                .map(|e| format!(" ({e})"))
                                .unwrap_or_default()
                        )
                    }
                );
            }
        }
    }
}
