//! `berth app`: applications, their webhook and deploy targets (ApplicationService).

use berth_proto::v1::{
    target, Application, CreateApplicationRequest, DeleteApplicationRequest, GetApplicationRequest,
    HealthCheckConfig, ListApplicationsRequest, PortMapping, RotateWebhookTokenRequest, Target,
    UpdateApplicationRequest,
};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

mod view;

use crate::client::ConnectOptions;
use crate::output::{self, Format, Table};

#[derive(Args)]
pub struct AppArgs {
    #[command(subcommand)]
    command: AppCommand,
}

#[derive(Subcommand)]
enum AppCommand {
    /// Register an application; prints its webhook token once
    Create {
        /// Name of the new application
        name: String,
        /// Image without tag, e.g. registry.local:5000/team/web
        #[arg(long)]
        image: String,
        /// Tag deployed when none is given
        #[arg(long)]
        version: Option<String>,
        /// HOST:CONTAINER[/tcp|udp], repeatable
        #[arg(long = "port", value_name = "HOST:CONTAINER[/PROTO]", value_parser = parse_port)]
        ports: Vec<PortMapping>,
        /// Registry credentials to pull with (see `berth repository`)
        #[arg(long)]
        repository: Option<String>,
        /// Refuse webhook deploys for this application
        #[arg(long)]
        no_webhook: bool,
        /// Deploy automatically when a new tag of the image is pushed to its registry
        #[arg(long)]
        auto_deploy: bool,
        /// agent:NAME or label:KEY=VALUE, repeatable; none means the only enrolled agent
        #[arg(long = "target", value_name = "TARGET", value_parser = parse_target)]
        targets: Vec<Target>,
        /// Targets a rolling deploy updates at once (default 1)
        #[arg(long)]
        batch_size: Option<u32>,
        /// http:PORT[/PATH] or tcp:PORT (container port), checked on the new container before
        /// it replaces the old one; default: the image's HEALTHCHECK, else still running after 3s
        #[arg(long, value_name = "CHECK", value_parser = parse_health_check)]
        health_check: Option<HealthCheckConfig>,
        /// Seconds the health check may take (default 60)
        #[arg(long, requires = "health_check")]
        health_timeout: Option<u32>,
        /// Docker restart policy: no, always, unless-stopped (default), on-failure
        #[arg(long)]
        restart_policy: Option<String>,
        /// Seconds connections to the previous container get to end after a host-proxy
        /// switch, 0 to 3600 (default 30)
        #[arg(long, value_name = "SECS")]
        drain_timeout: Option<u32>,
        /// Seconds the previous container gets after its stop signal before it is killed,
        /// 0 to 3600 (default 10)
        #[arg(long, value_name = "SECS")]
        stop_timeout: Option<u32>,
        /// Signal that stops the previous container, e.g. SIGTERM, SIGQUIT, SIGINT or a
        /// number (default: the image's STOPSIGNAL)
        #[arg(long, value_name = "SIG")]
        stop_signal: Option<String>,
        /// Every deploy of the app cancels its running deployment, as with
        /// `berth deploy --cancel-in-progress` (default false)
        #[arg(long, value_name = "BOOL")]
        cancel_in_progress: Option<bool>,
    },
    /// List applications
    List,
    /// Show an application: basics, webhook, environment, last deployments
    Show {
        /// The application to show
        name: String,
    },
    /// Change an application; only the given fields change
    Update {
        /// The application to change
        name: String,
        #[command(flatten)]
        changes: Changes,
    },
    /// Delete an application
    Delete {
        /// The application to delete
        name: String,
    },
    /// Replace the webhook token; prints the new one once
    RotateToken {
        /// The application whose webhook token is replaced
        name: String,
    },
}

