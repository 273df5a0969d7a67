//! `berth app show`: one model of the application's detail, from which both the table and
//! `-o json` are written, so they cannot say different things (the webhook URL, the scope of a
//! variable, the targets, the times).

use berth_proto::v1::{ApplicationDetail, DeploymentSummary, EffectiveEnvVar, EnvVar};
use serde::Serialize;
use serde_json::json;

use crate::output;

/// What `berth app show` says about an application. Times are RFC 3339 (UTC) here; the
/// table shows them in local time with the offset.
#[derive(Serialize)]
pub struct AppShow {
    pub application: Basics,
    pub webhook: Webhook,
    pub domains: Vec<DomainRoute>,
    pub serving: Vec<Serving>,
    pub env: Vec<Variable>,
    /// Every key that reaches the containers, with its source (`env list --effective`).
    pub effective_env: Vec<serde_json::Value>,
    pub deployments: Vec<Deployment>,
    #[serde(skip)]
    effective: Vec<EffectiveEnvVar>,
}

#[derive(Serialize)]
pub struct Basics {
    pub name: String,
    /// The image without its tag, and `image:version`.
    pub image: String,
    pub version: Option<String>,
    pub image_ref: String,
    pub status: String,
    /// `deploying v2 (v3 queued)` while a deployment runs.
    pub in_progress: Option<String>,
    pub last_deployed_at: Option<String>,
    pub targets: Targets,
    /// `8080:80/tcp`, as `--port` takes them.
    pub ports: Vec<String>,
    pub repository: Option<String>,
    pub auto_deploy: bool,
    pub stop: Stop,
    pub cancel_in_progress: bool,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Serialize)]
pub struct Targets {
    /// `local (any agent)` without selectors, else the selectors joined.
    pub description: String,
    /// `agent:NAME` or `label:K=V`, as `--target` takes them.
    pub selectors: Vec<String>,
}

#[derive(Serialize)]
pub struct Stop {
    pub drain_timeout_seconds: u32,
    /// Empty: the image's STOPSIGNAL.
    pub stop_signal: Option<String>,
    pub stop_timeout_seconds: u32,
    pub description: String,
}

#[derive(Serialize)]
pub struct Webhook {
    pub enabled: bool,
    pub token_preview: String,
    /// The whole deploy URL (`…/webhook/deploy`); none when no public URL is configured.
    pub url: Option<String>,
    /// A curl command that deploys through it (the token from `$BERTH_WEBHOOK_TOKEN`).
    pub example: Option<String>,
}

#[derive(Serialize)]
pub struct DomainRoute {
    pub host: String,
    /// The container port traffic goes to (the app's first port when not chosen).
    pub container_port: Option<u32>,
    pub first_port: bool,
    pub tls: String,
}

#[derive(Serialize)]
pub struct Serving {
    pub agent: String,
    pub container_id: String,
    pub deployment_id: String,
    pub version: String,
    /// The target's status in that deployment: `success` (its version serves), or `failed` /
    /// `rolled_back` (the previous container was kept).
    pub status: String,
    pub description: String,
}

#[derive(Serialize)]
pub struct Variable {
    pub key: String,
    /// `global`, or `app` (this application's own row, which overrides a global one).
    pub scope: String,
    pub value_type: String,
    /// The value as shown: plain text, or the masked reference.
    pub value: String,
    pub secret_path: Option<String>,
}

#[derive(Serialize)]
pub struct Deployment {
    pub deployment_id: String,
    pub version: String,
    pub status: String,
    pub trigger_type: String,
    pub started_at: Option<String>,
    pub error: Option<String>,
}

/// The webhook's deploy path on the shim's public URL.
const DEPLOY_PATH: &str = "/webhook/deploy";

