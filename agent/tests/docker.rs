//! The Docker executor against the real engine.
//!
//! Test images come from `tests/images/build.sh` (busybox-static, no network); every deploy
//! really pulls from a private registry with basic auth started by `tests/registry/start.sh`
//! (each test pushes its images under its own repository, then untags the local copy).
//! Each test uses its own app name and host ports, and removes its containers and image tags
//! when it ends, even on panic.
//!
//! Docker-dependent tests never skip silently: without a reachable engine they fail when `CI`
//! is set, and otherwise print a loud notice and return.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use berth_agent::docker::DockerExecutor;
use berth_agent::executor::{
    DeployEvent, DeployOutcome, DeploySpec, Executor, HealthCheck, PortSpec, RegistryAuth,
};
use bollard::auth::DockerCredentials;
use bollard::models::{ContainerSummary, RestartPolicyNameEnum};
use bollard::query_parameters::{
    ListContainersOptionsBuilder, PushImageOptionsBuilder, TagImageOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const REGISTRY_USER: &str = "berth-ci";
const REGISTRY_PASSWORD: &str = "correct-horse-battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_version_never_interrupts_the_serving_one() {
    let Some(app) = TestApp::start().await else {
        return;
    };
    let port = free_port();
    let http = HealthCheck::Http {
        port: 80,
        path: "/".to_owned(),
        timeout: Duration::from_secs(10),
    };

    let v1 = app
        .deploy(app.spec("v1", Some(port), http.clone()).await)
        .await;
    assert!(v1.outcome.success, "{:?}", v1.outcome);
    assert_eq!(
        host_page(port).await,
        format!("version=v1 secret={}", app.secret)
    );

    let v2 = app
        .deploy(app.spec("v2", Some(port), http.clone()).await)
        .await;
    assert!(v2.outcome.success, "{:?}", v2.outcome);
    assert_eq!(
        host_page(port).await,
        format!("version=v2 secret={}", app.secret)
    );
    assert_eq!(
        v2.phases(),
        [
            "pull", "pull", "create", "start", "health", "swap", "create", "start", "health",
            "done"
        ]
    );
    // The previous container is stopped but kept until commit.
    let containers = app.containers().await;
    assert_eq!(containers.len(), 2, "{containers:?}");
    let v1_container = containers
        .iter()
        .find(|c| c.id.as_ref() == Some(&v1.outcome.container_id))
        .expect("v1 kept");
    assert_ne!(
        v1_container.state,
        Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
    );

    let cleanup = app.commit(&v2.deployment_id).await;
    assert_eq!(cleanup.len(), 1);
    assert!(
        cleanup[0].message.starts_with("removed berth-"),
        "{cleanup:?}"
    );
    let ids: Vec<_> = app
        .containers()
        .await
        .into_iter()
        .filter_map(|c| c.id)
        .collect();
    assert_eq!(ids, [v2.outcome.container_id.as_str()]);

    // v3 dies after a second: the gate fails on the candidate and v2 never stops serving.
    let default = HealthCheck::Default {
        timeout: Duration::from_secs(10),
        grace: Duration::from_secs(3),
    };
    let v3_spec = app.spec("bad", Some(port), default).await;
    let poller = Poller::start(port, "version=v2");
    let v3 = app.deploy(v3_spec).await;
    let (served, failures) = poller.stop().await;
    assert!(!v3.outcome.success);
    assert!(v3.outcome.rolled_back);
    assert_eq!(v3.outcome.container_id, v2.outcome.container_id);
    assert_eq!(
        v3.outcome.error.as_deref(),
        Some("health check failed: container exited with code 1")
    );
    assert_eq!(v3.phases().last().map(String::as_str), Some("failed"));
    assert!(
        failures.is_empty(),
        "v2 stopped answering during the v3 deploy: {failures:?}"
    );
    assert!(served >= 10, "only {served} polls during the v3 deploy");
    assert_eq!(
        host_page(port).await,
        format!("version=v2 secret={}", app.secret)
    );
    let ids: Vec<_> = app
        .containers()
        .await
        .into_iter()
        .filter_map(|c| c.id)
        .collect();
    assert_eq!(
        ids,
        [v2.outcome.container_id.as_str()],
        "the candidate is removed"
    );

    for run in [&v1, &v2, &v3] {
        app.assert_no_secret(run);
    }
}

