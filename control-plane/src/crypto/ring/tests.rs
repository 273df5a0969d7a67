use super::*;
use crate::crypto::columns::ENCRYPTED_COLUMNS;
use crate::store::Store;

fn root() -> MasterKey {
    MasterKey::from_bytes(&[3u8; 32]).unwrap()
}

async fn ring(store: &Store) -> KeyRing {
    let ring = KeyRing::load(root(), store.clone()).await.unwrap();
    ring.ensure_active().await.unwrap();
    ring
}

#[tokio::test]
async fn new_encryptions_use_the_active_ring_key_and_root_rows_stay_readable() {
    let store = Store::open_in_memory().await.unwrap();
    let ring = ring(&store).await;
    let active = ring.active_id().unwrap();
    assert_ne!(active, ring.root_id());
    let aad = Aad::secret(1, "A");
    let stored = ring.encrypt(b"value", &aad).await.unwrap();
    assert_eq!(key_id(&stored), Some(active.as_str()));
    assert_eq!(&ring.decrypt(&stored, &aad).unwrap()[..], b"value");
    // A row of a database from before the ring: under the root key itself.
    let old = root().encrypt(b"old value", &aad);
    assert_eq!(&ring.decrypt(&old, &aad).unwrap()[..], b"old value");
}

#[tokio::test]
async fn the_ring_is_stored_wrapped_and_reloads_with_the_root_key_only() {
    let store = Store::open_in_memory().await.unwrap();
    let first = ring(&store).await;
    let aad = Aad::secret(1, "A");
    let stored = first.encrypt(b"value", &aad).await.unwrap();
    let second_id = first.add_active_key(false).await.unwrap();
    let newer = first.encrypt(b"newer", &aad).await.unwrap();
    assert_eq!(key_id(&newer), Some(second_id.as_str()));
    let rows = store.key_ring().await.unwrap();
    assert_eq!(rows.len(), 2);
    let states: Vec<&str> = rows.iter().map(|r| r.state.as_str()).collect();
    assert_eq!(states, ["old", "active"]);
    for row in &rows {
        // Wrapped under the root key, bound to its row.
        assert_eq!(key_id(&row.wrapped), Some(root().id()));
    }
    // A restart: both keys come back from the database.
    let reloaded = KeyRing::load(root(), store.clone()).await.unwrap();
    assert_eq!(reloaded.active_id(), Some(second_id));
    assert_eq!(&reloaded.decrypt(&stored, &aad).unwrap()[..], b"value");
    assert_eq!(&reloaded.decrypt(&newer, &aad).unwrap()[..], b"newer");
    // Another root key cannot unwrap it.
    let wrong = KeyRing::load(MasterKey::from_bytes(&[4u8; 32]).unwrap(), store.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(wrong.contains("does not match this database"), "{wrong}");
}

#[tokio::test]
async fn encryptions_are_counted_on_disk_before_they_are_made() {
    let store = Store::open_in_memory().await.unwrap();
    let ring = ring(&store).await;
    let id = ring.active_id().unwrap();
    let counted = |store: Store, id: String| async move {
        store
            .key_ring()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.id == id)
            .unwrap()
            .encryptions as u64
    };
    let aad = Aad::secret(1, "A");
    let mut made = 0u64;
    for n in [1usize, 10, 999, 1, 2500, 7] {
        let sealer = ring.sealer(n).await.unwrap();
        // What a crash right now would leave: never fewer than made.
        for _ in 0..n {
            sealer.encrypt(b"v", &aad);
            made += 1;
            assert!(counted(store.clone(), id.clone()).await >= made);
        }
    }
    // Blocks, not one write per encryption: at most one block ahead.
    let on_disk = counted(store.clone(), id.clone()).await;
    assert!(
        on_disk < made + 2 * RESERVATION_BLOCK,
        "{on_disk} for {made}"
    );
    // Unused reservations go back to the pool instead of being counted again.
    drop(ring.sealer(5).await.unwrap());
    drop(ring.sealer(5).await.unwrap());
    assert_eq!(counted(store.clone(), id.clone()).await, on_disk);
}

#[tokio::test]
async fn a_key_neither_root_nor_in_the_ring_is_named_without_content() {
    let store = Store::open_in_memory().await.unwrap();
    let ring = ring(&store).await;
    let stranger = MasterKey::from_bytes(&[9u8; 32]).unwrap();
    let aad = Aad::secret(1, "A");
    let stored = stranger.encrypt(b"hunter2", &aad);
    let err = ring.decrypt(&stored, &aad).unwrap_err().to_string();
    assert!(err.contains(stranger.id()), "{err}");
    assert!(err.contains("nor in the key ring"), "{err}");
    assert!(!err.contains("hunter2"));
}

#[tokio::test]
async fn debug_shows_ids_only() {
    let store = Store::open_in_memory().await.unwrap();
    let ring = ring(&store).await;
    let dbg = format!("{ring:?} {:?}", ring.sealer(1).await.unwrap());
    assert!(dbg.contains(ring.root_id()), "{dbg}");
    assert!(!dbg.contains("0303"), "{dbg}");
    for row in store.key_ring().await.unwrap() {
        assert!(!format!("{row:?}").contains(&row.wrapped));
    }
}

#[test]
fn the_ring_column_is_registered_and_root_wrapped() {
    let ring_col = ENCRYPTED_COLUMNS
        .iter()
        .find(|c| c.table == "key_ring")
        .expect("key_ring.wrapped is registered");
    assert!(ring_col.under_root);
    assert_eq!(
        ENCRYPTED_COLUMNS.iter().filter(|c| c.under_root).count(),
        2,
        "the ring and the key check"
    );
}

#[tokio::test]
async fn rewrapping_the_ring_to_a_new_root_needs_the_old_root() {
    let store = Store::open_in_memory().await.unwrap();
    let ring = ring(&store).await;
    let rows = store.key_ring().await.unwrap();
    let new_root = MasterKey::from_bytes(&[5u8; 32]).unwrap();
    let wrapped = rewrap_ring(&root(), &new_root, &rows).unwrap();
    assert_eq!(key_id(&wrapped[0].1), Some(new_root.id()));
    assert_eq!(wrapped[0].0, ring.active_id().unwrap());
    let err = rewrap_ring(&new_root, &root(), &rows)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not unwrap"), "{err}");
}
