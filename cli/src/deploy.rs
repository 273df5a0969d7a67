//! `berth deploy`: start a deployment and follow it, list and show deployments (DeployService).
//!
//! `berth deploy APP VERSION` and the subcommands `list`/`show` share one command: clap takes
//! the first word as a subcommand when it names one, else as the application.

use std::collections::HashSet;
use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::{bail, Context as _};
use berth_control_plane::model::DeploymentStatus;
use berth_proto::v1::{
    deployment_update, DeployRequest, DeploymentDetail, DeploymentEventRow, DeploymentSummary,
    DeploymentUpdate, GetDeploymentRequest, ListDeploymentsRequest,
};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::client::ConnectOptions;
use crate::output::{self, Format, Table};

#[derive(Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "An application named `list` or `show` is deployed after `--`: \
                  berth deploy [--follow] -- list VERSION"
)]
pub struct DeployArgs {
    #[command(subcommand)]
    command: Option<DeployCommand>,

    #[command(flatten)]
    start: StartArgs,
}

/// `berth deploy APP VERSION [--follow]`. Options only because the subcommands leave them
/// out; clap requires both when there is no subcommand.
#[derive(Args)]
struct StartArgs {
    /// Application to deploy
    #[arg(required = true)]
    app: Option<String>,
    /// Version (image tag) to deploy
    #[arg(required = true)]
    version: Option<String>,
    /// Stream the events until the deployment finishes; exit 1 unless it succeeds (3 when a
    /// newer deployment superseded it). With `-o json`, one JSON object per line
    #[arg(long)]
    follow: bool,
    /// Stop the application's running deployment (no further batch, updated hosts rolled
    /// back) instead of queueing behind it
    #[arg(long)]
    cancel_in_progress: bool,
}

#[derive(Subcommand)]
enum DeployCommand {
    /// List the deployments of an application, newest first
    List {
        /// The application whose deployments are listed
        app: String,
        /// How many to show (the server's default is 20)
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
    /// Show a deployment: summary, per-target results, then its events
    Show {
        /// Deployment id as printed by `berth deploy` and `berth deploy list`, or any unique
        /// prefix of it
        id: String,
        /// Stream its events until it finishes instead, as `berth deploy APP VERSION --follow`
        /// does (same exit codes)
        #[arg(long)]
        follow: bool,
    },
}

/// A deployment that ended in anything but success. Its outcome is already printed, so
/// `main` exits 1 without an `error:` line of its own.
#[derive(Debug)]
pub struct DeploymentFailed {
    deployment_id: String,
}

impl std::fmt::Display for DeploymentFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "deployment {} did not succeed", self.deployment_id)
    }
}

impl std::error::Error for DeploymentFailed {}

/// A deployment replaced by a newer deployment of the same application before it ran. `main`
/// exits 3 (not 1: nothing failed, and a retry is not needed).
#[derive(Debug)]
pub struct DeploymentSuperseded {
    deployment_id: String,
}

impl std::fmt::Display for DeploymentSuperseded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "deployment {} was superseded", self.deployment_id)
    }
}

impl std::error::Error for DeploymentSuperseded {}

