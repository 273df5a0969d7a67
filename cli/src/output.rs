//! How results are shown: `-o table` (aligned columns for people) or `-o json` (for scripts).
//!
//! prost messages do not derive `Serialize`, so each message type has one function here that
//! builds its JSON value explicitly; the field names follow the proto.

use std::collections::{BTreeMap, HashMap};

use berth_proto::v1::{
    target, Agent, ApiKey, Application, DeploymentDetail, DeploymentEventRow, DeploymentSummary,
    DeploymentTarget, Domain, EnvVar, ImagePattern, PortMapping, Repository, SecretGroup,
    SecretSummary, Target,
};
use serde_json::{json, Value};
use std::sync::OnceLock;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Left-aligned columns under a header row, two spaces apart.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints the table, or `empty` alone when it has no rows.
    pub fn print_or(&self, empty: &str) {
        if self.rows.is_empty() {
            println!("{empty}");
        } else {
            print!("{}", self.render());
        }
    }

    pub fn render(&self) -> String {
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(&self.rows).collect();
        let mut widths = vec![0; self.header.len()];
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line.iter()) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in lines {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(cell, &w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

/// A spinner on stderr for long work (`backup create`, `provider sync`, `import-v1`): drawn
/// only when stderr is a terminal, so pipes, files and CI logs stay quiet. With `bytes`, it
/// shows the position as bytes done (`set_position`).
pub fn progress(message: &str, bytes: bool) -> indicatif::ProgressBar {
    progress_on(
        message,
        bytes,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    )
}

fn progress_on(message: &str, bytes: bool, terminal: bool) -> indicatif::ProgressBar {
    if !terminal {
        return indicatif::ProgressBar::hidden();
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(if bytes {
            "{spinner} {msg}: {bytes} [{elapsed}]"
        } else {
            "{spinner} {msg} [{elapsed}]"
        })
        .expect("the progress templates are valid"),
    );
    bar.set_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("a json value always serializes")
    );
}

/// The machine's UTC offset, read once at start while the process has one thread (the only
/// time the `time` crate can read it soundly); UTC when unknown.
static LOCAL_OFFSET: OnceLock<UtcOffset> = OnceLock::new();

/// Reads the local UTC offset; call first thing in `main`, before any thread starts.
pub fn init_local_offset() {
    if let Ok(offset) = UtcOffset::current_local_offset() {
        let _ = LOCAL_OFFSET.set(offset);
    }
}

fn local_offset() -> UtcOffset {
    LOCAL_OFFSET.get().copied().unwrap_or(UtcOffset::UTC)
}

/// A control plane timestamp, always UTC: SQLite's `2025-10-23 10:30:00` or
/// `2025-10-23T10:30:00.123Z`.
fn parse_utc(timestamp: &str) -> Option<OffsetDateTime> {
    let seconds = timestamp.get(..19)?.replacen('T', " ", 1);
    let at = PrimitiveDateTime::parse(
        &seconds,
        format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
    )
    .ok()?;
    let nanos = timestamp
        .get(19..)
        .and_then(|rest| rest.strip_prefix('.'))
        .map(|rest| rest.trim_end_matches('Z'))
        .filter(|digits| !digits.is_empty() && digits.len() <= 9)
        .and_then(|digits| Some(digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)))
        .unwrap_or(0);
    at.replace_nanosecond(nanos)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

/// A timestamp for JSON: RFC 3339 in UTC (`2025-10-23T10:30:00Z`); as given when it is not
/// one of the control plane's forms.
pub fn rfc3339(timestamp: &str) -> String {
    parse_utc(timestamp)
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| timestamp.to_string())
}

/// [`rfc3339`] of an optional timestamp, `null` when absent or empty.
pub fn rfc3339_opt(timestamp: Option<&str>) -> Value {
    match timestamp.filter(|t| !t.is_empty()) {
        Some(at) => Value::String(rfc3339(at)),
        None => Value::Null,
    }
}

/// A timestamp field of a message (`String` or `Option<String>`) as JSON: [`rfc3339_opt`].
pub trait TimeField {
    fn timestamp(&self) -> Option<&str>;
}

impl TimeField for String {
    fn timestamp(&self) -> Option<&str> {
        Some(self)
    }
}

impl TimeField for Option<String> {
    fn timestamp(&self) -> Option<&str> {
        self.as_deref()
    }
}

pub fn time_json(field: &impl TimeField) -> Value {
    rfc3339_opt(field.timestamp())
}

/// A timestamp for a table: local time to the minute, with the offset
/// (`2025-10-23 12:30 +02:00`).
pub fn short_time(timestamp: &str) -> String {
    short_time_at(timestamp, local_offset())
}

