//! `berth apikey`: API keys of the admin API (ApiKeyService).

use berth_proto::v1::{CreateApiKeyRequest, ListApiKeysRequest, RevokeApiKeyRequest};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::client::ConnectOptions;
use crate::output::{self, Format, Table};

#[derive(Args)]
pub struct ApiKeyArgs {
    #[command(subcommand)]
    command: ApiKeyCommand,
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create an API key; prints it once
    Create {
        /// Name of the new key (who or what uses it)
        name: String,
        /// What the key may do: viewer reads summaries, deployer also deploys, admin does all
        #[arg(long, value_enum)]
        role: Role,
    },
    /// List API keys (never the keys themselves)
    List,
    /// Revoke an API key; requests with it fail from now on
    Revoke {
        /// Name of the key to revoke
        name: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Role {
    Admin,
    Deployer,
    Viewer,
    /// Only forwards CI webhooks: the credential of a standalone berth-webhook shim
    Webhook,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deployer => "deployer",
            Role::Viewer => "viewer",
            Role::Webhook => "webhook",
        }
    }
}

pub async fn run(args: ApiKeyArgs, connect: &ConnectOptions, format: Format) -> anyhow::Result<()> {
    let mut client = connect.connect().await?.api_keys();
    match args.command {
        ApiKeyCommand::Create { name, role } => {
            let response = client
                .create_api_key(CreateApiKeyRequest {
                    name,
                    role: role.as_str().to_string(),
                })
                .await?
                .into_inner();
            let key = response.api_key.unwrap_or_default();
            match format {
                Format::Json => output::print_json(&json!({
                    "api_key": output::api_key_json(&key),
                    "key": response.key,
                })),
                Format::Table => {
                    println!("created api key {} ({})", key.name, key.role);
                    println!();
                    println!("API key (shown once, store it now; berth keeps only a hash):");
                    println!("  {}", response.key);
                }
            }
        }
        ApiKeyCommand::List => {
            let keys = client
                .list_api_keys(ListApiKeysRequest {})
                .await?
                .into_inner()
                .api_keys;
            match format {
                Format::Json => output::print_json(&json!(keys
                    .iter()
                    .map(output::api_key_json)
                    .collect::<Vec<_>>())),
                Format::Table => {
                    let mut table =
                        Table::new(&["NAME", "ROLE", "PREFIX", "CREATED", "LAST USED", "REVOKED"]);
                    for key in &keys {
                        table.row(vec![
                            key.name.clone(),
                            key.role.clone(),
                            key.prefix.clone(),
                            output::short_time(&key.created_at),
                            key.last_used_at
                                .as_deref()
                                .map(output::short_time)
                                .unwrap_or_else(|| "never".into()),
                            key.revoked_at
                                .as_deref()
                                .map(output::short_time)
                                .unwrap_or_else(|| "-".into()),
                        ]);
                    }
                    table.print_or("no api keys");
                }
            }
        }
        ApiKeyCommand::Revoke { name } => {
            client
                .revoke_api_key(RevokeApiKeyRequest { name: name.clone() })
                .await?;
            match format {
                Format::Json => output::print_json(&json!({ "revoked": name })),
                Format::Table => println!("revoked api key {name}"),
            }
        }
    }
    Ok(())
}