pub async fn run(args: DeployArgs, connect: &ConnectOptions, format: Format) -> anyhow::Result<()> {
    match args.command {
        Some(DeployCommand::List { app, limit }) => {
            let deployments = connect
                .connect()
                .await?
                .deployments()
                .list_deployments(ListDeploymentsRequest {
                    app: app.clone(),
                    limit: limit.unwrap_or(0),
                })
                .await?
                .into_inner()
                .deployments;
            match format {
                Format::Json => output::print_json(&json!(deployments
                    .iter()
                    .map(output::deployment_summary_json)
                    .collect::<Vec<_>>())),
                Format::Table => {
                    let mut table = Table::new(&[
                        "ID", "VERSION", "STATUS", "TRIGGER", "SOURCE", "STARTED", "DURATION",
                    ]);
                    for deployment in &deployments {
                        table.row(vec![
                            deployment.deployment_id.clone(),
                            deployment.version.clone(),
                            deployment.status.clone(),
                            deployment.trigger_type.clone(),
                            output::or_dash(deployment.trigger_source.as_deref()),
                            output::short_time(&deployment.started_at),
                            output::duration_text(deployment.duration_ms),
                        ]);
                    }
                    table.print_or(&format!("no deployments of {app} yet"));
                }
            }
        }
        Some(DeployCommand::Show { id, follow }) => {
            let mut client = connect.connect().await?.deployments();
            let detail = client
                .get_deployment(GetDeploymentRequest { deployment_id: id })
                .await?
                .into_inner();
            if follow {
                return follow_to_end(client, format, &detail).await;
            }
            match format {
                Format::Json => output::print_json(&output::deployment_detail_json(&detail)),
                Format::Table => print!("{}", render_detail(&detail)),
            }
        }
        None => {
            let StartArgs {
                app: Some(app),
                version: Some(version),
                follow,
                cancel_in_progress,
            } = args.start
            else {
                return Err(clap::Error::raw(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "give APP and VERSION, or a subcommand\n",
                )
                .into());
            };
            let request = DeployRequest {
                app,
                version,
                cancel_in_progress,
            };
            start(connect, format, request, follow).await?;
        }
    }
    Ok(())
}

/// Starts the deployment, then either reports how it stands or follows it to the end.
async fn start(
    connect: &ConnectOptions,
    format: Format,
    request: DeployRequest,
    follow: bool,
) -> anyhow::Result<()> {
    let mut client = connect.connect().await?.deployments();
    let detail = client.deploy(request).await?.into_inner();
    let deployment = detail.deployment.clone().unwrap_or_default();
    let id = deployment.deployment_id.clone();
    match (format, follow) {
        (Format::Json, false) => output::print_json(&output::deployment_detail_json(&detail)),
        (Format::Json, true) => print_json_line(json!({
            "started": output::deployment_detail_json(&detail),
        })),
        (Format::Table, _) => println!("{}", started_line(&detail)),
    }
    if !follow {
        // Refused before dispatch (no agent, image not allowed): already final.
        if DeploymentStatus::is_finished_str(&deployment.status) {
            if !succeeded(&deployment.status) {
                return Err(DeploymentFailed { deployment_id: id }.into());
            }
        } else if format == Format::Table {
            println!("{}", next_step(&id));
        }
        return Ok(());
    }
    follow_to_end(client, format, &detail).await
}

/// What to run next after a deploy that was not followed.
fn next_step(id: &str) -> String {
    format!(
        "follow it with `berth deploy show {id} --follow`, or see where it stands with \
         `berth deploy show {id}`"
    )
}

/// Streams the deployment's events until it finishes: `Ok` when it succeeded,
/// [`DeploymentSuperseded`] or [`DeploymentFailed`] otherwise.
async fn follow_to_end(
    mut client: berth_proto::v1::deploy_service_client::DeployServiceClient<
        crate::client::AuthChannel,
    >,
    format: Format,
    detail: &DeploymentDetail,
) -> anyhow::Result<()> {
    let id = detail
        .deployment
        .as_ref()
        .map(|d| d.deployment_id.clone())
        .unwrap_or_default();
    let mut updates = client
        .watch_deployment(GetDeploymentRequest {
            deployment_id: id.clone(),
        })
        .await
        .with_context(|| format!("cannot follow deployment {id}"))?
        .into_inner();
    let mut progress = Progress::new(format, detail.targets.len());
    loop {
        let update = updates.message().await.with_context(|| {
            format!("lost the events of deployment {id}; `berth deploy show {id}` shows where it stands")
        })?;
        match update {
            Some(DeploymentUpdate {
                update: Some(deployment_update::Update::Event(event)),
            }) => progress.event(&event),
            Some(DeploymentUpdate {
                update: Some(deployment_update::Update::Finished(summary)),
            }) => {
                progress.finish(&summary);
                return if succeeded(&summary.status) {
                    Ok(())
                } else if summary.status == DeploymentStatus::Superseded.as_str() {
                    Err(DeploymentSuperseded { deployment_id: id }.into())
                } else {
                    Err(DeploymentFailed { deployment_id: id }.into())
                };
            }
            Some(DeploymentUpdate { update: None }) => {}
            None => bail!(
                "the event stream of deployment {id} ended before it finished; \
                 `berth deploy show {id}` shows where it stands"
            ),
        }
    }
}

