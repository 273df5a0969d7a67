//! A full disk under the control plane (SPEC §11.7): its data directory on a small tmpfs,
//! filled up while writes come in. A write that cannot be stored gets a clear error that
//! says so (not "internal error"), reads go on, SQLite's file stays sound, every acknowledged
//! write is kept, and writes succeed again as soon as space is freed, without a restart.
//!
//! Mounting a tmpfs needs root: without it the test says loudly that it did not run, and
//! fails when `CI` is set.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use pb::secret_service_client::SecretServiceClient;
use tonic::Code;

use crate::fixture::admin::authed;
use crate::fixture::data_dir::integrity_check;
use crate::fixture::node::{DevNode, Dirs};

/// A tmpfs of `size` mounted on a temp dir; unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Tmpfs { dir }),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI is set but a tmpfs cannot be mounted (the full-disk test needs root): {why}"
                );
                let notice = format!(
                    "\n!!! cannot mount a tmpfs ({}): the full-disk test NOT RUN\n",
                    why.trim()
                );
                let _ = std::io::stderr().write_all(notice.as_bytes());
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}

/// Writes 1 MiB chunks to `path` until the file system refuses one: the disk is full.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 1 << 20];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // What fits in the last pages of the file system.
    for size in [4096usize, 512, 1] {
        while file.write(&chunk[..size]).is_ok_and(|n| n > 0) {
            written += size as u64;
        }
    }
    written
}

async fn set_secret(node: &DevNode, name: &str, value: &str) -> Result<(), tonic::Status> {
    SecretServiceClient::new(node.channel().await)
        .set_secret(authed(
            pb::SetSecretRequest {
                group: "disk".into(),
                name: name.into(),
                value: value.into(),
                description: None,
            },
            &node.admin_token(),
        ))
        .await
        .map(|_| ())
}

/// Every acknowledged secret, by name and value.
async fn assert_kept(node: &DevNode, acknowledged: &[(String, String)]) {
    let mut secrets = SecretServiceClient::new(node.channel().await);
    for (name, value) in acknowledged {
        let revealed = secrets
            .reveal_secret(authed(
                pb::RevealSecretRequest {
                    group: "disk".into(),
                    name: name.clone(),
                    confirm: true,
                },
                &node.admin_token(),
            ))
            .await
            .unwrap_or_else(|e| panic!("acknowledged secret {name} lost: {e}"))
            .into_inner()
            .value;
        assert_eq!(&revealed, value, "secret {name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_gives_a_clear_error_corrupts_nothing_and_service_resumes() {
    let Some(disk) = Tmpfs::mount("24m") else {
        return;
    };
    let d = Dirs {
        data: tempfile::tempdir_in(disk.path()).unwrap(),
        logs: tempfile::tempdir().unwrap(),
    };
    let database: PathBuf = d.data.path().join("berth.db");
    let mut node = DevNode::start_without_agent(&d);
    SecretServiceClient::new(node.channel().await)
        .create_group(authed(
            pb::CreateGroupRequest {
                name: "disk".into(),
                description: None,
                provider: None,
                auto_sync: false,
            },
            &node.admin_token(),
        ))
        .await
        .unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let (name, value) = (format!("BEFORE_{i}"), format!("kept-{i}"));
        set_secret(&node, &name, &value).await.unwrap();
        acknowledged.push((name, value));
    }

    // The disk fills up; writes go on until one is refused.
    let filler = disk.path().join("filler");
    fill(&filler);
    let big = "x".repeat(32 * 1024);
    let mut refusal = None;
    for i in 0..200 {
        let (name, value) = (format!("FULL_{i}"), format!("{i}-{big}"));
        match set_secret(&node, &name, &value).await {
            Ok(()) => acknowledged.push((name, value)),
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    let refusal = refusal.expect("a write on a full disk was refused");
    assert_eq!(refusal.code(), Code::Unavailable, "{refusal:?}");
    let message = refusal.message();
    assert!(
        message.contains("disk is full") && message.contains("free space"),
        "the error says what is wrong and what to do: {message}"
    );
    assert!(!message.contains(&big[..64]), "no value in the error");

    // Reads go on; the file is sound; nothing acknowledged is missing.
    let listed = SecretServiceClient::new(node.channel().await)
        .list_secrets(authed(
            pb::ListSecretsRequest {
                group: Some("disk".into()),
            },
            &node.admin_token(),
        ))
        .await
        .expect("reads go on while the disk is full")
        .into_inner()
        .secrets;
    for (name, _) in &acknowledged {
        assert!(listed.iter().any(|s| &s.name == name), "{name} listed");
    }
    assert_eq!(integrity_check(&database).await, "ok");
    // A reveal is audited: one that cannot write its audit row is not done, and says why.
    let reveal = SecretServiceClient::new(node.channel().await)
        .reveal_secret(authed(
            pb::RevealSecretRequest {
                group: "disk".into(),
                name: "BEFORE_0".into(),
                confirm: true,
            },
            &node.admin_token(),
        ))
        .await;
    match reveal {
        Ok(revealed) => assert_eq!(revealed.into_inner().value, "kept-0"),
        Err(status) => assert_eq!(status.message(), refusal.message(), "{status:?}"),
    }

    // Space comes back: so do writes, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match set_secret(&node, "AFTER", "resumed").await {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "writes did not resume once space was freed: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    acknowledged.push(("AFTER".into(), "resumed".into()));
    assert_kept(&node, &acknowledged).await;

    // And a kill -9 now loses nothing either.
    node.kill();
    let node = DevNode::start_without_agent(&d);
    assert_kept(&node, &acknowledged).await;
    assert_eq!(integrity_check(&database).await, "ok");
    assert!(
        !node.log().contains(&big[..64]),
        "no secret value in the control plane's log"
    );
}