/// The time of day of a timestamp, local (`12:30:12`), for lines under a header that gives
/// the date and offset.
pub fn clock(timestamp: &str) -> String {
    parse_utc(timestamp)
        .and_then(|at| {
            at.to_offset(local_offset())
                .format(format_description!("[hour]:[minute]:[second]"))
                .ok()
        })
        .unwrap_or_else(|| timestamp.to_string())
}

fn short_time_at(timestamp: &str, offset: UtcOffset) -> String {
    parse_utc(timestamp)
        .and_then(|at| {
            at.to_offset(offset)
                .format(format_description!(
                    "[year]-[month]-[day] [hour]:[minute] [offset_hour sign:mandatory]:[offset_minute]"
                ))
                .ok()
        })
        .unwrap_or_else(|| timestamp.to_string())
}

/// `-` for a missing optional value in a table cell.
pub fn or_dash(value: Option<&str>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or("-").to_string()
}

/// `1.2s`, `45s` or `3m07s`; `-` when there is no duration yet.
pub fn duration_text(duration_ms: Option<i64>) -> String {
    let Some(ms) = duration_ms.filter(|ms| *ms >= 0) else {
        return "-".to_string();
    };
    match ms {
        0..=9_999 => format!("{:.1}s", ms as f64 / 1000.0),
        10_000..=59_999 => format!("{}s", ms / 1000),
        _ => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
    }
}

/// `env=prod,zone=a`, sorted by key; `-` when there are none.
pub fn labels_text(labels: &HashMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_string();
    }
    sorted(labels)
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A map with a stable order, for tables and JSON alike.
fn sorted(labels: &HashMap<String, String>) -> BTreeMap<&String, &String> {
    labels.iter().collect()
}

/// `agent:web-1` or `label:env=prod`, the same syntax `--target` accepts.
pub fn target_text(target: &Target) -> String {
    match &target.target {
        Some(target::Target::Agent(name)) => format!("agent:{name}"),
        Some(target::Target::Label(selector)) => format!("label:{selector}"),
        None => "?".to_string(),
    }
}

/// `8080:80/tcp`, the same syntax `--port` accepts.
pub fn port_text(port: &PortMapping) -> String {
    format!("{}:{}/{}", port.host, port.container, port.protocol)
}

/// `image:version`, or the image alone when the application has no version.
pub fn image_text(app: &Application) -> String {
    match app.version.as_deref().filter(|v| !v.is_empty()) {
        Some(version) => format!("{}:{version}", app.image),
        None => app.image.clone(),
    }
}

pub fn secret_group_json(group: &SecretGroup) -> Value {
    json!({
        "id": group.id,
        "name": group.name,
        "description": group.description,
        "provider_id": group.provider_id,
        "provider": group.provider,
        "auto_sync": group.auto_sync,
        "secret_count": group.secret_count,
        "created_at": time_json(&group.created_at),
        "updated_at": time_json(&group.updated_at),
    })
}

pub fn secret_summary_json(secret: &SecretSummary) -> Value {
    json!({
        "id": secret.id,
        "name": secret.name,
        "group_id": secret.group_id,
        "group_name": secret.group_name,
        "has_value": secret.has_value,
        "value_preview": secret.value_preview,
        "description": secret.description,
        "source": secret.source,
        "provider": secret.provider,
        "stale_since": time_json(&secret.stale_since),
        "last_synced_at": time_json(&secret.last_synced_at),
        "created_at": time_json(&secret.created_at),
        "updated_at": time_json(&secret.updated_at),
    })
}

pub fn env_var_json(var: &EnvVar) -> Value {
    json!({
        "id": var.id,
        "scope": var.scope,
        "app": var.app,
        "key": var.key,
        "value": var.value,
        "value_type": var.value_type,
        "secret_id": var.secret_id,
        "secret_path": var.secret_path,
        "description": var.description,
        "created_at": time_json(&var.created_at),
        "updated_at": time_json(&var.updated_at),
    })
}

pub fn port_mapping_json(port: &PortMapping) -> Value {
    json!({ "host": port.host, "container": port.container, "protocol": port.protocol })
}

pub fn target_json(target: &Target) -> Value {
    match &target.target {
        Some(target::Target::Agent(name)) => json!({ "agent": name }),
        Some(target::Target::Label(selector)) => json!({ "label": selector }),
        None => Value::Null,
    }
}