#[tokio::test]
async fn rollback_after_a_successful_deploy_restores_the_previous_container() {
    let Some(app) = TestApp::start().await else {
        return;
    };
    let port = free_port();
    let tcp = HealthCheck::Tcp {
        port: 80,
        timeout: Duration::from_secs(10),
    };

    let mut v1_spec = app.spec("v1", Some(port), tcp.clone()).await;
    v1_spec.restart_policy = "unless-stopped".to_owned();
    let v1 = app.deploy(v1_spec).await;
    assert!(v1.outcome.success, "{:?}", v1.outcome);
    let v2 = app.deploy(app.spec("v2", Some(port), tcp).await).await;
    assert!(v2.outcome.success, "{:?}", v2.outcome);
    assert_eq!(
        host_page(port).await,
        format!("version=v2 secret={}", app.secret)
    );

    let (tx, mut rx) = mpsc::unbounded_channel();
    let outcome = app.exec.rollback(&app.name, &v2.deployment_id, &tx).await;
    drop(tx);
    assert!(!outcome.success);
    assert!(outcome.rolled_back);
    assert_eq!(outcome.container_id, Some(v1.outcome.container_id.clone()));
    let mut phases = Vec::new();
    while let Some(event) = rx.recv().await {
        phases.push(event.phase);
    }
    assert_eq!(phases, ["rollback", "rollback"]);

    assert_eq!(
        host_page(port).await,
        format!("version=v1 secret={}", app.secret)
    );
    let ids: Vec<_> = app
        .containers()
        .await
        .into_iter()
        .filter_map(|c| c.id)
        .collect();
    assert_eq!(ids, [v1.outcome.container_id.as_str()]);
    // Stopping set its restart policy to `no`; serving again gives it back its own.
    let restored = app
        .docker
        .inspect_container(&v1.outcome.container_id, None)
        .await
        .unwrap();
    let policy = restored
        .host_config
        .and_then(|h| h.restart_policy)
        .and_then(|p| p.name);
    assert_eq!(policy, Some(RestartPolicyNameEnum::UNLESS_STOPPED));
}

#[tokio::test]
async fn a_final_container_that_cannot_start_puts_the_previous_one_back() {
    let Some(app) = TestApp::start().await else {
        return;
    };
    let tcp = HealthCheck::Tcp {
        port: 80,
        timeout: Duration::from_secs(10),
    };
    let port = free_port();
    let v1 = app
        .deploy(app.spec("v1", Some(port), tcp.clone()).await)
        .await;
    assert!(v1.outcome.success, "{:?}", v1.outcome);

    // The candidate passes on its bridge address; the final container cannot get its port.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").expect("bind a port");
    let taken_port = taken.local_addr().unwrap().port();
    let v2 = app
        .deploy(app.spec("v2", Some(taken_port), tcp).await)
        .await;
    drop(taken);
    assert!(!v2.outcome.success);
    assert!(v2.outcome.rolled_back);
    assert_eq!(v2.outcome.container_id, v1.outcome.container_id);
    let error = v2.outcome.error.clone().unwrap();
    assert!(error.starts_with("starting berth-"), "{error}");
    assert!(error.contains("address already in use"), "{error}");
    let phases = v2.phases();
    let tail: Vec<_> = phases
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(tail, ["start", "rollback", "failed"], "{phases:?}");

    assert_eq!(
        host_page(port).await,
        format!("version=v1 secret={}", app.secret)
    );
    let ids: Vec<_> = app
        .containers()
        .await
        .into_iter()
        .filter_map(|c| c.id)
        .collect();
    assert_eq!(ids, [v1.outcome.container_id.as_str()]);
    app.assert_no_secret(&v2);
}

