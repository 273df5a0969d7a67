use secrecy::{ExposeSecret as _, SecretString};

use super::super::read::{V1Application, V1Data, V1EnvVar, V1Secret};
use super::*;

fn secrets() -> HashMap<i64, String> {
    [(1, "DATABASE_URL".to_string()), (10, "API_KEY".to_string())].into()
}

#[test]
fn a_reference_is_exactly_the_seeds_at_secret_id_of_a_v1_secret() {
    let s = secrets();
    assert_eq!(
        reference("@secret:1", &s),
        Reference::Secret("DATABASE_URL")
    );
    assert_eq!(reference("@secret:10", &s), Reference::Secret("API_KEY"));
    assert_eq!(reference("@secret:99", &s), Reference::Dangling(99));
    for plain in [
        "@secret:01",
        "@secret: 1",
        "@secret:1 ",
        " @secret:1",
        "x@secret:1",
        "@secret:",
        "@secret:-1",
        "@secret:1a",
        "@SECRET:1",
        "@group:prod",
        "postgres://u:p@h/db",
        "@secret:99999999999999999999",
    ] {
        assert_eq!(reference(plain, &s), Reference::None, "{plain:?}");
    }
}

#[test]
fn env_vars_keep_document_order_and_the_last_of_a_repeated_key() {
    let entries =
        env_vars(r#"{"B":"2","A":"1","B":"3","N":42,"T":true,"Z":null,"O":{"x":1}}"#).unwrap();
    let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["A", "B", "N", "T", "Z", "O"]);
    assert_eq!(entries[1].1, EnvEntry::Value("3".into()));
    assert_eq!(entries[2].1, EnvEntry::Value("42".into()));
    assert_eq!(entries[3].1, EnvEntry::Value("true".into()));
    assert!(matches!(entries[4].1, EnvEntry::Unusable(_)));
    assert!(matches!(entries[5].1, EnvEntry::Unusable(_)));
    assert!(env_vars("").unwrap().is_empty());
    assert!(env_vars("{}").unwrap().is_empty());
}

#[test]
fn env_vars_that_are_not_an_object_are_an_error_without_their_text() {
    for bad in [
        r#"["s3cr3t"]"#,
        r#"{"A":"s3cr3t""#,
        "s3cr3t",
        r#"{"A":"1"} trailing"#,
    ] {
        let why = env_vars(bad)
            .err()
            .unwrap_or_else(|| panic!("{bad} parsed"));
        assert_eq!(why, "env_vars is not a JSON object", "{bad}");
    }
}

