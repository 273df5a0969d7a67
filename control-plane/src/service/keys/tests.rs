use secrecy::{ExposeSecret as _, SecretString};

use super::*;
use crate::crypto::ring::key_id;
use crate::crypto::MasterKey;
use crate::service::key_check_tests::one_of_each_in;
use crate::service::testing::{admin, viewer};
use crate::store::Store;

fn root() -> MasterKey {
    MasterKey::from_bytes(&[42u8; 32]).unwrap()
}

/// Key ids in use per ring-encrypted column.
async fn ids_in_use(svc: &Service) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for column in ENCRYPTED_COLUMNS.iter().filter(|c| !c.under_root) {
        for (_, ciphertext) in svc.store().encrypted_values(column, None).await.unwrap() {
            out.push((
                column_name(column),
                key_id(&ciphertext).unwrap().to_string(),
            ));
        }
    }
    out
}

async fn reveal(svc: &Service, name: &str) -> String {
    svc.reveal_secret(&admin(), "prod", name, true)
        .await
        .unwrap()
        .1
        .expose_secret()
        .to_string()
}

/// A database from before the ring: every ciphertext directly under the root key.
async fn rows_under_root(svc: &Service) {
    let root = root();
    for column in ENCRYPTED_COLUMNS.iter().filter(|c| !c.under_root) {
        let values = svc.store().encrypted_values(column, None).await.unwrap();
        let swaps: Vec<(i64, String, String)> = {
            let mut out = Vec::new();
            for (rowid, aad, old) in svc
                .store()
                .rewrap_candidates(column, "none", 0, 1000)
                .await
                .unwrap()
            {
                let plain = svc.key().decrypt(&old, &aad).unwrap();
                out.push((rowid, old, root.encrypt(&plain, &aad)));
            }
            out
        };
        assert_eq!(swaps.len(), values.len());
        svc.store().swap_ciphertexts(column, &swaps).await.unwrap();
    }
}

#[tokio::test]
async fn rotation_rewraps_every_column_to_the_new_key_and_values_stay_the_same() {
    let store = Store::open_in_memory().await.unwrap();
    let svc = one_of_each_in(store, root()).await;
    rows_under_root(&svc).await;
    let before = ids_in_use(&svc).await;
    assert!(before.iter().all(|(_, id)| id == svc.key().root_id()));
    let started = svc.rotate_key(&admin(), false).await.unwrap();
    svc.wait_for_rotation().await;
    let after = ids_in_use(&svc).await;
    assert_eq!(after.len(), before.len());
    for (column, id) in &after {
        assert_eq!(id, &started.key_id, "{column}");
    }
    assert_eq!(reveal(&svc, "DB_PASSWORD").await, "s3cret-value");
    // The root-wrapped rows stay under the root key.
    let status = svc.key_status(&admin()).await.unwrap();
    assert!(status.rotation.is_none(), "{status:?}");
    let root_info = status.keys.iter().find(|k| k.state == "root").unwrap();
    let columns: Vec<&str> = root_info.rows.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(columns, ["system_settings.value", "key_ring.wrapped"]);
    let active = &status.keys[0];
    assert_eq!(
        (active.state, active.id.as_str()),
        ("active", started.key_id.as_str())
    );
    assert_eq!(active.total_rows(), after.len() as i64);
    // Every old key rewrapped away: the first ring key has no rows and can be retired.
    let old: Vec<&KeyInfo> = status.keys.iter().filter(|k| k.state == "old").collect();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].total_rows(), 0);
    svc.retire_key(&admin(), &old[0].id.clone()).await.unwrap();
}

#[tokio::test]
async fn a_second_rotation_moves_rows_from_the_previous_ring_key() {
    let store = Store::open_in_memory().await.unwrap();
    let svc = one_of_each_in(store, root()).await;
    let first = svc.key().active_id().unwrap();
    let second = svc.rotate_key(&admin(), false).await.unwrap().key_id;
    svc.wait_for_rotation().await;
    assert_ne!(first, second);
    assert!(ids_in_use(&svc).await.iter().all(|(_, id)| id == &second));
    // New writes use the new key.
    svc.set_secret(&admin(), "prod", "NEW", &SecretString::from("n"), None)
        .await
        .unwrap();
    assert!(ids_in_use(&svc).await.iter().all(|(_, id)| id == &second));
}

#[tokio::test]
async fn a_concurrent_write_is_never_overwritten_by_the_rewrap() {
    let store = Store::open_in_memory().await.unwrap();
    let svc = one_of_each_in(store, root()).await;
    rows_under_root(&svc).await;
    let column = &crate::crypto::columns::SECRET_VALUE;
    let batch = svc
        .store()
        .rewrap_candidates(column, &svc.key().active_id().unwrap(), 0, 10)
        .await
        .unwrap();
    assert_eq!(batch.len(), 1);
    // The batch was read; a user writes the row before the batch commits.
    svc.set_secret(
        &admin(),
        "prod",
        "DB_PASSWORD",
        &SecretString::from("written-during"),
        None,
    )
    .await
    .unwrap();
    let (rowid, aad, old) = batch.into_iter().next().unwrap();
    let plain = svc.key().decrypt(&old, &aad).unwrap();
    let new = svc.key().encrypt(&plain, &aad).await.unwrap();
    let swapped = svc
        .store()
        .swap_ciphertexts(column, &[(rowid, old, new)])
        .await
        .unwrap();
    assert_eq!(swapped, 0);
    assert_eq!(reveal(&svc, "DB_PASSWORD").await, "written-during");
}

