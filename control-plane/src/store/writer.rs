//! Group commit (issue 11): one task owns a write connection and commits every write queued
//! behind the one it is running as a single transaction, then acknowledges each of them
//! after that transaction's one fsync — PostgreSQL's group commit, for SQLite.
//!
//! Durability is exactly that of a transaction per write: no caller hears "done" before the
//! commit holding its write is on disk. Each write runs in a savepoint of its own, so one that
//! fails (a constraint, a refused change) is undone alone and reports its own error, while
//! the others of the batch commit. Under no load a batch is one write and nothing waits for
//! company; under load a batch grows to what queued during the previous fsync.
//!
//! Architecture invariant: a write job only runs SQL on the connection it is given; it never
//! awaits another store write (that would wait for the writer it is running on).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection as _, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::internal;
use crate::error::{Error, Result};

/// A boxed future borrowing the write connection.
pub type WriteFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'c>>;

/// Writes one batch may hold; more wait for the next commit.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer; past it, callers wait for room.
const QUEUE: usize = 8192;

/// What a job tells the writer: whether to keep its savepoint, and how to acknowledge it once
/// the batch's commit is known (`None`: committed; `Some(why)`: the commit failed).
pub(super) struct Ran {
    ok: bool,
    acknowledge: Box<dyn FnOnce(Option<String>) + Send>,
}

/// A queued write: run on the connection, or (`Err`) told why it never ran.
type Job = Box<
    dyn for<'c> FnOnce(
            std::result::Result<&'c mut SqliteConnection, String>,
        ) -> Pin<Box<dyn Future<Output = Ran> + Send + 'c>>
        + Send,
>;

pub(super) enum Message {
    Write(Job, Undo),
    Close(oneshot::Sender<()>),
}

/// How a job that fails is undone without undoing the rest of its batch.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Undo {
    /// A savepoint of its own around it: the job may change rows with several statements.
    Savepoint,
    /// Nothing to do: the job changes the database with at most one statement, its last, and
    /// SQLite undoes a statement that fails by itself while keeping the transaction. Saves
    /// two round trips to the connection per job, on the paths that run once per agent.
    Statement,
}

/// A queued write's outcome, known once its transaction is durable (or refused).
pub(crate) struct Durable<T>(oneshot::Receiver<Result<T>>);

impl<T> Durable<T> {
    /// An outcome another part of the store answers (see `reports.rs`).
    pub(super) fn new(answer: oneshot::Receiver<Result<T>>) -> Self {
        Durable(answer)
    }
}

impl<T> Future for Durable<T> {
    type Output = Result<T>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<T>> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.map_err(|_| closed())?)
    }
}

/// Where writes go. Cheap to clone.
#[derive(Clone)]
pub(super) enum Writer {
    /// The group-committing task of a database file, and how many batches it committed.
    Task(mpsc::Sender<Message>, Arc<AtomicU64>),
    /// An in-memory database exists on one connection only: each write is its own
    /// transaction on the pool.
    Pool(SqlitePool),
}

impl Writer {
    /// Opens the write connection and starts the task.
    pub(super) async fn start(options: SqliteConnectOptions) -> Result<Writer> {
        let conn = SqliteConnection::connect_with(&options)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot open database: {e}")))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let batches = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(conn, rx, batches.clone()));
        Ok(Writer::Task(tx, batches))
    }

    /// Runs `f` in a transaction and returns its output once that transaction is durable.
    pub(super) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> WriteFuture<'c, T> + Send + 'static,
    {
        self.enqueue_as(Undo::Savepoint, f).await?.await
    }

    /// [`Writer::write`] for a job whose only change is one statement, its last (see
    /// [`Undo::Statement`]).
    pub(super) async fn write_statement<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> WriteFuture<'c, T> + Send + 'static,
    {
        self.enqueue_as(Undo::Statement, f).await?.await
    }