#[derive(Args)]
#[group(required = true, multiple = true)]
struct Changes {
    #[arg(long)]
    image: Option<String>,
    #[arg(long)]
    version: Option<String>,
    #[arg(long, conflicts_with = "no_repository")]
    repository: Option<String>,
    /// Pull without registry credentials
    #[arg(long)]
    no_repository: bool,
    /// Replaces all port mappings, repeatable
    #[arg(long = "port", value_name = "HOST:CONTAINER[/PROTO]", value_parser = parse_port)]
    ports: Vec<PortMapping>,
    /// Remove all port mappings
    #[arg(long, conflicts_with = "ports")]
    clear_ports: bool,
    /// Accept or refuse webhook deploys
    #[arg(long, value_enum)]
    webhook: Option<WebhookSwitch>,
    /// Deploy automatically when a new tag of the image is pushed to its registry
    #[arg(long, value_enum)]
    auto_deploy: Option<OnOff>,
    /// Targets a rolling deploy updates at once
    #[arg(long)]
    batch_size: Option<u32>,
    /// http:PORT[/PATH] or tcp:PORT (container port)
    #[arg(long, value_name = "CHECK", value_parser = parse_health_check, conflicts_with = "clear_health_check")]
    health_check: Option<HealthCheckConfig>,
    /// Seconds the health check may take (with --health-check)
    #[arg(long, requires = "health_check")]
    health_timeout: Option<u32>,
    /// Go back to the default health check
    #[arg(long)]
    clear_health_check: bool,
    /// Docker restart policy: no, always, unless-stopped, on-failure
    #[arg(long)]
    restart_policy: Option<String>,
    /// Seconds connections to the previous container get to end after a host-proxy switch
    #[arg(long, value_name = "SECS")]
    drain_timeout: Option<u32>,
    /// Seconds the previous container gets after its stop signal before it is killed
    #[arg(long, value_name = "SECS")]
    stop_timeout: Option<u32>,
    /// Signal that stops the previous container (SIGTERM, SIGQUIT, …); "" for the image's
    /// STOPSIGNAL
    #[arg(long, value_name = "SIG")]
    stop_signal: Option<String>,
    /// Every deploy of the app cancels its running deployment
    #[arg(long, value_name = "BOOL")]
    cancel_in_progress: Option<bool>,
    /// Replaces all targets, repeatable
    #[arg(long = "target", value_name = "TARGET", value_parser = parse_target)]
    targets: Vec<Target>,
    /// Deploy to the local agent only
    #[arg(long, conflicts_with = "targets")]
    clear_targets: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum WebhookSwitch {
    Enable,
    Disable,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

pub async fn run(args: AppArgs, connect: &ConnectOptions, format: Format) -> anyhow::Result<()> {
    let mut client = connect.connect().await?.applications();
    match args.command {
        AppCommand::Create {
            name,
            image,
            version,
            ports,
            repository,
            no_webhook,
            auto_deploy,
            targets,
            batch_size,
            health_check,
            health_timeout,
            restart_policy,
            drain_timeout,
            stop_timeout,
            stop_signal,
            cancel_in_progress,
        } => {
            let response = client
                .create_application(CreateApplicationRequest {
                    name,
                    image,
                    version,
                    repository,
                    ports,
                    webhook_enabled: Some(!no_webhook),
                    auto_deploy,
                    targets,
                    deploy_batch_size: batch_size,
                    health_check: health_check.map(|h| with_timeout(h, health_timeout)),
                    restart_policy,
                    drain_timeout_seconds: drain_timeout,
                    stop_timeout_seconds: stop_timeout,
                    stop_signal,
                    cancel_in_progress: cancel_in_progress.unwrap_or(false),
                })
                .await?
                .into_inner();
            let app = response.application.unwrap_or_default();
            match format {
                Format::Json => output::print_json(&json!({
                    "application": output::application_json(&app),
                    "webhook_token": response.webhook_token,
                })),
                Format::Table => {
                    println!(
                        "created application {} ({})",
                        app.name,
                        output::image_text(&app)
                    );
                    print_token(&response.webhook_token);
                }
            }
        }
        AppCommand::List => {
            let apps = client
                .list_applications(ListApplicationsRequest {})
                .await?
                .into_inner()
                .applications;
            match format {
                Format::Json => output::print_json(&json!(apps
                    .iter()
                    .map(output::application_json)
                    .collect::<Vec<_>>())),
                Format::Table => {
                    let mut table = Table::new(&[
                        "NAME",
                        "IMAGE",
                        "STATUS",
                        "WEBHOOK",
                        "LAST DEPLOYED",
                        "TARGETS",
                    ]);
                    for app in &apps {
                        table.row(vec![
                            app.name.clone(),
                            output::image_text(app),
                            app.status.clone(),
                            yes_no(app.webhook_enabled).to_string(),
                            last_deployed(app),
                            targets_text(&app.targets),
                        ]);
                    }
                    table.print_or("no applications yet");
                }
            }
        }
        AppCommand::Show { name } => {
            let detail = client
                .get_application(GetApplicationRequest { name })
                .await?
                .into_inner();
            let view = view::AppShow::new(&detail);
            match format {
                Format::Json => output::print_json(&view.json()),
                Format::Table => print!("{}", view.table()),
            }
        }
        AppCommand::Update { name, changes } => {
            let app = client
                .update_application(update_request(name, changes))
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&output::application_json(&app)),
                Format::Table => println!("updated application {}", app.name),
            }
        }
        AppCommand::Delete { name } => {
            client
                .delete_application(DeleteApplicationRequest { name: name.clone() })
                .await?;
            match format {
                Format::Json => output::print_json(&json!({ "deleted": name })),
                Format::Table => println!("deleted application {name}"),
            }
        }
        AppCommand::RotateToken { name } => {
            let response = client
                .rotate_webhook_token(RotateWebhookTokenRequest { name })
                .await?
                .into_inner();
            let app = response.application.unwrap_or_default();
            match format {
                Format::Json => output::print_json(&json!({
                    "application": output::application_json(&app),
                    "webhook_token": response.webhook_token,
                })),
                Format::Table => {
                    println!(
                        "rotated the webhook token of {}; the old token no longer works",
                        app.name
                    );
                    print_token(&response.webhook_token);
                }
            }
        }
    }
    Ok(())
}