#[tokio::test]
async fn private_registry_pulls_need_the_right_credentials() {
    let Some(app) = TestApp::start().await else {
        return;
    };
    let tcp = HealthCheck::Tcp {
        port: 80,
        timeout: Duration::from_secs(10),
    };

    // No host port: the candidate is the final container.
    let spec = app.spec("v1", None, tcp.clone()).await;
    let reference = format!("{}:v1", spec.image);
    assert!(
        app.docker.inspect_image(&reference).await.is_err(),
        "the test must really pull"
    );
    let v1 = app.deploy(spec).await;
    assert!(v1.outcome.success, "{:?}", v1.outcome);
    assert!(app.docker.inspect_image(&reference).await.is_ok());
    assert_eq!(
        v1.phases(),
        ["pull", "pull", "create", "start", "health", "swap", "done"]
    );
    assert!(
        v1.events[0]
            .message
            .contains(&format!("as {REGISTRY_USER} on")),
        "{:?}",
        v1.events[0]
    );

    let mut wrong = app.spec("v2", None, tcp).await;
    let wrong_password = "not-the-password-42";
    wrong.registry_auth.as_mut().unwrap().password = SecretString::from(wrong_password);
    let image = wrong.image.clone();
    let v2 = app.deploy(wrong).await;
    assert!(!v2.outcome.success);
    assert!(!v2.outcome.rolled_back, "nothing was touched");
    assert_eq!(
        v2.outcome.container_id, v1.outcome.container_id,
        "v1 still serves"
    );
    let error = v2.outcome.error.clone().unwrap();
    assert!(
        error.starts_with(&format!("pull {image}:v2 failed: ")),
        "{error}"
    );
    assert!(
        error.contains("unauthorized") || error.contains("authentication"),
        "{error}"
    );
    assert_eq!(v2.phases(), ["pull", "failed"]);
    for text in v2.events.iter().map(|e| &e.message).chain([&error]) {
        assert!(
            !text.contains(wrong_password) && !text.contains(REGISTRY_PASSWORD),
            "{text}"
        );
    }
    let ids: Vec<_> = app
        .containers()
        .await
        .into_iter()
        .filter_map(|c| c.id)
        .collect();
    assert_eq!(ids, [v1.outcome.container_id.as_str()]);
    app.assert_no_secret(&v1);
    app.assert_no_secret(&v2);
}

#[tokio::test]
async fn the_image_healthcheck_gates_the_deploy_when_there_is_one() {
    let Some(app) = TestApp::start().await else {
        return;
    };
    // The grace alone would pass either container: only the HEALTHCHECK can fail it.
    let default = HealthCheck::Default {
        timeout: Duration::from_secs(20),
        grace: Duration::from_millis(100),
    };

    let healthy = app
        .deploy(app.spec("hc", None, default.clone()).await)
        .await;
    assert!(healthy.outcome.success, "{:?}", healthy.outcome);
    let inspected = app
        .docker
        .inspect_container(&healthy.outcome.container_id, None)
        .await
        .unwrap();
    let status = inspected
        .state
        .and_then(|s| s.health)
        .and_then(|h| h.status);
    assert_eq!(status, Some(bollard::models::HealthStatusEnum::HEALTHY));

    let mut sick = app.spec("hc", None, default).await;
    sick.env.insert(
        "BERTH_TEST_HC_PATH".to_owned(),
        SecretString::from("missing"),
    );
    let sick = app.deploy(sick).await;
    assert!(!sick.outcome.success);
    assert!(sick.outcome.rolled_back);
    assert_eq!(sick.outcome.container_id, healthy.outcome.container_id);
    let error = sick.outcome.error.clone().unwrap();
    assert!(
        error.starts_with("health check failed: docker HEALTHCHECK reports unhealthy"),
        "{error}"
    );
}

