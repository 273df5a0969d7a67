//! The executor contract: what every [`Executor`] does, whatever runs the containers, so that
//! the fleet simulator and the fast tests (on [`FakeExecutor`]) cannot drift from a real host
//! (on [`DockerExecutor`](berth_agent::docker::DockerExecutor)).
//!
//! Each behaviour is written once, as a generic function over a [`Subject`]; `contract!` runs
//! it against the fake (`fake::*`, always, in milliseconds) and against Docker (`docker::*`,
//! when the engine answers; with `CI` set an unreachable engine fails them). Versions `v1` and
//! `v2` are healthy, `bad` fails its health gate with "container exited with code 1" (the
//! fake is told so; on Docker it is the `berth-test/web:bad` image, which exits after a
//! second).
//!
//! Where the fake drifts from Docker, the behaviour asserts what Docker does, and its fake
//! variant is `#[ignore]`d with the drift as the reason; where Docker itself breaks what its
//! code means to do (a known bug), its Docker variant is. None is ignored today; run the
//! ignored ones with `cargo nextest run -p berth-tests --run-ignored only executor_contract`.

use std::time::Duration;

use berth_agent::executor::{DeploySpec, Executor, HealthCheck, PortSpec};
use berth_agent::fake::FakeExecutor;
use bollard::models::ContainerSummaryStateEnum;
use secrecy::SecretString;

use crate::fixture::executor::{commit, deploy, rollback, DockerApp, Run};
use crate::fixture::process::free_port;

/// An executor under contract and what the contract needs around it.
trait Subject {
    fn executor(&self) -> &dyn Executor;

    /// The application every deploy of the test is for.
    fn app(&self) -> &str;

    /// A deploy of `tag` (`v1`, `v2` or `bad`) under a new deployment id, with `APP_SECRET`
    /// in its environment and no host ports.
    fn spec(&self, tag: &str) -> DeploySpec;

    /// The value of `APP_SECRET` in every spec.
    fn secret(&self) -> &str;

    /// The app's containers on this host.
    async fn containers(&self) -> Containers;
}

/// The containers of an application, by id.
#[derive(Debug, Default, PartialEq, Eq)]
struct Containers {
    /// Running: what serves the application.
    serving: Vec<String>,
    /// Stopped and kept: superseded containers waiting for a commit (or a rollback).
    kept: Vec<String>,
}

impl Containers {
    fn of(serving: &[&str], kept: &[&str]) -> Containers {
        let ids = |ids: &[&str]| {
            let mut ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
            ids.sort();
            ids
        };
        Containers {
            serving: ids(serving),
            kept: ids(kept),
        }
    }
}

/// Runs a deploy of `tag` (a spec of its own) and checks that nothing it reported carries the
/// environment value: an invariant of every executor, checked on every run.
async fn deploy_tag(s: &impl Subject, tag: &str) -> Run {
    deploy_spec(s, &s.spec(tag)).await
}

async fn deploy_spec(s: &impl Subject, spec: &DeploySpec) -> Run {
    let run = deploy(s.executor(), spec).await;
    assert_no_secret(s, &run);
    run
}

async fn rollback_of(s: &impl Subject, run: &Run) -> Run {
    let rolled = rollback(s.executor(), s.app(), &run.deployment_id).await;
    assert_no_secret(s, &rolled);
    rolled
}

fn assert_no_secret(s: &impl Subject, run: &Run) {
    for text in run.texts() {
        assert!(!text.contains(s.secret()), "environment value in {text:?}");
    }
}

#[track_caller]
fn assert_succeeded(run: &Run) {
    let outcome = &run.outcome;
    assert!(outcome.success, "{outcome:?} {:#?}", run.events);
    assert!(
        !outcome.rolled_back && outcome.error.is_none(),
        "{outcome:?}"
    );
    assert!(
        !run.container().is_empty(),
        "a container serves: {outcome:?}"
    );
}