fn update_request(name: String, changes: Changes) -> UpdateApplicationRequest {
    UpdateApplicationRequest {
        name,
        image: changes.image,
        version: changes.version,
        repository: changes.repository,
        clear_repository: changes.no_repository,
        set_ports: changes.clear_ports || !changes.ports.is_empty(),
        ports: changes.ports,
        webhook_enabled: changes.webhook.map(|w| matches!(w, WebhookSwitch::Enable)),
        auto_deploy: changes.auto_deploy.map(|a| matches!(a, OnOff::On)),
        set_targets: changes.clear_targets || !changes.targets.is_empty(),
        targets: changes.targets,
        deploy_batch_size: changes.batch_size,
        health_check: changes
            .health_check
            .map(|h| with_timeout(h, changes.health_timeout)),
        clear_health_check: changes.clear_health_check,
        restart_policy: changes.restart_policy,
        drain_timeout_seconds: changes.drain_timeout,
        stop_timeout_seconds: changes.stop_timeout,
        stop_signal: changes.stop_signal,
        cancel_in_progress: changes.cancel_in_progress,
    }
}

fn with_timeout(mut check: HealthCheckConfig, timeout: Option<u32>) -> HealthCheckConfig {
    check.timeout_seconds = timeout.unwrap_or(0);
    check
}

