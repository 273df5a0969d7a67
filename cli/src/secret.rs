//! `berth secret`: secrets inside groups (SecretService secret RPCs).
//!
//! Values go in through stdin or a hidden prompt and come out only through `reveal`, after a
//! confirmation.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use berth_proto::v1::{
    DeleteSecretRequest, ImportFormat, ImportSecretsRequest, ListGroupsRequest, ListSecretsRequest,
    RevealSecretRequest, SecretGroup, SecretSummary, SetSecretRequest,
};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::client::ConnectOptions;
use crate::output::{self, Format};
use crate::prompt;

#[derive(Args)]
pub struct SecretArgs {
    #[command(subcommand)]
    command: SecretCommand,
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Create a secret or replace its value; the value is read from stdin or a hidden prompt
    Set {
        /// The group the secret belongs to
        group: String,
        /// Name of the secret, as variables reference it (GROUP/NAME)
        name: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// List secrets by group, values masked
    List {
        /// Only the secrets of this group
        #[arg(long)]
        group: Option<String>,
    },
    /// Print the plaintext value of a secret (audited)
    Reveal {
        /// The group of the secret
        group: String,
        /// Name of the secret
        name: String,
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
    /// Delete a secret
    Delete {
        /// The group of the secret
        group: String,
        /// Name of the secret
        name: String,
        /// Delete even when environment variables reference it (they are removed too)
        #[arg(long)]
        force: bool,
    },
    /// Import a .env or JSON file into a group, all or nothing
    Import {
        /// The group to import into (created if missing)
        group: String,
        /// The file to import, or - for stdin
        #[arg(long)]
        file: PathBuf,
        /// Guessed from the file name when absent: .json is json, anything else dotenv
        #[arg(long, value_enum)]
        format: Option<DocumentFormat>,
        /// Replace the values of secrets that already exist instead of skipping them
        #[arg(long)]
        overwrite: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DocumentFormat {
    Dotenv,
    Json,
}

pub async fn run(args: SecretArgs, connect: &ConnectOptions, format: Format) -> anyhow::Result<()> {
    match args.command {
        SecretCommand::Set {
            group,
            name,
            description,
        } => {
            let value = prompt::read_secret(&format!("value of {group}/{name}: "))?;
            if value.is_empty() {
                bail!("empty secret value: pipe it on stdin or type it at the prompt");
            }
            let mut client = connect.connect().await?.secrets();
            let secret = client
                .set_secret(SetSecretRequest {
                    group,
                    name,
                    value,
                    description,
                })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&output::secret_summary_json(&secret)),
                Format::Table => println!(
                    "set secret {}/{} ({})",
                    secret.group_name, secret.name, secret.value_preview
                ),
            }
        }
        SecretCommand::List { group } => {
            let connection = connect.connect().await?;
            let mut client = connection.secrets();
            let secrets = client
                .list_secrets(ListSecretsRequest {
                    group: group.clone(),
                })
                .await?
                .into_inner()
                .secrets;
            match format {
                Format::Json => output::print_json(&json!(secrets
                    .iter()
                    .map(output::secret_summary_json)
                    .collect::<Vec<_>>())),
                Format::Table => {
                    // The groups too, so that empty and auto-synced groups show as such.
                    let mut groups = client
                        .list_groups(ListGroupsRequest {})
                        .await?
                        .into_inner()
                        .groups;
                    if let Some(only) = &group {
                        groups.retain(|g| &g.name == only);
                    }
                    print!("{}", render_tree(&groups, &secrets));
                }
            }
        }
        SecretCommand::Reveal { group, name, yes } => {
            prompt::confirm(&format!("reveal secret {group}/{name}"), yes)?;
            let mut client = connect.connect().await?.secrets();
            let response = client
                .reveal_secret(RevealSecretRequest {
                    group,
                    name,
                    confirm: true,
                })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&json!({
                    "secret": response.secret.as_ref().map(output::secret_summary_json),
                    "value": response.value,
                })),
                Format::Table => println!("{}", response.value),
            }
        }
        SecretCommand::Delete { group, name, force } => {
            let mut client = connect.connect().await?.secrets();
            let removed = client
                .delete_secret(DeleteSecretRequest {
                    group: group.clone(),
                    name: name.clone(),
                    force,
                })
                .await?
                .into_inner()
                .removed_references;
            match format {
                Format::Json => output::print_json(&json!({
                    "deleted": format!("{group}/{name}"),
                    "removed_references": removed,
                })),
                Format::Table => {
                    println!("deleted secret {group}/{name}");
                    if !removed.is_empty() {
                        println!("removed references: {}", removed.join(", "));
                    }
                }
            }
        }
        SecretCommand::Import {
            group,
            file,
            format: document_format,
            overwrite,
        } => {
            let document_format = document_format.unwrap_or_else(|| guess_format(&file));
            let document = read_document(&file)?;
            let mut client = connect.connect().await?.secrets();
            let counts = client
                .import_secrets(ImportSecretsRequest {
                    group: group.clone(),
                    format: match document_format {
                        DocumentFormat::Dotenv => ImportFormat::Dotenv,
                        DocumentFormat::Json => ImportFormat::Json,
                    } as i32,
                    document,
                    overwrite,
                })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&json!({
                    "group": group,
                    "created": counts.created,
                    "updated": counts.updated,
                    "skipped": counts.skipped,
                })),
                Format::Table => println!(
                    "imported into {group}: {} created, {} updated, {} skipped",
                    counts.created, counts.updated, counts.skipped
                ),
            }
        }
    }
    Ok(())
}

