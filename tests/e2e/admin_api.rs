//! The admin API end to end, through the CLI and gRPC, with no agent involved: the README's
//! quick tour, secrets at rest and master keys, restarts and kill -9, roles, references
//! between secrets and environments, hostile admin input, health and reflection, concurrent
//! writes.

use berth_proto::v1 as pb;
use pb::api_key_service_client::ApiKeyServiceClient;
use pb::application_service_client::ApplicationServiceClient;
use pb::env_service_client::EnvServiceClient;
use pb::secret_service_client::SecretServiceClient;
use tonic::Code;

use crate::fixture::admin::authed;
use crate::fixture::data_dir::{dump_database, files_containing};
use crate::fixture::node::{dirs, ok, stderr, stdout, DevNode};

const DB_URL: &str = "postgresql://app:S3cr3t-Pa55w0rd@db.internal:5432/prod";

#[test]
fn quick_tour_from_the_readme() {
    let d = dirs();
    let mut node = DevNode::start_in(&d);
    let admin_key = node.admin_token();
    assert!(admin_key.starts_with("bk_"));

    ok(node.cli(
        &[
            "group",
            "create",
            "production-db",
            "--description",
            "production database",
        ],
        None,
    ));
    ok(node.cli(
        &["secret", "set", "production-db", "DATABASE_URL"],
        Some(&format!("{DB_URL}\n")),
    ));
    let created = ok(node.cli(
        &[
            "app",
            "create",
            "myapp",
            "--image",
            "mycompany/myapp",
            "--version",
            "v1.0.0",
            "--port",
            "8080:80",
        ],
        None,
    ));
    let webhook_token = created
        .split_whitespace()
        .find(|w| w.starts_with("whk_"))
        .unwrap_or_else(|| panic!("no webhook token in: {created}"))
        .to_string();
    ok(node.cli(
        &[
            "env",
            "set",
            "DATABASE_URL",
            "--secret",
            "production-db/DATABASE_URL",
            "--app",
            "myapp",
        ],
        None,
    ));
    ok(node.cli(&["env", "set", "NODE_ENV", "production", "--global"], None));

    let exported = ok(node.cli(&["env", "export", "--app", "myapp", "--yes"], None));
    assert!(exported.contains("NODE_ENV=production"), "{exported}");
    assert!(exported.contains(DB_URL), "{exported}");

    let listed = ok(node.cli(&["secret", "list"], None));
    assert!(
        listed.contains("production-db") && listed.contains("DATABASE_URL"),
        "{listed}"
    );
    assert!(listed.contains("postgresql://****@****"), "{listed}");
    assert!(!listed.contains("S3cr3t"), "{listed}");

    let shown = ok(node.cli(&["app", "show", "myapp"], None));
    assert!(
        shown.contains(&webhook_token[..10]),
        "masked token prefix missing: {shown}"
    );
    assert!(!shown.contains(&webhook_token), "full token shown: {shown}");
    assert!(
        shown.contains("/webhook/deploy") && shown.contains("curl"),
        "{shown}"
    );
    assert!(
        shown.contains("DATABASE_URL") && shown.contains("secret_ref"),
        "{shown}"
    );
    assert!(!shown.contains("S3cr3t"), "{shown}");

    let json = ok(node.cli(&["app", "list", "-o", "json"], None));
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("app list -o json is json");
    assert!(parsed.to_string().contains("myapp"));

    // Secrets at rest: neither the database (with its WAL) nor the node's whole log holds a
    // secret value or a token in plaintext.
    let log_before_stop = node.log();
    node.stop();
    for needle in [
        DB_URL,
        "S3cr3t-Pa55w0rd",
        admin_key.as_str(),
        webhook_token.as_str(),
    ] {
        let hits = files_containing(d.data.path(), needle);
        let hits: Vec<_> = hits
            .into_iter()
            .filter(|p| !p.ends_with("admin.token"))
            .collect();
        assert!(hits.is_empty(), "{needle:.12}… found in {hits:?}");
        assert!(
            !log_before_stop.contains(needle) && !node.log().contains(needle),
            "{needle:.12}… in the node log"
        );
    }
}