#[tokio::test]
async fn an_http_check_names_the_status_it_got() {
    let Some(app) = TestApp::start().await else {
        return;
    };
    let check = HealthCheck::Http {
        port: 80,
        path: "/missing".to_owned(),
        timeout: Duration::from_secs(2),
    };
    let run = app
        .deploy(app.spec("v1", Some(free_port()), check).await)
        .await;
    assert!(!run.outcome.success);
    assert!(
        !run.outcome.rolled_back,
        "there was nothing to roll back to"
    );
    assert_eq!(run.outcome.container_id, "", "nothing serves");
    assert_eq!(
        run.outcome.error.as_deref(),
        Some("health check failed: http GET :80/missing answered 404")
    );
    assert!(
        app.containers().await.is_empty(),
        "the candidate is removed"
    );
    assert!(app
        .exec
        .runtime_version()
        .await
        .starts_with(|c: char| c.is_ascii_digit()));
}

#[tokio::test]
async fn a_registry_outage_fails_a_tag_but_not_a_digest_already_here() {
    let Some(app) = TestApp::start().await else {
        return;
    };
    let tcp = HealthCheck::Tcp {
        port: 80,
        timeout: Duration::from_secs(10),
    };
    let registry = Registry::start("outage");
    let spec = app.spec_on(&registry, "v1", None, tcp).await;
    let first = app.deploy(spec.clone()).await;
    assert!(first.outcome.success, "{:?}", first.outcome);
    let pulled = app
        .docker
        .inspect_image(&format!("{}:v1", spec.image))
        .await
        .unwrap();
    let digest = pulled
        .repo_digests
        .unwrap_or_default()
        .into_iter()
        .find_map(|d| {
            d.strip_prefix(&format!("{}@", spec.image))
                .map(str::to_owned)
        });
    let digest = digest.expect("the pull recorded the registry's digest");
    registry.stop();

    // A tag may have moved on the registry: the local copy is no answer.
    let by_tag = app
        .deploy(DeploySpec {
            deployment_id: uuid::Uuid::new_v4().to_string(),
            ..spec.clone()
        })
        .await;
    assert!(!by_tag.outcome.success);
    assert_eq!(
        by_tag.outcome.container_id, first.outcome.container_id,
        "the first container still serves"
    );
    let error = by_tag.outcome.error.clone().unwrap();
    assert!(
        error.starts_with(&format!("pull {}:v1 failed: ", spec.image)),
        "{error}"
    );
    assert!(error.contains("connection refused"), "{error}");

    // A digest cannot have moved: the local copy is exactly the image asked for.
    let by_digest = DeploySpec {
        deployment_id: uuid::Uuid::new_v4().to_string(),
        version: digest,
        ..spec
    };
    let by_digest = app.deploy(by_digest).await;
    assert!(by_digest.outcome.success, "{:?}", by_digest.outcome);
    assert!(
        by_digest.events[1]
            .message
            .ends_with("using the local copy of this digest"),
        "{:?}",
        by_digest.events
    );
    app.assert_no_secret(&by_tag);
    app.assert_no_secret(&by_digest);
}

/// One deploy and what it reported.
struct Run {
    deployment_id: String,
    outcome: Outcome,
    events: Vec<DeployEvent>,
}

/// [`DeployOutcome`] with the container id unwrapped (empty: none).
#[derive(Debug)]
struct Outcome {
    success: bool,
    rolled_back: bool,
    container_id: String,
    error: Option<String>,
}

impl Run {
    fn phases(&self) -> Vec<String> {
        self.events.iter().map(|e| e.phase.clone()).collect()
    }
}

/// An app of one test: its own name, repository, secret and cleanup.
struct TestApp {
    docker: Docker,
    exec: DockerExecutor,
    registry: &'static Registry,
    name: String,
    secret: String,
    _cleanup: Cleanup,
}

