//! `berth group`: secret groups (SecretService group RPCs).

use anyhow::bail;
use berth_proto::v1::{
    CreateGroupRequest, DeleteGroupRequest, GetGroupRequest, ListGroupsRequest, UpdateGroupRequest,
};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::ConnectOptions;
use crate::output::{self, Format, Table};

#[derive(Args)]
pub struct GroupArgs {
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Create a secret group, optionally fed by a provider
    Create {
        /// Name of the new group
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Its secrets come from this provider (`berth provider sync`)
        #[arg(long)]
        provider: Option<String>,
        /// Sync it on the provider's interval
        #[arg(long, requires = "provider")]
        auto_sync: bool,
    },
    /// Change a group's description, provider link or auto-sync
    Update {
        /// The group to change
        name: String,
        /// New description ("" removes it)
        #[arg(long)]
        description: Option<String>,
        /// Link to this provider
        #[arg(long, conflicts_with = "no_provider")]
        provider: Option<String>,
        /// Unlink the provider (its secrets stay)
        #[arg(long)]
        no_provider: bool,
        #[arg(long, conflicts_with = "no_auto_sync")]
        auto_sync: bool,
        #[arg(long)]
        no_auto_sync: bool,
    },
    /// List secret groups
    List,
    /// Show a group and its secrets (values masked)
    Show {
        /// The group to show
        name: String,
    },
    /// Delete a group and its secrets
    Delete {
        /// The group to delete
        name: String,
        /// Delete even when environment variables reference the group or its secrets
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(args: GroupArgs, connect: &ConnectOptions, format: Format) -> anyhow::Result<()> {
    let mut client = connect.connect().await?.secrets();
    match args.command {
        GroupCommand::Create {
            name,
            description,
            provider,
            auto_sync,
        } => {
            let group = client
                .create_group(CreateGroupRequest {
                    name,
                    description,
                    provider,
                    auto_sync,
                })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&output::secret_group_json(&group)),
                Format::Table => match &group.provider {
                    Some(p) => println!(
                        "created group {} fed by provider {p}{}; sync it now with: berth provider sync {p}",
                        group.name,
                        if group.auto_sync { " (auto-sync)" } else { "" }
                    ),
                    None => println!("created group {}", group.name),
                },
            }
        }
        GroupCommand::Update {
            name,
            description,
            provider,
            no_provider,
            auto_sync,
            no_auto_sync,
        } => {
            let provider = if no_provider {
                Some(String::new())
            } else {
                provider
            };
            let auto_sync = match (auto_sync, no_auto_sync) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            if description.is_none() && provider.is_none() && auto_sync.is_none() {
                bail!("nothing to update: give --description, --provider/--no-provider or --auto-sync/--no-auto-sync");
            }
            let group = client
                .update_group(UpdateGroupRequest {
                    name,
                    description,
                    provider,
                    auto_sync,
                })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&output::secret_group_json(&group)),
                Format::Table => println!(
                    "updated group {}: provider {}, auto-sync {}",
                    group.name,
                    output::or_dash(group.provider.as_deref()),
                    if group.auto_sync { "on" } else { "off" }
                ),
            }
        }
        GroupCommand::List => {
            let groups = client
                .list_groups(ListGroupsRequest {})
                .await?
                .into_inner()
                .groups;
            match format {
                Format::Json => output::print_json(&json!(groups
                    .iter()
                    .map(output::secret_group_json)
                    .collect::<Vec<_>>())),
                Format::Table => {
                    let mut table =
                        Table::new(&["NAME", "SECRETS", "SYNC", "DESCRIPTION", "CREATED"]);
                    for group in &groups {
                        table.row(vec![
                            group.name.clone(),
                            group.secret_count.to_string(),
                            sync_text(group.auto_sync).to_string(),
                            output::or_dash(group.description.as_deref()),
                            output::short_time(&group.created_at),
                        ]);
                    }
                    table.print_or("no secret groups yet");
                }
            }
        }
        GroupCommand::Show { name } => {
            let response = client
                .get_group(GetGroupRequest { name })
                .await?
                .into_inner();
            let group = response.group.unwrap_or_default();
            match format {
                Format::Json => output::print_json(&json!({
                    "group": output::secret_group_json(&group),
                    "secrets": response.secrets.iter().map(output::secret_summary_json).collect::<Vec<_>>(),
                })),
                Format::Table => {
                    println!("Group: {}", group.name);
                    println!(
                        "  Description:  {}",
                        output::or_dash(group.description.as_deref())
                    );
                    println!(
                        "  Provider:     {}",
                        output::or_dash(group.provider.as_deref())
                    );
                    println!("  Sync:         {}", sync_text(group.auto_sync));
                    println!("  Secrets:      {}", group.secret_count);
                    println!("  Created:      {}", output::short_time(&group.created_at));
                    println!();
                    let mut table =
                        Table::new(&["NAME", "PREVIEW", "SOURCE", "DESCRIPTION", "UPDATED"]);
                    for secret in &response.secrets {
                        table.row(vec![
                            secret.name.clone(),
                            secret.value_preview.clone(),
                            crate::secret::source_text(secret),
                            output::or_dash(secret.description.as_deref()),
                            output::short_time(&secret.updated_at),
                        ]);
                    }
                    table.print_or("no secrets in this group yet");
                }
            }
        }
        GroupCommand::Delete { name, force } => {
            client
                .delete_group(DeleteGroupRequest {
                    name: name.clone(),
                    force,
                })
                .await?;
            match format {
                Format::Json => output::print_json(&json!({ "deleted": name })),
                Format::Table => println!("deleted group {name}"),
            }
        }
    }
    Ok(())
}

fn sync_text(auto_sync: bool) -> &'static str {
    if auto_sync {
        "auto"
    } else {
        "manual"
    }
}
