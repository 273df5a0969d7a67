//! The health gate: decides whether a started container is fit to serve, before a cut-over
//! touches anything of the previous version. The checks are the image's own Docker
//! HEALTHCHECK (or, without one, "still running after a grace period"), an HTTP GET, or a TCP
//! connect, the probes aimed at the container's bridge address so a candidate without host
//! ports can be checked beside the version that holds them.
//!
//! Architecture invariant: the gate only looks (inspect, probes); it never starts, stops or
//! removes a container, so what serves is decided by the deploy and its cut-over alone.

use std::net::IpAddr;
use std::time::Duration;

use bollard::models::{ContainerInspectResponse, HealthStatusEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, Instant};

use super::containers::AppContainer;
use super::error::{EngineError, Request};
use super::DockerExecutor;
use crate::executor::{DeploySpec, HealthCheck};

/// The check of a container made before containers carried their own (`berth.health`): the
/// control plane's default gate.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_GRACE: Duration = Duration::from_secs(3);

/// One HTTP or TCP probe gives up after this long (the overall health timeout still rules).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which container a health gate is looking at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// The new version on its bridge address, the previous version still serving.
    Candidate,
    /// A second container that replaced a candidate which already passed (the host-port
    /// cut-over's): a shorter grace.
    Final,
}

/// Why a container did not pass its health gate. Shown after `health check failed: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the container has no state")]
    NoState,
    #[error("container was killed: out of memory")]
    OutOfMemory,
    #[error("container exited with code {code}")]
    Exited { code: i64 },
    #[error("container exited with code {code} and is being restarted")]
    Restarting { code: i64 },
    #[error("the container has no address on a docker network")]
    NoAddress,
    #[error("docker HEALTHCHECK reports unhealthy{}", last_probe(.last_exit_code))]
    Unhealthy { last_exit_code: Option<i64> },
    #[error("docker HEALTHCHECK not healthy after {}", seconds(*.after))]
    NotHealthy { after: Duration },
    /// The probe could not connect or read (the I/O error's kind, e.g. `connection refused`).
    #[error("{probe} failed: {kind}")]
    ProbeFailed {
        probe: String,
        kind: std::io::ErrorKind,
    },
    /// The HTTP probe got an answer outside 2xx and 3xx.
    #[error("{probe} answered {status}")]
    ProbeAnswered { probe: String, status: u16 },
    #[error("{probe}: no answer within {}", seconds(*.within))]
    NoAnswer { probe: String, within: Duration },
}

fn last_probe(code: &Option<i64>) -> String {
    code.map(|c| format!(" (last probe exited with code {c})"))
        .unwrap_or_default()
}

impl DockerExecutor {
    /// Runs `spec`'s health check against container `id` until it passes or fails.
    pub(super) async fn check_health(
        &self,
        spec: &DeploySpec,
        id: &str,
        gate: Gate,
    ) -> Result<(), HealthError> {
        self.check(&spec.health_check, Some(spec), id, gate).await
    }

    /// Runs the health check a container was created with (its `berth.health` label; the
    /// default check for a container made before the label) against it: a container a
    /// rollback puts back must pass its gate again before it serves.
    pub(super) async fn check_again(&self, container: &AppContainer) -> Result<(), HealthError> {
        let check = container.health.clone().unwrap_or(HealthCheck::Default {
            timeout: DEFAULT_TIMEOUT,
            grace: DEFAULT_GRACE,
        });
        self.check(&check, None, &container.id, Gate::Final).await
    }

    /// `check` against container `id`; `spec` (when there is one) redacts engine errors.
    async fn check(
        &self,
        check: &HealthCheck,
        spec: Option<&DeploySpec>,
        id: &str,
        gate: Gate,
    ) -> Result<(), HealthError> {
        match check {
            HealthCheck::Default { timeout, grace } => {
                let info = self.inspect(spec, id).await?;
                if has_docker_healthcheck(&info) {
                    self.wait_healthy(spec, id, *timeout).await
                } else {
                    let grace = if gate == Gate::Final {
                        *grace / 2
                    } else {
                        *grace
                    };
                    self.wait_running(spec, id, grace).await
                }
            }
            HealthCheck::Http {
                port,
                path,
                timeout,
            } => {
                self.wait_probe(spec, id, *timeout, Probe::Http { port: *port, path })
                    .await
            }
            HealthCheck::Tcp { port, timeout } => {
                self.wait_probe(spec, id, *timeout, Probe::Tcp { port: *port })
                    .await
            }
        }
    }