#[tokio::test]
async fn a_crash_after_the_new_key_leaves_every_row_readable_and_the_restart_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.db");
    let svc = one_of_each_in(Store::open(&path).await.unwrap(), root()).await;
    rows_under_root(&svc).await;
    for i in 0..450 {
        svc.set_secret(
            &admin(),
            "prod",
            &format!("S{i}"),
            &SecretString::from(format!("v{i}")),
            None,
        )
        .await
        .unwrap();
    }
    // What `rotate` did before a crash: the new key is active and the rotation recorded,
    // and one batch was rewrapped; the rest never ran.
    let target = svc.key().add_active_key(true).await.unwrap();
    svc.rewrap_column_batches(&crate::crypto::columns::SECRET_VALUE, &target, 1)
        .await
        .unwrap();
    svc.store().close().await;
    drop(svc);

    let svc = Service::new(Store::open(&path).await.unwrap(), root())
        .await
        .unwrap();
    let mixed = ids_in_use(&svc).await;
    assert!(mixed.iter().any(|(_, id)| id == &target));
    assert!(mixed.iter().any(|(_, id)| id != &target));
    // Every row reads, under either key, and writes go on.
    assert_eq!(reveal(&svc, "S449").await, "v449");
    assert_eq!(reveal(&svc, "DB_PASSWORD").await, "s3cret-value");
    let status = svc.key_status(&admin()).await.unwrap();
    let progress = status.rotation.unwrap();
    assert_eq!(progress.target, target);
    assert!(progress.remaining > 0);
    // A new rotation is refused until this one is finished; the resume at start finishes it.
    let refused = svc
        .rotate_key(&admin(), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("--resume"), "{refused}");
    assert_eq!(
        svc.resume_unfinished_rotation().await.unwrap(),
        Some(target.clone())
    );
    svc.wait_for_rotation().await;
    assert!(ids_in_use(&svc).await.iter().all(|(_, id)| id == &target));
    assert!(svc.key_status(&admin()).await.unwrap().rotation.is_none());
    assert_eq!(reveal(&svc, "S0").await, "v0");
    let nothing = svc
        .rotate_key(&admin(), true)
        .await
        .unwrap_err()
        .to_string();
    assert!(nothing.contains("no unfinished key rotation"), "{nothing}");
}

#[tokio::test]
async fn retire_refuses_the_active_key_the_root_key_and_a_key_rows_still_use() {
    let store = Store::open_in_memory().await.unwrap();
    let svc = one_of_each_in(store, root()).await;
    let first = svc.key().active_id().unwrap();
    let active = svc
        .retire_key(&admin(), &first)
        .await
        .unwrap_err()
        .to_string();
    assert!(active.contains("is the active key"), "{active}");
    let root_id = svc.key().root_id().to_string();
    let root_err = svc
        .retire_key(&admin(), &root_id)
        .await
        .unwrap_err()
        .to_string();
    assert!(root_err.contains("rotate-root-key"), "{root_err}");
    // A new key without the rewrap: the first key still holds every row.
    svc.key().add_active_key(false).await.unwrap();
    let used = svc
        .retire_key(&admin(), &first)
        .await
        .unwrap_err()
        .to_string();
    assert!(used.contains("secrets.value: 1"), "{used}");
    assert!(used.contains("still used"), "{used}");
    assert!(svc
        .store()
        .key_ring()
        .await
        .unwrap()
        .iter()
        .any(|r| r.id == first));
    let unknown = svc.retire_key(&admin(), "00000000").await.unwrap_err();
    assert_eq!(unknown.code(), crate::error::ErrorCode::NotFound);
}

#[tokio::test]
async fn status_warns_before_the_nonce_bound_and_viewers_cannot_rotate() {
    let store = Store::open_in_memory().await.unwrap();
    let svc = one_of_each_in(store, root()).await;
    let id = svc.key().active_id().unwrap();
    let status = svc.key_status(&admin()).await.unwrap();
    assert!(
        status.keys.iter().all(|k| k.warning.is_none()),
        "{status:?}"
    );
    svc.store()
        .reserve_encryptions(&id, ENCRYPTION_WARN_AT as i64)
        .await
        .unwrap();
    let status = svc.key_status(&admin()).await.unwrap();
    let warning = status.keys[0].warning.clone().expect("a warning");
    assert!(warning.contains("rotate now"), "{warning}");
    assert!(svc.rotate_key(&viewer(), false).await.is_err());
    assert!(svc.key_status(&viewer()).await.is_err());
    assert!(svc.retire_key(&viewer(), &id).await.is_err());
}
