//! Agents' reports — step events and command results — written together (issue 11): every
//! report that arrives while the writer is busy joins one write job of four set-based
//! statements, whatever the number of agents, instead of a job (and its round trips to the
//! connection) per report. A fan-out to 10,000 agents sends about 70,000 of them.
//!
//! Architecture invariants:
//! - Reports are written in the order they arrived: one pending batch at a time, queued on the
//!   group commit when its first report arrives; in a batch the events go before the results.
//!   An agent sends its events before its result, so a result is never durable before the
//!   events that came before it.
//! - Each report hears its own outcome (stored, recorded) once its batch is durable, or why it
//!   was not written; nothing is acknowledged before the commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sqlx::SqliteConnection;
use tokio::sync::oneshot;

use super::writer::{Durable, Undo};
use super::{internal, Store, NOW_MS};
use crate::error::{Error, Result};
use crate::model::TargetStatus;

/// One message of an agent that goes to the database.
#[derive(Debug)]
pub(crate) enum Report {
    /// A step of a command; stored only for a target of the deployment, up to `cap` events
    /// per target, the last of which says that later ones are dropped.
    Event {
        deployment_id: String,
        agent: String,
        phase: String,
        message: String,
        cap: i64,
    },
    /// A command's result: the target's new state, recorded only while the target is not
    /// finished ([`TargetStatus::OPEN_SQL`]).
    Result {
        deployment_id: String,
        agent: String,
        status: TargetStatus,
        container_id: Option<String>,
        error: Option<String>,
    },
}

type Pending = Vec<(Report, oneshot::Sender<Result<bool>>)>;

/// The batch waiting for the writer, if one is queued and has not started.
#[derive(Clone, Default)]
pub(super) struct Reports(Arc<Mutex<Option<Pending>>>);

impl Reports {
    fn take(&self) -> Option<Pending> {
        self.0.lock().expect("reports lock").take()
    }

    /// Tells every report of the pending batch that it was not written, and why.
    fn fail_pending(&self, why: &str) {
        for (_, sender) in self.take().unwrap_or_default() {
            let _ = sender.send(Err(Error::Unavailable(why.to_string())));
        }
    }
}

/// The answers of a batch's reports; any still unanswered when dropped (the job failed, the
/// commit failed, the writer stopped) hear why.
struct Answers {
    senders: Vec<oneshot::Sender<Result<bool>>>,
    outcomes: Vec<bool>,
}

impl Answers {
    fn fail(&mut self, why: &str) {
        for sender in self.senders.drain(..) {
            let _ = sender.send(Err(Error::Unavailable(why.to_string())));
        }
    }
}

impl Drop for Answers {
    fn drop(&mut self) {
        self.fail("the report was not written: the database refused its batch");
    }
}

impl Store {
    /// Queues an agent's report behind every report before it and returns what will say, once
    /// it is durable, whether it was stored (an event) or recorded (a result).
    pub(crate) async fn queue_report(&self, report: Report) -> Result<Durable<bool>> {
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut pending = self.reports.0.lock().expect("reports lock");
            match pending.as_mut() {
                Some(batch) => {
                    batch.push((report, tx));
                    false
                }
                None => {
                    *pending = Some(vec![(report, tx)]);
                    true
                }
            }
        };
        if first {
            let reports = self.reports.clone();
            // Set once the job took its batch: a job that never ran (the writer closed, or its
            // transaction could not begin) leaves the batch pending, and its reports are told.
            let taken = Arc::new(AtomicBool::new(false));
            let job_taken = taken.clone();
            let queued = self
                .writer
                .enqueue_as(Undo::Savepoint, move |conn| {
                    Box::pin(async move {
                        // From here on, new reports start the next batch.
                        let batch = reports.take();
                        job_taken.store(true, Ordering::Release);
                        let (reports, senders): (Vec<Report>, Vec<_>) =
                            batch.unwrap_or_default().into_iter().unzip();
                        let mut answers = Answers {
                            senders,
                            outcomes: Vec::new(),
                        };
                        match write(conn, &reports).await {
                            Ok(outcomes) => {
                                answers.outcomes = outcomes;
                                Ok(answers)
                            }
                            Err(e) => {
                                answers.fail(&e.to_string());
                                Err(e)
                            }
                        }
                    })
                })
                .await;
            let written = match queued {
                Ok(written) => written,
                Err(e) => {
                    self.reports.fail_pending(&e.to_string());
                    return Err(e);
                }
            };
            let reports = self.reports.clone();
            tokio::spawn(async move {
                match written.await {
                    Ok(mut answers) => {
                        let outcomes = std::mem::take(&mut answers.outcomes);
                        for (sender, outcome) in answers.senders.drain(..).zip(outcomes) {
                            let _ = sender.send(Ok(outcome));
                        }
                    }
                    // The job ran: its answers were dropped, which told every report why.
                    Err(_) if taken.load(Ordering::Acquire) => {}
                    Err(e) => reports.fail_pending(&e.to_string()),
                }
            });
        }
        Ok(Durable::new(rx))
    }
}