/// `berth domain add/list/remove` through the CLI; a TLS key given from a file is in neither
/// the data directory nor the log, and never comes back.
#[test]
fn domains_round_trip_and_their_keys_stay_encrypted() {
    let d = dirs();
    let mut node = DevNode::start_without_agent(&d);
    ok(node.cli(
        &[
            "app", "create", "web", "--image", "team/web", "--port", "8080:80",
        ],
        None,
    ));
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["shop.example.com".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let key_pem = key.serialize_pem();
    let files = tempfile::tempdir().unwrap();
    let cert_file = files.path().join("cert.pem");
    let key_file = files.path().join("key.pem");
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, &key_pem).unwrap();
    let (cert_arg, key_arg) = (cert_file.to_str().unwrap(), key_file.to_str().unwrap());

    let added = ok(node.cli(
        &[
            "domain",
            "add",
            "web",
            "Shop.Example.com",
            "--tls-cert",
            cert_arg,
            "--tls-key",
            key_arg,
        ],
        None,
    ));
    assert!(
        added.contains("routed shop.example.com to web (files (expires"),
        "{added}"
    );
    ok(node.cli(
        &[
            "domain",
            "add",
            "web",
            "www.example.com",
            "--container-port",
            "80",
        ],
        None,
    ));
    // Refusals name what is wrong; nothing is added.
    let taken = node.cli(&["app", "create", "api", "--image", "team/api"], None);
    assert!(taken.status.success(), "{}", stderr(&taken));
    let refused = node.cli(&["domain", "add", "api", "shop.example.com"], None);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("already routed to app web"),
        "{}",
        stderr(&refused)
    );
    let refused = node.cli(
        &[
            "domain",
            "add",
            "web",
            "a.example.com",
            "--tls-cert",
            cert_arg,
            "--tls-key",
            key_arg,
        ],
        None,
    );
    assert!(
        stderr(&refused).contains("does not cover a.example.com"),
        "{}",
        stderr(&refused)
    );

    let listed = ok(node.cli(&["domain", "list", "--app", "web", "-o", "json"], None));
    let parsed: serde_json::Value =
        serde_json::from_str(&listed).expect("domain list -o json is json");
    let domains = parsed.as_array().expect("a list");
    assert_eq!(domains.len(), 2, "{listed}");
    assert_eq!(domains[0]["host"], "shop.example.com");
    assert_eq!(domains[0]["tls_mode"], "files");
    assert!(domains[0]["not_after"].is_string(), "{listed}");
    assert_eq!(domains[1]["container_port"], 80);
    assert!(!listed.contains("PRIVATE KEY"), "{listed}");
    let shown = ok(node.cli(&["app", "show", "web"], None));
    assert!(
        shown.contains("Domains (2)") && shown.contains("shop.example.com"),
        "{shown}"
    );
    assert!(shown.contains("drain 30s"), "{shown}");

    let removed = ok(node.cli(&["domain", "remove", "www.example.com"], None));
    assert!(
        removed.contains("removed domain www.example.com of web"),
        "{removed}"
    );
    let listed = ok(node.cli(&["domain", "list"], None));
    assert!(!listed.contains("www.example.com"), "{listed}");

    let log_before_stop = node.log();
    node.stop();
    let key_body = key_pem.lines().nth(1).expect("a PEM body line");
    for needle in [key_pem.as_str(), key_body] {
        let hits = files_containing(d.data.path(), needle);
        assert!(hits.is_empty(), "the key found in {hits:?}");
        assert!(
            !log_before_stop.contains(needle) && !node.log().contains(needle),
            "the key is in the node log"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_secrets_and_a_wrong_master_key_is_refused() {
    let d = dirs();
    let mut node = DevNode::start_in(&d);
    ok(node.cli(&["group", "create", "g"], None));
    for i in 0..5 {
        ok(node.cli(
            &["secret", "set", "g", &format!("S{i}")],
            Some(&format!("value-{i}")),
        ));
    }
    node.stop();

    let db = d.data.path().join("berth.db");
    let before = dump_database(&db).await;
    let other_key = "ab".repeat(32);
    let refused = DevNode::start(
        d.data.path(),
        d.logs.path(),
        &[("BERTH_MASTER_KEY", &other_key)],
    );
    let log = match refused {
        Err(log) => log,
        Ok(_) => panic!("a node started with the wrong master key"),
    };
    assert!(log.contains("does not match this database"), "{log}");
    assert_eq!(
        before,
        dump_database(&db).await,
        "a refused start changed the database"
    );

    // Without the key file and with encrypted rows, the node refuses too (no random key).
    let key_file = d.data.path().join("master.key");
    let saved = std::fs::read(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();
    let log = DevNode::start(d.data.path(), d.logs.path(), &[])
        .err()
        .expect("started without a key");
    assert!(log.contains("no master key was given"), "{log}");
    assert!(!key_file.exists(), "a new random key was written");
    std::fs::write(&key_file, saved).unwrap();
    #[cfg(unix)]
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();

    let node = DevNode::start_in(&d);
    for i in 0..5 {
        let value = ok(node.cli(&["secret", "reveal", "g", &format!("S{i}"), "--yes"], None));
        assert_eq!(value.trim(), format!("value-{i}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_loses_no_acknowledged_write() {
    let d = dirs();
    let mut node = DevNode::start_in(&d);
    let token = node.admin_token();
    let mut secrets = SecretServiceClient::new(node.channel().await);
    secrets
        .create_group(authed(
            pb::CreateGroupRequest {
                name: "g".into(),
                description: None,
                provider: None,
                auto_sync: false,
            },
            &token,
        ))
        .await
        .unwrap();
    for i in 0..50 {
        let req = pb::SetSecretRequest {
            group: "g".into(),
            name: format!("K{i}"),
            value: format!("v{i}"),
            description: None,
        };
        secrets.set_secret(authed(req, &token)).await.unwrap();
    }
    node.kill();
    let node = DevNode::start_in(&d);
    let mut secrets = SecretServiceClient::new(node.channel().await);
    let listed = secrets
        .list_secrets(authed(
            pb::ListSecretsRequest {
                group: Some("g".into()),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.secrets.len(), 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_are_enforced_with_the_right_codes() {
    let d = dirs();
    let node = DevNode::start_in(&d);
    let admin = node.admin_token();
    let channel = node.channel().await;
    let mut keys = ApiKeyServiceClient::new(channel.clone());
    let mut secrets = SecretServiceClient::new(channel.clone());
    let key = |role: &str| pb::CreateApiKeyRequest {
        name: format!("{role}-key"),
        role: role.into(),
    };
    let viewer = keys
        .create_api_key(authed(key("viewer"), &admin))
        .await
        .unwrap()
        .into_inner()
        .key;
    let deployer = keys
        .create_api_key(authed(key("deployer"), &admin))
        .await
        .unwrap()
        .into_inner()
        .key;
    secrets
        .create_group(authed(
            pb::CreateGroupRequest {
                name: "g".into(),
                description: None,
                provider: None,
                auto_sync: false,
            },
            &admin,
        ))
        .await
        .unwrap();
    let set = |name: &str| pb::SetSecretRequest {
        group: "g".into(),
        name: name.into(),
        value: "v".into(),
        description: None,
    };
    secrets.set_secret(authed(set("A"), &admin)).await.unwrap();
    let reveal = pb::RevealSecretRequest {
        group: "g".into(),
        name: "A".into(),
        confirm: true,
    };

    // A viewer can read summaries but neither reveal nor write.
    secrets
        .list_secrets(authed(pb::ListSecretsRequest { group: None }, &viewer))
        .await
        .unwrap();
    let e = secrets
        .reveal_secret(authed(reveal.clone(), &viewer))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = secrets
        .set_secret(authed(set("B"), &viewer))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // A deployer cannot create API keys (nor reveal).
    let e = keys
        .create_api_key(authed(key("x"), &deployer))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = secrets
        .reveal_secret(authed(reveal.clone(), &deployer))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Missing or wrong keys get nothing.
    for token in [
        "",
        "bk_wrongwrongwrongwrongwrongwrongwr",
        "not-a-key",
        &admin[..admin.len() - 1],
    ] {
        let e = secrets
            .list_secrets(authed(pb::ListSecretsRequest { group: None }, token))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "token {token:.6}…");
    }
    // Revoked keys stop working at once.
    keys.revoke_api_key(authed(
        pb::RevokeApiKeyRequest {
            name: "viewer-key".into(),
        },
        &admin,
    ))
    .await
    .unwrap();
    let e = secrets
        .list_secrets(authed(pb::ListSecretsRequest { group: None }, &viewer))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // The CLI maps these to exit code 1 and a clear message.
    let out = node.cli_as(&deployer, &["secret", "reveal", "g", "A", "--yes"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot reveal"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ciphertext_copied_into_another_row_fails_to_decrypt() {
    let d = dirs();
    let mut node = DevNode::start_in(&d);
    ok(node.cli(&["group", "create", "g"], None));
    ok(node.cli(&["secret", "set", "g", "A"], Some("value-of-a")));
    ok(node.cli(&["secret", "set", "g", "B"], Some("value-of-b")));
    node.stop();

    let options =
        sqlx::sqlite::SqliteConnectOptions::new().filename(d.data.path().join("berth.db"));
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::query(
        "UPDATE secrets SET value = (SELECT value FROM secrets WHERE name = 'A') WHERE name = 'B'",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let node = DevNode::start_in(&d);
    assert_eq!(
        ok(node.cli(&["secret", "reveal", "g", "A", "--yes"], None)).trim(),
        "value-of-a"
    );
    let out = node.cli(&["secret", "reveal", "g", "B", "--yes"], None);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("cannot decrypt") && err.contains("B"), "{err}");
    assert!(!err.contains("value-of-a") && !stdout(&out).contains("value-of-a"));
}

#[test]
fn deleting_a_referenced_secret_needs_force_and_lists_the_references() {
    let d = dirs();
    let node = DevNode::start_in(&d);
    ok(node.cli(&["group", "create", "g"], None));
    ok(node.cli(&["secret", "set", "g", "DB"], Some("v")));
    ok(node.cli(&["app", "create", "web", "--image", "web"], None));
    ok(node.cli(
        &[
            "env",
            "set",
            "DATABASE_URL",
            "--secret",
            "g/DB",
            "--app",
            "web",
        ],
        None,
    ));
    ok(node.cli(
        &["env", "set", "SHARED_DB", "--secret", "g/DB", "--global"],
        None,
    ));
    let out = node.cli(&["secret", "delete", "g", "DB"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("web:DATABASE_URL") && err.contains("(global):SHARED_DB"),
        "{err}"
    );
    assert!(ok(node.cli(&["secret", "list", "--group", "g"], None)).contains("DB"));
    // Deleting the whole group is refused the same way, naming the same references.
    let out = node.cli(&["group", "delete", "g"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("web:DATABASE_URL") && err.contains("force"),
        "{err}"
    );
    assert!(ok(node.cli(&["group", "show", "g"], None)).contains("DB"));
    ok(node.cli(&["secret", "delete", "g", "DB", "--force"], None));
    assert!(!ok(node.cli(&["env", "list", "--app", "web"], None)).contains("DATABASE_URL"));
    ok(node.cli(&["group", "delete", "g"], None));
}

#[test]
fn deleting_a_referenced_group_needs_force_and_force_removes_the_references() {
    let d = dirs();
    let node = DevNode::start_without_agent(&d);
    ok(node.cli(&["group", "create", "g"], None));
    ok(node.cli(&["secret", "set", "g", "DB"], Some("v")));
    ok(node.cli(&["app", "create", "web", "--image", "web"], None));
    ok(node.cli(
        &["env", "set", "ALL_OF_G", "--group", "g", "--app", "web"],
        None,
    ));
    ok(node.cli(
        &["env", "set", "DATABASE_URL", "--secret", "g/DB", "--global"],
        None,
    ));
    let out = node.cli(&["group", "delete", "g"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("web:ALL_OF_G")
            && err.contains("(global):DATABASE_URL")
            && err.contains("force"),
        "{err}"
    );
    // Nothing went: the group, its secret, both references.
    assert!(ok(node.cli(&["group", "show", "g"], None)).contains("DB"));
    assert!(ok(node.cli(&["env", "list", "--app", "web"], None)).contains("ALL_OF_G"));
    assert!(ok(node.cli(&["env", "list", "--global"], None)).contains("DATABASE_URL"));

    ok(node.cli(&["group", "delete", "g", "--force"], None));
    let out = node.cli(&["group", "show", "g"], None);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(!ok(node.cli(&["env", "list", "--app", "web"], None)).contains("ALL_OF_G"));
    assert!(!ok(node.cli(&["env", "list", "--global"], None)).contains("DATABASE_URL"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_error_and_stores_nothing() {
    let d = dirs();
    let mut node = DevNode::start_without_agent(&d);
    let admin = node.admin_token();
    let channel = node.channel().await;
    let mut secrets = SecretServiceClient::new(channel.clone());
    let mut apps = ApplicationServiceClient::new(channel);
    secrets
        .create_group(authed(
            pb::CreateGroupRequest {
                name: "g".into(),
                description: None,
                provider: None,
                auto_sync: false,
            },
            &admin,
        ))
        .await
        .unwrap();
    apps.create_application(authed(
        pb::CreateApplicationRequest {
            name: "web".into(),
            image: "web".into(),
            ..Default::default()
        },
        &admin,
    ))
    .await
    .unwrap();
    node.stop();
    let db = d.data.path().join("berth.db");
    let before = dump_database(&db).await;
    let node = DevNode::start_without_agent(&d);
    let channel = node.channel().await;
    let mut secrets = SecretServiceClient::new(channel.clone());
    let mut env = EnvServiceClient::new(channel.clone());
    let mut apps = ApplicationServiceClient::new(channel);

    let app_scope = Some(pb::EnvScope {
        scope: Some(pb::env_scope::Scope::App("web".into())),
    });
    let set_env = |key: &str, value: pb::set_env_request::Value| pb::SetEnvRequest {
        scope: app_scope.clone(),
        key: key.into(),
        value: Some(value),
        description: None,
    };
    use pb::set_env_request::Value;
    let cases: Vec<(&str, Code, tonic::Status)> = vec![
        (
            "invalid env key",
            Code::InvalidArgument,
            env.set_env(authed(
                set_env("1-BAD KEY", Value::Plain("x".into())),
                &admin,
            ))
            .await
            .unwrap_err(),
        ),
        (
            "unicode env key",
            Code::InvalidArgument,
            env.set_env(authed(set_env("KÉY", Value::Plain("x".into())), &admin))
                .await
                .unwrap_err(),
        ),
        (
            "oversized env value",
            Code::InvalidArgument,
            env.set_env(authed(
                set_env("BIG", Value::Plain("x".repeat(40_000))),
                &admin,
            ))
            .await
            .unwrap_err(),
        ),
        (
            "unknown group",
            Code::NotFound,
            env.set_env(authed(set_env("ALL", Value::Group("nope".into())), &admin))
                .await
                .unwrap_err(),
        ),
        (
            "missing @secret id",
            Code::NotFound,
            env.set_env(authed(
                set_env("DB", Value::Plain("@secret:4242".into())),
                &admin,
            ))
            .await
            .unwrap_err(),
        ),
        (
            "missing secret path",
            Code::NotFound,
            env.set_env(authed(
                set_env("DB", Value::Secret("g/NOPE".into())),
                &admin,
            ))
            .await
            .unwrap_err(),
        ),
        (
            "secret in unknown group",
            Code::NotFound,
            secrets
                .set_secret(authed(
                    pb::SetSecretRequest {
                        group: "nope".into(),
                        name: "A".into(),
                        value: "v".into(),
                        description: None,
                    },
                    &admin,
                ))
                .await
                .unwrap_err(),
        ),
        (
            "oversized secret",
            Code::InvalidArgument,
            secrets
                .set_secret(authed(
                    pb::SetSecretRequest {
                        group: "g".into(),
                        name: "A".into(),
                        value: "v".repeat(70_000),
                        description: None,
                    },
                    &admin,
                ))
                .await
                .unwrap_err(),
        ),
        (
            "duplicate group",
            Code::AlreadyExists,
            secrets
                .create_group(authed(
                    pb::CreateGroupRequest {
                        name: "g".into(),
                        description: None,
                        provider: None,
                        auto_sync: false,
                    },
                    &admin,
                ))
                .await
                .unwrap_err(),
        ),
        (
            "duplicate app",
            Code::AlreadyExists,
            apps.create_application(authed(
                pb::CreateApplicationRequest {
                    name: "web".into(),
                    image: "web".into(),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap_err(),
        ),
        (
            "bad image",
            Code::InvalidArgument,
            apps.create_application(authed(
                pb::CreateApplicationRequest {
                    name: "x".into(),
                    image: "x; rm -rf /".into(),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap_err(),
        ),
        (
            "bad version",
            Code::InvalidArgument,
            apps.create_application(authed(
                pb::CreateApplicationRequest {
                    name: "x".into(),
                    image: "x".into(),
                    version: Some("v1\n../../etc".into()),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap_err(),
        ),
        (
            "malformed .env",
            Code::InvalidArgument,
            secrets
                .import_secrets(authed(
                    pb::ImportSecretsRequest {
                        group: "g".into(),
                        format: pb::ImportFormat::Dotenv as i32,
                        document: "A=1\nB=2\nthis is not=ok=\n\"C=3".into(),
                        overwrite: false,
                    },
                    &admin,
                ))
                .await
                .unwrap_err(),
        ),
        (
            "json with a number",
            Code::InvalidArgument,
            secrets
                .import_secrets(authed(
                    pb::ImportSecretsRequest {
                        group: "g".into(),
                        format: pb::ImportFormat::Json as i32,
                        document: r#"{"A":"1","B":2}"#.into(),
                        overwrite: false,
                    },
                    &admin,
                ))
                .await
                .unwrap_err(),
        ),
        (
            "reveal without confirm",
            Code::FailedPrecondition,
            secrets
                .reveal_secret(authed(
                    pb::RevealSecretRequest {
                        group: "g".into(),
                        name: "A".into(),
                        confirm: false,
                    },
                    &admin,
                ))
                .await
                .unwrap_err(),
        ),
    ];
    for (what, code, status) in cases {
        assert_eq!(status.code(), code, "{what}: {status:?}");
        let message = status.message();
        assert!(
            message.starts_with(|c: char| c.is_lowercase() || c == '@'),
            "{what}: not a lowercase message: {message}"
        );
    }
    // The malformed .env names the line, not its content.
    let status = secrets
        .import_secrets(authed(
            pb::ImportSecretsRequest {
                group: "g".into(),
                format: pb::ImportFormat::Dotenv as i32,
                document: "A=1\nsecret-looking-line\n".into(),
                overwrite: false,
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert!(
        status.message().contains("line 2") && !status.message().contains("secret-looking"),
        "{}",
        status.message()
    );

    // The server keeps serving, and nothing was written.
    secrets
        .list_groups(authed(pb::ListGroupsRequest {}, &admin))
        .await
        .unwrap();
    let mut node = node;
    node.stop();
    let after = dump_database(&db).await;
    let strip_audit = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with("api_keys"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip_audit(&before),
        strip_audit(&after),
        "a refused request wrote something"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection_are_served() {
    let d = dirs();
    let node = DevNode::start_in(&d);
    let channel = node.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Both reflection versions, each listing exactly the admin port's services.
    let admin_services = [
        "berth.v1.AgentAdminService",
        "berth.v1.AgentEnrollment",
        "berth.v1.AllowlistService",
        "berth.v1.ApiKeyService",
        "berth.v1.ApplicationService",
        "berth.v1.AuditService",
        "berth.v1.BackupService",
        "berth.v1.DeployService",
        "berth.v1.DomainService",
        "berth.v1.EnvService",
        "berth.v1.ImportService",
        "berth.v1.KeyService",
        "berth.v1.NotificationService",
        "berth.v1.ProviderService",
        "berth.v1.RepositoryService",
        "berth.v1.SecretService",
        "berth.v1.WebhookService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    assert_eq!(reflected_v1(channel.clone()).await, admin_services);
    assert_eq!(reflected_v1alpha(channel).await, admin_services);
}

/// `reflected_v1` and `reflected_v1alpha`: the services a reflection server of that
/// version lists, sorted (v1alpha is what older grpcurl and several GUI clients ask).
macro_rules! reflected {
    ($name:ident, $version:ident) => {
        pub(crate) async fn $name(channel: tonic::transport::Channel) -> Vec<String> {
            use tonic_reflection::pb::$version::{
                server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse, ServerReflectionRequest,
            };
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let reply = ServerReflectionClient::new(channel)
                .server_reflection_info(tokio_stream::iter(vec![request]))
                .await
                .unwrap()
                .into_inner()
                .message()
                .await
                .unwrap()
                .unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
                panic!("not a service list: {reply:?}");
            };
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
    };
}
reflected!(reflected_v1, v1);
reflected!(reflected_v1alpha, v1alpha);

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_all_succeed() {
    // SQLite allows one writer: write transactions start IMMEDIATE so they wait their turn
    // (busy_timeout) instead of failing with "database is locked" on a lock upgrade.
    let d = dirs();
    let node = DevNode::start_without_agent(&d);
    let token = node.admin_token();
    let channel = node.channel().await;
    SecretServiceClient::new(channel.clone())
        .create_group(authed(
            pb::CreateGroupRequest {
                name: "g".into(),
                description: None,
                provider: None,
                auto_sync: false,
            },
            &token,
        ))
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let (channel, token) = (channel.clone(), token.clone());
        tasks.spawn(async move {
            let req = pb::SetSecretRequest {
                group: "g".into(),
                name: format!("S{i}"),
                value: format!("v{i}"),
                description: None,
            };
            SecretServiceClient::new(channel)
                .set_secret(authed(req, &token))
                .await
                .map(|_| ())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().expect("a concurrent write failed");
    }
    let listed = SecretServiceClient::new(channel)
        .list_secrets(authed(
            pb::ListSecretsRequest {
                group: Some("g".into()),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.secrets.len(), 24);
}

/// Stopping `berth dev` (SIGTERM) stops the servers and lets every agent stream record its
/// disconnect before the store closes: no "cannot record disconnect … closed pool".
#[tokio::test(flavor = "multi_thread")]
async fn a_clean_stop_closes_the_store_last_and_logs_no_error() {
    if !crate::fixture::docker::docker_available() {
        return;
    }
    let d = dirs();
    let mut node = DevNode::start_in(&d);
    crate::fixture::agent::wait_connected(&node, "local").await;
    let started = std::time::Instant::now();
    node.stop();
    let log = node.log();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "the stop took {:?}:\n{log}",
        started.elapsed()
    );
    assert!(log.contains("control plane stopped"), "{log}");
    for error in ["closed pool", "cannot record disconnect", "ERROR"] {
        assert!(!log.contains(error), "{error:?} at stop:\n{log}");
    }
}

/// The standalone control plane's first admin key goes to a 0600 file in its data directory,
/// never to its output (a journal keeps that); the CLI reads it from a file or stdin, so it
/// never needs to be on a command line.
#[test]
fn the_first_admin_key_is_written_to_a_private_file_and_read_from_a_file_or_stdin() {
    use std::process::{Command, Stdio};

    use crate::fixture::process::{bin, free_port, wait_listening, Process};

    let d = dirs();
    let port = free_port();
    let mut command = Command::new(bin("berth-control-plane"));
    command
        .arg("--data-dir")
        .arg(d.data.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--agent-listen", "127.0.0.1:0"])
        .env_remove("BERTH_MASTER_KEY")
        .env_remove("BERTH_MASTER_KEY_FILE")
        .env_remove("BERTH_REGISTRY_NOTIFY_SECRET")
        .env_remove("BERTH_REGISTRY_NOTIFY_SECRET_FILE");
    let mut process = Process::spawn(command, d.logs.path().join("control-plane.log"));
    wait_listening(port, "berth-control-plane");

    let path = d.data.path().join("admin.token");
    let output = process.log();
    assert!(
        !output.contains("bk_"),
        "the key is in the output:\n{output}"
    );
    assert!(
        output.contains(&path.display().to_string()),
        "the output does not say where the key is:\n{output}"
    );
    let key = std::fs::read_to_string(&path).unwrap();
    assert!(key.trim().starts_with("bk_"), "{key}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let cli = |args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new(bin("berth"))
            .args(args)
            .env("BERTH_ADDR", format!("https://127.0.0.1:{port}"))
            .env("BERTH_CA_CERT", d.data.path().join("pki/ca.crt"))
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_TOKEN_FILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            std::io::Write::write_all(&mut pipe, input.as_bytes()).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    };
    let path_arg = path.display().to_string();
    let listed = ok(cli(&["--token-file", &path_arg, "apikey", "list"], None));
    assert!(listed.contains("admin"), "{listed}");
    let listed = ok(cli(&["--token-file", "-", "apikey", "list"], Some(&key)));
    assert!(listed.contains("admin"), "{listed}");
    // From stdin, the key is the first line; the rest is the command's own input.
    ok(cli(
        &["--token-file", &path_arg, "group", "create", "g"],
        None,
    ));
    ok(cli(
        &["--token-file", "-", "secret", "set", "g", "NAME"],
        Some(&format!("{}\nthe-value\n", key.trim())),
    ));
    let revealed = ok(cli(
        &[
            "--token-file",
            &path_arg,
            "secret",
            "reveal",
            "g",
            "NAME",
            "--yes",
        ],
        None,
    ));
    assert!(
        revealed.contains("the-value") && !revealed.contains("bk_"),
        "{revealed}"
    );
    // The file wins over nothing, but a token from two places is a usage error.
    let both = cli(
        &[
            "--token",
            key.trim(),
            "--token-file",
            &path_arg,
            "apikey",
            "list",
        ],
        None,
    );
    assert!(!both.status.success());
    let wrong = d.logs.path().join("wrong.token");
    std::fs::write(&wrong, "\n").unwrap();
    let empty = cli(
        &[
            "--token-file",
            &wrong.display().to_string(),
            "apikey",
            "list",
        ],
        None,
    );
    assert!(!empty.status.success());
    assert!(stderr(&empty).contains("empty"), "{}", stderr(&empty));

    // A restart does not print (or rewrite) anything about a key.
    process.stop();
    let before = std::fs::read_to_string(&path).unwrap();
    let mut command = Command::new(bin("berth-control-plane"));
    command
        .arg("--data-dir")
        .arg(d.data.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--agent-listen", "127.0.0.1:0"]);
    let second = Process::spawn(command, d.logs.path().join("control-plane-2.log"));
    wait_listening(port, "berth-control-plane");
    assert!(!second.log().contains("bk_"), "{}", second.log());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}

/// `berth … | head -1`: the reader closing the pipe early is not an error. The command ends
/// quietly with the status of a process killed by SIGPIPE (141), whether it wrote with a
/// print (a listing) or through a writer (the completion script).
#[test]
fn a_reader_that_closes_the_pipe_early_gets_no_error_message() {
    use std::process::{Command, Stdio};

    use crate::fixture::process::bin;

    let d = dirs();
    let node = DevNode::start_in(&d);
    ok(node.cli(&["group", "create", "pipe-check"], None));
    let runs: [(&[&str], bool); 2] = [(&["completion", "bash"], false), (&["group", "list"], true)];
    for (args, connects) in runs {
        let mut command = Command::new(bin("berth"));
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if connects {
            command
                .env("BERTH_ADDR", &node.addr)
                .env("BERTH_CA_CERT", &node.ca_cert)
                .env("BERTH_TOKEN", node.admin_token());
        }
        let mut child = command.spawn().unwrap();
        // The reader is gone before the first byte is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?} printed: {stderr}");
    }
}
