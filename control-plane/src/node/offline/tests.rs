use secrecy::{ExposeSecret as _, SecretString};

use super::*;
use crate::service::testing::admin;

const OLD: [u8; 32] = [21; 32];
const NEW: [u8; 32] = [22; 32];

fn key_file(dir: &Path, name: &str, bytes: &[u8; 32]) -> std::path::PathBuf {
    let path = dir.join(name);
    crate::pki::write_new_private(&path, &hex::encode(bytes)).unwrap();
    path
}

/// A data dir with one secret, written by a node started with the key in `master.key`.
async fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    key_file(dir.path(), MASTER_KEY_FILE, &OLD);
    let store = Store::open(&dir.path().join(DATABASE_FILE)).await.unwrap();
    let svc = Service::new(store.clone(), MasterKey::from_bytes(&OLD).unwrap())
        .await
        .unwrap();
    svc.create_group(&admin(), "prod", None).await.unwrap();
    svc.set_secret(&admin(), "prod", "A", &SecretString::from("value-a"), None)
        .await
        .unwrap();
    store.close().await;
    dir
}

async fn reveal_with(dir: &Path, key: &[u8; 32]) -> Result<String> {
    let store = Store::open(&dir.join(DATABASE_FILE)).await.unwrap();
    let result = async {
        let svc = Service::new(store.clone(), MasterKey::from_bytes(key).unwrap()).await?;
        let (_, value) = svc.reveal_secret(&admin(), "prod", "A", true).await?;
        Ok(value.expose_secret().to_string())
    }
    .await;
    store.close().await;
    result
}

#[tokio::test]
async fn the_root_key_rotation_rewraps_the_ring_and_the_data_dir_key_file() {
    let dir = data_dir().await;
    let new_file = key_file(dir.path(), "new.key", &NEW);
    let done = rotate_root_key(dir.path(), &MasterKeySource::DataDir, &new_file)
        .await
        .unwrap();
    assert_eq!(done.ring_keys, 1);
    assert!(done.replaced_key_file);
    assert_eq!(
        MasterKey::read_file(&dir.path().join(MASTER_KEY_FILE))
            .unwrap()
            .id(),
        MasterKey::from_bytes(&NEW).unwrap().id()
    );
    assert_eq!(reveal_with(dir.path(), &NEW).await.unwrap(), "value-a");
    let old = reveal_with(dir.path(), &OLD).await.unwrap_err().to_string();
    assert!(old.contains("does not match this database"), "{old}");
}

#[tokio::test]
async fn rows_directly_under_the_root_key_refuse_the_rotation_and_change_nothing() {
    let dir = data_dir().await;
    // A database from before the ring: the secret directly under the root key.
    let store = Store::open(&dir.path().join(DATABASE_FILE)).await.unwrap();
    let column = &crate::crypto::columns::SECRET_VALUE;
    let root = MasterKey::from_bytes(&OLD).unwrap();
    let svc = Service::new(store.clone(), MasterKey::from_bytes(&OLD).unwrap())
        .await
        .unwrap();
    let mut swaps = Vec::new();
    for (rowid, aad, old) in store.rewrap_candidates(column, "x", 0, 10).await.unwrap() {
        let plain = svc.key().decrypt(&old, &aad).unwrap();
        swaps.push((rowid, old, root.encrypt(&plain, &aad)));
    }
    store.swap_ciphertexts(column, &swaps).await.unwrap();
    let ring_before = store.key_ring().await.unwrap();
    store.close().await;

    let new_file = key_file(dir.path(), "new.key", &NEW);
    let err = rotate_root_key(dir.path(), &MasterKeySource::DataDir, &new_file)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("berth key rotate"), "{err}");
    assert!(err.contains("secrets.value: 1"), "{err}");
    assert_eq!(reveal_with(dir.path(), &OLD).await.unwrap(), "value-a");
    let store = Store::open(&dir.path().join(DATABASE_FILE)).await.unwrap();
    let ring_after = store.key_ring().await.unwrap();
    store.close().await;
    assert_eq!(
        ring_before.iter().map(|r| &r.wrapped).collect::<Vec<_>>(),
        ring_after.iter().map(|r| &r.wrapped).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_wrong_current_key_or_the_same_key_is_refused() {
    let dir = data_dir().await;
    let same = key_file(dir.path(), "same.key", &OLD);
    let err = rotate_root_key(dir.path(), &MasterKeySource::DataDir, &same)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("current root key"), "{err}");
    let new_file = key_file(dir.path(), "new.key", &NEW);
    let wrong = key_file(dir.path(), "wrong.key", &[23; 32]);
    let err = rotate_root_key(dir.path(), &MasterKeySource::File(wrong), &new_file)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match this database"), "{err}");
    assert_eq!(reveal_with(dir.path(), &OLD).await.unwrap(), "value-a");
}