#[derive(Serialize)]
struct EventRow<'a> {
    d: &'a str,
    a: &'a str,
    p: &'a str,
    m: &'a str,
}

#[derive(Serialize)]
struct ResultRow<'a> {
    d: &'a str,
    a: &'a str,
    s: &'static str,
    c: Option<&'a str>,
    e: Option<&'a str>,
}

type Pair<'a> = (&'a str, &'a str);

/// Writes a batch; one outcome per report, in order.
async fn write(conn: &mut SqliteConnection, reports: &[Report]) -> Result<Vec<bool>> {
    let mut outcomes = vec![false; reports.len()];
    let pairs: Vec<Pair<'_>> = reports
        .iter()
        .map(|r| match r {
            Report::Event {
                deployment_id,
                agent,
                ..
            }
            | Report::Result {
                deployment_id,
                agent,
                ..
            } => (deployment_id.as_str(), agent.as_str()),
        })
        .collect();
    let targets = targets_of(conn, &pairs).await?;

    // Events: numbered per target after the ones already stored.
    let mut sent: HashMap<Pair<'_>, i64> = HashMap::new();
    let mut notices = Vec::new();
    let mut events = Vec::new();
    for (i, report) in reports.iter().enumerate() {
        let Report::Event {
            phase,
            message,
            cap,
            ..
        } = report
        else {
            continue;
        };
        let pair = pairs[i];
        let Some(target) = targets.get(&pair) else {
            continue;
        };
        let n = sent.entry(pair).or_insert(target.events);
        if *n >= *cap {
            continue;
        }
        *n += 1;
        outcomes[i] = true;
        if *n == *cap {
            notices.push((
                i,
                format!(
                    "{cap} events from {}: later events of this deployment are dropped",
                    pair.1
                ),
            ));
        }
        events.push((i, phase.as_str(), message.as_str()));
    }
    if !events.is_empty() {
        let notices: HashMap<usize, &str> = notices.iter().map(|(i, m)| (*i, m.as_str())).collect();
        let rows: Vec<EventRow<'_>> = events
            .iter()
            .map(|(i, phase, message)| match notices.get(i) {
                Some(notice) => EventRow {
                    d: pairs[*i].0,
                    a: pairs[*i].1,
                    p: "events",
                    m: notice,
                },
                None => EventRow {
                    d: pairs[*i].0,
                    a: pairs[*i].1,
                    p: phase,
                    m: message,
                },
            })
            .collect();
        sqlx::query(
            "INSERT INTO deployment_events (deployment_id, agent_name, phase, message) \
             SELECT value ->> 'd', value ->> 'a', value ->> 'p', value ->> 'm' FROM json_each(?) ORDER BY key",
        )
        .bind(json(&rows)?)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
    }

    // Results: each one recorded while its target is open, in order; one update per target.
    let mut state: HashMap<Pair<'_>, TargetStatus> = HashMap::new();
    let mut last: HashMap<Pair<'_>, ResultRow<'_>> = HashMap::new();
    let mut order = Vec::new();
    for (i, report) in reports.iter().enumerate() {
        let Report::Result {
            status,
            container_id,
            error,
            ..
        } = report
        else {
            continue;
        };
        let pair = pairs[i];
        let Some(target) = targets.get(&pair) else {
            continue;
        };
        let current = state.entry(pair).or_insert(target.status);
        if current.is_finished() {
            continue;
        }
        *current = *status;
        outcomes[i] = true;
        let container = container_id
            .as_deref()
            .or_else(|| last.get(&pair).and_then(|row| row.c));
        if !last.contains_key(&pair) {
            order.push(pair);
        }
        last.insert(
            pair,
            ResultRow {
                d: pair.0,
                a: pair.1,
                s: status.as_str(),
                c: container,
                e: error.as_deref(),
            },
        );
    }
    if !order.is_empty() {
        let rows: Vec<&ResultRow<'_>> = order.iter().map(|pair| &last[pair]).collect();
        sqlx::query(&format!(
            "UPDATE deployment_targets SET status = r.s, container_id = COALESCE(r.c, container_id), \
             error_message = r.e, completed_at = {NOW_MS}, \
             duration_ms = CAST((julianday({NOW_MS}) - julianday(COALESCE(started_at, {NOW_MS}))) * 86400000 AS INTEGER) \
             FROM (SELECT value ->> 'd' AS d, value ->> 'a' AS a, value ->> 's' AS s, value ->> 'c' AS c, value ->> 'e' AS e \
                   FROM json_each(?)) AS r \
             WHERE deployment_targets.deployment_id = r.d AND deployment_targets.agent_name = r.a"
        ))
        .bind(json(&rows)?)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
    }
    Ok(outcomes)
}