impl TestApp {
    /// `None` (after a loud notice) when there is no engine and `CI` is unset.
    async fn start() -> Option<Self> {
        let exec = match DockerExecutor::connect().await {
            Ok(exec) => exec,
            Err(e) => return engine_missing(&e.to_string()),
        };
        if let Err(e) = exec.docker().ping().await {
            return engine_missing(&e.to_string());
        }
        let registry = Registry::shared();
        let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let cleanup = Cleanup {
            app: name.clone(),
            repository: format!("/{name}/web:"),
        };
        Some(Self {
            docker: exec.docker().clone(),
            exec,
            registry,
            secret: format!("s3cret-{}", uuid::Uuid::new_v4().simple()),
            name,
            _cleanup: cleanup,
        })
    }

    /// Pushes `berth-test/web:<tag>` as `<registry>/<app>/web:<tag>`, then untags the local
    /// copy so that the deploy has to pull it. Returns the image name without tag.
    async fn push(&self, registry: &Registry, tag: &str) -> String {
        let image = format!("{}/{}/web", registry.address, self.name);
        let options = TagImageOptionsBuilder::new().repo(&image).tag(tag).build();
        self.docker
            .tag_image(&format!("berth-test/web:{tag}"), Some(options))
            .await
            .expect("tag test image");
        let credentials = DockerCredentials {
            username: Some(REGISTRY_USER.to_owned()),
            password: Some(REGISTRY_PASSWORD.to_owned()),
            serveraddress: Some(registry.address.clone()),
            ..Default::default()
        };
        let options = PushImageOptionsBuilder::new().tag(tag).build();
        let mut progress = self
            .docker
            .push_image(&image, Some(options), Some(credentials));
        while let Some(step) = progress.next().await {
            step.unwrap_or_else(|e| panic!("push {image}:{tag}: {e}"));
        }
        let reference = format!("{image}:{tag}");
        self.docker
            .remove_image(
                &reference,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
            .expect("untag");
        image
    }

    /// A deploy of `berth-test/web:<tag>` through the shared registry.
    async fn spec(
        &self,
        tag: &str,
        host_port: Option<u16>,
        health_check: HealthCheck,
    ) -> DeploySpec {
        self.spec_on(self.registry, tag, host_port, health_check)
            .await
    }

    async fn spec_on(
        &self,
        registry: &Registry,
        tag: &str,
        host_port: Option<u16>,
        health_check: HealthCheck,
    ) -> DeploySpec {
        let image = self.push(registry, tag).await;
        DeploySpec {
            deployment_id: uuid::Uuid::new_v4().to_string(),
            app: self.name.clone(),
            image,
            version: tag.to_owned(),
            env: BTreeMap::from([(
                "APP_SECRET".to_owned(),
                SecretString::from(self.secret.clone()),
            )]),
            ports: host_port
                .map(|host| {
                    vec![PortSpec {
                        host,
                        container: 80,
                        protocol: "tcp".to_owned(),
                    }]
                })
                .unwrap_or_default(),
            registry_auth: Some(RegistryAuth {
                server: registry.address.clone(),
                username: REGISTRY_USER.to_owned(),
                password: SecretString::from(REGISTRY_PASSWORD),
            }),
            health_check,
            restart_policy: "no".to_owned(),
            command: vec![],
        }
    }

    async fn deploy(&self, spec: DeploySpec) -> Run {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let DeployOutcome {
            success,
            container_id,
            error,
            rolled_back,
        } = self.exec.deploy(&spec, &tx).await;
        drop(tx);
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        let outcome = Outcome {
            success,
            rolled_back,
            container_id: container_id.unwrap_or_default(),
            error,
        };
        Run {
            deployment_id: spec.deployment_id,
            outcome,
            events,
        }
    }

    async fn commit(&self, deployment_id: &str) -> Vec<DeployEvent> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.exec.commit(&self.name, deployment_id, &tx).await;
        drop(tx);
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        events
    }