/// What `--follow` shows: one line per event, under a spinner with the targets done so far
/// when stdout is a terminal; plain lines, or JSON lines, otherwise.
struct Progress {
    format: Format,
    bar: ProgressBar,
    /// Agents whose part is over (`done` or `failed`), for the count on the spinner.
    finished: HashSet<String>,
    targets: usize,
}

impl Progress {
    fn new(format: Format, targets: usize) -> Self {
        let bar = if format == Format::Table && std::io::stdout().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .expect("the spinner template is valid"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        let progress = Progress {
            format,
            bar,
            finished: HashSet::new(),
            targets,
        };
        progress.bar.set_message(progress.status(None));
        progress
    }

    fn event(&mut self, event: &DeploymentEventRow) {
        if let Some(agent) = &event.agent {
            if matches!(event.phase.as_str(), "done" | "failed") {
                self.finished.insert(agent.clone());
            }
        }
        match self.format {
            Format::Json => print_json_line(json!({
                "event": output::deployment_event_json(event),
            })),
            // `suspend` clears the spinner, prints, and draws it again below the line.
            Format::Table => self.bar.suspend(|| println!("{}", event_line(event))),
        }
        self.bar.set_message(self.status(Some(event)));
    }

    fn finish(&mut self, summary: &DeploymentSummary) {
        self.bar.finish_and_clear();
        match self.format {
            Format::Json => print_json_line(json!({
                "finished": output::deployment_summary_json(summary),
            })),
            Format::Table => println!("{}", final_line(summary)),
        }
    }

    /// The spinner's message: `1/3 targets, [web-2] health`.
    fn status(&self, last: Option<&DeploymentEventRow>) -> String {
        let count = format!("{}/{} targets", self.finished.len(), self.targets);
        match last {
            Some(event) => format!("{count}, [{}] {}", agent_text(event), event.phase),
            None => format!("{count}, waiting for the first event"),
        }
    }
}

impl Drop for Progress {
    /// An error ends the command while the spinner may still be drawn: clear it first.
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

fn print_json_line(value: serde_json::Value) {
    println!("{value}");
}

/// `deployment <id> of web v2: running (2 targets)`, with the reason when it was refused.
fn started_line(detail: &DeploymentDetail) -> String {
    let deployment = detail.deployment.clone().unwrap_or_default();
    if deployment.status == DeploymentStatus::Queued.as_str() {
        // "queued behind deployment <id>", as the control plane recorded it.
        let why = detail
            .events
            .iter()
            .rev()
            .find(|e| e.phase == "queued")
            .map_or("queued", |e| e.message.as_str());
        return format!(
            "deployment {} of {} {}: {why}",
            deployment.deployment_id, detail.app, deployment.version
        );
    }
    let mut line = format!(
        "deployment {} of {} {}: {}",
        deployment.deployment_id, detail.app, deployment.version, deployment.status
    );
    match deployment
        .error_message
        .as_deref()
        .filter(|e| !e.is_empty())
    {
        Some(error) => line.push_str(&format!(" ({error})")),
        None => {
            let n = detail.targets.len();
            line.push_str(&format!(" ({n} target{})", if n == 1 { "" } else { "s" }));
        }
    }
    line
}

/// `[web-1] pull: pulling registry/web:v2`; events of the control plane itself show as
/// `[control-plane]`.
fn event_line(event: &DeploymentEventRow) -> String {
    format!("[{}] {}: {}", agent_text(event), event.phase, event.message)
}

fn agent_text(event: &DeploymentEventRow) -> &str {
    event
        .agent
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or("control-plane")
}

fn succeeded(status: &str) -> bool {
    status == DeploymentStatus::Success.as_str()
}

/// `deployment <id> succeeded`, or `deployment <id> failed: <error>`.
fn final_line(summary: &DeploymentSummary) -> String {
    let id = &summary.deployment_id;
    if succeeded(&summary.status) {
        return format!("deployment {id} succeeded");
    }
    if summary.status == DeploymentStatus::Superseded.as_str() {
        let by = summary.superseded_by.as_deref().unwrap_or("a newer one");
        return format!("deployment {id} superseded by {by}: a newer deployment of the application replaced it before it ran");
    }
    let error = summary
        .error_message
        .as_deref()
        .filter(|e| !e.is_empty())
        .unwrap_or(&summary.status);
    format!("deployment {id} failed: {error}")
}

/// The deployment's summary, its targets, then its events.
fn render_detail(detail: &DeploymentDetail) -> String {
    let deployment = detail.deployment.clone().unwrap_or_default();
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(text.trim_end());
        out.push('\n');
    };

