//! `deployment_logs` (the seed's aggregate), `deployment_targets` (one row per host) and
//! `deployment_events` (the ordered step log).

use super::{internal, Store, NOW_MS};
use crate::error::{Error, Result};
use crate::model::{DeploymentLog, DeploymentStatus, TargetStatus, ACTIVE_SQL, UNFINISHED_SQL};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeploymentTargetRow {
    pub agent_name: String,
    pub status: TargetStatus,
    pub container_id: Option<String>,
    pub error_message: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub duration_ms: Option<i64>,
}

/// The container an agent last reported serving an app: the newest target row of the app on
/// that agent that names a container (a success names the new one, a failure or a rollback
/// the one that kept or went back to serving).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ServingRow {
    pub agent_name: String,
    pub container_id: String,
    pub status: TargetStatus,
    pub deployment_id: String,
    pub version: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeploymentEventRow {
    pub id: i64,
    pub agent_name: Option<String>,
    pub phase: String,
    pub message: String,
    pub at: String,
}

/// Why a deployment failed, as recorded: the detail for the admin API, the public reason for
/// everyone else (see `fleet::failure`).
#[derive(Debug, Clone, Copy)]
pub struct FailureText<'a> {
    pub detail: &'a str,
    pub public_reason: &'a str,
}

/// What a new deployment row needs.
pub struct NewDeployment<'a> {
    pub deployment_id: &'a str,
    pub application_id: i64,
    pub version: &'a str,
    pub trigger_type: &'a str,
    pub trigger_source: Option<&'a str>,
    pub targets: &'a [String],
    /// The first batch of a prepared deployment, recorded as dispatched in the admission's
    /// own transaction when it takes the slot (one fsync fewer before the first command goes
    /// out); empty for a deployment admitted unprepared.
    pub first_batch: &'a [String],
    /// A line of the step log written before the dispatch (a capped health timeout).
    pub note: Option<&'a str>,
    /// Who started it, for the audit row written in the same transaction.
    pub actor: &'a str,
}

/// A [`NewDeployment`] the writer task can own.
struct OwnedDeployment {
    deployment_id: String,
    application_id: i64,
    version: String,
    trigger_type: String,
    trigger_source: Option<String>,
    targets: Vec<String>,
    first_batch: Vec<String>,
    note: Option<String>,
    actor: String,
}

impl OwnedDeployment {
    fn from(d: &NewDeployment<'_>) -> Self {
        OwnedDeployment {
            deployment_id: d.deployment_id.to_string(),
            application_id: d.application_id,
            version: d.version.to_string(),
            trigger_type: d.trigger_type.to_string(),
            trigger_source: d.trigger_source.map(str::to_string),
            targets: d.targets.to_vec(),
            first_batch: d.first_batch.to_vec(),
            note: d.note.map(str::to_string),
            actor: d.actor.to_string(),
        }
    }

    fn borrowed(&self) -> NewDeployment<'_> {
        NewDeployment {
            deployment_id: &self.deployment_id,
            application_id: self.application_id,
            version: &self.version,
            trigger_type: &self.trigger_type,
            trigger_source: self.trigger_source.as_deref(),
            targets: &self.targets,
            first_batch: &self.first_batch,
            note: self.note.as_deref(),
            actor: &self.actor,
        }
    }
}

