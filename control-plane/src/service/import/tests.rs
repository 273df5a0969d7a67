//! The import at the service's boundary: one plan of every kind, run twice, dry, against
//! conflicts and bad rows; the database is compared table by table to prove "nothing written".

use secrecy::{ExposeSecret as _, SecretString};

use super::*;
use crate::crypto::{token_matches, Aad, MasterKey};
use crate::error::ErrorCode;
use crate::service::testing::{admin, service, viewer};
use crate::service::WEBHOOK_TOKEN_PREFIX;
use crate::store::Store;

fn s(v: &str) -> SecretString {
    SecretString::from(v.to_string())
}

fn port(host: u16, container: u16) -> PortMapping {
    PortMapping {
        host,
        container,
        protocol: "tcp".into(),
    }
}

fn var(source: &str, app: Option<&str>, key: &str, value: PlanValue) -> PlanVariable {
    PlanVariable {
        source: source.into(),
        application: app.map(str::to_string),
        key: key.into(),
        value,
    }
}

const DB_URL: &str = "postgres://app:s3cr3t-db@db.internal/app";
const STRIPE: &str = "sk_live_s3cr3t-stripe";
const REGISTRY_PASSWORD: &str = "s3cr3t-registry";
const PROVIDER_SECRET: &str = "s3cr3t-infisical";

/// A V1 database of every kind, as the CLI reads it.
fn full_plan() -> ImportPlan {
    ImportPlan {
        group: "default".into(),
        secrets: vec![
            PlanSecret {
                v1_id: 1,
                name: "DATABASE_URL".into(),
                value: s(DB_URL),
                description: Some("main database".into()),
                created_at: Some("2024-01-02 03:04:05".into()),
                updated_at: None,
            },
            PlanSecret {
                v1_id: 2,
                name: "STRIPE_KEY".into(),
                value: s(STRIPE),
                description: None,
                created_at: None,
                updated_at: None,
            },
        ],
        repositories: vec![PlanRepository {
            v1_id: 1,
            name: "registry".into(),
            url: "registry.example:5000".into(),
            username: Some("ci".into()),
            password: Some(s(REGISTRY_PASSWORD)),
        }],
        applications: vec![
            PlanApplication {
                v1_id: 1,
                name: "web".into(),
                image: "registry.example:5000/team/web".into(),
                version: Some("v1.2.3".into()),
                repository: Some("registry".into()),
                ports: vec![port(8080, 80)],
                status: "running".into(),
                last_deployed_at: Some("2024-05-06 07:08:09".into()),
                created_at: None,
                updated_at: None,
            },
            PlanApplication {
                v1_id: 2,
                name: "worker".into(),
                image: "team/worker".into(),
                version: None,
                repository: None,
                ports: vec![],
                status: "stopped".into(),
                last_deployed_at: None,
                created_at: None,
                updated_at: None,
            },
        ],
        variables: vec![
            var(
                "environment_variables row 1",
                None,
                "NODE_ENV",
                PlanValue::Plain(s("production")),
            ),
            var(
                "environment_variables row 2",
                Some("web"),
                "DATABASE_URL",
                PlanValue::Secret("DATABASE_URL".into()),
            ),
            var(
                "applications row 1 env_vars",
                Some("web"),
                "GREETING",
                PlanValue::Plain(s("hello")),
            ),
            var(
                "applications row 2 env_vars",
                Some("worker"),
                "STRIPE_KEY",
                PlanValue::Secret("STRIPE_KEY".into()),
            ),
        ],
        image_patterns: vec![
            PlanImagePattern {
                v1_id: 1,
                pattern: "registry.example:5000/*".into(),
            },
            PlanImagePattern {
                v1_id: 2,
                pattern: "team/*/x*".into(),
            },
        ],
        domains: vec![
            PlanDomain {
                v1_id: 1,
                application: "web".into(),
                host: "Shop.Example.com".into(),
            },
            PlanDomain {
                v1_id: 2,
                application: "worker".into(),
                host: "worker.example.com".into(),
            },
            PlanDomain {
                v1_id: 3,
                application: "web".into(),
                host: "10.0.0.1".into(),
            },
        ],
        providers: vec![
            PlanProvider {
                v1_id: 1,
                name: "infisical-prod".into(),
                provider_type: "infisical".into(),
                config: s(&format!(
                    r#"{{"clientId":"id-1","clientSecret":"{PROVIDER_SECRET}","projectId":"p1","environment":"prod","secretPath":"/"}}"#
                )),
            },
            PlanProvider {
                v1_id: 2,
                name: "vault".into(),
                provider_type: "hashicorp-vault".into(),
                config: s(r#"{"url":"https://vault.example","token":"s3cr3t-vault"}"#),
            },
        ],
    }
}

fn outcomes(report: &ImportReport) -> Vec<(ItemKind, String, Outcome)> {
    report
        .items
        .iter()
        .map(|i| (i.kind, i.name.clone(), i.outcome))
        .collect()
}

fn item<'a>(report: &'a ImportReport, kind: ItemKind, name: &str) -> &'a ReportItem {
    report
        .items
        .iter()
        .find(|i| i.kind == kind && i.name == name)
        .unwrap_or_else(|| panic!("no {kind:?} {name} in {:?}", report.items))
}