    line(format!("Deployment: {}", deployment.deployment_id));
    line(format!("  Application:  {}", detail.app));
    line(format!("  Version:      {}", deployment.version));
    line(format!("  Status:       {}", deployment.status));
    if let Some(error) = deployment
        .error_message
        .as_deref()
        .filter(|e| !e.is_empty())
    {
        line(format!("  Error:        {error}"));
    }
    let trigger = match deployment
        .trigger_source
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        Some(source) => format!("{} ({source})", deployment.trigger_type),
        None => deployment.trigger_type.clone(),
    };
    line(format!("  Trigger:      {trigger}"));
    line(format!(
        "  Started:      {}",
        output::short_time(&deployment.started_at)
    ));
    let completed = deployment.completed_at.as_deref().map(output::short_time);
    line(format!(
        "  Completed:    {}",
        completed.as_deref().unwrap_or("-")
    ));
    line(format!(
        "  Duration:     {}",
        output::duration_text(deployment.duration_ms)
    ));

    line(String::new());
    line(format!("Targets ({})", detail.targets.len()));
    // SERVING is what serves on the agent after this deployment (the new container, or the
    // previous one kept after a failure); FAILED is the container this deployment tried there.
    let mut table = Table::new(&["AGENT", "STATUS", "SERVING", "FAILED", "ERROR", "DURATION"]);
    for target in &detail.targets {
        let serving = target
            .container_id
            .as_deref()
            .filter(|id| !id.is_empty())
            .map(|id| id.chars().take(12).collect::<String>());
        let serving = match serving {
            Some(id) => id,
            None if matches!(target.status.as_str(), "failed" | "rolled_back") => {
                "nothing".to_string()
            }
            None => "-".to_string(),
        };
        let failed = if target.status == "success" {
            None
        } else {
            output::tried_container(detail, &target.agent)
        };
        table.row(vec![
            target.agent.clone(),
            target.status.clone(),
            serving,
            output::or_dash(failed),
            output::or_dash(target.error_message.as_deref()),
            output::duration_text(target.duration_ms),
        ]);
    }
    if detail.targets.is_empty() {
        line("  none".to_string());
    } else {
        for row in table.render().lines() {
            line(format!("  {row}"));
        }
    }