impl Store {
    /// Admits a new deployment, deciding in the writer's transaction (which sees every
    /// earlier write, committed or of the same batch) whether it takes the application's slot
    /// or waits: one deployment per application at a time (issue 14) without a lock held
    /// across an fsync.
    ///
    /// - No deployment of the application is pending or running: the aggregate row (pending),
    ///   one target row per agent of `d.targets`, the application `deploying`, `deploy.start`.
    /// - Another one is: the row is `queued` behind it with a `queued` event and a
    ///   `deploy.queue` audit row; with `cancel_running`, the running one gets a `cancel` event.
    ///
    /// Either way an older queued deployment of the application is superseded by this newer
    /// one (only the newest waits). The answer holds the new row and the superseded ones as
    /// committed, so the caller reads nothing back (the webhook answers from it).
    pub async fn admit_deployment(
        &self,
        d: &NewDeployment<'_>,
        cancel_running: bool,
    ) -> Result<Admission> {
        let d = OwnedDeployment::from(d);
        self.writer
            .write(move |tx| {
                Box::pin(async move {
                    let d = d.borrowed();
                    match active_in(&mut *tx, d.application_id).await? {
                        None => {
                            // With its first batch dispatched it is running from the start.
                            let status = if d.first_batch.is_empty() {
                                DeploymentStatus::Pending
                            } else {
                                DeploymentStatus::Running
                            };
                            let (log, superseded) = insert_log_row(&mut *tx, &d, status).await?;
                            mark_deploying(&mut *tx, d.application_id).await?;
                            audit_deploy(&mut *tx, &d, "deploy.start", String::new()).await?;
                            prepare_targets(
                                &mut *tx,
                                d.deployment_id,
                                d.targets,
                                d.first_batch,
                                d.note,
                            )
                            .await?;
                            Ok(Admission {
                                log,
                                slot: Slot::Holds,
                                superseded,
                            })
                        }
                        Some(behind) => {
                            let (log, superseded) =
                                queue_behind(&mut *tx, &d, &behind, cancel_running).await?;
                            Ok(Admission {
                                log,
                                slot: Slot::QueuedBehind(behind),
                                superseded,
                            })
                        }
                    }
                })
            })
            .await
    }

    /// Records, in one transaction (one fsync), that a command is about to be sent to a batch
    /// of agents: the deployment is running, the targets are running, and the events.
    pub async fn dispatch_targets(
        &self,
        deployment_id: &str,
        agents: &[String],
        deploy: bool,
        command: &str,
    ) -> Result<()> {
        let (deployment_id, agents, command) = (
            deployment_id.to_string(),
            agents.to_vec(),
            command.to_string(),
        );
        self.writer
            .write(move |tx| {
                Box::pin(async move {
                    record_dispatch(&mut *tx, &deployment_id, &agents, deploy, &command).await
                })
            })
            .await
    }

    /// Appends to the step log, through the group commit: the events of many agents and
    /// deployments share one transaction and its fsync.
    pub async fn add_deployment_event(
        &self,
        deployment_id: &str,
        agent: Option<&str>,
        phase: &str,
        message: &str,
    ) -> Result<i64> {
        let (deployment_id, agent, phase, message) = (
            deployment_id.to_string(),
            agent.map(str::to_string),
            phase.to_string(),
            message.to_string(),
        );
        self.writer
            .write_statement(move |conn| {
                Box::pin(async move {
                    insert_event(conn, &deployment_id, agent.as_deref(), &phase, &message).await
                })
            })
            .await
    }