const UNHEALTHY: &str = "health check failed: container exited with code 1";

// ---------------------------------------------------------------------------------------------
// The behaviours
// ---------------------------------------------------------------------------------------------

/// A first deploy succeeds and reports the container that now serves.
async fn a_first_deploy_serves_its_container(s: &impl Subject) {
    let v1 = deploy_tag(s, "v1").await;
    assert_succeeded(&v1);
    assert_eq!(s.containers().await, Containers::of(&[v1.container()], &[]));
    assert!(!s.executor().runtime_version().await.is_empty());
}

/// A second deploy supersedes the first: stopped and kept until the commit removes it.
async fn a_second_deploy_supersedes_the_first_and_commit_removes_it(s: &impl Subject) {
    let v1 = deploy_tag(s, "v1").await;
    let v2 = deploy_tag(s, "v2").await;
    assert_succeeded(&v2);
    assert_ne!(v2.container(), v1.container());
    assert_eq!(
        s.containers().await,
        Containers::of(&[v2.container()], &[v1.container()])
    );

    let cleanup = commit(s.executor(), s.app(), &v2.deployment_id).await;
    assert!(!cleanup.is_empty() && cleanup.iter().all(|e| e.phase == "cleanup"));
    assert_eq!(s.containers().await, Containers::of(&[v2.container()], &[]));
}

/// A commit of a deployment that left no container on this host removes nothing.
async fn a_commit_of_another_deployment_removes_nothing(s: &impl Subject) {
    let v1 = deploy_tag(s, "v1").await;
    let v2 = deploy_tag(s, "v2").await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let cleanup = commit(s.executor(), s.app(), &unknown).await;
    assert_eq!(cleanup.len(), 1, "{cleanup:?}");
    assert_eq!(cleanup[0].phase, "cleanup");
    assert_eq!(
        cleanup[0].message,
        format!("no container of deployment {unknown}; nothing removed")
    );
    assert_eq!(
        s.containers().await,
        Containers::of(&[v2.container()], &[v1.container()])
    );
}

/// A rollback of a successful deploy puts the previous container back and removes the new
/// one; it reports `rolled_back` with the restored container, and is no success.
async fn a_rollback_puts_the_previous_container_back(s: &impl Subject) {
    let v1 = deploy_tag(s, "v1").await;
    let v2 = deploy_tag(s, "v2").await;
    let rolled = rollback_of(s, &v2).await;
    let outcome = &rolled.outcome;
    assert!(!outcome.success && outcome.rolled_back, "{outcome:?}");
    assert_eq!(rolled.container(), v1.container());
    assert_eq!(
        outcome.error,
        Some(format!("deployment {} rolled back", v2.deployment_id))
    );
    assert_eq!(s.containers().await, Containers::of(&[v1.container()], &[]));
}

/// Rolling back the same deployment again answers as the first rollback did, and changes
/// nothing.
async fn a_second_rollback_answers_as_the_first(s: &impl Subject) {
    let v1 = deploy_tag(s, "v1").await;
    let v2 = deploy_tag(s, "v2").await;
    let first = rollback_of(s, &v2).await;
    let again = rollback_of(s, &v2).await;
    assert_eq!(again.outcome, first.outcome);
    assert_eq!(again.container(), v1.container());
    assert_eq!(s.containers().await, Containers::of(&[v1.container()], &[]));
}

/// A rollback with no previous container fails, and nothing serves afterwards.
async fn a_rollback_with_nothing_to_restore_fails(s: &impl Subject) {
    let v1 = deploy_tag(s, "v1").await;
    let rolled = rollback_of(s, &v1).await;
    assert_rollback_found_nothing(s, &rolled).await;
}