/// `.json` files are JSON, everything else (`.env`, `prod.env`, `-`) dotenv.
fn guess_format(file: &Path) -> DocumentFormat {
    match file.extension() {
        Some(ext) if ext.eq_ignore_ascii_case("json") => DocumentFormat::Json,
        _ => DocumentFormat::Dotenv,
    }
}

/// The file's text; it holds secret values, so errors name the path only.
fn read_document(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut document = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut document)
            .context("cannot read stdin")?;
        return Ok(document);
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

/// The seed's grouped tree: one block per group, then one line per secret with its masked
/// preview and where it comes from.
///
/// ```text
/// 📁 production-db (2 secrets)
///    DATABASE_URL  ****@****  manual
///    REDIS_URL     redis://*  manual
/// 🔄 infisical-production (auto-sync, 1 secret)
///    STRIPE_KEY    sk_****    synced
/// ```
fn render_tree(groups: &[SecretGroup], secrets: &[SecretSummary]) -> String {
    // Groups in the server's order, then any group only the secrets mention.
    let mut names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    for secret in secrets {
        if !names.contains(&secret.group_name.as_str()) {
            names.push(&secret.group_name);
        }
    }
    if names.is_empty() {
        return "no secrets yet\n".to_string();
    }
    let name_width = secrets
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0);
    let preview_width = secrets
        .iter()
        .map(|s| preview(s).chars().count())
        .max()
        .unwrap_or(0);

    let mut out = String::new();
    for name in names {
        let members: Vec<&SecretSummary> =
            secrets.iter().filter(|s| s.group_name == name).collect();
        let count = match members.len() {
            1 => "1 secret".to_string(),
            n => format!("{n} secrets"),
        };
        match groups.iter().find(|g| g.name == name) {
            Some(group) if group.auto_sync => {
                out.push_str(&format!("🔄 {name} (auto-sync, {count})\n"))
            }
            _ => out.push_str(&format!("📁 {name} ({count})\n")),
        }
        for secret in members {
            let line = format!(
                "   {:<name_width$}  {:<preview_width$}  {}",
                secret.name,
                preview(secret),
                source_text(secret)
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

/// `manual`, `synced from vault (2026-11-30 10:00)`, and `STALE` when it is gone upstream but
/// kept because something references it.
pub fn source_text(secret: &SecretSummary) -> String {
    match (&secret.provider, secret.source.as_str()) {
        (Some(provider), "synced") => {
            let mut text = format!("synced from {provider}");
            if let Some(at) = &secret.last_synced_at {
                text.push_str(&format!(" ({})", crate::output::short_time(at)));
            }
            if secret.stale_since.is_some() {
                text.push_str(", STALE: gone upstream, still referenced");
            }
            text
        }
        _ => secret.source.clone(),
    }
}

fn preview(secret: &SecretSummary) -> &str {
    if secret.has_value {
        &secret.value_preview
    } else {
        "(no value)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_is_guessed_from_the_extension() {
        assert_eq!(
            guess_format(Path::new("secrets.json")),
            DocumentFormat::Json
        );
        assert_eq!(
            guess_format(Path::new("dir/SECRETS.JSON")),
            DocumentFormat::Json
        );
        assert_eq!(guess_format(Path::new(".env")), DocumentFormat::Dotenv);
        assert_eq!(guess_format(Path::new("prod.env")), DocumentFormat::Dotenv);
        assert_eq!(guess_format(Path::new("secrets")), DocumentFormat::Dotenv);
        assert_eq!(guess_format(Path::new("-")), DocumentFormat::Dotenv);
    }

    fn secret(group: &str, name: &str, preview: &str, source: &str) -> SecretSummary {
        SecretSummary {
            name: name.into(),
            group_name: group.into(),
            has_value: true,
            value_preview: preview.into(),
            source: source.into(),
            ..Default::default()
        }
    }

    #[test]
    fn tree_has_one_block_per_group() {
        let groups = vec![
            SecretGroup {
                name: "production-db".into(),
                ..Default::default()
            },
            SecretGroup {
                name: "infisical".into(),
                auto_sync: true,
                ..Default::default()
            },
            SecretGroup {
                name: "empty".into(),
                ..Default::default()
            },
        ];
        let secrets = vec![
            secret("production-db", "DATABASE_URL", "****@****", "manual"),
            secret("production-db", "REDIS_URL", "redis://*", "manual"),
            secret("infisical", "STRIPE_KEY", "sk_****", "synced"),
        ];
        assert_eq!(
            render_tree(&groups, &secrets),
            "📁 production-db (2 secrets)\n\
             \x20  DATABASE_URL  ****@****  manual\n\
             \x20  REDIS_URL     redis://*  manual\n\
             🔄 infisical (auto-sync, 1 secret)\n\
             \x20  STRIPE_KEY    sk_****    synced\n\
             📁 empty (0 secrets)\n"
        );
    }
}