#[test]
fn ports_take_the_seeds_objects_and_dockers_strings() {
    let p = |host, container, protocol: &str| PortMapping {
        host,
        container,
        protocol: protocol.into(),
    };
    assert_eq!(
        ports(r#"[{"host":8080,"container":80},{"host":"53","container":53,"protocol":"UDP"}]"#)
            .unwrap(),
        vec![p(8080, 80, "tcp"), p(53, 53, "udp")]
    );
    assert_eq!(
        ports(r#"["8443:443", "5353:53/udp"]"#).unwrap(),
        vec![p(8443, 443, "tcp"), p(5353, 53, "udp")]
    );
    assert!(ports("[]").unwrap().is_empty());
    assert!(ports("").unwrap().is_empty());
    for (bad, expected) in [
        (
            r#"[{"host":0,"container":80}]"#,
            "entry 1: host is not a port",
        ),
        (
            r#"[{"host":8080,"container":70000}]"#,
            "entry 1: container is not a port",
        ),
        (r#"[{"host":8080}]"#, "entry 1: container"),
        (
            r#"[{"host":1,"container":1},"8080"]"#,
            "entry 2: expected HOST:CONTAINER",
        ),
        (r#"{"host":1}"#, "not a JSON array"),
        ("not json", "not JSON"),
        (r#"[7]"#, "neither an object nor"),
    ] {
        let why = ports(bad).err().unwrap_or_else(|| panic!("{bad} parsed"));
        assert!(why.contains(expected), "{bad}: {why}");
    }
}

#[test]
fn an_image_tag_or_digest_is_split_off() {
    assert_eq!(split_image("team/web"), ("team/web", None));
    assert_eq!(split_image("team/web:1.2"), ("team/web", Some("1.2")));
    assert_eq!(
        split_image("registry.local:5000/team/web"),
        ("registry.local:5000/team/web", None)
    );
    assert_eq!(
        split_image("registry.local:5000/team/web:v2"),
        ("registry.local:5000/team/web", Some("v2"))
    );
    assert_eq!(
        split_image("team/web@sha256:abc"),
        ("team/web", Some("sha256:abc"))
    );
}

#[test]
fn timestamps_become_sqlites_form_or_nothing() {
    assert_eq!(
        timestamp(Some("2024-01-02 03:04:05")).as_deref(),
        Some("2024-01-02 03:04:05")
    );
    assert_eq!(
        timestamp(Some("2024-01-02T03:04:05.123Z")).as_deref(),
        Some("2024-01-02 03:04:05")
    );
    assert_eq!(timestamp(Some("yesterday")), None);
    assert_eq!(timestamp(Some("2024-01-02")), None);
    assert_eq!(timestamp(None), None);
}

fn secret(id: i64, name: &str, value: &str) -> V1Secret {
    V1Secret {
        id,
        name: name.into(),
        reference: SecretString::from(value.to_string()),
        metadata: None,
        created_at: None,
        updated_at: None,
    }
}

fn app(id: i64, name: &str, image: &str, env: &str) -> V1Application {
    V1Application {
        id,
        name: name.into(),
        image: image.into(),
        version: None,
        repository_id: None,
        ports: Some("[]".into()),
        env_vars: Some(SecretString::from(env.to_string())),
        status: Some("running".into()),
        last_deployed_at: None,
        created_at: None,
        updated_at: None,
    }
}

fn env(id: i64, app: Option<i64>, key: &str, value: &str) -> V1EnvVar {
    V1EnvVar {
        id,
        scope: if app.is_some() { "project" } else { "global" }.into(),
        project_id: app,
        key: key.into(),
        value: SecretString::from(value.to_string()),
    }
}

fn data() -> V1Data {
    V1Data {
        secrets: vec![
            secret(1, "DATABASE_URL", "postgres://x"),
            secret(2, "API_KEY", "k"),
        ],
        repositories: Some(vec![]),
        applications: vec![
            app(
                1,
                "web",
                "team/web:1.4",
                r#"{"DATABASE_URL":"@secret:1","MODE":"fast","GONE":"@secret:7"}"#,
            ),
            app(2, "worker", "team/worker", "{}"),
        ],
        variables: vec![
            env(1, None, "NODE_ENV", "staging"),
            env(2, None, "NODE_ENV", "production"),
            env(3, Some(1), "MODE", "slow"),
            env(4, Some(2), "API_KEY", "@secret:2"),
            env(5, Some(9), "ORPHAN", "x"),
        ],
        image_patterns: None,
        domains: Some(vec![]),
        providers: Some(vec![]),
        settings: Some(vec!["legacy_webhook_secret".into()]),
        missing_columns: vec!["secrets.metadata".into()],
    }
}

fn variables(m: &Mapped) -> Vec<(Option<&str>, &str, String)> {
    let mut out: Vec<_> = m
        .plan
        .variables
        .iter()
        .map(|v| {
            let value = match &v.value {
                PlanValue::Plain(p) => format!("plain {}", p.expose_secret()),
                PlanValue::Secret(s) => format!("secret {s}"),
            };
            (v.application.as_deref(), v.key.as_str(), value)
        })
        .collect();
    out.sort();
    out
}

fn skipped(m: &Mapped, name: &str) -> String {
    m.local
        .iter()
        .find(|i| i.skipped && i.name == name)
        .unwrap_or_else(|| panic!("{name} not skipped: {:?}", m.local))
        .detail
        .clone()
}

#[test]
fn variables_follow_the_v1_rules_of_precedence_and_references() {
    let m = map(data(), "default").unwrap();
    assert_eq!(
        variables(&m),
        vec![
            (None, "NODE_ENV", "plain production".to_string()),
            (
                Some("web"),
                "DATABASE_URL",
                "secret DATABASE_URL".to_string()
            ),
            (Some("web"), "MODE", "plain slow".to_string()),
            (Some("worker"), "API_KEY", "secret API_KEY".to_string()),
        ]
    );
    // The seed's pitfall: two global rows with one key; the later row wins.
    assert!(skipped(&m, "(global):NODE_ENV").contains("row 2 has the same key and wins"));
    // A table row wins over the application's env_vars.
    assert!(skipped(&m, "web:MODE").contains("environment_variables row 3"));
    assert!(skipped(&m, "web:GONE").contains("V1 secret 7"));
    assert!(skipped(&m, "(application row 9):ORPHAN").contains("does not exist"));
    assert!(skipped(&m, "(table image_whitelists)").contains("no table image_whitelists"));
    assert!(skipped(&m, "(column secrets.metadata)").contains("without descriptions"));
    assert!(skipped(&m, "legacy_webhook_secret").contains("not imported"));
}

#[test]
fn applications_split_their_image_and_map_their_status() {
    let mut d = data();
    d.applications[1].status = Some("deploying".into());
    d.applications[1].version = Some("v3".into());
    d.applications[1].image = "team/worker:v2".into();
    d.applications[1].repository_id = Some(4);
    let m = map(d, "default").unwrap();
    let web = &m.plan.applications[0];
    assert_eq!(
        (web.image.as_str(), web.version.as_deref()),
        ("team/web", Some("1.4"))
    );
    let worker = &m.plan.applications[1];
    assert_eq!(worker.status, "error");
    assert_eq!(
        (worker.image.as_str(), worker.version.as_deref()),
        ("team/worker", Some("v3"))
    );
    assert_eq!(worker.repository, None);
    let notes: Vec<&str> = m
        .local
        .iter()
        .filter(|i| !i.skipped && i.name == "worker")
        .map(|i| i.detail.as_str())
        .collect();
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("tag v2 is dropped")));
    assert!(notes.iter().any(|n| n.contains("imported as error")));
    assert!(notes
        .iter()
        .any(|n| n.contains("repository row 4 does not exist")));
}

#[test]
fn a_key_that_cannot_be_a_variable_name_is_an_error_naming_the_row_not_the_key() {
    let mut d = data();
    d.applications[1].env_vars = Some(SecretString::from(
        r#"{"OK":"1","bad key=s3cr3t":"v"}"#.to_string(),
    ));
    let message = map(d, "default").err().unwrap().to_string();
    assert!(
        message.contains("V1 applications row 2 (worker): env_vars entry 2"),
        "{message}"
    );
    assert!(
        !message.contains("s3cr3t") && !message.contains("bad key"),
        "{message}"
    );

    let mut d = data();
    d.variables[2].key = "MY-KEY".into();
    let message = map(d, "default").err().unwrap().to_string();
    assert!(
        message.starts_with("V1 environment_variables row 3: "),
        "{message}"
    );
    assert!(!message.contains("MY-KEY"), "{message}");

    let mut d = data();
    d.applications[0].ports = Some(r#"[{"host":"s3cr3t"}]"#.into());
    let message = map(d, "default").err().unwrap().to_string();
    assert!(
        message.contains("V1 applications row 1 (web): ports entry 1"),
        "{message}"
    );
    assert!(!message.contains("s3cr3t"), "{message}");
}