#[tokio::test]
async fn a_first_import_creates_every_kind_and_a_second_creates_nothing() {
    let svc = service().await;
    let plan = full_plan();
    let first = svc.import_v1(&admin(), &plan, false).await.unwrap();
    assert!(first.applied && !first.dry_run);
    use ItemKind::*;
    use Outcome::*;
    assert_eq!(
        outcomes(&first),
        vec![
            (Group, "default".into(), Created),
            (Secret, "default/DATABASE_URL".into(), Created),
            (Secret, "default/STRIPE_KEY".into(), Created),
            (Repository, "registry".into(), Created),
            (Provider, "infisical-prod".into(), Created),
            (Provider, "vault".into(), Skipped),
            (Application, "web".into(), Created),
            (Application, "worker".into(), Created),
            (Variable, "(global):NODE_ENV".into(), Created),
            (Variable, "web:DATABASE_URL".into(), Created),
            (Variable, "web:GREETING".into(), Created),
            (Variable, "worker:STRIPE_KEY".into(), Created),
            (ImagePattern, "registry.example:5000/*".into(), Created),
            (ImagePattern, "team/*/x*".into(), Skipped),
            (Domain, "shop.example.com".into(), Created),
            (Domain, "worker.example.com".into(), Skipped),
            (Domain, "10.0.0.1".into(), Skipped),
        ]
    );
    assert!(item(&first, Provider, "vault")
        .detail
        .contains("does not map"));
    assert!(item(&first, Domain, "worker.example.com")
        .detail
        .contains("no container port"));
    assert!(item(&first, ImagePattern, "registry.example:5000/*")
        .detail
        .contains("allowlist was empty"));

    // Secrets reveal to their V1 values, with the V1 metadata and timestamps.
    let (secret, value) = svc
        .reveal_secret(&admin(), "default", "DATABASE_URL", true)
        .await
        .unwrap();
    assert_eq!(value.expose_secret(), DB_URL);
    assert_eq!(secret.description.as_deref(), Some("main database"));
    assert_eq!(secret.created_at, "2024-01-02 03:04:05");
    assert_eq!(secret.source, "manual");

    // Applications keep their V1 fields; each has a token that matches its digest.
    let web = svc.store().application("web").await.unwrap();
    assert_eq!(web.version.as_deref(), Some("v1.2.3"));
    assert_eq!(web.repository.as_deref(), Some("registry"));
    assert_eq!(web.status, "running");
    assert_eq!(web.last_deployed_at.as_deref(), Some("2024-05-06 07:08:09"));
    assert_eq!(web.ports, vec![port(8080, 80)]);
    assert!(web.webhook_enabled);
    let tokens: Vec<&str> = first.tokens.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(tokens, ["web", "worker"]);
    for (app, token) in &first.tokens {
        let row = svc.store().application(app).await.unwrap();
        let digest = svc
            .store()
            .webhook_token_digest(row.id)
            .await
            .unwrap()
            .unwrap();
        assert!(token.expose_secret().starts_with(WEBHOOK_TOKEN_PREFIX));
        assert!(token_matches(token, &digest), "{app}");
    }

    // Variables resolve: the secret_ref to the V1 value, plain values as they were.
    let env = svc.resolve_environment(web.id).await.unwrap();
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose_secret()))
        .collect();
    assert_eq!(
        env,
        [
            ("DATABASE_URL", DB_URL),
            ("GREETING", "hello"),
            ("NODE_ENV", "production")
        ]
    );
    let repository = svc.store().repository("registry").await.unwrap();
    let password = svc
        .key()
        .decrypt_string(
            repository.password.as_deref().unwrap(),
            &Aad::repository_password("registry"),
        )
        .unwrap();
    assert_eq!(password.expose_secret(), REGISTRY_PASSWORD);
    let provider = svc.store().provider("infisical-prod").await.unwrap();
    assert!(provider.group_name.is_none());
    let audit = svc.store().list_audit(100).await.unwrap();
    let import = audit.iter().find(|a| a.action == "import.v1").unwrap();
    assert_eq!(import.target.as_deref(), Some("default"));
    assert!(
        import
            .details
            .as_deref()
            .unwrap()
            .starts_with("created: 1 group, 2 secret"),
        "{import:?}"
    );
    assert!(!format!("{audit:?}").contains("s3cr3t"));

    // The second run: nothing created, nothing conflicts, no token.
    let before = svc.store().import_table_counts().await;
    let second = svc.import_v1(&admin(), &plan, false).await.unwrap();
    assert!(second.applied);
    assert_eq!(second.count(Created), 0, "{:?}", second.items);
    assert_eq!(second.count(Conflict), 0, "{:?}", second.items);
    assert_eq!(second.count(Skipped), first.count(Skipped));
    assert!(second.tokens.is_empty());
    let after = svc.store().import_table_counts().await;
    let without_audit = |c: &[(&'static str, i64)]| -> Vec<(&'static str, i64)> {
        c.iter()
            .filter(|(t, _)| *t != "audit_log")
            .copied()
            .collect()
    };
    assert_eq!(without_audit(&before), without_audit(&after));
    // The applications kept their tokens.
    for (app, token) in &first.tokens {
        let row = svc.store().application(app).await.unwrap();
        let digest = svc
            .store()
            .webhook_token_digest(row.id)
            .await
            .unwrap()
            .unwrap();
        assert!(token_matches(token, &digest), "{app}");
    }
}

