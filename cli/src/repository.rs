//! `berth repository`: image registries and the credentials to pull from them
//! (RepositoryService).

use anyhow::bail;
use berth_proto::v1::{AddRepositoryRequest, ListRepositoriesRequest, RemoveRepositoryRequest};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::ConnectOptions;
use crate::output::{self, Format, Table};
use crate::prompt;

#[derive(Args)]
pub struct RepositoryArgs {
    #[command(subcommand)]
    command: RepositoryCommand,
}

#[derive(Subcommand)]
enum RepositoryCommand {
    /// Add a registry; with --username the password is read from stdin or a hidden prompt
    Add {
        /// Name of the registry, as applications reference it
        name: String,
        /// Registry address, e.g. registry.local:5000 or ghcr.io
        #[arg(long)]
        url: String,
        #[arg(long)]
        username: Option<String>,
    },
    /// List registries (never their passwords)
    List,
    /// Remove a registry
    Remove {
        /// The registry to remove
        name: String,
    },
}

pub async fn run(
    args: RepositoryArgs,
    connect: &ConnectOptions,
    format: Format,
) -> anyhow::Result<()> {
    match args.command {
        RepositoryCommand::Add {
            name,
            url,
            username,
        } => {
            let password = match &username {
                Some(user) => {
                    let password = prompt::read_secret(&format!("password of {user} at {url}: "))?;
                    if password.is_empty() {
                        bail!("empty password: pipe it on stdin or type it at the prompt");
                    }
                    Some(password)
                }
                None => None,
            };
            let mut client = connect.connect().await?.repositories();
            let repository = client
                .add_repository(AddRepositoryRequest {
                    name,
                    url,
                    username,
                    password,
                })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&output::repository_json(&repository)),
                Format::Table => {
                    println!("added repository {} ({})", repository.name, repository.url)
                }
            }
        }
        RepositoryCommand::List => {
            let mut client = connect.connect().await?.repositories();
            let repositories = client
                .list_repositories(ListRepositoriesRequest {})
                .await?
                .into_inner()
                .repositories;
            match format {
                Format::Json => output::print_json(&json!(repositories
                    .iter()
                    .map(output::repository_json)
                    .collect::<Vec<_>>())),
                Format::Table => {
                    let mut table = Table::new(&["NAME", "URL", "USERNAME", "PASSWORD", "CREATED"]);
                    for repository in &repositories {
                        table.row(vec![
                            repository.name.clone(),
                            repository.url.clone(),
                            output::or_dash(repository.username.as_deref()),
                            if repository.has_password { "set" } else { "-" }.to_string(),
                            output::short_time(&repository.created_at),
                        ]);
                    }
                    table.print_or("no repositories");
                }
            }
        }
        RepositoryCommand::Remove { name } => {
            let mut client = connect.connect().await?.repositories();
            client
                .remove_repository(RemoveRepositoryRequest { name: name.clone() })
                .await?;
            match format {
                Format::Json => output::print_json(&json!({ "removed": name })),
                Format::Table => println!("removed repository {name}"),
            }
        }
    }
    Ok(())
}