    /// Queues `f` behind every write queued before it (waiting only for room in the queue)
    /// and returns what will say, once its transaction is durable, how it went. A caller
    /// that must keep its writes in order without waiting for each commit (agents' reports,
    /// read message after message from a stream) queues the next one at once.
    pub(super) async fn enqueue_as<T, F>(&self, undo: Undo, f: F) -> Result<Durable<T>>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> WriteFuture<'c, T> + Send + 'static,
    {
        match self {
            Writer::Pool(pool) => {
                let out = async {
                    let mut tx = pool.begin().await.map_err(internal)?;
                    let out = f(&mut tx).await?;
                    tx.commit().await.map_err(internal)?;
                    Ok(out)
                }
                .await;
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(out);
                Ok(Durable(rx))
            }
            Writer::Task(queue, _) => {
                let (tx, rx) = oneshot::channel::<Result<T>>();
                let job: Job = Box::new(move |conn| {
                    Box::pin(async move {
                        let conn = match conn {
                            Ok(conn) => conn,
                            Err(why) => {
                                let _ = tx.send(Err(Error::Unavailable(why)));
                                return Ran {
                                    ok: false,
                                    acknowledge: Box::new(|_| {}),
                                };
                            }
                        };
                        match f(conn).await {
                            Ok(out) => Ran {
                                ok: true,
                                acknowledge: Box::new(move |failed: Option<String>| {
                                    let _ = tx.send(match failed {
                                        None => Ok(out),
                                        Some(why) => Err(Error::Unavailable(why)),
                                    });
                                }),
                            },
                            Err(e) => Ran {
                                ok: false,
                                // Undone alone; its error needs no commit to be true.
                                acknowledge: Box::new(move |_| {
                                    let _ = tx.send(Err(e));
                                }),
                            },
                        }
                    })
                });
                queue
                    .send(Message::Write(job, undo))
                    .await
                    .map_err(|_| closed())?;
                Ok(Durable(rx))
            }
        }
    }

    /// Commits what is queued and closes the write connection; later writes fail.
    pub(super) async fn close(&self) {
        if let Writer::Task(queue, _) = self {
            let (tx, rx) = oneshot::channel();
            if queue.send(Message::Close(tx)).await.is_ok() {
                let _ = rx.await;
            }
        }
    }
}

impl Writer {
    /// Transactions committed so far (each holding one or more writes); `None` on the pool.
    pub(super) fn batches(&self) -> Option<u64> {
        match self {
            Writer::Task(_, batches) => Some(batches.load(Ordering::Relaxed)),
            Writer::Pool(_) => None,
        }
    }
}

/// What the callers of a batch hear when the database refused it (a full disk says so).
fn failure(e: sqlx::Error) -> String {
    match internal(e) {
        Error::Internal(why) => format!("cannot write to the database: {why}"),
        other => other.to_string(),
    }
}

fn closed() -> Error {
    Error::Unavailable("the database is closed".to_string())
}

async fn run(
    mut conn: SqliteConnection,
    mut queue: mpsc::Receiver<Message>,
    batches: Arc<AtomicU64>,
) {
    let mut close = None;
    while close.is_none() {
        let Some(first) = queue.recv().await else {
            break;
        };
        let mut batch = Vec::new();
        match first {
            Message::Write(job, undo) => batch.push((job, undo)),
            Message::Close(ack) => close = Some(ack),
        }
        while close.is_none() && batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(Message::Write(job, undo)) => batch.push((job, undo)),
                Ok(Message::Close(ack)) => close = Some(ack),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let jobs = batch.len();
            let timing = commit_batch(&mut conn, batch).await;
            batches.fetch_add(1, Ordering::Relaxed);
            if timing.total() >= SLOW_BATCH {
                // What an operator needs to tell a lock wait (another connection writing)
                // from slow jobs from a slow commit (fsync, checkpoint).
                tracing::warn!(
                    jobs,
                    lock_wait_ms = timing.begin.as_millis(),
                    jobs_ms = timing.jobs.as_millis(),
                    commit_ms = timing.commit.as_millis(),
                    "slow database commit"
                );
            }
        }
    }
    let _ = conn.close().await;
    if let Some(ack) = close {
        let _ = ack.send(());
    }
}

