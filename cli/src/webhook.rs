//! `berth webhook`: outgoing deployment notifications (NotificationService). Each finished
//! deployment is POSTed as signed JSON to the subscribed URLs; `deliveries` shows the history.

use anyhow::bail;
use berth_proto::v1::{
    AddWebhookRequest, ListDeliveriesRequest, ListWebhooksRequest, RemoveWebhookRequest,
};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::ConnectOptions;
use crate::output::{self, Format, Table};
use crate::prompt;

const EVENTS: [&str; 4] = [
    "deployment.finished",
    "deployment.succeeded",
    "deployment.failed",
    "deployment.superseded",
];

#[derive(Args)]
pub struct WebhookArgs {
    #[command(subcommand)]
    command: WebhookCommand,
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// Send deployment events to URL; prints a generated signing secret once
    #[command(
        after_help = "Each request carries X-Berth-Event, X-Berth-Delivery (a unique id) and \
                            X-Berth-Signature-256: sha256=<hex HMAC-SHA256 of the raw body under the secret>."
    )]
    Add {
        /// http:// or https:// URL that receives a POST per event
        url: String,
        /// Event to send (repeatable): deployment.finished is either outcome
        #[arg(long = "event", required = true, value_parser = EVENTS)]
        events: Vec<String>,
        /// Read the signing secret from stdin (or a hidden prompt) instead of generating one
        #[arg(long)]
        secret_stdin: bool,
    },
    /// List webhooks with the status of their last delivery (never their secrets)
    List,
    /// Remove a webhook and its delivery history
    Remove {
        /// Webhook id, as `berth webhook list` shows it
        id: i64,
    },
    /// Delivery history, newest first: status, attempts, last answer
    Deliveries {
        /// Only this webhook's deliveries
        id: Option<i64>,
        /// How many to show (the server's default is 20, at most 500)
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: Option<u32>,
    },
}

pub async fn run(
    args: WebhookArgs,
    connect: &ConnectOptions,
    format: Format,
) -> anyhow::Result<()> {
    match args.command {
        WebhookCommand::Add {
            url,
            events,
            secret_stdin,
        } => {
            let secret = if secret_stdin {
                let secret = prompt::read_secret("webhook signing secret: ")?;
                if secret.is_empty() {
                    bail!("empty signing secret: pipe it on stdin or type it at the prompt");
                }
                Some(secret)
            } else {
                None
            };
            let given = secret.is_some();
            let mut client = connect.connect().await?.notifications();
            let response = client
                .add_webhook(AddWebhookRequest {
                    url,
                    events,
                    secret,
                })
                .await?
                .into_inner();
            let webhook = response.webhook.unwrap_or_default();
            // A secret the user supplied is not echoed back.
            let shown = (!given).then_some(response.secret);
            match format {
                Format::Json => output::print_json(&json!({
                    "webhook": output::notification_webhook_json(&webhook),
                    "secret": shown,
                })),
                Format::Table => {
                    println!(
                        "added webhook {} for {} ({})",
                        webhook.id,
                        webhook.url,
                        webhook.events.join(", ")
                    );
                    match shown {
                        Some(secret) => {
                            println!();
                            println!("Signing secret (shown once, store it now; berth keeps it encrypted):");
                            println!("  {secret}");
                            println!();
                            println!("Verify X-Berth-Signature-256: sha256=<hex HMAC-SHA256(secret, raw body)>.");
                        }
                        None => println!("requests are signed with the secret read from stdin"),
                    }
                }
            }
        }
        WebhookCommand::List => {
            let mut client = connect.connect().await?.notifications();
            let webhooks = client
                .list_webhooks(ListWebhooksRequest {})
                .await?
                .into_inner()
                .webhooks;
            match format {
                Format::Json => output::print_json(&json!(webhooks
                    .iter()
                    .map(output::notification_webhook_json)
                    .collect::<Vec<_>>())),
                Format::Table => {
                    let mut table =
                        Table::new(&["ID", "URL", "EVENTS", "ENABLED", "LAST DELIVERY", "AT"]);
                    for webhook in &webhooks {
                        table.row(vec![
                            webhook.id.to_string(),
                            webhook.url.clone(),
                            webhook.events.join(","),
                            if webhook.enabled { "yes" } else { "no" }.to_string(),
                            output::or_dash(webhook.last_delivery_status.as_deref()),
                            webhook
                                .last_delivery_at
                                .as_deref()
                                .map(output::short_time)
                                .unwrap_or_else(|| "-".into()),
                        ]);
                    }
                    table.print_or("no webhooks");
                }
            }
        }
        WebhookCommand::Remove { id } => {
            let mut client = connect.connect().await?.notifications();
            client.remove_webhook(RemoveWebhookRequest { id }).await?;
            match format {
                Format::Json => output::print_json(&json!({ "removed": id })),
                Format::Table => println!("removed webhook {id}"),
            }
        }
        WebhookCommand::Deliveries { id, limit } => {
            let mut client = connect.connect().await?.notifications();
            let deliveries = client
                .list_deliveries(ListDeliveriesRequest {
                    webhook_id: id,
                    limit: limit.unwrap_or(0),
                })
                .await?
                .into_inner()
                .deliveries;
            match format {
                Format::Json => output::print_json(&json!(deliveries
                    .iter()
                    .map(output::webhook_delivery_json)
                    .collect::<Vec<_>>())),
                Format::Table => {
                    let mut table = Table::new(&[
                        "DELIVERY",
                        "WEBHOOK",
                        "EVENT",
                        "DEPLOYMENT",
                        "STATUS",
                        "ATTEMPTS",
                        "CODE",
                        "CREATED",
                        "DETAIL",
                    ]);
                    for d in &deliveries {
                        let detail = match (d.status.as_str(), &d.error, &d.next_attempt_at) {
                            ("pending", Some(error), Some(next)) => {
                                format!("{error}; next attempt {}", output::short_time(next))
                            }
                            (_, Some(error), _) => error.clone(),
                            _ => "-".to_string(),
                        };
                        table.row(vec![
                            d.id.clone(),
                            d.webhook_id.to_string(),
                            d.event.clone(),
                            d.deployment_id.clone(),
                            d.status.clone(),
                            d.attempt.to_string(),
                            d.response_code
                                .map(|c| c.to_string())
                                .unwrap_or_else(|| "-".into()),
                            output::short_time(&d.created_at),
                            detail,
                        ]);
                    }
                    table.print_or("no deliveries");
                }
            }
        }
    }
    Ok(())
}