    /// Every container of the app, running or not.
    async fn containers(&self) -> Vec<ContainerSummary> {
        let filters =
            std::collections::HashMap::from([("label", vec![format!("berth.app={}", self.name)])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .expect("list containers")
    }

    fn assert_no_secret(&self, run: &Run) {
        for text in run
            .events
            .iter()
            .map(|e| &e.message)
            .chain(run.outcome.error.as_ref())
        {
            assert!(!text.contains(&self.secret), "secret value in {text:?}");
            assert!(
                !text.contains(REGISTRY_PASSWORD),
                "registry password in {text:?}"
            );
        }
    }
}

fn engine_missing(error: &str) -> Option<TestApp> {
    if std::env::var_os("CI").is_some() {
        panic!("the Docker Engine is unreachable and CI is set: {error}");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests.
    let notice = format!(
        "\n!!!!!!!!!! DOCKER ENGINE UNREACHABLE: docker executor test NOT RUN ({error}); \
         set CI=1 to make this a failure !!!!!!!!!!\n"
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), notice.as_bytes());
    None
}

/// Removes the app's containers and image tags when the test ends, passed or not.
struct Cleanup {
    app: String,
    /// `/<app>/web:`: every image tag with it belongs to this test, whatever the registry.
    repository: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let script = r#"
            docker ps -aq --filter "label=berth.app=$1" | xargs -r docker rm -f >/dev/null
            docker images --format '{{.Repository}}:{{.Tag}}' | grep -F "$2" | xargs -r docker rmi >/dev/null
        "#;
        let _ = Command::new("sh")
            .args(["-c", script, "cleanup", &self.app, &self.repository])
            .status();
    }
}

/// A private registry started by `tests/registry/start.sh`; its watcher stops and deletes it
/// once this test process exits, whatever happened.
struct Registry {
    /// `127.0.0.1:<port>`.
    address: String,
    dir: PathBuf,
}

impl Registry {
    /// The registry the tests of this process share (and the test images, built once).
    fn shared() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            run_script(&repository_root().join("tests/images/build.sh"), &[], None);
            Registry::start("shared")
        })
    }

    fn start(label: &str) -> Registry {
        let port = free_port();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "berth-registry-{}-{label}-{port}",
            std::process::id()
        ));
        let args = [
            dir.to_str().expect("utf-8 path"),
            &port.to_string(),
            REGISTRY_USER,
            REGISTRY_PASSWORD,
        ];
        run_script(
            &repository_root().join("tests/registry/start.sh"),
            &args,
            Some(std::process::id()),
        );
        Registry {
            address: format!("127.0.0.1:{port}"),
            dir,
        }
    }

    fn stop(&self) {
        run_script(
            &repository_root().join("tests/registry/stop.sh"),
            &[self.dir.to_str().expect("utf-8 path")],
            None,
        );
    }
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn run_script(script: &Path, args: &[&str], watch_pid: Option<u32>) {
    let mut command = Command::new(script);
    command.args(args);
    if let Some(pid) = watch_pid {
        command.env("BERTH_REGISTRY_WATCH_PID", pid.to_string());
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} failed (tests/run.sh installs busybox-static, docker-registry, apache2-utils):\n{}{}",
        script.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The page served on the host port, or the reason there is none.
async fn try_host_page(port: u16) -> Result<String, String> {
    let fetch = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no http response: {response:?}"))?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(format!("answered {head:?}"));
        }
        Ok(body.trim().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .map_err(|_| "timed out".to_owned())?
}

async fn host_page(port: u16) -> String {
    try_host_page(port)
        .await
        .unwrap_or_else(|e| panic!("GET 127.0.0.1:{port}/: {e}"))
}

/// Fetches the host port every 50 ms in the background, counting answers that are not the
/// expected page.
struct Poller {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl Poller {
    fn start(port: u16, expected: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut served, mut failures) = (0, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                match try_host_page(port).await {
                    Ok(page) if page.starts_with(expected) => served += 1,
                    other => failures.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (served, failures)
        });
        Self { stop, task }
    }

    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("poller")
    }
}