/// A batch that takes this long is logged with where its time went.
const SLOW_BATCH: Duration = Duration::from_millis(250);

/// Where a batch's time went: waiting for SQLite's write lock, running the jobs, committing.
#[derive(Default)]
struct Timing {
    begin: Duration,
    jobs: Duration,
    commit: Duration,
}

impl Timing {
    fn total(&self) -> Duration {
        self.begin + self.jobs + self.commit
    }
}

/// One transaction for the whole batch, a savepoint per job that needs one, one commit.
async fn commit_batch(conn: &mut SqliteConnection, batch: Vec<(Job, Undo)>) -> Timing {
    let mut timing = Timing::default();
    let started = Instant::now();
    let begun = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await;
    timing.begin = started.elapsed();
    if let Err(e) = begun {
        let why = failure(e);
        for (job, _) in batch {
            // Never run: each caller hears why (nothing of it was written).
            job(Err(why.clone())).await;
        }
        return timing;
    }
    let mut committed = Vec::with_capacity(batch.len());
    let mut jobs = batch.into_iter();
    while let Some((job, undo)) = jobs.next() {
        if undo == Undo::Savepoint {
            if let Err(e) = sqlx::query("SAVEPOINT job").execute(&mut *conn).await {
                job(Err(failure(e))).await;
                continue;
            }
        }
        let ran = job(Ok(&mut *conn)).await;
        if ran.ok {
            if undo == Undo::Savepoint {
                let _ = sqlx::query("RELEASE job").execute(&mut *conn).await;
            }
            committed.push(ran.acknowledge);
            continue;
        }
        let undone = match undo {
            // A missing savepoint means the transaction is gone.
            Undo::Savepoint => sqlx::query("ROLLBACK TO job")
                .execute(&mut *conn)
                .await
                .map(drop)
                .map_err(|_| ROLLED_BACK.to_string()),
            Undo::Statement => still_in_transaction(conn).await,
        };
        if let Err(why) = undone {
            // The transaction is gone: SQLite rolled it back (a full disk, an I/O error).
            // Nothing of the batch was written; every caller hears so, and the rest of the
            // batch does not run outside a transaction.
            (ran.acknowledge)(None);
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            for acknowledge in committed {
                acknowledge(Some(why.clone()));
            }
            for (job, _) in jobs {
                job(Err(why.clone())).await;
            }
            return timing;
        }
        if undo == Undo::Savepoint {
            let _ = sqlx::query("RELEASE job").execute(&mut *conn).await;
        }
        (ran.acknowledge)(None);
    }
    timing.jobs = started.elapsed() - timing.begin;
    let committing = Instant::now();
    let failed = match sqlx::query("COMMIT").execute(&mut *conn).await {
        Ok(_) => None,
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Some(failure(e))
        }
    };
    timing.commit = committing.elapsed();
    for acknowledge in committed {
        acknowledge(failed.clone());
    }
    timing
}

/// What the other writes of a batch hear when one of them failed in a way that made SQLite
/// roll the whole transaction back (a full disk, an I/O error); the failed one hears its own
/// cause.
const ROLLED_BACK: &str =
    "cannot write to the database: another write of the same batch failed and SQLite rolled the batch back; retry";

