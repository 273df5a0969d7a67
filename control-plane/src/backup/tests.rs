use secrecy::{ExposeSecret as _, SecretString};

use super::*;
use crate::pki::Pki;
use crate::service::key_check_tests::one_of_each_in;
use crate::service::testing::{admin, viewer};

const ROOT: [u8; 32] = [42; 32];

fn root() -> MasterKey {
    MasterKey::from_bytes(&ROOT).unwrap()
}

struct Node {
    dir: tempfile::TempDir,
    svc: Service,
    ca_fingerprint: String,
}

async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(dir.path(), &["localhost".to_string()]).unwrap();
    let store = Store::open(&dir.path().join(DATABASE)).await.unwrap();
    let svc = one_of_each_in(store, root()).await;
    Node {
        dir,
        svc,
        ca_fingerprint: pki.ca_fingerprint,
    }
}

async fn backup(node: &Node, to: &Path) -> Manifest {
    let file = std::fs::File::create(to).unwrap();
    node.svc
        .write_backup(&admin(), node.dir.path(), file)
        .await
        .unwrap()
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".berth-restore") || n.starts_with(".backup-"))
        .collect()
}

#[tokio::test]
async fn a_restore_brings_back_the_same_ca_and_every_secret_under_the_same_key() {
    let node = node().await;
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("b.berthbak");
    let manifest = backup(&node, &archive).await;
    assert_eq!(manifest.root_key_id, root().id());
    assert!(manifest.files.contains(&"pki/ca.key".to_string()));
    assert!(
        leftovers(node.dir.path()).is_empty(),
        "the snapshot is removed"
    );
    // Neither the root key nor a secret is readable in the archive.
    let bytes = std::fs::read(&archive).unwrap();
    assert!(!bytes.windows(12).any(|w| w == b"s3cret-value"));
    let hex_root = hex::encode(ROOT);
    assert!(!bytes.windows(16).any(|w| w == &hex_root.as_bytes()[..16]));
    assert!(!bytes.windows(32).any(|w| w == ROOT));

    let restored = out.path().join("restored");
    let report = restore(&root(), &archive, &restored, None).await.unwrap();
    assert_eq!(
        report.total_ciphertexts() as i64,
        node.svc.store().count_encrypted_rows().await.unwrap()
    );
    let pki = Pki::load_or_create(&restored, &["localhost".to_string()]).unwrap();
    assert_eq!(pki.ca_fingerprint, node.ca_fingerprint);
    let store = Store::open(&restored.join(DATABASE)).await.unwrap();
    let svc = Service::new(store, root()).await.unwrap();
    let (_, value) = svc
        .reveal_secret(&admin(), "prod", "DB_PASSWORD", true)
        .await
        .unwrap();
    assert_eq!(value.expose_secret(), "s3cret-value");
    assert_eq!(
        svc.store().key_ring().await.unwrap().len(),
        node.svc.store().key_ring().await.unwrap().len()
    );
}

#[tokio::test]
async fn writes_go_on_during_a_backup_and_the_snapshot_is_consistent() {
    let node = node().await;
    let writer = {
        let svc = node.svc.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                svc.set_secret(
                    &admin(),
                    "prod",
                    &format!("W{i}"),
                    &SecretString::from("w"),
                    None,
                )
                .await
                .unwrap();
            }
        })
    };
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("b");
    backup(&node, &archive).await;
    writer.await.unwrap();
    let report = verify_archive(&root(), &archive).await.unwrap();
    let secrets = report
        .ciphertexts
        .iter()
        .find(|(c, _)| c == "secrets.value")
        .unwrap()
        .1;
    assert!((1..=201).contains(&secrets), "{secrets}");
}

#[tokio::test]
async fn a_wrong_key_a_truncated_or_a_tampered_archive_is_refused_and_nothing_is_written() {
    let node = node().await;
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("b");
    backup(&node, &archive).await;
    let bytes = std::fs::read(&archive).unwrap();
    let bad = |name: &str, data: &[u8]| {
        let p = out.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    };
    let mut tampered = bytes.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x40;
    let cases = [
        (
            "wrong key",
            archive.clone(),
            MasterKey::from_bytes(&[1; 32]).unwrap(),
            "given master key",
        ),
        (
            "truncated",
            bad("t", &bytes[..bytes.len() - 10]),
            root(),
            "truncated",
        ),
        ("tampered", bad("m", &tampered), root(), "modified"),
        (
            "not an archive",
            bad("n", b"hello"),
            root(),
            "not a berth backup",
        ),
    ];
    for (what, path, key, expected) in cases {
        let target = out
            .path()
            .join(format!("restored-{}", what.replace(' ', "-")));
        let err = restore(&key, &path, &target, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{what}: {err}");
        assert!(!target.exists(), "{what}: nothing written");
        assert!(
            leftovers(out.path()).is_empty(),
            "{what}: {:?}",
            leftovers(out.path())
        );
        let err = verify_archive(&key, &path).await.unwrap_err().to_string();
        assert!(err.contains(expected), "{what}: {err}");
    }
}

#[tokio::test]
async fn a_non_empty_directory_is_refused_and_an_empty_one_is_used() {
    let node = node().await;
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("b");
    backup(&node, &archive).await;
    let full = out.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("berth.db"), b"keep me").unwrap();
    let err = restore(&root(), &archive, &full, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read(full.join("berth.db")).unwrap(), b"keep me");
    let empty = out.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    restore(&root(), &archive, &empty, None).await.unwrap();
    assert!(empty.join("pki/ca.key").exists());
}

#[tokio::test]
async fn verify_opens_every_ciphertext_and_names_a_damaged_row() {
    let node = node().await;
    // A row whose ciphertext no longer opens (moved from another row).
    let column = &crate::crypto::columns::REPOSITORY_PASSWORD;
    let (rowid, _, old) = node
        .svc
        .store()
        .rewrap_candidates(column, "none", 0, 1)
        .await
        .unwrap()
        .remove(0);
    let other = node
        .svc
        .key()
        .encrypt(b"x", &Aad::repository_password("other"))
        .await
        .unwrap();
    node.svc
        .store()
        .swap_ciphertexts(column, &[(rowid, old, other)])
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("b");
    backup(&node, &archive).await;
    let err = verify_archive(&root(), &archive)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("repositories.password"), "{err}");
}

#[tokio::test]
async fn only_admins_take_backups() {
    let node = node().await;
    let err = node
        .svc
        .write_backup(&viewer(), node.dir.path(), Vec::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), crate::error::ErrorCode::PermissionDenied);
}
