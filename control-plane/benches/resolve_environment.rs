//! Resolution of an application environment with N secret references (SPEC §12: 100-secret
//! env p99 < 1 ms; <= 5 us per extra secret). In-memory SQLite, real AES-GCM.
//!
//! cargo bench -p berth-control-plane --bench resolve_environment

use berth_control_plane::crypto::MasterKey;
use berth_control_plane::service::applications::ApplicationSpec;
use berth_control_plane::service::{Actor, Service, SetEnvValue};
use berth_control_plane::store::Store;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use secrecy::SecretString;

async fn setup(secrets: usize) -> (Service, i64) {
    let store = Store::open_in_memory().await.unwrap();
    let svc = Service::new(store, MasterKey::from_bytes(&[1u8; 32]).unwrap())
        .await
        .unwrap();
    let admin = Actor::system();
    let app = svc
        .create_application(
            &admin,
            ApplicationSpec {
                name: "bench".into(),
                image: "bench/app".into(),
                version: None,
                repository: None,
                ports: vec![],
                webhook_enabled: true,
                auto_deploy: false,
                targets: vec![],
                deploy_batch_size: None,
                health_check: None,
                restart_policy: None,
                drain_timeout_s: None,
                stop_timeout_s: None,
                stop_signal: None,
                cancel_in_progress: false,
            },
        )
        .await
        .unwrap()
        .application;
    svc.create_group(&admin, "g", None).await.unwrap();
    for i in 0..secrets {
        let name = format!("SECRET_{i}");
        let value = SecretString::from(format!(
            "postgres://user{i}:password-{i}@db.internal:5432/app"
        ));
        svc.set_secret(&admin, "g", &name, &value, None)
            .await
            .unwrap();
        svc.set_env(
            &admin,
            Some("bench"),
            &name,
            SetEnvValue::Secret(format!("g/{name}")),
            None,
        )
        .await
        .unwrap();
    }
    svc.set_env(
        &admin,
        None,
        "NODE_ENV",
        SetEnvValue::Plain("production".into()),
        None,
    )
    .await
    .unwrap();
    (svc, app.id)
}

fn resolve(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("resolve_environment");
    for n in [1usize, 100, 200] {
        let (svc, app_id) = rt.block_on(setup(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| rt.block_on(svc.resolve_environment(app_id)).unwrap())
        });
    }
    group.finish();

    // The anchor: one AES-GCM decryption of a small value, measured in the same run.
    let key = MasterKey::from_bytes(&[1u8; 32]).unwrap();
    let aad = berth_control_plane::crypto::Aad::secret(1, "X");
    let stored = key.encrypt(b"postgres://user:password@db.internal:5432/app", &aad);
    c.bench_function("aes_gcm_decrypt_small_value", |b| {
        b.iter(|| key.decrypt(&stored, &aad).unwrap())
    });
}

criterion_group!(benches, resolve);
criterion_main!(benches);
