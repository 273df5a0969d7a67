//! `berth allowlist`: the image allowlist (AllowlistService). While it has entries, images
//! matching none of them are refused before any deployment.

use berth_proto::v1::{
    AddImagePatternRequest, ListImagePatternsRequest, RemoveImagePatternRequest,
};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::ConnectOptions;
use crate::output::{self, Format, Table};

#[derive(Args)]
pub struct AllowlistArgs {
    #[command(subcommand)]
    command: AllowlistCommand,
}

#[derive(Subcommand)]
enum AllowlistCommand {
    /// Allow an image name, or a prefix ending in * (e.g. "registry.local:5000/team/*")
    Add {
        pattern: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// List allowed image patterns
    List,
    /// Remove an image pattern
    Remove { pattern: String },
}

pub async fn run(
    args: AllowlistArgs,
    connect: &ConnectOptions,
    format: Format,
) -> anyhow::Result<()> {
    let mut client = connect.connect().await?.allowlist();
    match args.command {
        AllowlistCommand::Add {
            pattern,
            description,
        } => {
            let pattern = client
                .add_image_pattern(AddImagePatternRequest {
                    pattern,
                    description,
                })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&output::image_pattern_json(&pattern)),
                Format::Table => println!("allowed {}", pattern.pattern),
            }
        }
        AllowlistCommand::List => {
            let patterns = client
                .list_image_patterns(ListImagePatternsRequest {})
                .await?
                .into_inner()
                .patterns;
            match format {
                Format::Json => output::print_json(&json!(patterns
                    .iter()
                    .map(output::image_pattern_json)
                    .collect::<Vec<_>>())),
                Format::Table => {
                    let mut table = Table::new(&["PATTERN", "DESCRIPTION", "CREATED"]);
                    for pattern in &patterns {
                        table.row(vec![
                            pattern.pattern.clone(),
                            output::or_dash(pattern.description.as_deref()),
                            output::short_time(&pattern.created_at),
                        ]);
                    }
                    table.print_or("the allowlist is empty: every image is allowed");
                }
            }
        }
        AllowlistCommand::Remove { pattern } => {
            client
                .remove_image_pattern(RemoveImagePatternRequest {
                    pattern: pattern.clone(),
                })
                .await?;
            match format {
                Format::Json => output::print_json(&json!({ "removed": pattern })),
                Format::Table => println!("removed {pattern}"),
            }
        }
    }
    Ok(())
}