/// What a batch needs to know of each target it names.
struct TargetNow {
    status: TargetStatus,
    events: i64,
}

/// The targets among `pairs` (a pair that is not a target of its deployment is absent), with
/// their state and how many events they have stored.
async fn targets_of<'a>(
    conn: &mut SqliteConnection,
    pairs: &[Pair<'a>],
) -> Result<HashMap<Pair<'a>, TargetNow>> {
    let mut distinct: Vec<Pair<'a>> = pairs.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let asked: Vec<[&str; 2]> = distinct.iter().map(|(d, a)| [*d, *a]).collect();
    let rows: Vec<(String, String, TargetStatus, i64)> = sqlx::query_as(
        "SELECT t.deployment_id, t.agent_name, t.status, \
                (SELECT COUNT(*) FROM deployment_events e WHERE e.deployment_id = t.deployment_id AND e.agent_name = t.agent_name) \
         FROM json_each(?) j JOIN deployment_targets t \
           ON t.deployment_id = j.value ->> 0 AND t.agent_name = j.value ->> 1",
    )
    .bind(json(&asked)?)
    .fetch_all(&mut *conn)
    .await
    .map_err(internal)?;
    let mut targets = HashMap::with_capacity(rows.len());
    for (deployment_id, agent, status, events) in rows {
        // Back to the borrowed pair the batch uses.
        if let Ok(at) = distinct.binary_search(&(deployment_id.as_str(), agent.as_str())) {
            targets.insert(distinct[at], TargetNow { status, events });
        }
    }
    Ok(targets)
}