    async fn inspect(
        &self,
        spec: Option<&DeploySpec>,
        id: &str,
    ) -> Result<ContainerInspectResponse, HealthError> {
        self.docker
            .inspect_container(id, None)
            .await
            .map_err(|e| match spec {
                Some(spec) => EngineError::redacted(Request::Inspect, &e, spec).into(),
                None => EngineError::new(Request::Inspect, &e).into(),
            })
    }

    /// The image's own HEALTHCHECK decides.
    async fn wait_healthy(
        &self,
        spec: Option<&DeploySpec>,
        id: &str,
        timeout: Duration,
    ) -> Result<(), HealthError> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.inspect(spec, id).await?;
            still_running(&info)?;
            let health = info.state.as_ref().and_then(|s| s.health.as_ref());
            match health.and_then(|h| h.status) {
                Some(HealthStatusEnum::HEALTHY) => return Ok(()),
                Some(HealthStatusEnum::UNHEALTHY) => {
                    let last_exit_code = health
                        .and_then(|h| h.log.as_ref())
                        .and_then(|l| l.last())
                        .and_then(|r| r.exit_code);
                    return Err(HealthError::Unhealthy { last_exit_code });
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(HealthError::NotHealthy { after: timeout });
            }
            sleep(self.poll_interval).await;
        }
    }

    /// No check to run: the container must still be running after `grace`.
    async fn wait_running(
        &self,
        spec: Option<&DeploySpec>,
        id: &str,
        grace: Duration,
    ) -> Result<(), HealthError> {
        let deadline = Instant::now() + grace;
        loop {
            still_running(&self.inspect(spec, id).await?)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            sleep(left.min(self.poll_interval)).await;
        }
    }

    /// Probes the container's bridge address until it answers, it dies, or `timeout` passes.
    async fn wait_probe(
        &self,
        spec: Option<&DeploySpec>,
        id: &str,
        timeout: Duration,
        probe: Probe<'_>,
    ) -> Result<(), HealthError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut last = probe.no_answer(timeout);
        loop {
            let info = self.inspect(spec, id).await?;
            still_running(&info)?;
            let ip = container_ip(&info).ok_or(HealthError::NoAddress)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(last);
            }
            match tokio::time::timeout(left.min(PROBE_TIMEOUT), probe.run(ip)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(error)) => last = error,
                Err(_) => last = probe.no_answer(left.min(PROBE_TIMEOUT)),
            }
            sleep(
                probe_pause(started.elapsed(), self.poll_interval)
                    .min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }
}

/// The pause between two probes: most servers listen within a few hundred milliseconds of
/// their start, and each pause is time a deploy waits, so the first second is probed every
/// 20 ms (a connect on the bridge costs microseconds), then every `poll_interval`.
fn probe_pause(elapsed: Duration, poll_interval: Duration) -> Duration {
    if elapsed < Duration::from_secs(1) {
        poll_interval.min(Duration::from_millis(20))
    } else {
        poll_interval
    }
}

/// An HTTP GET or a TCP connect to the container, written by hand: one request line needs
/// no HTTP client.
#[derive(Clone, Copy)]
enum Probe<'a> {
    Http { port: u16, path: &'a str },
    Tcp { port: u16 },
}