/// A commit makes a deployment final: a later rollback has nothing to restore.
async fn a_rollback_after_commit_has_nothing_to_restore(s: &impl Subject) {
    deploy_tag(s, "v1").await;
    let v2 = deploy_tag(s, "v2").await;
    commit(s.executor(), s.app(), &v2.deployment_id).await;
    let rolled = rollback_of(s, &v2).await;
    assert_rollback_found_nothing(s, &rolled).await;
}

async fn assert_rollback_found_nothing(s: &impl Subject, rolled: &Run) {
    let outcome = &rolled.outcome;
    assert!(!outcome.success && !outcome.rolled_back, "{outcome:?}");
    assert_eq!(outcome.container_id, None);
    assert_eq!(
        outcome.error,
        Some(format!(
            "rollback failed: no previous container of {} to restore",
            s.app()
        ))
    );
    assert_eq!(rolled.phases().last().copied(), Some("failed"));
    assert_eq!(s.containers().await, Containers::default());
}

/// A version that fails its health gate never interrupts the serving one: the outcome names
/// the container that kept serving, `rolled_back`, and the reason.
async fn a_failing_version_never_interrupts_the_serving_one(s: &impl Subject) {
    let v1 = deploy_tag(s, "v1").await;
    let bad = deploy_tag(s, "bad").await;
    let outcome = &bad.outcome;
    assert!(!outcome.success && outcome.rolled_back, "{outcome:?}");
    assert_eq!(bad.container(), v1.container());
    assert_eq!(outcome.error.as_deref(), Some(UNHEALTHY));
    assert_eq!(bad.phases().last().copied(), Some("failed"));
    assert_eq!(s.containers().await, Containers::of(&[v1.container()], &[]));
}

/// A first deploy that fails leaves nothing serving, and nothing to roll back to.
async fn a_failing_first_deploy_leaves_nothing(s: &impl Subject) {
    let bad = deploy_tag(s, "bad").await;
    let outcome = &bad.outcome;
    assert!(!outcome.success && !outcome.rolled_back, "{outcome:?}");
    assert_eq!(outcome.container_id, None);
    assert_eq!(outcome.error.as_deref(), Some(UNHEALTHY));
    assert_eq!(s.containers().await, Containers::default());
}

/// A deployment run again (an interrupted attempt resumed) replaces its own container: a
/// deployment has one container at most, never a superseded one of itself.
async fn a_deployment_run_again_replaces_its_own_container(s: &impl Subject) {
    let v1 = deploy_tag(s, "v1").await;
    let spec = s.spec("v2");
    let first = deploy_spec(s, &spec).await;
    let again = deploy_spec(s, &spec).await;
    assert_succeeded(&again);
    assert_eq!(
        s.containers().await,
        Containers::of(&[again.container()], &[v1.container()]),
        "first run's container: {}",
        first.container()
    );
}

/// A commit that arrives late (a newer deployment already serves) removes what its own
/// deployment superseded, and neither that deployment's container nor the newer one, however
/// soon after the committed one that was created: the three deployments here often start
/// within one second, the resolution of the engine's creation times.
async fn a_late_commit_removes_what_its_deployment_superseded(s: &impl Subject) {
    let v1 = deploy_tag(s, "v1").await;
    let v2 = deploy_tag(s, "v2").await;
    let v3 = deploy_tag(s, "v1").await;
    commit(s.executor(), s.app(), &v2.deployment_id).await;
    assert_eq!(
        s.containers().await,
        Containers::of(&[v3.container()], &[v2.container()]),
        "v1 was {}",
        v1.container()
    );
}

/// A deploy the executor cannot run (an unknown restart policy) fails before anything is
/// touched; the outcome names the container that kept serving.
async fn an_unknown_restart_policy_fails_before_anything_is_touched(s: &impl Subject) {
    let v1 = deploy_tag(s, "v1").await;
    let mut spec = s.spec("v2");
    spec.restart_policy = "sometimes".to_owned();
    let refused = deploy_spec(s, &spec).await;
    let outcome = &refused.outcome;
    assert!(!outcome.success && !outcome.rolled_back, "{outcome:?}");
    assert_eq!(outcome.container_id.as_deref(), Some(v1.container()));
    let error = outcome.error.clone().unwrap_or_default();
    assert!(
        error.starts_with("unknown restart policy \"sometimes\""),
        "{error}"
    );
    assert_eq!(refused.phases(), ["failed"]);
    assert_eq!(s.containers().await, Containers::of(&[v1.container()], &[]));
}