fn json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Internal(format!("cannot encode a batch: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file-backed store (so reports share batches) with deployment `d1` targeting `a1`
    /// and `a2` (running); `a3` is enrolled in nothing.
    async fn store_with_targets(dir: &std::path::Path) -> Store {
        let store = Store::open(&dir.join("berth.db")).await.unwrap();
        for sql in [
            "INSERT INTO applications (id, name, image) VALUES (1, 'web', 'web')",
            "INSERT INTO deployment_logs (application_id, version, deployment_id, trigger_type, status) \
             VALUES (1, 'v1', 'd1', 'api', 'running')",
            "INSERT INTO deployment_targets (deployment_id, agent_name, status) VALUES ('d1', 'a1', 'running'), ('d1', 'a2', 'running')",
        ] {
            sqlx::query(sql).execute(&store.pool).await.unwrap();
        }
        store
    }

    fn event(agent: &str, n: usize, cap: i64) -> Report {
        Report::Event {
            deployment_id: "d1".into(),
            agent: agent.into(),
            phase: "step".into(),
            message: format!("{agent} line {n}"),
            cap,
        }
    }

    fn result(agent: &str, status: TargetStatus, container: Option<&str>) -> Report {
        Report::Result {
            deployment_id: "d1".into(),
            agent: agent.into(),
            status,
            container_id: container.map(str::to_string),
            error: (status == TargetStatus::Failed).then(|| "it broke".to_string()),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_queued_together_keep_order_caps_and_each_their_own_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_targets(dir.path()).await;
        let before = store.writer.batches().unwrap();
        // Queued back to back without waiting: they share batches (events crossing the cap
        // inside one batch among them).
        let mut queued = Vec::new();
        for n in 0..8 {
            queued.push((
                "a1 event",
                n < 5,
                store.queue_report(event("a1", n, 5)).await.unwrap(),
            ));
            queued.push((
                "a3 event",
                false,
                store.queue_report(event("a3", n, 5)).await.unwrap(),
            ));
        }
        queued.push((
            "a2 failed",
            true,
            store
                .queue_report(result("a2", TargetStatus::Failed, None))
                .await
                .unwrap(),
        ));
        // A target is finished by its first result: a second one is not recorded.
        queued.push((
            "a2 success after failed",
            false,
            store
                .queue_report(result("a2", TargetStatus::Success, Some("c-late")))
                .await
                .unwrap(),
        ));
        // `success` stays open (a rollback may follow): both are recorded, the container kept.
        queued.push((
            "a1 success",
            true,
            store
                .queue_report(result("a1", TargetStatus::Success, Some("c-1")))
                .await
                .unwrap(),
        ));
        queued.push((
            "a1 rolled back",
            true,
            store
                .queue_report(result("a1", TargetStatus::RolledBack, None))
                .await
                .unwrap(),
        ));
        queued.push((
            "a3 result",
            false,
            store
                .queue_report(result("a3", TargetStatus::Success, None))
                .await
                .unwrap(),
        ));
        let count = queued.len() as u64;
        for (what, expected, outcome) in queued {
            assert_eq!(outcome.await.unwrap(), expected, "{what}");
        }
        let batches = store.writer.batches().unwrap() - before;
        assert!(batches < count, "{batches} batches for {count} reports");

        let events: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT agent_name, phase, message FROM deployment_events WHERE deployment_id = 'd1' ORDER BY id",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        let lines: Vec<&str> = events.iter().map(|(_, _, m)| m.as_str()).collect();
        assert_eq!(
            lines,
            [
                "a1 line 0",
                "a1 line 1",
                "a1 line 2",
                "a1 line 3",
                "5 events from a1: later events of this deployment are dropped"
            ]
        );
        assert_eq!(events[4].1, "events");

        let targets: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT agent_name, status, container_id, error_message FROM deployment_targets ORDER BY agent_name",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert_eq!(
            targets,
            [
                ("a1".into(), "rolled_back".into(), Some("c-1".into()), None),
                ("a2".into(), "failed".into(), None, Some("it broke".into())),
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_result_is_durable_only_with_the_events_sent_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.db");
        let store = store_with_targets(dir.path()).await;
        for n in 0..50 {
            // Not awaited: the result's acknowledgement is the point.
            drop(store.queue_report(event("a1", n, 1000)).await.unwrap());
        }
        let recorded = store
            .queue_report(result("a1", TargetStatus::Success, Some("c-1")))
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(recorded);
        // Read on another connection the moment the result is acknowledged.
        let other = Store::open(&path).await.unwrap();
        let stored: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deployment_events WHERE deployment_id = 'd1' AND agent_name = 'a1'",
        )
        .fetch_one(&other.pool)
        .await
        .unwrap();
        assert_eq!(stored, 50);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_to_a_closed_store_are_refused_not_left_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_targets(dir.path()).await;
        store.close().await;
        for n in 0..3 {
            // A liveness bound, not a timing: a report stuck in a batch no job will write
            // would wait forever.
            let outcome = tokio::time::timeout(std::time::Duration::from_secs(30), async {
                store.queue_report(event("a1", n, 1000)).await?.await
            })
            .await
            .expect("the report was left waiting");
            assert!(outcome.is_err(), "report {n}: {outcome:?}");
        }
    }
}
