//! `berth import-v1 PATH`: moves a database of the seed's V1 system into berth (SPEC §9,
//! ) through the admin API (ImportService), never by writing berth's database.
//!
//! The V1 file is opened read-only ([`read`]) and mapped into one plan ([`plan`]); the control
//! plane checks the whole plan and applies it in one transaction, or (`--dry-run`, or any
//! conflict) writes nothing. The report lists, per kind, what was created, already imported,
//! in conflict or skipped; the webhook tokens of created applications are printed once at the
//! end, or written to a new 0600 file ([`tokens`]).
//!
//! Architecture invariant: nothing here writes the V1 file or berth's database; V1 values,
//! passwords and provider configs stay in `SecretString`s until they are encoded into the
//! request.

mod plan;
mod read;
mod request;
#[cfg(test)]
mod tests;
mod tokens;

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use berth_proto::v1::{ImportOutcome, ImportV1Response};
use clap::Args;
use prost::Message as _;
use serde_json::{json, Value};

use crate::client::ConnectOptions;
use crate::output::{self, Format, Table};

/// The largest request the control plane takes (its `MAX_IMPORT_REQUEST_BYTES`).
const MAX_REQUEST_BYTES: usize = berth_control_plane::grpc::MAX_IMPORT_REQUEST_BYTES;

#[derive(Args)]
pub struct ImportV1Args {
    /// The V1 system's SQLite database (opened read-only; stop the V1 system first)
    path: PathBuf,
    /// The secret group the V1 secrets go into; created if missing
    #[arg(long, default_value = "default")]
    group: String,
    /// Report what would be created, already imported, in conflict and skipped; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Write the webhook tokens of the created applications to this new file (0600, JSON
    /// {"app": "whk_…"}) instead of printing them; an existing file is never overwritten
    #[arg(long, value_name = "FILE")]
    tokens_out: Option<PathBuf>,
}

/// The import found conflicts: it wrote nothing, and its report says so (exit code 1, no
/// further message).
#[derive(Debug)]
pub struct ImportConflicts;

impl std::fmt::Display for ImportConflicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the import has conflicts and wrote nothing")
    }
}

impl std::error::Error for ImportConflicts {}

pub async fn run(
    args: ImportV1Args,
    connect: &ConnectOptions,
    format: Format,
) -> anyhow::Result<()> {
    let progress = output::progress(&format!("reading {}", args.path.display()), false);
    let data = read::open(&args.path).await?.read().await?;
    let mapped = plan::map(data, &args.group)?;
    let request = request::encode(&mapped.plan, args.dry_run);
    let size = request.encoded_len();
    if size > MAX_REQUEST_BYTES {
        bail!(
            "the V1 database makes a request of {} MiB, above the {} MiB one import carries",
            size.div_ceil(1024 * 1024),
            MAX_REQUEST_BYTES / (1024 * 1024)
        );
    }
    // Created before the import: once it has run, its tokens exist nowhere else.
    let tokens_file = match (&args.tokens_out, args.dry_run) {
        (Some(path), false) => Some(tokens::TokensFile::create(path)?),
        _ => None,
    };
    let mut client = connect.connect().await?.imports();
    progress.set_message(format!(
        "importing {} ({} KiB)",
        args.path.display(),
        size.div_ceil(1024)
    ));
    let imported = client.import_v1(request).await;
    progress.finish_and_clear();
    let response = match imported {
        Ok(r) => r.into_inner(),
        Err(status) => {
            if let Some(file) = tokens_file {
                file.discard();
            }
            return Err(status).context("the import failed; nothing was written");
        }
    };
    let tokens_path = match tokens_file {
        Some(file) if !response.tokens.is_empty() => {
            // On failure the tokens go to stdout instead: they exist nowhere else.
            match file.write(&response.tokens) {
                Ok(path) => Some(path),
                Err(e) => {
                    eprintln!("error: {e:#}; the tokens follow on stdout instead");
                    None
                }
            }
        }
        Some(file) => {
            file.discard();
            None
        }
        None => None,
    };
    match format {
        Format::Json => output::print_json(&report_json(
            &response,
            &mapped.local,
            tokens_path.as_deref(),
        )),
        Format::Table => print_report(&args, &response, &mapped.local, tokens_path.as_deref()),
    }
    let conflicts = response
        .items
        .iter()
        .any(|i| i.outcome() == ImportOutcome::Conflict);
    if conflicts {
        return Err(ImportConflicts.into());
    }
    Ok(())
}

fn outcome_str(outcome: ImportOutcome) -> &'static str {
    match outcome {
        ImportOutcome::Created => "created",
        ImportOutcome::AlreadyImported => "already_imported",
        ImportOutcome::Conflict => "conflict",
        ImportOutcome::Skipped => "skipped",
        ImportOutcome::Unspecified => "unspecified",
    }
}