/// `http:PORT[/PATH]` or `tcp:PORT`.
fn parse_health_check(s: &str) -> Result<HealthCheckConfig, String> {
    let (kind, rest) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected http:PORT[/PATH] or tcp:PORT"))?;
    let (port, path) = match rest.split_once('/') {
        Some((port, path)) => (port, format!("/{path}")),
        None => (rest, String::new()),
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?}: the port must be a number from 1 to 65535"))?;
    match kind {
        "http" => Ok(HealthCheckConfig {
            r#type: "http".into(),
            port: port.into(),
            path,
            timeout_seconds: 0,
        }),
        "tcp" if path.is_empty() => Ok(HealthCheckConfig {
            r#type: "tcp".into(),
            port: port.into(),
            path,
            timeout_seconds: 0,
        }),
        "tcp" => Err(format!("{s:?}: a tcp check has no path")),
        _ => Err(format!("{s:?}: the check type must be http or tcp")),
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod health_check_tests {
    use super::parse_health_check;

    #[test]
    fn health_checks_parse() {
        let h = parse_health_check("http:80/healthz").unwrap();
        assert_eq!(
            (h.r#type.as_str(), h.port, h.path.as_str()),
            ("http", 80, "/healthz")
        );
        let h = parse_health_check("http:8080").unwrap();
        assert_eq!(h.path, "");
        let h = parse_health_check("tcp:5432").unwrap();
        assert_eq!((h.r#type.as_str(), h.port), ("tcp", 5432));
        for bad in [
            "http",
            "http:0",
            "http:x/y",
            "udp:53",
            "tcp:53/x",
            "http:70000",
        ] {
            assert!(parse_health_check(bad).is_err(), "{bad}");
        }
    }
}

fn print_token(token: &str) {
    if token.is_empty() {
        return;
    }
    println!();
    println!("Webhook token (shown once, store it now; berth keeps only a hash):");
    println!("  {token}");
}

fn last_deployed(app: &Application) -> String {
    match app.last_deployed_at.as_deref().filter(|t| !t.is_empty()) {
        Some(at) => output::short_time(at),
        None => "never".to_string(),
    }
}

fn targets_text(targets: &[Target]) -> String {
    if targets.is_empty() {
        return "local (any agent)".to_string();
    }
    targets
        .iter()
        .map(output::target_text)
        .collect::<Vec<_>>()
        .join(", ")
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

/// `HOST:CONTAINER[/tcp|udp]`, e.g. `8080:80` or `5353:53/udp`; the protocol defaults to tcp.
fn parse_port(text: &str) -> Result<PortMapping, String> {
    let (ports, protocol) = match text.split_once('/') {
        Some((ports, protocol)) => (ports, protocol.to_ascii_lowercase()),
        None => (text, "tcp".to_string()),
    };
    if protocol != "tcp" && protocol != "udp" {
        return Err(format!(
            "unknown protocol {protocol:?}: expected tcp or udp"
        ));
    }
    let Some((host, container)) = ports.split_once(':') else {
        return Err("expected HOST:CONTAINER[/tcp|udp], e.g. 8080:80".to_string());
    };
    let number = |which: &str, port: &str| match port.parse::<u16>() {
        Ok(n) if n > 0 => Ok(u32::from(n)),
        _ => Err(format!(
            "{which} port {port:?} is not a number from 1 to 65535"
        )),
    };
    Ok(PortMapping {
        host: number("host", host)?,
        container: number("container", container)?,
        protocol,
    })
}

/// `agent:NAME` or `label:KEY=VALUE`.
fn parse_target(text: &str) -> Result<Target, String> {
    let target = match text.split_once(':') {
        Some(("agent", name)) if !name.is_empty() => target::Target::Agent(name.to_string()),
        Some(("label", selector)) => match selector.split_once('=') {
            Some((key, _)) if !key.is_empty() => target::Target::Label(selector.to_string()),
            _ => return Err(format!("label selector {selector:?} is not KEY=VALUE")),
        },
        _ => return Err("expected agent:NAME or label:KEY=VALUE".to_string()),
    };
    Ok(Target {
        target: Some(target),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::v1::{ApplicationDetail, DeploymentSummary};
    use clap::Parser;

    fn port(host: u32, container: u32, protocol: &str) -> PortMapping {
        PortMapping {
            host,
            container,
            protocol: protocol.into(),
        }
    }

    #[test]
    fn ports_parse_with_tcp_by_default() {
        assert_eq!(parse_port("8080:80"), Ok(port(8080, 80, "tcp")));
        assert_eq!(parse_port("8080:80/udp"), Ok(port(8080, 80, "udp")));
        assert_eq!(parse_port("53:53/TCP"), Ok(port(53, 53, "tcp")));
    }

    #[test]
    fn bad_ports_say_what_is_wrong() {
        assert_eq!(
            parse_port("8080"),
            Err("expected HOST:CONTAINER[/tcp|udp], e.g. 8080:80".into())
        );
        assert_eq!(
            parse_port("8080:80/sctp"),
            Err("unknown protocol \"sctp\": expected tcp or udp".into())
        );
        assert_eq!(
            parse_port("web:80"),
            Err("host port \"web\" is not a number from 1 to 65535".into())
        );
        assert_eq!(
            parse_port("8080:0"),
            Err("container port \"0\" is not a number from 1 to 65535".into())
        );
        assert_eq!(
            parse_port("8080:70000"),
            Err("container port \"70000\" is not a number from 1 to 65535".into())
        );
        assert!(parse_port(":80").is_err());
        assert!(parse_port("8080:80/").is_err());
        assert!(parse_port("1:2:3").is_err());
    }

    #[test]
    fn targets_parse() {
        let agent = parse_target("agent:web-1").unwrap();
        assert_eq!(agent.target, Some(target::Target::Agent("web-1".into())));
        let label = parse_target("label:env=prod").unwrap();
        assert_eq!(label.target, Some(target::Target::Label("env=prod".into())));
        assert_eq!(output::target_text(&label), "label:env=prod");
    }

    #[test]
    fn bad_targets_say_what_is_expected() {
        assert_eq!(
            parse_target("web-1"),
            Err("expected agent:NAME or label:KEY=VALUE".into())
        );
        assert_eq!(
            parse_target("agent:"),
            Err("expected agent:NAME or label:KEY=VALUE".into())
        );
        assert_eq!(
            parse_target("host:web-1"),
            Err("expected agent:NAME or label:KEY=VALUE".into())
        );
        assert_eq!(
            parse_target("label:env"),
            Err("label selector \"env\" is not KEY=VALUE".into())
        );
        assert_eq!(
            parse_target("label:=prod"),
            Err("label selector \"=prod\" is not KEY=VALUE".into())
        );
    }

    /// Parses `berth app update ...` as the real command line would.
    fn update(args: &[&str]) -> Result<UpdateApplicationRequest, clap::Error> {
        #[derive(Parser)]
        struct Root {
            #[command(subcommand)]
            command: AppCommand,
        }
        let argv = ["app", "update", "web"].iter().chain(args);
        match Root::try_parse_from(argv)?.command {
            AppCommand::Update { name, changes } => Ok(update_request(name, changes)),
            _ => unreachable!(),
        }
    }

    #[test]
    fn update_sends_only_what_was_given() {
        let request = update(&["--image", "nginx"]).unwrap();
        assert_eq!(request.image.as_deref(), Some("nginx"));
        assert!(!request.set_ports && !request.set_targets && !request.clear_repository);
        assert_eq!(request.webhook_enabled, None);

        let request = update(&[
            "--clear-ports",
            "--webhook",
            "disable",
            "--auto-deploy",
            "on",
        ])
        .unwrap();
        assert!(request.set_ports && request.ports.is_empty());
        assert_eq!(request.webhook_enabled, Some(false));
        assert_eq!(request.auto_deploy, Some(true));
    }

    #[test]
    fn stop_settings_and_cancel_in_progress_are_sent_only_when_given() {
        let request = update(&["--image", "nginx"]).unwrap();
        assert_eq!(request.drain_timeout_seconds, None);
        assert_eq!(request.stop_signal, None);
        assert_eq!(request.cancel_in_progress, None);
        let request = update(&[
            "--drain-timeout",
            "60",
            "--stop-timeout",
            "5",
            "--stop-signal",
            "SIGQUIT",
            "--cancel-in-progress",
            "true",
        ])
        .unwrap();
        assert_eq!(request.drain_timeout_seconds, Some(60));
        assert_eq!(request.stop_timeout_seconds, Some(5));
        assert_eq!(request.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(request.cancel_in_progress, Some(true));
        assert!(update(&["--cancel-in-progress", "maybe"]).is_err());
        assert!(update(&["--drain-timeout", "-1"]).is_err());
    }

    #[test]
    fn show_renders_stop_settings_domains_and_the_queue() {
        let deployment = |version: &str, status: &str| DeploymentSummary {
            version: version.into(),
            status: status.into(),
            ..Default::default()
        };
        let detail = ApplicationDetail {
            application: Some(Application {
                name: "web".into(),
                ports: vec![port(8080, 80, "tcp")],
                drain_timeout_seconds: 30,
                stop_timeout_seconds: 10,
                stop_signal: "SIGQUIT".into(),
                cancel_in_progress: true,
                ..Default::default()
            }),
            deployments: vec![
                deployment("v3", "queued"),
                deployment("v2", "running"),
                deployment("v1", "success"),
            ],
            domains: vec![
                berth_proto::v1::Domain {
                    host: "shop.example.com".into(),
                    tls_mode: "files".into(),
                    not_after: Some("2030-01-31 12:00:00".into()),
                    ..Default::default()
                },
                berth_proto::v1::Domain {
                    host: "api.example.com".into(),
                    container_port: 8081,
                    tls_mode: "none".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = view::AppShow::new(&detail).table();
        assert!(
            text.contains("In progress:   deploying v2 (v3 queued)"),
            "{text}"
        );
        assert!(
            text.contains("drain 30s, then SIGQUIT, killed after 10s"),
            "{text}"
        );
        assert!(text.contains("Cancel running: yes"), "{text}");
        assert!(
            text.contains(
                "shop.example.com  → 80 (first port)  tls files (expires 2030-01-31 12:00 +00:00)"
            ),
            "{text}"
        );
        assert!(
            text.contains("api.example.com   → 8081  tls none"),
            "{text}"
        );
        let idle = ApplicationDetail {
            deployments: vec![deployment("v1", "success")],
            ..detail
        };
        assert!(!view::AppShow::new(&idle).table().contains("In progress"));
    }

    #[test]
    fn update_needs_a_change_and_refuses_contradictions() {
        assert!(update(&[]).is_err());
        assert!(update(&["--clear-ports", "--port", "80:80"]).is_err());
        assert!(update(&["--repository", "ghcr", "--no-repository"]).is_err());
        assert!(update(&["--clear-targets", "--target", "agent:a"]).is_err());
    }
}