// Phases: what the control plane records as `deployment_events`.

/// A deploy reports pull (pulling, pulled), create, start, health, swap, done.
async fn a_deploy_reports_its_phases(s: &impl Subject) {
    let v1 = deploy_tag(s, "v1").await;
    let v2 = deploy_tag(s, "v2").await;
    for run in [&v1, &v2] {
        assert_eq!(
            run.phases(),
            ["pull", "pull", "create", "start", "health", "swap", "done"]
        );
    }
}

/// With host ports, the healthy candidate is followed by the final container that publishes
/// them, and that one is health-checked too.
async fn a_deploy_with_host_ports_checks_the_final_container_too(s: &impl Subject) {
    let mut spec = s.spec("v1");
    spec.ports = vec![PortSpec {
        host: free_port(),
        container: 80,
        protocol: "tcp".to_owned(),
    }];
    let v1 = deploy_spec(s, &spec).await;
    assert_succeeded(&v1);
    assert_eq!(
        v1.phases(),
        [
            "pull", "pull", "create", "start", "health", "swap", "create", "start", "health",
            "done"
        ]
    );
}

/// A deploy that fails its health gate reports the phases it reached, then `failed`.
async fn a_failed_deploy_reports_its_phases_then_failed(s: &impl Subject) {
    let bad = deploy_tag(s, "bad").await;
    assert_eq!(
        bad.phases(),
        ["pull", "pull", "create", "start", "health", "failed"]
    );
}

/// A rollback reports the removal of the new container, then the previous one serving.
async fn a_rollback_reports_the_removal_then_the_restore(s: &impl Subject) {
    deploy_tag(s, "v1").await;
    let v2 = deploy_tag(s, "v2").await;
    let rolled = rollback_of(s, &v2).await;
    assert_eq!(rolled.phases(), ["rollback", "rollback"]);
    assert!(
        rolled.events[0].message.starts_with("removed ")
            && rolled.events[1].message.ends_with(" serves again"),
        "{:?}",
        rolled.events
    );
}