fn report_json(
    response: &ImportV1Response,
    local: &[plan::LocalItem],
    tokens_path: Option<&std::path::Path>,
) -> Value {
    let mut items: Vec<Value> = response
        .items
        .iter()
        .map(|i| {
            json!({
                "kind": i.kind,
                "name": i.name,
                "source": i.source,
                "outcome": outcome_str(i.outcome()),
                "detail": i.detail,
            })
        })
        .collect();
    items.extend(local.iter().map(|i| {
        json!({
            "kind": i.kind.as_str(),
            "name": i.name,
            "source": i.source,
            "outcome": if i.skipped { "skipped" } else { "note" },
            "detail": i.detail,
        })
    }));
    let mut out = json!({
        "dry_run": response.dry_run,
        "applied": response.applied,
        "items": items,
    });
    match tokens_path {
        Some(path) => out["tokens_file"] = json!(path.display().to_string()),
        None => {
            out["tokens"] = response
                .tokens
                .iter()
                .map(|t| (t.application.clone(), json!(t.webhook_token)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        }
    }
    out
}

/// The kinds in report order.
const KINDS: [&str; 9] = [
    "group",
    "secret",
    "repository",
    "provider",
    "application",
    "variable",
    "image_pattern",
    "domain",
    "setting",
];

fn print_report(
    args: &ImportV1Args,
    response: &ImportV1Response,
    local: &[plan::LocalItem],
    tokens_path: Option<&std::path::Path>,
) {
    let shown = args.path.display();
    println!(
        "import of {shown} into group {}{}",
        args.group,
        match (response.dry_run, response.applied) {
            (true, _) => " (dry run: nothing was written)",
            (false, true) => "",
            (false, false) => " (conflicts: nothing was written)",
        }
    );
    println!();
    let mut table = Table::new(&[
        "KIND",
        "CREATED",
        "ALREADY IMPORTED",
        "CONFLICTS",
        "SKIPPED",
    ]);
    for kind in KINDS {
        let count = |o: ImportOutcome| {
            response
                .items
                .iter()
                .filter(|i| i.kind == kind && i.outcome() == o)
                .count()
        };
        let local_skips = local
            .iter()
            .filter(|i| i.skipped && i.kind.as_str() == kind)
            .count();
        let row = [
            count(ImportOutcome::Created),
            count(ImportOutcome::AlreadyImported),
            count(ImportOutcome::Conflict),
            count(ImportOutcome::Skipped) + local_skips,
        ];
        if row.iter().any(|n| *n > 0) {
            let mut cells = vec![kind.to_string()];
            cells.extend(row.iter().map(usize::to_string));
            table.row(cells);
        }
    }
    table.print_or("the V1 database holds nothing to import");

    let conflicts: Vec<String> = response
        .items
        .iter()
        .filter(|i| i.outcome() == ImportOutcome::Conflict)
        .map(|i| format!("  {} {} ({}): {}", i.kind, i.name, i.source, i.detail))
        .collect();
    if !conflicts.is_empty() {
        println!();
        println!(
            "conflicts: berth has these with a different content; nothing is overwritten, so \
             nothing was written. Rename or remove them in berth (or choose another --group for \
             secrets), then run again:"
        );
        println!("{}", conflicts.join("\n"));
    }
    let skipped: Vec<String> = response
        .items
        .iter()
        .filter(|i| i.outcome() == ImportOutcome::Skipped)
        .map(|i| format!("  {} {} ({}): {}", i.kind, i.name, i.source, i.detail))
        .chain(local.iter().filter(|i| i.skipped).map(|i| {
            format!(
                "  {} {} ({}): {}",
                i.kind.as_str(),
                i.name,
                i.source,
                i.detail
            )
        }))
        .collect();
    if !skipped.is_empty() {
        println!();
        println!("skipped (not imported):");
        println!("{}", skipped.join("\n"));
    }
    let notes: Vec<String> = response
        .items
        .iter()
        .filter(|i| i.outcome() != ImportOutcome::Skipped && !i.detail.is_empty())
        .filter(|i| i.outcome() != ImportOutcome::Conflict && i.kind != "group")
        .map(|i| format!("  {} {}: {}", i.kind, i.name, i.detail))
        .chain(local.iter().filter(|i| !i.skipped).map(|i| {
            format!(
                "  {} {} ({}): {}",
                i.kind.as_str(),
                i.name,
                i.source,
                i.detail
            )
        }))
        .collect();
    if !notes.is_empty() {
        println!();
        println!("notes:");
        println!("{}", notes.join("\n"));
    }
    if let Some(path) = tokens_path {
        println!();
        println!(
            "webhook tokens of the {} created applications: {} (0600); keep them, they are not shown again",
            response.tokens.len(),
            path.display()
        );
    } else if !response.tokens.is_empty() {
        println!();
        println!("webhook tokens of the created applications (shown once; `berth app rotate-token APP` issues a new one):");
        let mut table = Table::new(&["APPLICATION", "WEBHOOK TOKEN"]);
        for t in &response.tokens {
            table.row(vec![t.application.clone(), t.webhook_token.clone()]);
        }
        print!("{}", table.render());
    }
    if response.dry_run {
        println!();
        println!("dry run: run again without --dry-run to import");
    }
}