/// After a job without a savepoint failed: whether the batch's transaction survived the
/// failed statement (SQLite keeps it for a constraint, may roll it back for a full disk or an
/// I/O error). `BEGIN` is refused inside a transaction and only there.
async fn still_in_transaction(conn: &mut SqliteConnection) -> std::result::Result<(), String> {
    match sqlx::query("BEGIN").execute(&mut *conn).await {
        Err(e) if e.to_string().contains("within a transaction") => Ok(()),
        Err(e) => Err(failure(e)),
        Ok(_) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(ROLLED_BACK.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::super::Store;
    use super::*;

    async fn audit_targets(store: &Store) -> Vec<String> {
        sqlx::query_scalar("SELECT target FROM audit_log WHERE action = 'test.write'")
            .fetch_all(&store.pool)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_each_is_acknowledged_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("berth.db")).await.unwrap();
        let before = store.writer.batches().unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..300 {
            let store = store.clone();
            tasks.spawn(async move {
                store
                    .audit("test", "test.write", &format!("w{n}"), None)
                    .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        let batches = store.writer.batches().unwrap() - before;
        // 300 writes queued while fsyncs ran: far fewer commits than writes.
        assert!(batches < 300, "{batches} commits for 300 writes");
        store.close().await;
        let reopened = Store::open(&dir.path().join("berth.db")).await.unwrap();
        assert_eq!(audit_targets(&reopened).await.len(), 300);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_is_undone_alone_and_the_rest_of_its_batch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("berth.db")).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..50 {
            let store = store.clone();
            tasks.spawn(async move {
                let fails = n % 10 == 3;
                let outcome = store
                    .writer
                    .write(move |conn| {
                        Box::pin(async move {
                            sqlx::query(
                                "INSERT INTO audit_log (actor, action, target) VALUES ('test', 'test.write', ?)",
                            )
                            .bind(format!("w{n}"))
                            .execute(&mut *conn)
                            .await
                            .map_err(internal)?;
                            if fails {
                                // A statement that fails after the job already wrote a row.
                                sqlx::query("INSERT INTO no_such_table VALUES (1)")
                                    .execute(&mut *conn)
                                    .await
                                    .map_err(internal)?;
                            }
                            Ok(n)
                        })
                    })
                    .await;
                (n, fails, outcome)
            });
        }
        let mut expected = HashSet::new();
        while let Some(done) = tasks.join_next().await {
            let (n, fails, outcome) = done.unwrap();
            assert_eq!(outcome.is_err(), fails, "write {n}: {outcome:?}");
            if !fails {
                assert_eq!(outcome.unwrap(), n);
                expected.insert(format!("w{n}"));
            }
        }
        let stored: HashSet<String> = audit_targets(&store).await.into_iter().collect();
        assert_eq!(stored, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_statement_job_changes_nothing_and_its_batch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("berth.db")).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..60 {
            let store = store.clone();
            tasks.spawn(async move {
                let fails = n % 7 == 2;
                let outcome = store
                    .writer
                    .write_statement(move |conn| {
                        Box::pin(async move {
                            // One statement; a failing one violates NOT NULL on its second row,
                            // after SQLite inserted the first: the statement is undone whole.
                            let action = (!fails).then_some("test.write");
                            sqlx::query(
                                "INSERT INTO audit_log (actor, action, target) VALUES ('test', 'test.write', ?), ('test', ?, ?)",
                            )
                            .bind(format!("w{n}"))
                            .bind(action)
                            .bind(format!("w{n}b"))
                            .execute(&mut *conn)
                            .await
                            .map_err(internal)?;
                            Ok(n)
                        })
                    })
                    .await;
                (n, fails, outcome)
            });
        }
        let mut expected = HashSet::new();
        while let Some(done) = tasks.join_next().await {
            let (n, fails, outcome) = done.unwrap();
            assert_eq!(outcome.is_err(), fails, "write {n}: {outcome:?}");
            if !fails {
                expected.insert(format!("w{n}"));
                expected.insert(format!("w{n}b"));
            }
        }
        let stored: HashSet<String> = audit_targets(&store).await.into_iter().collect();
        assert_eq!(stored, expected);
    }

    /// A job inserting one audit row.
    fn insert_audit(
        target: String,
    ) -> impl for<'c> FnOnce(&'c mut SqliteConnection) -> WriteFuture<'c, ()> + Send + 'static {
        move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO audit_log (actor, action, target) VALUES ('test', 'test.write', ?)",
                )
                .bind(target)
                .execute(&mut *conn)
                .await
                .map_err(internal)?;
                Ok(())
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_sqlite_rolled_back_is_reported_failed_whole_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("berth.db")).await.unwrap();
        // What a full disk or an I/O error does to a transaction: SQLite ends it, not only
        // the statement.
        sqlx::query(
            "CREATE TRIGGER test_rollback BEFORE INSERT ON audit_log WHEN NEW.target LIKE 'boom%' \
             BEGIN SELECT RAISE(ROLLBACK, 'rolled back'); END",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let mut acknowledged = HashSet::<String>::new();
        let mut refused = HashSet::new();
        for undo in [Undo::Statement, Undo::Savepoint] {
            // A job that holds the writer while the next batch queues behind it: a write
            // before the failing one, the failing one, and one after it share that batch.
            let (started_tx, started) = oneshot::channel();
            let (release, released) = oneshot::channel::<()>();
            let holding = store
                .writer
                .enqueue_as(Undo::Savepoint, |_| {
                    Box::pin(async move {
                        let _ = started_tx.send(());
                        let _ = released.await;
                        Ok(())
                    })
                })
                .await
                .unwrap();
            started.await.unwrap();
            let mut queued = Vec::new();
            for target in ["before", "boom", "after"] {
                let target = format!("{target}-{}", undo == Undo::Statement);
                let job = insert_audit(target.clone());
                queued.push((target, store.writer.enqueue_as(undo, job).await.unwrap()));
            }
            let _ = release.send(());
            holding.await.unwrap();
            for (target, outcome) in queued {
                match outcome.await {
                    Ok(()) => acknowledged.insert(target),
                    Err(e) => {
                        if !target.starts_with("boom") {
                            assert!(e.to_string().contains("rolled the batch back"), "{e}");
                        }
                        refused.insert(target)
                    }
                };
            }
        }
        // The whole batch is refused both ways, each write with its reason.
        assert_eq!(refused.len(), 6, "{refused:?}");
        let stored: HashSet<String> = audit_targets(&store).await.into_iter().collect();
        // Every acknowledged write is there, no refused one is (none written outside a
        // transaction after the rollback).
        assert_eq!(stored, acknowledged);
        assert!(stored.is_disjoint(&refused), "refused writes were stored");
        // The writer goes on.
        store
            .audit("test", "test.write", "after", None)
            .await
            .unwrap();
        assert!(audit_targets(&store).await.contains(&"after".to_string()));
    }

    #[test]
    fn after_a_crash_every_acknowledged_write_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.db");
        // A process writing from many tasks dies at an arbitrary moment: its runtime, the
        // writer task and the connection are dropped mid-batch, as by kill -9.
        let acknowledged = {
            let path = path.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
                rt.block_on({
                    let acked = acked.clone();
                    async move {
                        let store = Store::open(&path).await.unwrap();
                        // 1,000 writers, each writing again as soon as it is acknowledged.
                        for n in 0..1000 {
                            let (store, acked) = (store.clone(), acked.clone());
                            tokio::spawn(async move {
                                for i in 0.. {
                                    let target = format!("w{n}-{i}");
                                    if store
                                        .audit("test", "test.write", &target, None)
                                        .await
                                        .is_ok()
                                    {
                                        acked.lock().unwrap().push(target);
                                    }
                                }
                            });
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                });
                rt.shutdown_background();
                let acked = acked.lock().unwrap().clone();
                acked
            })
            .join()
            .unwrap()
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store = Store::open(&path).await.unwrap();
            let stored = audit_targets(&store).await;
            let unique: HashSet<&String> = stored.iter().collect();
            assert!(
                !acknowledged.is_empty(),
                "nothing was acknowledged before the crash"
            );
            assert_eq!(unique.len(), stored.len(), "a write was stored twice");
            for target in &acknowledged {
                assert!(unique.contains(target), "acknowledged {target} was lost");
            }
            let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
                .fetch_one(&store.pool)
                .await
                .unwrap();
            assert_eq!(integrity, "ok");
        });
    }
}
