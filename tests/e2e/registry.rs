//! One private registry (Debian's docker-registry, basic auth) for the whole test binary, with
//! the test images pushed into it, so deploys really pull with credentials.

use std::process::Command;
use std::sync::OnceLock;

use crate::common::{build_test_images, free_port, repo_root};

pub struct Registry {
    /// host:port
    pub server: String,
    pub username: String,
    pub password: String,
}

pub fn shared() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        build_test_images();
        let dir = std::env::temp_dir().join(format!("berth-test-registry-{}", std::process::id()));
        let port = free_port();
        let registry = Registry {
            server: format!("127.0.0.1:{port}"),
            username: "ci".into(),
            password: format!("pw-{}", std::process::id()),
        };
        let out = Command::new("sh")
            .arg(repo_root().join("tests/registry/start.sh"))
            .arg(&dir)
            .arg(port.to_string())
            .arg(&registry.username)
            .arg(&registry.password)
            .env("BERTH_REGISTRY_WATCH_PID", std::process::id().to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "registry start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Credentials for the push go to a private docker config, not the user's.
        let config = dir.join("docker-config");
        std::fs::create_dir_all(&config).unwrap();
        DOCKER_CONFIG.set(config).unwrap();
        let mut login = docker()
            .args([
                "login",
                "--username",
                &registry.username,
                "--password-stdin",
                &registry.server,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        login
            .stdin
            .take()
            .unwrap()
            .write_all(registry.password.as_bytes())
            .unwrap();
        let out = login.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "docker login failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for tag in ["v1", "v2", "bad"] {
            let target = format!("{}/web:{tag}", registry.server);
            run(&["tag", &format!("berth-test/web:{tag}"), &target]);
            run(&["push", &target]);
            // Deploys must pull it from the registry, not find it locally.
            run(&["rmi", &target]);
        }
        run(&["logout", &registry.server]);
        registry
    })
}

static DOCKER_CONFIG: OnceLock<std::path::PathBuf> = OnceLock::new();

fn docker() -> Command {
    let mut cmd = Command::new("docker");
    if let Some(config) = DOCKER_CONFIG.get() {
        cmd.env("DOCKER_CONFIG", config);
    }
    cmd
}

fn run(args: &[&str]) {
    let out = docker().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