pub fn application_json(app: &Application) -> Value {
    json!({
        "id": app.id,
        "name": app.name,
        "image": app.image,
        "version": app.version,
        "repository": app.repository,
        "ports": app.ports.iter().map(port_mapping_json).collect::<Vec<_>>(),
        "status": app.status,
        "webhook_enabled": app.webhook_enabled,
        "webhook_token_preview": app.webhook_token_preview,
        "auto_deploy": app.auto_deploy,
        "last_deployed_at": time_json(&app.last_deployed_at),
        "targets": app.targets.iter().map(target_json).collect::<Vec<_>>(),
        "created_at": time_json(&app.created_at),
        "updated_at": time_json(&app.updated_at),
        "drain_timeout_seconds": app.drain_timeout_seconds,
        "stop_timeout_seconds": app.stop_timeout_seconds,
        "stop_signal": app.stop_signal,
        "cancel_in_progress": app.cancel_in_progress,
    })
}

pub fn deployment_summary_json(deployment: &DeploymentSummary) -> Value {
    json!({
        "deployment_id": deployment.deployment_id,
        "version": deployment.version,
        "status": deployment.status,
        "trigger_type": deployment.trigger_type,
        "trigger_source": deployment.trigger_source,
        "error_message": deployment.error_message,
        "started_at": time_json(&deployment.started_at),
        "completed_at": time_json(&deployment.completed_at),
        "duration_ms": deployment.duration_ms,
    })
}

pub fn api_key_json(key: &ApiKey) -> Value {
    json!({
        "id": key.id,
        "name": key.name,
        "role": key.role,
        "prefix": key.prefix,
        "created_at": time_json(&key.created_at),
        "last_used_at": time_json(&key.last_used_at),
        "revoked_at": time_json(&key.revoked_at),
    })
}

pub fn domain_json(domain: &Domain) -> Value {
    json!({
        "host": domain.host,
        "app": domain.app,
        "container_port": domain.container_port,
        "tls_mode": domain.tls_mode,
        "not_after": domain.not_after,
        "created_at": time_json(&domain.created_at),
        "acme_status": domain.acme_status,
        "acme_error": domain.acme_error,
        "acme_next_attempt_at": time_json(&domain.acme_next_attempt_at),
    })
}

/// `none`, `files (expires 2026-01-31 12:00)`, or for ACME its status: `acme: pending`,
/// `acme: issued (expires …)`, `acme: failed: REASON (retry at …)`, or
/// `acme: issued (expires …); renewal failed: REASON (retry at …)`.
pub fn domain_tls_text(domain: &Domain) -> String {
    let expires = domain
        .not_after
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|at| format!("expires {}", short_time(at)));
    let Some(status) = domain.acme_status.as_deref() else {
        return match expires {
            Some(expires) => format!("{} ({expires})", domain.tls_mode),
            None => domain.tls_mode.clone(),
        };
    };
    let issued = expires.map(|e| format!("issued ({e})"));
    let retry = match domain.acme_next_attempt_at.as_deref() {
        Some(at) => format!("retry at {}", short_time(at)),
        None => "gave up: `berth domain remove` it and add it again".to_string(),
    };
    let error = domain.acme_error.as_deref().unwrap_or("unknown error");
    match (status, issued) {
        ("failed", Some(issued)) => format!("acme: {issued}; renewal failed: {error} ({retry})"),
        ("failed", None) => format!("acme: failed: {error} ({retry})"),
        (_, Some(issued)) => format!("acme: {issued}"),
        (status, None) => format!("acme: {status}"),
    }
}

/// A domain's container port: `first` for 0 (the app's first port).
pub fn container_port_text(port: u32) -> String {
    match port {
        0 => "first".to_string(),
        port => port.to_string(),
    }
}

pub fn repository_json(repository: &Repository) -> Value {
    json!({
        "id": repository.id,
        "name": repository.name,
        "url": repository.url,
        "username": repository.username,
        "has_password": repository.has_password,
        "created_at": time_json(&repository.created_at),
    })
}

pub fn image_pattern_json(pattern: &ImagePattern) -> Value {
    json!({
        "id": pattern.id,
        "pattern": pattern.pattern,
        "description": pattern.description,
        "created_at": time_json(&pattern.created_at),
    })
}

pub fn agent_json(agent: &Agent) -> Value {
    json!({
        "name": agent.name,
        "labels": sorted(&agent.labels),
        "status": agent.status,
        "version": agent.version,
        "docker_version": agent.docker_version,
        "last_seen_at": time_json(&agent.last_seen_at),
        "cert_not_after": agent.cert_not_after,
        "created_at": time_json(&agent.created_at),
    })
}

pub fn deployment_target_json(target: &DeploymentTarget) -> Value {
    json!({
        "agent": target.agent,
        "status": target.status,
        "container_id": target.container_id,
        "error_message": target.error_message,
        "started_at": time_json(&target.started_at),
        "completed_at": time_json(&target.completed_at),
        "duration_ms": target.duration_ms,
    })
}