    /// The state of one target, `None` when the agent is not a target of the deployment.
    pub async fn target_status(
        &self,
        deployment_id: &str,
        agent: &str,
    ) -> Result<Option<TargetStatus>> {
        sqlx::query_scalar(
            "SELECT status FROM deployment_targets WHERE deployment_id = ? AND agent_name = ?",
        )
        .bind(deployment_id)
        .bind(agent)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)
    }

    /// Whether a later deployment of the same application was dispatched to `agent` (its
    /// target left `pending`): that one decides what the host serves now.
    pub async fn newer_dispatch_on(&self, deployment_id: &str, agent: &str) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS(SELECT 1 FROM deployment_targets t \
               JOIN deployment_logs d ON d.deployment_id = t.deployment_id \
               JOIN deployment_logs this ON this.deployment_id = ?1 \
              WHERE t.agent_name = ?2 AND d.application_id = this.application_id \
                AND d.id > this.id AND t.status NOT IN ('pending', 'skipped'))",
        )
        .bind(deployment_id)
        .bind(agent)
        .fetch_one(&self.pool)
        .await
        .map_err(internal)
    }

    /// Records a target's final state. Returns false when it already had one (a re-sent result).
    pub async fn finish_target(
        &self,
        deployment_id: &str,
        agent: &str,
        status: TargetStatus,
        container_id: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool> {
        let (deployment_id, agent, container_id, error) = (
            deployment_id.to_string(),
            agent.to_string(),
            container_id.map(str::to_string),
            error.map(str::to_string),
        );
        self.writer
            .write_statement(move |conn| {
                Box::pin(async move {
                    let done = sqlx::query(&format!(
                        "UPDATE deployment_targets SET status = ?, container_id = COALESCE(?, container_id), error_message = ?, \
                         completed_at = {NOW_MS}, \
                         duration_ms = CAST((julianday({NOW_MS}) - julianday(COALESCE(started_at, {NOW_MS}))) * 86400000 AS INTEGER) \
                         WHERE deployment_id = ? AND agent_name = ? AND status IN {open}",
                        open = TargetStatus::OPEN_SQL
                    ))
                    .bind(status)
                    .bind(container_id)
                    .bind(error)
                    .bind(deployment_id)
                    .bind(agent)
                    .execute(conn)
                    .await
                    .map_err(internal)?;
                    Ok(done.rows_affected() > 0)
                })
            })
            .await
    }

    /// Completes the aggregate row with the last line of its step log, `(phase, message)`,
    /// and moves the application to `running` (updating version and last_deployed_at) or
    /// `error` (R-5.6b), in one transaction. Returns the final row; `None` when it was
    /// already finished (it stays as it is, and no line is added).
    pub async fn finish_deployment(
        &self,
        deployment_id: &str,
        success: bool,
        error: Option<&FailureText<'_>>,
        last_event: (&str, &str),
    ) -> Result<Option<DeploymentLog>> {
        self.finish_deployment_as(deployment_id, success, error, None, last_event)
            .await
    }

    /// [`Store::finish_deployment`]; a failed deployment with `superseded_by` ends
    /// `superseded` by that one (cancelled, its targets rolled back).
    pub async fn finish_deployment_as(
        &self,
        deployment_id: &str,
        success: bool,
        error: Option<&FailureText<'_>>,
        superseded_by: Option<&str>,
        last_event: (&str, &str),
    ) -> Result<Option<DeploymentLog>> {
        let deployment_id = deployment_id.to_string();
        let error = error.map(|e| (e.detail.to_string(), e.public_reason.to_string()));
        let superseded_by = superseded_by.map(str::to_string);
        let (phase, message) = (last_event.0.to_string(), last_event.1.to_string());
        self.writer
            .write(move |tx| {
                Box::pin(async move {
                    let deployment_id = deployment_id.as_str();
                    let error = error.as_ref().map(|(detail, public_reason)| FailureText {
                        detail,
                        public_reason,
                    });
                    let error = error.as_ref();
                    let superseded_by = superseded_by.as_deref();
                let row: Option<(i64, String)> = sqlx::query_as(&format!(
                    "SELECT application_id, version FROM deployment_logs WHERE deployment_id = ? AND status IN {UNFINISHED_SQL}"
                ))
                .bind(deployment_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(internal)?;
                let Some((app_id, version)) = row else {
                    return Ok(None);
                };
                insert_event(&mut *tx, deployment_id, None, &phase, &message).await?;
                let log: DeploymentLog = sqlx::query_as(&format!(
                    "UPDATE deployment_logs SET status = ?, error_message = ?, public_reason = ?, superseded_by = ?, \
                     completed_at = datetime('now'), \
                     duration_ms = CAST((julianday({NOW_MS}) - julianday(started_at)) * 86400000 AS INTEGER) WHERE deployment_id = ? \
                     RETURNING *"
                ))
                .bind(match (success, superseded_by) {
                    (true, _) => DeploymentStatus::Success,
                    (false, Some(_)) => DeploymentStatus::Superseded,
                    (false, None) => DeploymentStatus::Failed,
                })
                .bind(error.map(|e| e.detail))
                .bind(error.map(|e| e.public_reason))
                .bind(superseded_by)
                .bind(deployment_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(internal)?;
                if success {
                    sqlx::query(
                        "UPDATE applications SET status = 'running', version = ?, last_deployed_at = datetime('now'), \
                         updated_at = datetime('now') WHERE id = ?",
                    )
                    .bind(&version)
                    .bind(app_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(internal)?;
                } else {
                    // A failed deploy that rolled back leaves the previous version serving: the app is
                    // still running if it was before. `error` only when nothing serves it.
                    let serving: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM deployment_logs WHERE application_id = ? AND status = ?",
                    )
                    .bind(app_id)
                    .bind(DeploymentStatus::Success)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(internal)?;
                    sqlx::query(
                        "UPDATE applications SET status = ?, updated_at = datetime('now') WHERE id = ?",
                    )
                    .bind(if serving > 0 { "running" } else { "error" })
                    .bind(app_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(internal)?;
                }
                Ok(Some(log))
                })
            })
            .await
    }

    /// The full id of the deployment `given` names: its id, or a prefix of exactly one
    /// deployment's id (`berth deploy show 3f2a`, as `git` takes a short hash). An ambiguous
    /// prefix is refused naming the candidates; an unknown one is not found.
    pub async fn resolve_deployment_id(&self, given: &str) -> Result<String> {
        const SHOWN: usize = 5;
        const FETCHED: i64 = 6;
        if given.is_empty() {
            return Err(Error::invalid("a deployment id is required"));
        }
        let exact: Option<String> =
            sqlx::query_scalar("SELECT deployment_id FROM deployment_logs WHERE deployment_id = ?")
                .bind(given)
                .fetch_optional(&self.pool)
                .await
                .map_err(internal)?;
        if let Some(id) = exact {
            return Ok(id);
        }
        // substr, not LIKE: `_` and `%` in the input are characters, not patterns.
        let matches: Vec<String> = sqlx::query_scalar(
            "SELECT deployment_id FROM deployment_logs \
             WHERE substr(deployment_id, 1, length(?1)) = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .bind(given)
        .bind(FETCHED)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)?;
        match matches.as_slice() {
            [] => Err(Error::not_found(format!("deployment {given} not found"))),
            [id] => Ok(id.clone()),
            many => {
                let shown: Vec<&str> = many.iter().take(SHOWN).map(String::as_str).collect();
                let more = if many.len() > SHOWN { ", …" } else { "" };
                Err(Error::invalid(format!(
                    "deployment id prefix {given} is ambiguous: it matches {}{more}; give more characters",
                    shown.join(", ")
                )))
            }
        }
    }

    pub async fn deployment(&self, deployment_id: &str) -> Result<(DeploymentLog, String)> {
        #[derive(sqlx::FromRow)]
        struct LogOfApp {
            #[sqlx(flatten)]
            log: DeploymentLog,
            app_name: String,
        }
        let found: LogOfApp = sqlx::query_as(
            "SELECT d.*, a.name AS app_name FROM deployment_logs d \
             JOIN applications a ON a.id = d.application_id WHERE d.deployment_id = ?",
        )
        .bind(deployment_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)?
        .ok_or_else(|| Error::not_found(format!("deployment {deployment_id} not found")))?;
        Ok((found.log, found.app_name))
    }

    /// Per agent, the container that serves `application_id` there (see [`ServingRow`]).
    pub async fn serving_containers(&self, application_id: i64) -> Result<Vec<ServingRow>> {
        sqlx::query_as(
            "SELECT t.agent_name, t.container_id, t.status, t.deployment_id, l.version \
             FROM deployment_targets t JOIN deployment_logs l ON l.deployment_id = t.deployment_id \
             WHERE l.application_id = ?1 AND t.container_id IS NOT NULL AND t.container_id != '' \
               AND t.id = (SELECT MAX(t2.id) FROM deployment_targets t2 \
                           JOIN deployment_logs l2 ON l2.deployment_id = t2.deployment_id \
                           WHERE l2.application_id = ?1 AND t2.agent_name = t.agent_name \
                             AND t2.container_id IS NOT NULL AND t2.container_id != '') \
             ORDER BY t.agent_name",
        )
        .bind(application_id)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }

    pub async fn deployment_targets(
        &self,
        deployment_id: &str,
    ) -> Result<Vec<DeploymentTargetRow>> {
        sqlx::query_as("SELECT agent_name, status, container_id, error_message, started_at, completed_at, duration_ms \
                        FROM deployment_targets WHERE deployment_id = ? ORDER BY id")
            .bind(deployment_id)
            .fetch_all(&self.pool)
            .await
            .map_err(internal)
    }

    pub async fn deployment_events(
        &self,
        deployment_id: &str,
        after_id: i64,
    ) -> Result<Vec<DeploymentEventRow>> {
        sqlx::query_as(
            "SELECT id, agent_name, phase, message, at FROM deployment_events \
                        WHERE deployment_id = ? AND id > ? ORDER BY id",
        )
        .bind(deployment_id)
        .bind(after_id)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }

    /// Deployments a previous run of the control plane left dispatching or running (queued
    /// ones are started after these, see [`Store::apps_with_queued`]).
    pub async fn unfinished_deployments(&self) -> Result<Vec<String>> {
        sqlx::query_scalar(&format!(
            "SELECT deployment_id FROM deployment_logs WHERE status IN {ACTIVE_SQL} ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }

    /// The deployment of an application that holds its slot (pending or running), if any.
    pub async fn active_deployment(&self, application_id: i64) -> Result<Option<String>> {
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        active_in(&mut conn, application_id).await
    }

    /// Takes the newest queued deployment of an application to run it: it becomes pending,
    /// and the older queued ones are superseded by it, in one transaction. Returns it and the
    /// rows it superseded; `None` when nothing is queued or another deployment holds the slot.
    pub async fn take_next_queued(
        &self,
        application_id: i64,
    ) -> Result<Option<(DeploymentLog, Vec<DeploymentLog>)>> {
        self.writer
            .write(move |tx| {
                Box::pin(async move {
                    // Decided here, like an admission: a deployment admitted since the slot
                    // freed holds it, and the queued one keeps waiting behind it.
                    if active_in(&mut *tx, application_id).await?.is_some() {
                        return Ok(None);
                    }
                    let next: Option<String> = sqlx::query_scalar(
                        "SELECT deployment_id FROM deployment_logs WHERE application_id = ? AND status = ? ORDER BY id DESC LIMIT 1",
                    )
                    .bind(application_id)
                    .bind(DeploymentStatus::Queued)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(internal)?;
                    let Some(next) = next else {
                        return Ok(None);
                    };
                    let superseded = supersede_queued(&mut *tx, application_id, &next).await?;
                    sqlx::query("UPDATE deployment_logs SET status = ? WHERE deployment_id = ?")
                        .bind(DeploymentStatus::Pending)
                        .bind(&next)
                        .execute(&mut *tx)
                        .await
                        .map_err(internal)?;
                    mark_deploying(&mut *tx, application_id).await?;
                    let started = "the application's slot is free; starting";
                    insert_event(&mut *tx, &next, None, "dequeued", started).await?;
                    let log: DeploymentLog =
                        sqlx::query_as("SELECT * FROM deployment_logs WHERE deployment_id = ?")
                            .bind(&next)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(internal)?;
                    Ok(Some((log, superseded)))
                })
            })
            .await
    }

    /// The target rows of a deployment that was admitted before it was prepared (taken from
    /// the queue), with its first batch recorded as dispatched (as an admission records it),
    /// in one transaction.
    pub async fn add_targets(
        &self,
        deployment_id: &str,
        targets: &[String],
        first_batch: &[String],
        note: Option<&str>,
    ) -> Result<()> {
        let (deployment_id, targets, first_batch, note) = (
            deployment_id.to_string(),
            targets.to_vec(),
            first_batch.to_vec(),
            note.map(str::to_string),
        );
        self.writer
            .write(move |tx| {
                Box::pin(async move {
                    prepare_targets(
                        &mut *tx,
                        &deployment_id,
                        &targets,
                        &first_batch,
                        note.as_deref(),
                    )
                    .await
                })
            })
            .await
    }

    /// Applications with a queued deployment and none holding the slot (after a restart).
    pub async fn apps_with_queued(&self) -> Result<Vec<i64>> {
        sqlx::query_scalar(&format!(
            "SELECT DISTINCT application_id FROM deployment_logs q WHERE q.status = 'queued' AND NOT EXISTS \
             (SELECT 1 FROM deployment_logs a WHERE a.application_id = q.application_id AND a.status IN {ACTIVE_SQL})"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }
}

/// How [`Store::admit_deployment`] admitted a deployment: its row and the rows it superseded,
/// as the admission's transaction committed them.
#[derive(Debug)]
pub struct Admission {
    pub log: DeploymentLog,
    pub slot: Slot,
    /// The application's queued deployments this one superseded (final rows).
    pub superseded: Vec<DeploymentLog>,
}

/// Whether an admitted deployment holds its application's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// It holds the slot: pending, with its target rows.
    Holds,
    /// Another deployment holds the slot: it waits behind this one.
    QueuedBehind(String),
}

/// The deployment of an application that holds its slot (pending or running), if any, as
/// the connection sees it (the writer's: every earlier write). `+id`: ordering by the rowid
/// made SQLite walk every deployment of the application; the (application, status) index
/// finds the one or two rows.
async fn active_in(tx: &mut sqlx::SqliteConnection, application_id: i64) -> Result<Option<String>> {
    sqlx::query_scalar(&format!(
        "SELECT deployment_id FROM deployment_logs WHERE application_id = ? AND status IN {ACTIVE_SQL} \
         ORDER BY +id LIMIT 1"
    ))
    .bind(application_id)
    .fetch_optional(tx)
    .await
    .map_err(internal)
}

/// One `pending` target row per agent, in the given order, as one set-based statement (a
/// 10,000-target deployment is not 10,000 round trips to the connection).
async fn insert_targets(
    tx: &mut sqlx::SqliteConnection,
    deployment_id: &str,
    targets: &[String],
) -> Result<()> {
    if targets.is_empty() {
        return Ok(());
    }
    let targets = serde_json::to_string(targets).map_err(|e| Error::Internal(e.to_string()))?;
    sqlx::query(
        "INSERT INTO deployment_targets (deployment_id, agent_name, status) \
         SELECT ?1, value, ?2 FROM json_each(?3) ORDER BY key",
    )
    .bind(deployment_id)
    .bind(TargetStatus::Pending)
    .bind(&targets)
    .execute(&mut *tx)
    .await
    .map_err(internal)?;
    Ok(())
}

/// A prepared deployment's target rows, its note, and its first batch recorded as
/// dispatched (the command word is always `deploy`: a rollout starts with deploys).
async fn prepare_targets(
    tx: &mut sqlx::SqliteConnection,
    deployment_id: &str,
    targets: &[String],
    first_batch: &[String],
    note: Option<&str>,
) -> Result<()> {
    insert_targets(&mut *tx, deployment_id, targets).await?;
    if let Some(note) = note {
        insert_event(&mut *tx, deployment_id, None, "prepare", note).await?;
    }
    if !first_batch.is_empty() {
        record_dispatch(&mut *tx, deployment_id, first_batch, true, "deploy").await?;
    }
    Ok(())
}

/// That a command is about to be sent to a batch of agents: the deployment is running, the
/// targets are running (for a deploy), and one `dispatch` event per agent.
async fn record_dispatch(
    tx: &mut sqlx::SqliteConnection,
    deployment_id: &str,
    agents: &[String],
    deploy: bool,
    command: &str,
) -> Result<()> {
    sqlx::query("UPDATE deployment_logs SET status = ? WHERE deployment_id = ? AND status = ?")
        .bind(DeploymentStatus::Running)
        .bind(deployment_id)
        .bind(DeploymentStatus::Pending)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
    // Set-based: a batch of 10,000 targets is two statements, not 20,000 round trips to the
    // connection before the first command goes out.
    let agents = serde_json::to_string(agents).map_err(|e| Error::Internal(e.to_string()))?;
    if deploy {
        sqlx::query(&format!(
            "UPDATE deployment_targets SET status = ?, started_at = {NOW_MS} \
             WHERE deployment_id = ? AND agent_name IN (SELECT value FROM json_each(?))"
        ))
        .bind(TargetStatus::Running)
        .bind(deployment_id)
        .bind(&agents)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
    }
    // json_each walks the array in order: the events keep the batch's order.
    sqlx::query(
        "INSERT INTO deployment_events (deployment_id, agent_name, phase, message) \
         SELECT ?1, value, 'dispatch', ?2 || ' sent to ' || value FROM json_each(?3) ORDER BY key",
    )
    .bind(deployment_id)
    .bind(command)
    .bind(&agents)
    .execute(&mut *tx)
    .await
    .map_err(internal)?;
    Ok(())
}

async fn mark_deploying(tx: &mut sqlx::SqliteConnection, application_id: i64) -> Result<()> {
    sqlx::query(
        "UPDATE applications SET status = 'deploying', updated_at = datetime('now') WHERE id = ?",
    )
    .bind(application_id)
    .execute(tx)
    .await
    .map_err(internal)?;
    Ok(())
}

/// The audit row of an admission: `{id} version {v}{more}`.
async fn audit_deploy(
    tx: &mut sqlx::SqliteConnection,
    d: &NewDeployment<'_>,
    action: &str,
    more: String,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (actor, action, target, details) \
         SELECT ?, ?, name, ? FROM applications WHERE id = ?",
    )
    .bind(d.actor)
    .bind(action)
    .bind(format!("{} version {}{more}", d.deployment_id, d.version))
    .bind(d.application_id)
    .execute(tx)
    .await
    .map_err(internal)?;
    Ok(())
}

/// The aggregate row of a new deployment with `status`, after superseding the application's
/// queued deployments by it (only the newest waits). Returns the new row and the superseded
/// ones.
async fn insert_log_row(
    tx: &mut sqlx::SqliteConnection,
    d: &NewDeployment<'_>,
    status: DeploymentStatus,
) -> Result<(DeploymentLog, Vec<DeploymentLog>)> {
    let superseded = supersede_queued(&mut *tx, d.application_id, d.deployment_id).await?;
    let log = sqlx::query_as(
        "INSERT INTO deployment_logs (application_id, version, deployment_id, trigger_type, trigger_source, status) \
         VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
    )
    .bind(d.application_id)
    .bind(d.version)
    .bind(d.deployment_id)
    .bind(d.trigger_type)
    .bind(d.trigger_source)
    .bind(status)
    .fetch_one(&mut *tx)
    .await
    .map_err(internal)?;
    Ok((log, superseded))
}

/// The parameters of [`queue_behind`], named once and opened by each of its statements:
/// sqlx binds a multi-statement query statement by statement, and a statement whose `?NNN`
/// numbers have gaps gets its later parameters left NULL; with this every statement uses
/// `?1`..`?11`, all of them.
const QUEUE_PARAMS: &str = "WITH p (app, id, version, trigger_type, source, superseded_why, \
     queued_why, behind, cancel_why, actor, details) AS \
     (VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11))";

/// The queued admission of a deployment behind `behind`, as one multi-statement round trip
/// to the connection (each statement of a write job is a hand-off to sqlx's SQLite thread
/// and back, most of an admission's cost): the older queued deployments superseded with
/// their events, the new row `queued`, its event, the `cancel` event of the running one when
/// asked, and the `deploy.queue` audit row. Returns the new row and the superseded ones.
async fn queue_behind(
    tx: &mut sqlx::SqliteConnection,
    d: &NewDeployment<'_>,
    behind: &str,
    cancel_running: bool,
) -> Result<(DeploymentLog, Vec<DeploymentLog>)> {
    let p = QUEUE_PARAMS;
    let cancel_why = cancel_running.then(|| {
        format!(
            "cancelled by deployment {}: no further batch; finishing cleanly",
            d.deployment_id
        )
    });
    // The superseded ones' events are inserted before the update that supersedes them (the
    // same rows: nothing else writes in between on this connection), so both statements find
    // them through the (application, status) index.
    let rows: Vec<DeploymentLog> = sqlx::query_as(&format!(
        "{p} INSERT INTO deployment_events (deployment_id, agent_name, phase, message) \
           SELECT l.deployment_id, NULL, 'superseded', p.superseded_why FROM p, deployment_logs l \
           WHERE l.application_id = p.app AND l.status = 'queued' AND l.deployment_id != p.id \
           ORDER BY l.id; \
         {p} UPDATE deployment_logs SET status = 'superseded', superseded_by = (SELECT id FROM p), \
           error_message = (SELECT superseded_why FROM p), public_reason = (SELECT superseded_why FROM p), \
           completed_at = datetime('now'), \
           duration_ms = CAST((julianday({NOW_MS}) - julianday(started_at)) * 86400000 AS INTEGER) \
           WHERE application_id = (SELECT app FROM p) AND status = 'queued' \
             AND deployment_id != (SELECT id FROM p) RETURNING *; \
         {p} INSERT INTO deployment_logs (application_id, version, deployment_id, trigger_type, trigger_source, status) \
           SELECT app, version, id, trigger_type, source, 'queued' FROM p RETURNING *; \
         {p} INSERT INTO deployment_events (deployment_id, agent_name, phase, message) \
           SELECT id, NULL, 'queued', queued_why FROM p; \
         {p} INSERT INTO deployment_events (deployment_id, agent_name, phase, message) \
           SELECT behind, NULL, 'cancel', cancel_why FROM p WHERE cancel_why IS NOT NULL; \
         {p} INSERT INTO audit_log (actor, action, target, details) \
           SELECT p.actor, 'deploy.queue', a.name, p.details FROM p JOIN applications a ON a.id = p.app"
    ))
    .bind(d.application_id)
    .bind(d.deployment_id)
    .bind(d.version)
    .bind(d.trigger_type)
    .bind(d.trigger_source)
    .bind(format!("superseded by deployment {}", d.deployment_id))
    .bind(format!("queued behind deployment {behind}"))
    .bind(behind)
    .bind(cancel_why)
    .bind(d.actor)
    .bind(format!("{} version {} behind {behind}", d.deployment_id, d.version))
    .fetch_all(&mut *tx)
    .await
    .map_err(internal)?;
    let (mut new, superseded): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .partition(|log| log.deployment_id == d.deployment_id);
    let log = new
        .pop()
        .ok_or_else(|| Error::Internal("the queued deployment row was not returned".into()))?;
    Ok((log, superseded))
}

/// Supersedes every queued deployment of an application but `by`, recording why. Returns
/// their final rows.
async fn supersede_queued(
    tx: &mut sqlx::SqliteConnection,
    application_id: i64,
    by: &str,
) -> Result<Vec<DeploymentLog>> {
    let superseded: Vec<DeploymentLog> = sqlx::query_as(&format!(
        "UPDATE deployment_logs SET status = ?, superseded_by = ?, error_message = ?, public_reason = ?, \
         completed_at = datetime('now'), \
         duration_ms = CAST((julianday({NOW_MS}) - julianday(started_at)) * 86400000 AS INTEGER) \
         WHERE application_id = ? AND status = ? AND deployment_id != ? RETURNING *"
    ))
    .bind(DeploymentStatus::Superseded)
    .bind(by)
    .bind(format!("superseded by deployment {by}"))
    .bind(format!("superseded by deployment {by}"))
    .bind(application_id)
    .bind(DeploymentStatus::Queued)
    .bind(by)
    .fetch_all(&mut *tx)
    .await
    .map_err(internal)?;
    for log in &superseded {
        sqlx::query("INSERT INTO deployment_events (deployment_id, agent_name, phase, message) VALUES (?, NULL, 'superseded', ?)")
            .bind(&log.deployment_id)
            .bind(format!("superseded by deployment {by}"))
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
    }
    Ok(superseded)
}

/// One step-log row, on the writer's connection.
async fn insert_event(
    conn: &mut sqlx::SqliteConnection,
    deployment_id: &str,
    agent: Option<&str>,
    phase: &str,
    message: &str,
) -> Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO deployment_events (deployment_id, agent_name, phase, message) VALUES (?, ?, ?, ?) RETURNING id",
    )
    .bind(deployment_id)
    .bind(agent)
    .bind(phase)
    .bind(message)
    .fetch_one(conn)
    .await
    .map_err(internal)
}