impl Probe<'_> {
    async fn run(&self, ip: IpAddr) -> Result<(), HealthError> {
        match *self {
            Probe::Tcp { port } => TcpStream::connect((ip, port))
                .await
                .map(drop)
                .map_err(|e| self.failed(e)),
            Probe::Http { port, path } => match http_status(ip, port, path).await {
                Ok(status) if (200..400).contains(&status) => Ok(()),
                Ok(status) => Err(HealthError::ProbeAnswered {
                    probe: self.to_string(),
                    status,
                }),
                Err(e) => Err(self.failed(e)),
            },
        }
    }

    fn failed(&self, error: std::io::Error) -> HealthError {
        HealthError::ProbeFailed {
            probe: self.to_string(),
            kind: error.kind(),
        }
    }

    fn no_answer(&self, within: Duration) -> HealthError {
        HealthError::NoAnswer {
            probe: self.to_string(),
            within,
        }
    }
}

impl std::fmt::Display for Probe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Http { port, path } => write!(f, "http GET :{port}{}", normalized_path(path)),
            Probe::Tcp { port } => write!(f, "tcp connect :{port}"),
        }
    }
}

/// The status code of `GET path` over HTTP/1.0.
async fn http_status(ip: IpAddr, port: u16, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect((ip, port)).await?;
    let host = if ip.is_ipv6() {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: berth-agent\r\nConnection: close\r\n\r\n",
        normalized_path(path)
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status_line(&head)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an http response"))
}

fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

fn normalized_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

/// `Err` with the reason when the container no longer runs, or crashed and is restarting.
fn still_running(info: &ContainerInspectResponse) -> Result<(), HealthError> {
    let Some(state) = info.state.as_ref() else {
        return Err(HealthError::NoState);
    };
    let code = state.exit_code.unwrap_or(0);
    if state.oom_killed == Some(true) {
        return Err(HealthError::OutOfMemory);
    }
    if state.running != Some(true) {
        return Err(HealthError::Exited { code });
    }
    if state.restarting == Some(true) || info.restart_count.unwrap_or(0) > 0 {
        return Err(HealthError::Restarting { code });
    }
    Ok(())
}

fn has_docker_healthcheck(info: &ContainerInspectResponse) -> bool {
    let test = info
        .config
        .as_ref()
        .and_then(|c| c.healthcheck.as_ref())
        .and_then(|h| h.test.as_ref());
    let declared = test.is_some_and(|t| !t.is_empty() && t[0] != "NONE");
    declared || info.state.as_ref().is_some_and(|s| s.health.is_some())
}

pub(super) fn container_ip(info: &ContainerInspectResponse) -> Option<IpAddr> {
    let networks = info.network_settings.as_ref()?.networks.as_ref()?;
    networks
        .values()
        .filter_map(|n| n.ip_address.as_deref())
        .find(|ip| !ip.is_empty())?
        .parse()
        .ok()
}

/// The health check in words, for the `health` event.
pub fn describe(check: &HealthCheck) -> String {
    match check {
        HealthCheck::Default { timeout, grace } => {
            format!(
                "docker HEALTHCHECK within {}, else still running after {}",
                seconds(*timeout),
                seconds(*grace)
            )
        }
        HealthCheck::Http {
            port,
            path,
            timeout,
        } => format!(
            "{} within {}",
            Probe::Http { port: *port, path },
            seconds(*timeout)
        ),
        HealthCheck::Tcp { port, timeout } => format!(
            "{} within {}",
            Probe::Tcp { port: *port },
            seconds(*timeout)
        ),
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerConfig, ContainerState, HealthConfig};

    use super::*;

    #[test]
    fn the_first_second_is_probed_often_then_at_the_poll_interval() {
        let poll = Duration::from_millis(200);
        assert_eq!(probe_pause(Duration::ZERO, poll), Duration::from_millis(20));
        assert_eq!(
            probe_pause(Duration::from_millis(999), poll),
            Duration::from_millis(20)
        );
        assert_eq!(probe_pause(Duration::from_secs(1), poll), poll);
        // A shorter configured interval is kept.
        let fast = Duration::from_millis(5);
        assert_eq!(probe_pause(Duration::ZERO, fast), fast);
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status_line(b"HTTP/1.0 200 OK\r\nServer: x\r\n"),
            Some(200)
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.1 500 Internal Server Error\r\n"),
            Some(500)
        );
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[test]
    fn probes_describe_themselves() {
        assert_eq!(
            Probe::Http {
                port: 80,
                path: "health"
            }
            .to_string(),
            "http GET :80/health"
        );
        assert_eq!(Probe::Tcp { port: 5432 }.to_string(), "tcp connect :5432");
    }

    #[test]
    fn checks_describe_themselves() {
        let default = HealthCheck::Default {
            timeout: Duration::from_secs(60),
            grace: Duration::from_millis(1500),
        };
        assert_eq!(
            describe(&default),
            "docker HEALTHCHECK within 60.0s, else still running after 1.5s"
        );
        let http = HealthCheck::Http {
            port: 8080,
            path: "/ready".to_owned(),
            timeout: Duration::from_secs(5),
        };
        assert_eq!(describe(&http), "http GET :8080/ready within 5.0s");
    }

    #[test]
    fn failures_keep_their_words() {
        let cases = [
            (
                HealthError::Exited { code: 1 },
                "container exited with code 1",
            ),
            (
                HealthError::Restarting { code: 2 },
                "container exited with code 2 and is being restarted",
            ),
            (
                HealthError::Unhealthy {
                    last_exit_code: Some(3),
                },
                "docker HEALTHCHECK reports unhealthy (last probe exited with code 3)",
            ),
            (
                HealthError::Unhealthy {
                    last_exit_code: None,
                },
                "docker HEALTHCHECK reports unhealthy",
            ),
            (
                HealthError::NotHealthy {
                    after: Duration::from_secs(30),
                },
                "docker HEALTHCHECK not healthy after 30.0s",
            ),
            (
                Probe::Tcp { port: 80 }.failed(std::io::ErrorKind::ConnectionRefused.into()),
                "tcp connect :80 failed: connection refused",
            ),
            (
                HealthError::ProbeAnswered {
                    probe: "http GET :80/missing".to_owned(),
                    status: 404,
                },
                "http GET :80/missing answered 404",
            ),
            (
                Probe::Tcp { port: 80 }.no_answer(Duration::from_secs(2)),
                "tcp connect :80: no answer within 2.0s",
            ),
        ];
        for (error, words) in cases {
            assert_eq!(error.to_string(), words);
        }
    }

    fn inspected(state: ContainerState) -> ContainerInspectResponse {
        ContainerInspectResponse {
            state: Some(state),
            ..Default::default()
        }
    }

    #[test]
    fn a_dead_or_restarting_container_fails_the_gate() {
        let running = ContainerState {
            running: Some(true),
            ..Default::default()
        };
        assert_eq!(still_running(&inspected(running.clone())), Ok(()));
        assert_eq!(
            still_running(&ContainerInspectResponse::default()),
            Err(HealthError::NoState)
        );
        let exited = ContainerState {
            running: Some(false),
            exit_code: Some(1),
            ..Default::default()
        };
        assert_eq!(
            still_running(&inspected(exited)),
            Err(HealthError::Exited { code: 1 })
        );
        let oom = ContainerState {
            oom_killed: Some(true),
            ..running.clone()
        };
        assert_eq!(
            still_running(&inspected(oom)),
            Err(HealthError::OutOfMemory)
        );
        let restarted = ContainerInspectResponse {
            restart_count: Some(1),
            ..inspected(running)
        };
        assert_eq!(
            still_running(&restarted),
            Err(HealthError::Restarting { code: 0 })
        );
    }

    #[test]
    fn an_image_healthcheck_is_found_unless_disabled() {
        let with_test = |test: Vec<&str>| ContainerInspectResponse {
            config: Some(ContainerConfig {
                healthcheck: Some(HealthConfig {
                    test: Some(test.into_iter().map(str::to_owned).collect()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(has_docker_healthcheck(&with_test(vec!["CMD", "true"])));
        assert!(!has_docker_healthcheck(&with_test(vec!["NONE"])));
        assert!(!has_docker_healthcheck(&with_test(vec![])));
        assert!(!has_docker_healthcheck(&ContainerInspectResponse::default()));
    }
}
