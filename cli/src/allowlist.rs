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
    /// Allow an image, or every image under a registry or repository path
    ///
    /// Patterns match whole path components, never part of one:
    ///
    ///   reg.io/team/app   exactly that image
    ///   reg.io/team/*     every image under reg.io/team/ (not reg.io/team itself)
    ///   reg.io/team*      reg.io/team and every image under reg.io/team/
    ///   reg.io:5000/*     every image of the registry reg.io:5000
    ///
    /// So "reg.io*" allows reg.io/x but not reg.io.evil.com/x or reg.io:5000/x, and
    /// "reg.io/team*" does not allow reg.io/teamx. A * anywhere but at the end is refused.
    /// Images are matched with their registry, without tag, as the agent pulls them.
    #[command(verbatim_doc_comment)]
    Add {
        /// An image, or a registry/repository prefix followed by /* or *
        pattern: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// List allowed image patterns
    List,
    /// Remove an image pattern
    Remove {
        /// The pattern to remove, as `allowlist list` shows it
        pattern: String,
    },
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