pub fn deployment_event_json(event: &DeploymentEventRow) -> Value {
    json!({
        "id": event.id,
        "agent": event.agent,
        "phase": event.phase,
        "message": event.message,
        "at": time_json(&event.at),
    })
}

/// The container a deployment created on an agent, as the agent's `create` step named it
/// (`creating NAME from IMAGE`, `creating NAME with host ports …`): the one that failed,
/// when the target did.
pub fn tried_container<'a>(detail: &'a DeploymentDetail, agent: &str) -> Option<&'a str> {
    detail
        .events
        .iter()
        .rev()
        .filter(|e| e.agent.as_deref() == Some(agent) && e.phase == "create")
        .find_map(|e| e.message.strip_prefix("creating ")?.split(' ').next())
}

/// A deployment with its targets; a target that did not succeed names the container it
/// tried (`failed_container`) apart from the one serving (`container_id`), as the table does.
pub fn deployment_detail_json(detail: &DeploymentDetail) -> Value {
    let targets: Vec<Value> = detail
        .targets
        .iter()
        .map(|target| {
            let mut value = deployment_target_json(target);
            let failed = (target.status != "success")
                .then(|| tried_container(detail, &target.agent))
                .flatten();
            value["failed_container"] = json!(failed);
            value
        })
        .collect();
    json!({
        "app": detail.app,
        "deployment": detail.deployment.as_ref().map(deployment_summary_json),
        "targets": targets,
        "events": detail.events.iter().map(deployment_event_json).collect::<Vec<_>>(),
    })
}

pub fn notification_webhook_json(webhook: &berth_proto::v1::NotificationWebhook) -> Value {
    json!({
        "id": webhook.id,
        "url": webhook.url,
        "events": webhook.events,
        "enabled": webhook.enabled,
        "created_at": time_json(&webhook.created_at),
        "last_delivery_status": webhook.last_delivery_status,
        "last_delivery_at": time_json(&webhook.last_delivery_at),
    })
}

pub fn webhook_delivery_json(delivery: &berth_proto::v1::WebhookDelivery) -> Value {
    json!({
        "id": delivery.id,
        "webhook_id": delivery.webhook_id,
        "url": delivery.url,
        "event": delivery.event,
        "deployment_id": delivery.deployment_id,
        "attempt": delivery.attempt,
        "status": delivery.status,
        "response_code": delivery.response_code,
        "error": delivery.error,
        "next_attempt_at": time_json(&delivery.next_attempt_at),
        "created_at": time_json(&delivery.created_at),
        "delivered_at": time_json(&delivery.delivered_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_under_the_header() {
        let mut table = Table::new(&["NAME", "ROLE"]);
        table.row(vec!["ci-deployer".into(), "deployer".into()]);
        table.row(vec!["me".into(), "admin".into()]);
        assert_eq!(
            table.render(),
            "NAME         ROLE\nci-deployer  deployer\nme           admin\n"
        );
    }

    #[test]
    fn progress_is_hidden_off_a_terminal() {
        assert!(progress_on("syncing", false, false).is_hidden());
        assert!(progress_on("writing", true, false).is_hidden());
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration_text(None), "-");
        assert_eq!(duration_text(Some(1234)), "1.2s");
        assert_eq!(duration_text(Some(45_900)), "45s");
        assert_eq!(duration_text(Some(187_000)), "3m07s");
    }

    #[test]
    fn labels_are_sorted_by_key() {
        let labels: HashMap<String, String> = [("zone", "a"), ("env", "prod")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(labels_text(&labels), "env=prod,zone=a");
        assert_eq!(labels_text(&HashMap::new()), "-");
    }

    #[test]
    fn tables_show_local_time_with_its_offset() {
        let paris = UtcOffset::from_hms(2, 0, 0).unwrap();
        assert_eq!(
            short_time_at("2025-10-23 10:30:12", paris),
            "2025-10-23 12:30 +02:00"
        );
        assert_eq!(
            short_time_at("2025-10-23T23:30:12.345Z", paris),
            "2025-10-24 01:30 +02:00"
        );
        assert_eq!(
            short_time_at("2025-10-23 10:30:12", UtcOffset::UTC),
            "2025-10-23 10:30 +00:00"
        );
        assert_eq!(short_time_at("never", paris), "never");
    }

    #[test]
    fn json_shows_rfc3339_in_utc() {
        assert_eq!(rfc3339("2025-10-23 10:30:12"), "2025-10-23T10:30:12Z");
        assert_eq!(
            rfc3339("2025-10-23T10:30:12.345Z"),
            "2025-10-23T10:30:12.345Z"
        );
        assert_eq!(rfc3339_opt(None), Value::Null);
        assert_eq!(rfc3339_opt(Some("")), Value::Null);
    }
}