/// A commit reports one `cleanup` event per container it removes.
async fn a_commit_reports_each_container_it_removes(s: &impl Subject) {
    deploy_tag(s, "v1").await;
    deploy_tag(s, "v2").await;
    let v3 = deploy_tag(s, "v1").await;
    let cleanup = commit(s.executor(), s.app(), &v3.deployment_id).await;
    assert_eq!(cleanup.len(), 2, "{cleanup:?}");
    assert!(
        cleanup
            .iter()
            .all(|e| e.phase == "cleanup" && e.message.starts_with("removed ")),
        "{cleanup:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The subjects
// ---------------------------------------------------------------------------------------------

/// The in-memory executor; `bad` fails its health gate as the Docker image does.
struct FakeSubject {
    exec: FakeExecutor,
}

impl FakeSubject {
    fn new() -> FakeSubject {
        FakeSubject {
            exec: FakeExecutor::failing_version("bad", "container exited with code 1"),
        }
    }
}

impl Subject for FakeSubject {
    fn executor(&self) -> &dyn Executor {
        &self.exec
    }

    fn app(&self) -> &str {
        "web"
    }

    fn spec(&self, tag: &str) -> DeploySpec {
        DeploySpec {
            deployment_id: uuid::Uuid::new_v4().to_string(),
            app: self.app().to_owned(),
            image: "registry.local/web".to_owned(),
            version: tag.to_owned(),
            env: [("APP_SECRET".to_owned(), SecretString::from(self.secret()))].into(),
            ports: vec![],
            registry_auth: None,
            health_check: health_check(),
            restart_policy: "no".to_owned(),
            command: vec![],
            domains: vec![],
            stop: Default::default(),
        }
    }

    fn secret(&self) -> &str {
        "s3cret-of-the-fake"
    }

    async fn containers(&self) -> Containers {
        let serving = self.exec.current(self.app());
        let kept = self.exec.previous(self.app());
        Containers::of(
            &serving.iter().map(String::as_str).collect::<Vec<_>>(),
            &kept.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    }
}

/// The Docker executor on the local engine, with the test images from the shared registry.
struct DockerSubject {
    app: DockerApp,
}

impl DockerSubject {
    /// `None` (after a loud notice) when there is no engine and `CI` is unset.
    async fn start() -> Option<DockerSubject> {
        Some(DockerSubject {
            app: DockerApp::start().await?,
        })
    }
}

impl Subject for DockerSubject {
    fn executor(&self) -> &dyn Executor {
        &self.app.exec
    }

    fn app(&self) -> &str {
        &self.app.name
    }

    fn spec(&self, tag: &str) -> DeploySpec {
        self.app.spec(tag, None, health_check())
    }

    fn secret(&self) -> &str {
        &self.app.secret
    }

    async fn containers(&self) -> Containers {
        let (mut serving, mut kept) = (Vec::new(), Vec::new());
        for container in self.app.containers().await {
            let id = container.id.unwrap_or_default();
            if container.state == Some(ContainerSummaryStateEnum::RUNNING) {
                serving.push(id);
            } else {
                kept.push(id);
            }
        }
        serving.sort();
        kept.sort();
        Containers { serving, kept }
    }
}

/// `web` answers on port 80 within moments; `bad` never listens and exits after a second.
fn health_check() -> HealthCheck {
    HealthCheck::Tcp {
        port: 80,
        timeout: Duration::from_secs(10),
    }
}

/// One test per behaviour and subject: `fake::<behaviour>` and `docker::<behaviour>`. A
/// `#[fake_drift = "..."]` before a behaviour ignores its fake variant with that reason, a
/// `#[docker_bug = "..."]` its Docker variant.
macro_rules! contract {
    ($(
        $(#[fake_drift = $drift:literal])?
        $(#[docker_bug = $bug:literal])?
        $behaviour:ident;
    )*) => {
        mod fake {
            $(
                #[tokio::test]
                $(#[ignore = $drift])?
                async fn $behaviour() {
                    super::$behaviour(&super::FakeSubject::new()).await;
                }
            )*
        }

        mod docker {
            $(
                #[tokio::test(flavor = "multi_thread")]
                $(#[ignore = $bug])?
                async fn $behaviour() {
                    let Some(subject) = super::DockerSubject::start().await else {
                        return;
                    };
                    super::$behaviour(&subject).await;
                }
            )*
        }
    };
}

contract! {
    a_first_deploy_serves_its_container;
    a_second_deploy_supersedes_the_first_and_commit_removes_it;
    a_commit_of_another_deployment_removes_nothing;
    a_rollback_puts_the_previous_container_back;
    a_second_rollback_answers_as_the_first;
    a_rollback_with_nothing_to_restore_fails;
    a_rollback_after_commit_has_nothing_to_restore;
    a_failing_version_never_interrupts_the_serving_one;
    a_failing_first_deploy_leaves_nothing;
    a_deployment_run_again_replaces_its_own_container;
    a_late_commit_removes_what_its_deployment_superseded;
    an_unknown_restart_policy_fails_before_anything_is_touched;
    a_deploy_reports_its_phases;
    a_deploy_with_host_ports_checks_the_final_container_too;
    a_failed_deploy_reports_its_phases_then_failed;
    a_rollback_reports_the_removal_then_the_restore;
    a_commit_reports_each_container_it_removes;
}
