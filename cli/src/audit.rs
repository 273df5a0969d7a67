//! `berth audit`: the audit trail (AuditService). Admins only; rows never hold a value.

use berth_proto::v1::{AuditEvent, AuditFilter, FollowAuditEventsRequest, ListAuditEventsRequest};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::ConnectOptions;
use crate::output::{self, Format, Table};

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Who did what and when, newest first (admin keys only)
    List(ListArgs),
}

#[derive(Args)]
struct ListArgs {
    /// Only rows of this actor: apikey:NAME, system, webhook:IP, agent:NAME
    #[arg(long)]
    actor: Option<String>,
    /// Only this action (secret.reveal, app.create) or every action of a noun (secret)
    #[arg(long)]
    action: Option<String>,
    /// Only rows since this time: RFC 3339 (2026-11-30T09:00:00Z) or a duration back from
    /// now (90s, 10m, 2h, 7d)
    #[arg(long)]
    since: Option<String>,
    /// Only rows about this application (itself, its variables, its domains)
    #[arg(long)]
    app: Option<String>,
    /// Rows per page (1,000 at most)
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Only rows older than this id (the cursor printed under a full page)
    #[arg(long)]
    before: Option<i64>,
    /// Then print new rows as they are committed, until interrupted (JSON: one object a line)
    #[arg(short, long)]
    follow: bool,
}

impl ListArgs {
    fn filter(&self) -> AuditFilter {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        AuditFilter {
            actor: text(&self.actor),
            action: text(&self.action),
            since: text(&self.since),
            app: text(&self.app),
        }
    }
}

pub async fn run(args: AuditArgs, connect: &ConnectOptions, format: Format) -> anyhow::Result<()> {
    let AuditCommand::List(args) = args.command;
    let mut client = connect.connect().await?.audit();
    let page = client
        .list_audit_events(ListAuditEventsRequest {
            filter: Some(args.filter()),
            limit: args.limit,
            before_id: args.before.unwrap_or_default(),
        })
        .await?
        .into_inner();
    if !args.follow {
        match format {
            Format::Json => output::print_json(&json!(page
                .events
                .iter()
                .map(event_json)
                .collect::<Vec<_>>())),
            Format::Table => {
                let mut table = table();
                for event in &page.events {
                    table.row(row(event));
                }
                table.print_or("no audit rows match");
                if let Some(before) = page.next_before_id {
                    println!();
                    println!("older rows: add --before {before}");
                }
            }
        }
        return Ok(());
    }
    // Following reads like `tail -f`: the page oldest first, then each new row. The stream
    // starts after the trail's newest row when the page was read, so no row is missed; the
    // page's own rows newer than that are not printed twice.
    let printed = page.events.first().map(|e| e.id).unwrap_or_default();
    let mut stream = client
        .follow_audit_events(FollowAuditEventsRequest {
            filter: Some(args.filter()),
            after_id: page.newest_id,
        })
        .await?
        .into_inner();
    let print = |event: &AuditEvent| match format {
        Format::Json => println!("{}", event_json(event)),
        Format::Table => println!("{}", table_line(event)),
    };
    if format == Format::Table {
        println!("{}", HEADER.join("  "));
    }
    for event in page.events.iter().rev() {
        print(event);
    }
    while let Some(event) = stream.message().await? {
        if event.id > printed {
            print(&event);
        }
    }
    Ok(())
}

const HEADER: &[&str] = &["ID", "AT", "ACTOR", "ACTION", "TARGET", "DETAILS"];

fn table() -> Table {
    Table::new(HEADER)
}

fn row(event: &AuditEvent) -> Vec<String> {
    vec![
        event.id.to_string(),
        output::short_time(&event.at),
        event.actor.clone(),
        event.action.clone(),
        output::or_dash(event.target.as_deref()),
        output::or_dash(event.details.as_deref()),
    ]
}

/// One row on its own line (a follower cannot align columns with rows yet to come).
fn table_line(event: &AuditEvent) -> String {
    row(event).join("  ")
}

fn event_json(event: &AuditEvent) -> Value {
    json!({
        "id": event.id,
        "at": event.at,
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "details": event.details,
    })
}