    line(String::new());
    line(format!("Events ({})", detail.events.len()));
    for event in &detail.events {
        line(format!(
            "  {}  {}",
            output::clock(&event.at),
            event_line(event)
        ));
    }
    if detail.events.is_empty() {
        line("  none".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::v1::DeploymentTarget;
    use clap::Parser;

    #[derive(Parser)]
    struct Root {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(clap::Subcommand)]
    enum Command {
        Deploy(DeployArgs),
    }

    fn parse(args: &[&str]) -> Result<DeployArgs, clap::Error> {
        let argv = ["berth", "deploy"].iter().chain(args);
        let Command::Deploy(args) = Root::try_parse_from(argv)?.command;
        Ok(args)
    }

    #[test]
    fn app_and_version_deploy() {
        let args = parse(&["web", "v2"]).unwrap();
        assert!(args.command.is_none());
        assert_eq!(args.start.app.as_deref(), Some("web"));
        assert_eq!(args.start.version.as_deref(), Some("v2"));
        assert!(!args.start.follow);
        assert!(parse(&["web", "v2", "--follow"]).unwrap().start.follow);
        assert!(parse(&["--follow", "web", "v2"]).unwrap().start.follow);
    }

    #[test]
    fn list_and_show_are_subcommands() {
        match parse(&["list", "web"]).unwrap().command {
            Some(DeployCommand::List { app, limit }) => {
                assert_eq!(app, "web");
                assert_eq!(limit, None);
            }
            _ => panic!("expected list"),
        }
        match parse(&["list", "web", "--limit", "5"]).unwrap().command {
            Some(DeployCommand::List { limit, .. }) => assert_eq!(limit, Some(5)),
            _ => panic!("expected list"),
        }
        match parse(&["show", "0b6f"]).unwrap().command {
            Some(DeployCommand::Show { id, .. }) => assert_eq!(id, "0b6f"),
            _ => panic!("expected show"),
        }
    }

    #[test]
    fn an_app_named_list_is_deployed_only_after_the_separator() {
        // Without `--`, `list` is the subcommand and `v2` its application.
        assert!(matches!(
            parse(&["list", "v2"]).unwrap().command,
            Some(DeployCommand::List { .. })
        ));
        let args = parse(&["--", "list", "v2"]).unwrap();
        assert!(args.command.is_none());
        assert_eq!(args.start.app.as_deref(), Some("list"));
        assert_eq!(args.start.version.as_deref(), Some("v2"));
        assert!(
            parse(&["--follow", "--", "show", "v2"])
                .unwrap()
                .start
                .follow
        );
    }

    #[test]
    fn incomplete_or_mixed_forms_are_usage_errors() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["web"]).is_err());
        assert!(parse(&["web", "v2", "v3"]).is_err());
        assert!(parse(&["list"]).is_err());
        assert!(parse(&["show"]).is_err());
        assert!(parse(&["list", "web", "--follow"]).is_err());
        assert!(parse(&["list", "web", "--limit", "0"]).is_err());
    }

    fn event(agent: Option<&str>, phase: &str, message: &str) -> DeploymentEventRow {
        DeploymentEventRow {
            id: 1,
            agent: agent.map(str::to_string),
            phase: phase.into(),
            message: message.into(),
            at: "2025-10-23 10:30:12".into(),
        }
    }

    fn summary(status: &str, error: Option<&str>) -> DeploymentSummary {
        DeploymentSummary {
            deployment_id: "d-1".into(),
            version: "v2".into(),
            status: status.into(),
            trigger_type: "manual".into(),
            trigger_source: Some("ci".into()),
            error_message: error.map(str::to_string),
            started_at: "2025-10-23 10:30:00".into(),
            completed_at: Some("2025-10-23 10:30:12".into()),
            duration_ms: Some(12_000),
            superseded_by: None,
        }
    }

    #[test]
    fn queued_and_superseded_deployments_say_so() {
        let detail = DeploymentDetail {
            app: "web".into(),
            deployment: Some(summary("queued", None)),
            targets: vec![],
            events: vec![event(None, "queued", "queued behind deployment d-0")],
        };
        assert_eq!(
            started_line(&detail),
            "deployment d-1 of web v2: queued behind deployment d-0"
        );
        let mut superseded = summary("superseded", None);
        superseded.superseded_by = Some("d-9".into());
        assert_eq!(
            final_line(&superseded),
            "deployment d-1 superseded by d-9: a newer deployment of the application replaced it before it ran"
        );
    }

    #[test]
    fn events_and_the_outcome_read_as_lines() {
        assert_eq!(
            event_line(&event(Some("web-1"), "pull", "pulling web:v2")),
            "[web-1] pull: pulling web:v2"
        );
        assert_eq!(
            event_line(&event(None, "dispatch", "to web-1")),
            "[control-plane] dispatch: to web-1"
        );
        assert_eq!(
            final_line(&summary("success", None)),
            "deployment d-1 succeeded"
        );
        assert_eq!(
            final_line(&summary("failed", Some("health check timed out"))),
            "deployment d-1 failed: health check timed out"
        );
        assert_eq!(
            final_line(&summary("failed", None)),
            "deployment d-1 failed: failed"
        );
    }

    #[test]
    fn the_spinner_counts_finished_targets() {
        let mut progress = Progress {
            format: Format::Table,
            bar: ProgressBar::hidden(),
            finished: HashSet::new(),
            targets: 2,
        };
        assert_eq!(
            progress.status(None),
            "0/2 targets, waiting for the first event"
        );
        let done = event(Some("web-1"), "done", "serving");
        progress.event(&done);
        progress.event(&done);
        assert_eq!(progress.status(Some(&done)), "1/2 targets, [web-1] done");
    }

    #[test]
    fn started_line_says_where_it_stands() {
        let mut detail = DeploymentDetail {
            app: "web".into(),
            deployment: Some(summary("running", None)),
            targets: vec![DeploymentTarget::default(); 2],
            events: vec![],
        };
        assert_eq!(
            started_line(&detail),
            "deployment d-1 of web v2: running (2 targets)"
        );
        detail.deployment = Some(summary("failed", Some("no agent is enrolled")));
        assert_eq!(
            started_line(&detail),
            "deployment d-1 of web v2: failed (no agent is enrolled)"
        );
    }

    #[test]
    fn detail_shows_summary_targets_and_events() {
        let detail = DeploymentDetail {
            app: "web".into(),
            deployment: Some(summary("failed", Some("web-2: health check timed out"))),
            targets: vec![
                DeploymentTarget {
                    agent: "web-1".into(),
                    status: "success".into(),
                    container_id: Some("3f2a1b0c9d8e7f6a".into()),
                    duration_ms: Some(4_200),
                    ..Default::default()
                },
                DeploymentTarget {
                    agent: "web-2".into(),
                    status: "rolled_back".into(),
                    container_id: Some("7e6d5c4b3a2910".into()),
                    error_message: Some("health check timed out".into()),
                    ..Default::default()
                },
            ],
            events: vec![
                event(None, "dispatch", "to web-1"),
                event(
                    Some("web-2"),
                    "create",
                    "creating berth-web-d-1-new from web:v2",
                ),
                event(Some("web-2"), "failed", "health check timed out"),
            ],
        };
        assert_eq!(
            render_detail(&detail),
            "\
Deployment: d-1
  Application:  web
  Version:      v2
  Status:       failed
  Error:        web-2: health check timed out
  Trigger:      manual (ci)
  Started:      2025-10-23 10:30 +00:00
  Completed:    2025-10-23 10:30 +00:00
  Duration:     12s

Targets (2)
  AGENT  STATUS       SERVING       FAILED             ERROR                   DURATION
  web-1  success      3f2a1b0c9d8e  -                  -                       4.2s
  web-2  rolled_back  7e6d5c4b3a29  berth-web-d-1-new  health check timed out  -

Events (3)
  10:30:12  [control-plane] dispatch: to web-1
  10:30:12  [web-2] create: creating berth-web-d-1-new from web:v2
  10:30:12  [web-2] failed: health check timed out
"
        );
    }
}