impl AppShow {
    pub fn new(detail: &ApplicationDetail) -> Self {
        let app = detail.application.clone().unwrap_or_default();
        let base = detail.webhook_url.trim_end_matches('/');
        let url = (!base.is_empty()).then(|| format!("{base}{DEPLOY_PATH}"));
        let example = url.as_ref().map(|url| {
            let body = json!({
                "applicationName": app.name,
                "version": app.version.as_deref().filter(|v| !v.is_empty()).unwrap_or("latest"),
            });
            format!(
                "curl --fail-with-body -X POST {url} \\\n  -H \"Authorization: Bearer $BERTH_WEBHOOK_TOKEN\" \\\n  -H \"Content-Type: application/json\" \\\n  -d '{body}'"
            )
        });
        let selectors: Vec<String> = app.targets.iter().map(output::target_text).collect();
        let stop_signal = Some(app.stop_signal.clone()).filter(|s| !s.is_empty());
        let first_port = app.ports.first().map(|p| p.container);
        AppShow {
            application: Basics {
                name: app.name.clone(),
                image: app.image.clone(),
                version: app.version.clone().filter(|v| !v.is_empty()),
                image_ref: output::image_text(&app),
                status: app.status.clone(),
                in_progress: progress_text(&detail.deployments),
                last_deployed_at: time(app.last_deployed_at.as_deref()),
                targets: Targets {
                    description: if selectors.is_empty() {
                        "local (any agent)".to_string()
                    } else {
                        selectors.join(", ")
                    },
                    selectors,
                },
                ports: app.ports.iter().map(output::port_text).collect(),
                repository: app.repository.clone().filter(|r| !r.is_empty()),
                auto_deploy: app.auto_deploy,
                stop: Stop {
                    drain_timeout_seconds: app.drain_timeout_seconds,
                    description: format!(
                        "drain {}s, then {}, killed after {}s",
                        app.drain_timeout_seconds,
                        stop_signal.as_deref().unwrap_or("the image's stop signal"),
                        app.stop_timeout_seconds
                    ),
                    stop_signal,
                    stop_timeout_seconds: app.stop_timeout_seconds,
                },
                cancel_in_progress: app.cancel_in_progress,
                created_at: time(Some(&app.created_at)),
                updated_at: time(Some(&app.updated_at)),
            },
            webhook: Webhook {
                enabled: app.webhook_enabled,
                token_preview: app.webhook_token_preview.clone(),
                url,
                example,
            },
            domains: detail
                .domains
                .iter()
                .map(|d| DomainRoute {
                    host: d.host.clone(),
                    container_port: match d.container_port {
                        0 => first_port,
                        port => Some(port),
                    },
                    first_port: d.container_port == 0,
                    tls: output::domain_tls_text(d),
                })
                .collect(),
            serving: detail
                .serving
                .iter()
                .map(|s| {
                    let deployment: String = s.deployment_id.chars().take(8).collect();
                    Serving {
                        agent: s.agent.clone(),
                        container_id: s.container_id.clone(),
                        deployment_id: s.deployment_id.clone(),
                        version: s.version.clone(),
                        status: s.status.clone(),
                        description: if s.status == "success" {
                            format!("{} (deployment {deployment})", s.version)
                        } else {
                            format!(
                                "the previous version, kept after deployment {deployment} ({}) {}",
                                s.version, s.status
                            )
                        },
                    }
                })
                .collect(),
            env: detail.env.iter().map(variable).collect(),
            effective_env: detail
                .effective_env
                .iter()
                .map(crate::env::effective_json)
                .collect(),
            deployments: detail.deployments.iter().map(deployment).collect(),
            effective: detail.effective_env.clone(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("the view always serializes")
    }

    /// The seed's application detail view.
    pub fn table(&self) -> String {
        let app = &self.application;
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(format!("Application: {}", app.name));
        line(format!("  Name:          {}", app.name));
        line(format!("  Image:         {}", app.image_ref));
        line(format!("  Status:        {}", app.status));
        if let Some(progress) = &app.in_progress {
            line(format!("  In progress:   {progress}"));
        }
        line(format!(
            "  Last deployed: {}",
            local(app.last_deployed_at.as_deref()).unwrap_or_else(|| "never".to_string())
        ));
        line(format!("  Targets:       {}", app.targets.description));
        if !app.ports.is_empty() {
            line(format!("  Ports:         {}", app.ports.join(", ")));
        }
        if let Some(repository) = &app.repository {
            line(format!("  Repository:    {repository}"));
        }
        line(format!("  Auto-deploy:   {}", yes_no(app.auto_deploy)));
        line(format!("  Stop:          {}", app.stop.description));
        line(format!(
            "  Cancel running: {}",
            if app.cancel_in_progress {
                "yes (every deploy cancels the running one)"
            } else {
                "no (deploys queue behind the running one)"
            }
        ));

        line(String::new());
        line(format!("Domains ({})", self.domains.len()));
        let host_width = self
            .domains
            .iter()
            .map(|d| d.host.chars().count())
            .max()
            .unwrap_or(0);
        for domain in &self.domains {
            let port = match (domain.container_port, domain.first_port) {
                (Some(port), true) => format!("{port} (first port)"),
                (Some(port), false) => port.to_string(),
                (None, _) => "first port".to_string(),
            };
            line(format!(
                "  {:<host_width$}  → {port}  tls {}",
                domain.host, domain.tls
            ));
        }
        if self.domains.is_empty() {
            line("  none (berth domain add APP HOST)".to_string());
        }

        line(String::new());
        line("Serving (where the ports and domains point)".to_string());
        for serving in &self.serving {
            let container: String = serving.container_id.chars().take(12).collect();
            line(format!(
                "  {}  → container {container}  {}",
                serving.agent, serving.description
            ));
        }
        if self.serving.is_empty() {
            line("  nothing yet (berth deploy APP VERSION)".to_string());
        }

        line(String::new());
        line("Webhook".to_string());
        line(format!("  Enabled:  {}", yes_no(self.webhook.enabled)));
        line(format!("  Token:    {}", self.webhook.token_preview));
        match (&self.webhook.url, &self.webhook.example) {
            (Some(url), Some(example)) => {
                line(format!("  URL:      {url}"));
                line("  Example:".to_string());
                for example_line in example.lines() {
                    line(format!("    {example_line}"));
                }
            }
            _ => line("  URL:      not configured (system setting webhook_public_url)".to_string()),
        }

        line(String::new());
        line(format!("Environment ({})", self.env.len()));
        let mut table = output::Table::new(&["KEY", "SCOPE", "TYPE", "VALUE"]);
        for var in &self.env {
            let lock = if var.value_type == "plain" {
                ""
            } else {
                "🔒 "
            };
            table.row(vec![
                var.key.clone(),
                var.scope.clone(),
                var.value_type.clone(),
                format!("{lock}{}", var.value),
            ]);
        }
        if self.env.is_empty() {
            line("  none".to_string());
        } else {
            for row in table.render().lines() {
                line(format!("  {row}"));
            }
        }

        line(String::new());
        line(format!(
            "Effective environment ({} keys reach the containers)",
            self.effective
                .iter()
                .filter(|v| v.problem.is_none())
                .count()
        ));
        if self.effective.is_empty() {
            line("  none".to_string());
        } else {
            for row in crate::env::effective_table(&self.effective)
                .render()
                .lines()
            {
                line(format!("  {row}"));
            }
        }
        if let Some(note) = crate::env::unresolved_note(&self.effective, &app.name) {
            line(format!("  {note}"));
        }

        line(String::new());
        line("Deployments (last 10)".to_string());
        let mut table = output::Table::new(&["ID", "VERSION", "STARTED", "STATUS", "TRIGGER"]);
        for d in self.deployments.iter().take(10) {
            let mut status = d.status.clone();
            if let Some(error) = &d.error {
                status.push_str(&format!(" ({error})"));
            }
            table.row(vec![
                d.deployment_id.chars().take(8).collect(),
                d.version.clone(),
                local(d.started_at.as_deref()).unwrap_or_else(|| "-".to_string()),
                status,
                d.trigger_type.clone(),
            ]);
        }
        if self.deployments.is_empty() {
            line("  none yet".to_string());
        } else {
            for row in table.render().lines() {
                line(format!("  {row}"));
            }
        }
        out
    }
}

fn variable(var: &EnvVar) -> Variable {
    Variable {
        key: var.key.clone(),
        scope: if var.scope == "global" {
            "global".to_string()
        } else {
            "app".to_string()
        },
        value_type: var.value_type.clone(),
        value: crate::env::value_text(var),
        secret_path: var.secret_path.clone(),
    }
}

fn deployment(d: &DeploymentSummary) -> Deployment {
    Deployment {
        deployment_id: d.deployment_id.clone(),
        version: d.version.clone(),
        status: d.status.clone(),
        trigger_type: d.trigger_type.clone(),
        started_at: time(Some(&d.started_at)),
        error: d.error_message.clone().filter(|e| !e.is_empty()),
    }
}

/// RFC 3339, or none for an absent or empty timestamp.
fn time(at: Option<&str>) -> Option<String> {
    at.filter(|t| !t.is_empty()).map(output::rfc3339)
}

/// An RFC 3339 time of the model in the table's form.
fn local(at: Option<&str>) -> Option<String> {
    at.map(output::short_time)
}

/// `deploying v2 (v3 queued)` while a deployment runs; `None` when none does.
fn progress_text(deployments: &[DeploymentSummary]) -> Option<String> {
    let running = deployments
        .iter()
        .find(|d| d.status == "running" || d.status == "pending")?;
    let queued: Vec<&str> = deployments
        .iter()
        .filter(|d| d.status == "queued")
        .map(|d| d.version.as_str())
        .collect();
    Some(if queued.is_empty() {
        format!("deploying {}", running.version)
    } else {
        format!(
            "deploying {} ({} queued)",
            running.version,
            queued.join(", ")
        )
    })
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::v1::{Application, PortMapping};

    fn detail() -> ApplicationDetail {
        ApplicationDetail {
            application: Some(Application {
                name: "myapp".into(),
                image: "berth-test/web".into(),
                version: Some("v1".into()),
                ports: vec![PortMapping {
                    host: 8080,
                    container: 80,
                    protocol: "tcp".into(),
                }],
                webhook_enabled: true,
                webhook_token_preview: "whk_abcd****".into(),
                created_at: "2025-10-23 10:30:12".into(),
                updated_at: "2025-10-23 10:30:12".into(),
                ..Default::default()
            }),
            webhook_url: "http://127.0.0.1:7480/".into(),
            env: vec![
                EnvVar {
                    key: "NODE_ENV".into(),
                    scope: "global".into(),
                    value: "production".into(),
                    value_type: "plain".into(),
                    ..Default::default()
                },
                EnvVar {
                    key: "DATABASE_URL".into(),
                    scope: "project".into(),
                    app: Some("myapp".into()),
                    value: "@secret:1".into(),
                    value_type: "secret_ref".into(),
                    secret_path: Some("db/DATABASE_URL".into()),
                    ..Default::default()
                },
            ],
            deployments: vec![DeploymentSummary {
                deployment_id: "3f2a1b0c-0000".into(),
                version: "v1".into(),
                status: "success".into(),
                trigger_type: "manual".into(),
                started_at: "2025-10-23T10:31:00.250Z".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// The three disagreements: the webhook URL, the scope, the targets; and the
    /// times.
    #[test]
    fn table_and_json_say_the_same() {
        let view = AppShow::new(&detail());
        let json = view.json();
        let table = view.table();

        let url = "http://127.0.0.1:7480/webhook/deploy";
        assert_eq!(json["webhook"]["url"], url);
        assert!(table.contains(&format!("URL:      {url}")), "{table}");

        assert_eq!(
            json["application"]["targets"]["description"],
            "local (any agent)"
        );
        assert_eq!(json["application"]["targets"]["selectors"], json!([]));
        assert!(
            table.contains("Targets:       local (any agent)"),
            "{table}"
        );

        assert_eq!(json["env"][0]["scope"], "global");
        assert_eq!(json["env"][1]["scope"], "app");
        assert!(
            table
                .lines()
                .any(|l| l.contains("DATABASE_URL") && l.contains(" app ")),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.contains("NODE_ENV") && l.contains(" global ")),
            "{table}"
        );

        assert_eq!(json["application"]["created_at"], "2025-10-23T10:30:12Z");
        assert_eq!(
            json["deployments"][0]["started_at"],
            "2025-10-23T10:31:00.25Z"
        );
        // Tests run with no local offset read: UTC, shown with its offset.
        assert!(table.contains("2025-10-23 10:31 +00:00"), "{table}");
    }

    #[test]
    fn without_a_public_url_neither_shows_one() {
        let mut detail = detail();
        detail.webhook_url = String::new();
        let view = AppShow::new(&detail);
        assert_eq!(view.json()["webhook"]["url"], serde_json::Value::Null);
        assert!(view.table().contains("URL:      not configured"));
    }
}
