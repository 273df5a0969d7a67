//! `berth group`: secret groups (SecretService group RPCs).

use berth_proto::v1::{CreateGroupRequest, DeleteGroupRequest, GetGroupRequest, ListGroupsRequest};
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
    /// Create a secret group
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// List secret groups
    List,
    /// Show a group and its secrets (values masked)
    Show { name: String },
    /// Delete a group and its secrets
    Delete {
        name: String,
        /// Delete even when environment variables reference the group or its secrets
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(args: GroupArgs, connect: &ConnectOptions, format: Format) -> anyhow::Result<()> {
    let mut client = connect.connect().await?.secrets();
    match args.command {
        GroupCommand::Create { name, description } => {
            let group = client
                .create_group(CreateGroupRequest { name, description })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&output::secret_group_json(&group)),
                Format::Table => println!("created group {}", group.name),
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
                            secret.source.clone(),
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