/// Deploys change an application's version and status: that is not a conflict.
#[tokio::test]
async fn deployment_state_is_not_a_conflict() {
    let svc = service().await;
    let plan = full_plan();
    svc.import_v1(&admin(), &plan, false).await.unwrap();
    svc.update_application(
        &admin(),
        "web",
        crate::service::applications::ApplicationUpdate {
            version: Some("v9".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let again = svc.import_v1(&admin(), &plan, false).await.unwrap();
    assert_eq!(
        item(&again, ItemKind::Application, "web").outcome,
        Outcome::AlreadyImported
    );
}

#[tokio::test]
async fn secrets_and_credentials_are_encrypted_in_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("berth.db")).await.unwrap();
    let svc = Service::new(store.clone(), MasterKey::from_bytes(&[42u8; 32]).unwrap())
        .await
        .unwrap();
    let report = svc.import_v1(&admin(), &full_plan(), false).await.unwrap();
    assert!(report.applied);
    store.close().await;
    for plaintext in [DB_URL, STRIPE, REGISTRY_PASSWORD, PROVIDER_SECRET] {
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes
                    .windows(plaintext.len())
                    .any(|w| w == plaintext.as_bytes()),
                "{} holds a plaintext value",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn a_conflict_is_reported_never_overwritten_and_the_run_writes_nothing() {
    let svc = service().await;
    svc.create_group(&admin(), "default", None).await.unwrap();
    svc.set_secret(
        &admin(),
        "default",
        "DATABASE_URL",
        &s("berth-value"),
        Some("main database"),
    )
    .await
    .unwrap();
    svc.set_env(
        &admin(),
        None,
        "NODE_ENV",
        crate::service::SetEnvValue::Plain("staging".into()),
        None,
    )
    .await
    .unwrap();
    let before = svc.store().import_table_counts().await;
    let report = svc.import_v1(&admin(), &full_plan(), false).await.unwrap();
    assert!(!report.applied);
    assert!(report.tokens.is_empty());
    let conflict = item(&report, ItemKind::Secret, "default/DATABASE_URL");
    assert_eq!(conflict.outcome, Outcome::Conflict);
    assert_eq!(conflict.detail, "berth's secret differs: value");
    let conflict = item(&report, ItemKind::Variable, "(global):NODE_ENV");
    assert_eq!(conflict.outcome, Outcome::Conflict);
    assert!(!format!("{:?}", report.items).contains("staging"));
    // The rest is reported as it would be created.
    assert_eq!(
        item(&report, ItemKind::Application, "web").outcome,
        Outcome::Created
    );
    assert_eq!(svc.store().import_table_counts().await, before);
    let (_, value) = svc
        .reveal_secret(&admin(), "default", "DATABASE_URL", true)
        .await
        .unwrap();
    assert_eq!(value.expose_secret(), "berth-value");
}

#[tokio::test]
async fn a_dry_run_decides_as_the_real_run_and_writes_nothing() {
    let svc = service().await;
    let plan = full_plan();
    let before = svc.store().import_table_counts().await;
    let dry = svc.import_v1(&admin(), &plan, true).await.unwrap();
    assert!(dry.dry_run && !dry.applied);
    assert!(dry.tokens.is_empty());
    assert_eq!(svc.store().import_table_counts().await, before);
    let real = svc.import_v1(&admin(), &plan, false).await.unwrap();
    assert_eq!(outcomes(&dry), outcomes(&real));
}

#[tokio::test]
async fn a_row_berth_cannot_hold_is_an_error_naming_the_row_and_nothing_is_written() {
    let svc = service().await;
    let before = svc.store().import_table_counts().await;
    let mut plan = full_plan();
    plan.variables.push(var(
        "applications row 2 env_vars",
        Some("worker"),
        "1-not a name",
        PlanValue::Plain(s("s3cr3t-plain")),
    ));
    let err = svc.import_v1(&admin(), &plan, false).await.err().unwrap();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    let message = err.to_string();
    assert!(
        message.contains("V1 applications row 2 env_vars"),
        "{message}"
    );
    assert!(message.contains("cannot be a variable name"), "{message}");
    assert!(
        !message.contains("not a name") && !message.contains("s3cr3t"),
        "{message}"
    );
    assert_eq!(svc.store().import_table_counts().await, before);

    let mut plan = full_plan();
    plan.secrets[1].name = "STRIPE KEY".into();
    let message = svc
        .import_v1(&admin(), &plan, false)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(message.starts_with("V1 secrets row 2: "), "{message}");
    assert!(!message.contains("STRIPE KEY"), "{message}");

    let mut plan = full_plan();
    plan.variables[1].value = PlanValue::Secret("NOPE".into());
    let message = svc
        .import_v1(&admin(), &plan, false)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(message.contains("environment_variables row 2"), "{message}");
    assert_eq!(svc.store().import_table_counts().await, before);
}

/// An error met inside the transaction (a repository neither imported nor in berth: only
/// the store knows) comes after the group and secrets were written: all of it goes.
#[tokio::test]
async fn an_error_inside_the_transaction_rolls_back_what_was_written_before_it() {
    let svc = service().await;
    let before = svc.store().import_table_counts().await;
    let mut plan = full_plan();
    plan.applications[0].repository = Some("elsewhere".into());
    let err = svc.import_v1(&admin(), &plan, false).await.err().unwrap();
    assert!(err.to_string().contains("V1 applications row 1"), "{err}");
    assert_eq!(svc.store().import_table_counts().await, before);
    assert!(svc.store().group("default").await.is_err());
}

#[tokio::test]
async fn a_host_port_berth_already_publishes_is_a_conflict() {
    let svc = service().await;
    svc.create_application(
        &admin(),
        crate::service::applications::tests::new_app("shop"),
    )
    .await
    .unwrap();
    let report = svc.import_v1(&admin(), &full_plan(), false).await.unwrap();
    assert!(!report.applied);
    let web = item(&report, ItemKind::Application, "web");
    assert_eq!(web.outcome, Outcome::Conflict);
    assert_eq!(web.detail, "host port 8080/tcp is published by app shop");
    assert!(svc.store().application("web").await.is_err());
}

/// A domain added to an application that was already there: the fleet pushes its routes.
#[tokio::test]
async fn a_domain_of_an_application_that_existed_is_routed() {
    let svc = service().await;
    let mut plan = full_plan();
    plan.domains.clear();
    svc.import_v1(&admin(), &plan, false).await.unwrap();
    let plan = full_plan();
    let report = svc.import_v1(&admin(), &plan, false).await.unwrap();
    let web = svc.store().application("web").await.unwrap();
    assert_eq!(report.routed_applications, vec![web.id]);
    assert_eq!(
        item(&report, ItemKind::Domain, "shop.example.com").outcome,
        Outcome::Created
    );
}

#[tokio::test]
async fn only_an_admin_imports() {
    let svc = service().await;
    let err = svc
        .import_v1(&viewer(), &full_plan(), true)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
}

/// Secrets and variables are written 500 rows a statement: 1,201 of each cross two batch
/// boundaries, and every reference still finds its own secret (ids are matched by name).
#[tokio::test]
async fn rows_across_write_batches_keep_each_reference_on_its_own_secret() {
    let svc = service().await;
    let n = 1201;
    let mut plan = full_plan();
    plan.secrets = (0..n)
        .map(|i| PlanSecret {
            v1_id: i,
            name: format!("S_{i:04}"),
            value: s(&format!("value-{i}")),
            description: None,
            created_at: None,
            updated_at: None,
        })
        .collect();
    plan.variables = (0..n)
        .map(|i| {
            var(
                &format!("environment_variables row {i}"),
                Some("worker"),
                &format!("V_{i:04}"),
                PlanValue::Secret(format!("S_{:04}", n - 1 - i)),
            )
        })
        .collect();
    let report = svc.import_v1(&admin(), &plan, false).await.unwrap();
    assert!(report.applied);
    let worker = svc.store().application("worker").await.unwrap();
    let env = svc.resolve_environment(worker.id).await.unwrap();
    assert_eq!(env.len(), n as usize);
    for i in 0..n {
        assert_eq!(
            env[&format!("V_{i:04}")].expose_secret(),
            format!("value-{}", n - 1 - i)
        );
    }
}
