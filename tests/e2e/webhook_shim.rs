//! The webhook shim (`POST /webhook/deploy`, in `berth dev` and the standalone
//! `berth-webhook`): the seed's contract and statuses, the CI script, hostile input, client
//! IPs behind proxies, the legacy route, the RPC behind it, and registry pushes that deploy.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use pb::api_key_service_client::ApiKeyServiceClient;
use pb::application_service_client::ApplicationServiceClient;
use pb::webhook_service_client::WebhookServiceClient;
use serde_json::{json, Value};

use crate::fixture::admin::{
    add_repository, authed, create_api_key, create_app, deployment_count, deployments,
    registry_app, unique, wait_deployment, AppSpec,
};
use crate::fixture::agent::wait_connected;
use crate::fixture::docker::{build_test_images, docker_available, remove_app_containers};
use crate::fixture::http::{get, post, request, Response};
use crate::fixture::node::{dirs, start_with_webhook, start_with_webhook_env};
use crate::fixture::process::{bin, Process};
use crate::fixture::registry::Registry;
use crate::fixture::repo_root;
use crate::fixture::shim::StandaloneShim;

const MISSING: &str = "Missing required fields: (applicationId or applicationName), version, token";
const NOT_FOUND: &str = "Application not found. Please register the application first.";
const INVALID_TOKEN: &str = "Invalid webhook token";

/// The path of an absolute or relative status URL.
fn url_path(url: &str) -> String {
    match url.find("/webhook/") {
        Some(i) => url[i..].to_string(),
        None => panic!("not a status url: {url}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The seed's contract
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_seed_status_with_the_token_in_the_body_or_the_header() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let (node, shim) = start_with_webhook(d.data.path(), d.logs.path(), true);
    wait_connected(&node, "local").await;
    let app = registry_app(&node, &unique("hook")).await;
    let other = registry_app(&node, &unique("hookb")).await;
    let off = create_app(
        &node,
        &unique("hookoff"),
        AppSpec {
            webhook_enabled: false,
            ..Default::default()
        },
    )
    .await;
    let deploy = "/webhook/deploy";

    // 400: each required field missing (an empty string or 0 counts as missing, as in the seed).
    for body in [
        json!({"version": "v1", "token": app.token}),
        json!({"applicationName": app.name, "token": app.token}),
        json!({"applicationName": app.name, "version": "v1"}),
        json!({"applicationId": 0, "applicationName": "", "version": "v1", "token": app.token}),
        json!({"applicationName": app.name, "version": "", "token": app.token}),
    ] {
        let r = post(shim, deploy, &body, None);
        assert_eq!((r.status, r.error()), (400, MISSING.to_string()), "{body}");
        assert_eq!(r.json()["success"], false);
    }
    // 404: unknown name and unknown id.
    for body in [
        json!({"applicationName": "never-registered", "version": "v1", "token": app.token}),
        json!({"applicationId": 999_999, "version": "v1", "token": app.token}),
    ] {
        let r = post(shim, deploy, &body, None);
        assert_eq!(
            (r.status, r.error()),
            (404, NOT_FOUND.to_string()),
            "{body}"
        );
    }
    // 403: webhook disabled, with the seed's message naming the application.
    let r = post(
        shim,
        deploy,
        &json!({"applicationName": off.name, "version": "v1", "token": off.token}),
        None,
    );
    assert_eq!(
        (r.status, r.error()),
        (
            403,
            format!(
                "Webhook deployment is disabled for application \"{}\"",
                off.name
            )
        )
    );
    // 401: a wrong token, and app A's token for app B (in the body and in the header).
    let r = post(
        shim,
        deploy,
        &json!({"applicationName": app.name, "version": "v1", "token": "whk_wrong"}),
        None,
    );
    assert_eq!((r.status, r.error()), (401, INVALID_TOKEN.to_string()));
    let r = post(
        shim,
        deploy,
        &json!({"applicationName": other.name, "version": "v1", "token": app.token}),
        None,
    );
    assert_eq!((r.status, r.error()), (401, INVALID_TOKEN.to_string()));
    let r = post(
        shim,
        deploy,
        &json!({"applicationId": other.id, "version": "v1"}),
        Some(&app.token),
    );
    assert_eq!((r.status, r.error()), (401, INVALID_TOKEN.to_string()));
    assert!(
        deployments(&node, &other.name).await.is_empty(),
        "a refused token deploys nothing"
    );

    // 200: the token in the body, by name; the seed's success body.
    let r = post(
        shim,
        deploy,
        &json!({"applicationName": app.name, "version": "v1", "token": app.token}),
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    assert_eq!(body["success"], true);
    assert_eq!(body["message"], "Deployment completed successfully");
    assert_eq!(
        body["application"],
        json!({"id": app.id, "name": app.name, "version": "v1"})
    );
    assert!(body["deploymentId"]
        .as_str()
        .is_some_and(|id| id.len() == 36));
    // 200: the token in the header, by id.
    let r = post(
        shim,
        deploy,
        &json!({"applicationId": app.id, "version": "v2"}),
        Some(&app.token),
    );
    assert_eq!(
        (r.status, r.json()["success"].clone()),
        (200, json!(true)),
        "{r:?}"
    );
    // 500: a deployment that fails its health gate, success:false.
    let r = post(
        shim,
        deploy,
        &json!({"applicationName": app.name, "version": "bad", "token": app.token}),
        None,
    );
    assert_eq!(r.status, 500, "{r:?}");
    let body = r.json();
    assert_eq!(
        (body["success"].clone(), body["message"].clone()),
        (json!(false), json!("Deployment failed"))
    );
    // The public reason: a CI caller does not read the agent's words.
    assert_eq!(body["error"], "deploy failed on 1 of 1 host", "{body}");
    assert!(body["deploymentId"].as_str().is_some(), "{body}");

    // Every row: trigger_type webhook, trigger_source the client IP.
    let rows = deployments(&node, &app.name).await;
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!(
            (row.trigger_type.as_str(), row.trigger_source.as_deref()),
            ("webhook", Some("127.0.0.1")),
            "{row:?}"
        );
    }

    // A rotated token: the old one is refused, the new one works; ?wait=false answers 202.
    let rotated = ApplicationServiceClient::new(node.channel().await)
        .rotate_webhook_token(authed(
            pb::RotateWebhookTokenRequest {
                name: app.name.clone(),
            },
            &node.admin_token(),
        ))
        .await
        .unwrap()
        .into_inner()
        .webhook_token;
    let r = post(
        shim,
        deploy,
        &json!({"applicationName": app.name, "version": "v1"}),
        Some(&app.token),
    );
    assert_eq!((r.status, r.error()), (401, INVALID_TOKEN.to_string()));
    let r = post(
        shim,
        "/webhook/deploy?wait=false",
        &json!({"applicationName": app.name, "version": "v1"}),
        Some(&rotated),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let body = r.json();
    assert_eq!(body["success"], true);
    let id = body["deploymentId"].as_str().unwrap().to_string();
    let status_path = url_path(body["statusUrl"].as_str().unwrap());
    assert_eq!(status_path, format!("/webhook/deployments/{id}"));
    // The status URL: only with this application's current token.
    assert_eq!(get(shim, &status_path, &other.token).status, 401);
    assert_eq!(get(shim, &status_path, &app.token).status, 401);
    assert_eq!(request(shim, "GET", &status_path, &[], b"").status, 401);
    assert_eq!(
        get(
            shim,
            "/webhook/deployments/00000000-0000-0000-0000-000000000000",
            &rotated
        )
        .status,
        404
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let r = get(shim, &status_path, &rotated);
        if r.status != 202 {
            break r;
        }
        assert!(Instant::now() < deadline, "deployment {id} did not finish");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(done.status, 200, "{done:?}");
    let body = done.json();
    assert_eq!(
        (body["status"].clone(), body["deploymentId"].clone()),
        (json!("success"), json!(id))
    );

    // The token never reaches the log beyond its first eight characters.
    let log = node.log();
    for token in [&app.token, &other.token, &rotated] {
        assert!(!log.contains(&token[..12]), "token in the node log");
    }
    remove_app_containers(&app.name);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ci_script_fails_on_a_failed_deployment_and_passes_on_a_successful_one() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let (node, shim) = start_with_webhook(d.data.path(), d.logs.path(), true);
    wait_connected(&node, "local").await;
    let app = registry_app(&node, &unique("ci")).await;
    // A second shim that never waits: the script has to poll the status URL.
    let key = create_api_key(&node, "ci-shim", "webhook").await;
    let polling = StandaloneShim::start(&node, &key, &["--wait-timeout", "0"], &[], d.logs.path());

    let script = |port: u16, token: &str, version: &str| -> Output {
        Command::new("sh")
            .arg(repo_root().join("tests/webhook/ci-deploy.sh"))
            .args([app.name.as_str(), version])
            .env("BERTH_WEBHOOK_URL", format!("http://127.0.0.1:{port}"))
            .env("BERTH_WEBHOOK_TOKEN", token)
            .output()
            .unwrap()
    };
    let show = |o: &Output| {
        format!(
            "stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    let ok = script(shim, &app.token, "v1");
    assert!(ok.status.success(), "{}", show(&ok));
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("Deployment completed successfully"),
        "{}",
        show(&ok)
    );
    let failed = script(shim, &app.token, "bad");
    assert!(
        !failed.status.success(),
        "a failed deployment fails the job: {}",
        show(&failed)
    );
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("Deployment failed"),
        "{}",
        show(&failed)
    );
    let refused = script(shim, "whk_not-the-token", "v1");
    assert!(!refused.status.success(), "{}", show(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(INVALID_TOKEN),
        "{}",
        show(&refused)
    );

    // Through the 202 + status URL path.
    let ok = script(polling.port, &app.token, "v2");
    assert!(ok.status.success(), "{}", show(&ok));
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("\"status\":\"success\""),
        "{}",
        show(&ok)
    );
    let failed = script(polling.port, &app.token, "bad");
    assert!(!failed.status.success(), "{}", show(&failed));
    assert!(!polling.log().contains(&app.token[..12]));
    remove_app_containers(&app.name);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dev_node_creates_its_shim_key_once_and_keeps_it_private() {
    let d = dirs();
    let key_file = d.data.path().join("webhook.token");
    let unknown = json!({"applicationName": "never-registered", "version": "v1", "token": "whk_x"});
    let (mut node, shim) = start_with_webhook(d.data.path(), d.logs.path(), false);
    // The admin port accepts connections as soon as it is bound; the key is written just after.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !key_file.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = std::fs::read_to_string(&key_file)
        .expect("webhook.token")
        .trim()
        .to_string();
    assert!(key.starts_with("bk_"));
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // The shim's key works: an unknown application is the control plane's 404, not a 502.
    assert_eq!(post(shim, "/webhook/deploy", &unknown, None).status, 404);
    node.stop();

    let (node, shim) = start_with_webhook(d.data.path(), d.logs.path(), false);
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap().trim(),
        key,
        "reused on the second start"
    );
    assert_eq!(post(shim, "/webhook/deploy", &unknown, None).status, 404);
    let keys = ApiKeyServiceClient::new(node.channel().await)
        .list_api_keys(authed(pb::ListApiKeysRequest {}, &node.admin_token()))
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    let shims: Vec<_> = keys.iter().filter(|k| k.role == "webhook").collect();
    assert_eq!(shims.len(), 1, "{keys:?}");
    assert!(!node.log().contains(&key), "the shim key is never printed");
}

// ---------------------------------------------------------------------------------------------
// Hostile input (R-7.4, security invariant 6)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_gets_a_clear_error_writes_nothing_and_the_servers_keep_serving() {
    let d = dirs();
    let (node, shim) = start_with_webhook(d.data.path(), d.logs.path(), false);
    let app = create_app(&node, &unique("hostile"), AppSpec::default()).await;
    let before = deployment_count(&node).await;
    let deploy = "/webhook/deploy";
    let valid = |version: Value| json!({"applicationName": app.name, "version": version, "token": app.token});
    let check = |what: &str, r: Response, status: u16, message: &str| {
        assert_eq!(r.status, status, "{what}: {r:?}");
        let error = r.error();
        assert!(
            error.contains(message),
            "{what}: {error:?} should say {message:?}"
        );
        assert_eq!(r.json()["success"], false, "{what}");
        assert_eq!(
            request(shim, "GET", "/healthz", &[], b"").status,
            200,
            "the shim keeps serving after {what}"
        );
    };

    // An oversized body (valid JSON, valid token).
    let mut big = valid(json!("v1"));
    big["padding"] = json!("x".repeat(100 * 1024));
    check(
        "oversized body",
        post(shim, deploy, &big, None),
        413,
        "larger than 65536 bytes",
    );
    // Wrong or missing content types.
    let body = valid(json!("v1")).to_string();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let r = request(
            shim,
            "POST",
            deploy,
            &[("Content-Type", content_type)],
            body.as_bytes(),
        );
        check(content_type, r, 415, "must be JSON");
    }
    check(
        "no content type",
        request(shim, "POST", deploy, &[], body.as_bytes()),
        415,
        "must be JSON",
    );
    // Deeply nested JSON, and JSON that is not an object.
    let deep = format!(
        "{{\"applicationName\":\"{}\",\"version\":\"v1\",\"token\":\"{}\",\"x\":{}{}}}",
        app.name,
        app.token,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let r = request(
        shim,
        "POST",
        deploy,
        &[("Content-Type", "application/json")],
        deep.as_bytes(),
    );
    check("deeply nested JSON", r, 400, "nested too deeply");
    for bad in ["{", "[]", "null", "\"v1\"", "{\"version\": \"v1\",}"] {
        let r = request(
            shim,
            "POST",
            deploy,
            &[("Content-Type", "application/json")],
            bad.as_bytes(),
        );
        check(bad, r, 400, "");
    }
    // A version that is not a string.
    for version in [
        json!(1),
        json!(1.5),
        json!(["v1"]),
        json!({"tag": "v1"}),
        json!(true),
    ] {
        check(
            &format!("version {version}"),
            post(shim, deploy, &valid(version.clone()), None),
            400,
            "version must be a string",
        );
    }
    check(
        "name as a number",
        post(
            shim,
            deploy,
            &json!({"applicationName": 7, "version": "v1", "token": app.token}),
            None,
        ),
        400,
        "applicationName must be a string",
    );
    // Versions that are not Docker tags: shell metacharacters, path traversal, newlines.
    for version in [
        "v1;rm -rf /",
        "$(id)",
        "`id`",
        "v1 && curl x",
        "v1|sh",
        "../../etc/passwd",
        "..",
        "v1/../v2",
        "v1\nv2",
        "v1\r\n",
        "-v1",
        ".v1",
        "v1:latest",
        "v1@sha256:abc",
        &"a".repeat(129),
    ] {
        check(
            &format!("version {version:?}"),
            post(shim, deploy, &valid(json!(version)), None),
            400,
            "invalid version",
        );
    }
    // Unicode names: not found, no crash.
    for name in [
        "приложение",
        "應用程式",
        "🚀",
        "app\u{0}",
        "a\u{202e}ppa",
        "ＷＥＢ",
        &"ü".repeat(10_000),
    ] {
        let r = post(
            shim,
            deploy,
            &json!({"applicationName": name, "version": "v1", "token": app.token}),
            None,
        );
        check(&format!("name {name:?}"), r, 404, NOT_FOUND);
    }
    // Odd routes and methods.
    assert_eq!(request(shim, "GET", deploy, &[], b"").status, 405);
    assert_eq!(
        request(
            shim,
            "POST",
            "/webhook/deploy?wait=maybe",
            &[("Content-Type", "application/json")],
            body.as_bytes()
        )
        .status,
        400
    );
    assert_eq!(
        get(
            shim,
            &format!("/webhook/deployments/{}", "x".repeat(500)),
            &app.token
        )
        .status,
        404
    );
    assert_eq!(
        get(shim, "/webhook/deployments/%ZZ", &app.token).status,
        404
    );
    assert_eq!(request(shim, "GET", "/nope", &[], b"").status, 404);
    assert_eq!(
        request(
            shim,
            "POST",
            "/deploy",
            &[("Content-Type", "application/json")],
            body.as_bytes()
        )
        .status,
        404,
        "legacy route off by default"
    );
    assert_eq!(
        deployment_count(&node).await,
        before,
        "nothing written by hostile input"
    );

    // 10,000 failed tokens from one address: 401 until the limit, then 429 with Retry-After,
    // without the control plane seeing them.
    let counts = std::sync::Mutex::new(std::collections::BTreeMap::<u16, usize>::new());
    let retry_after = std::sync::Mutex::new(None::<String>);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..8 {
            let (counts, retry_after, app) = (&counts, &retry_after, &app);
            s.spawn(move || {
                for i in 0..1250 {
                    let body = json!({"applicationName": app.name, "version": "v1", "token": format!("whk_guess-{t}-{i}")});
                    let r = post(shim, deploy, &body, None);
                    if r.status == 429 {
                        *retry_after.lock().unwrap() = r.header("retry-after").map(str::to_string);
                    }
                    *counts.lock().unwrap().entry(r.status).or_default() += 1;
                }
            });
        }
    });
    let counts = counts.into_inner().unwrap();
    eprintln!(
        "10,000 failed tokens in {:?}: {counts:?}",
        started.elapsed()
    );
    assert_eq!(counts.values().sum::<usize>(), 10_000);
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        vec![401, 429],
        "{counts:?}"
    );
    assert!(
        counts[&401] <= 30,
        "the limit stops guessing early: {counts:?}"
    );
    let retry: u64 = retry_after
        .into_inner()
        .unwrap()
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // A limited client is limited even with the right token; the servers keep serving.
    assert_eq!(post(shim, deploy, &valid(json!("v1")), None).status, 429);
    assert_eq!(request(shim, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(
        deployment_count(&node).await,
        before,
        "nothing written by failed tokens"
    );
    // The first refusal of a client is logged; the ones after it in its window are counted
    // in the audit log, not logged one by one.
    let refusals = node.log().matches("webhook token refused").count();
    assert!(
        (1..=30).contains(&refusals),
        "{refusals} log lines of refused tokens, not one per request"
    );
    assert!(
        !node.log().contains(&app.token[..12]),
        "the token is not logged"
    );
}

// ---------------------------------------------------------------------------------------------
// Client IPs, the legacy route, and the RPC itself
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_is_honoured_only_from_trusted_proxies_and_the_legacy_route_is_deprecated() {
    let d = dirs();
    let (node, dev_shim) = start_with_webhook(d.data.path(), d.logs.path(), false);
    let app = create_app(&node, &unique("xff"), AppSpec::default()).await;
    let key = create_api_key(&node, "edge-shim", "webhook").await;
    let behind_proxy = StandaloneShim::start(
        &node,
        &key,
        &[
            "--trusted-proxy",
            "127.0.0.1/32,10.0.0.0/8",
            "--enable-legacy-deploy",
        ],
        &[],
        d.logs.path(),
    );
    let xff = |port: u16, forwarded: &str| {
        let body =
            json!({"applicationName": app.name, "version": "v1", "token": app.token}).to_string();
        request(
            port,
            "POST",
            "/webhook/deploy",
            &[
                ("Content-Type", "application/json"),
                ("X-Forwarded-For", forwarded),
            ],
            body.as_bytes(),
        )
    };
    // No agent runs: each deployment is recorded and fails before dispatch (500).
    assert_eq!(xff(behind_proxy.port, "198.51.100.23").status, 500);
    assert_eq!(
        xff(behind_proxy.port, "203.0.113.9, 198.51.100.24, 10.1.2.3").status,
        500
    );
    assert_eq!(xff(dev_shim, "198.51.100.25").status, 500);
    let mut sources: Vec<String> = deployments(&node, &app.name)
        .await
        .into_iter()
        .map(|r| r.trigger_source.unwrap_or_default())
        .collect();
    sources.sort();
    assert_eq!(
        sources,
        ["127.0.0.1", "198.51.100.23", "198.51.100.24"],
        "a forged header from an untrusted peer is ignored"
    );

    // Legacy POST /deploy: registered applications by name, with their token; the caller's
    // image and ports are never applied; deprecation headers on every answer.
    let legacy =
        |body: Value, bearer: Option<&str>| post(behind_proxy.port, "/deploy", &body, bearer);
    let r = legacy(
        json!({"name": app.name, "image": "evil/image", "version": "v1", "port": 22, "containerPort": 22}),
        None,
    );
    assert_eq!(r.status, 401, "no token: {r:?}");
    assert_eq!(r.header("deprecation"), Some("true"));
    assert!(r.header("sunset").is_some_and(|s| s.ends_with("GMT")));
    let r = legacy(
        json!({"name": app.name, "image": "evil/image", "version": "v1", "port": 22, "containerPort": 22, "secret": app.token}),
        None,
    );
    assert_eq!(
        r.status, 500,
        "deployed the registered app (no agent, so it failed): {r:?}"
    );
    assert_eq!(r.header("deprecation"), Some("true"));
    assert_eq!(
        r.json()["ignored"],
        json!(["image", "port", "containerPort"])
    );
    assert_eq!(r.json()["application"]["name"], json!(app.name));
    let r = legacy(
        json!({"name": "not-registered", "version": "v1"}),
        Some(&app.token),
    );
    assert_eq!((r.status, r.error()), (404, NOT_FOUND.to_string()));
    assert!(r.header("sunset").is_some());
    let r = legacy(
        json!({"name": app.name, "version": "v1", "secret": "whk_wrong"}),
        None,
    );
    assert_eq!((r.status, r.error()), (401, INVALID_TOKEN.to_string()));
    assert_eq!(deployments(&node, &app.name).await.len(), 4);

    // The shim with a key of the wrong role does not blame its caller: 502.
    let viewer = create_api_key(&node, "not-a-shim", "viewer").await;
    let wrong_key = StandaloneShim::start(&node, &viewer, &[], &[], d.logs.path());
    let r = post(
        wrong_key.port,
        "/webhook/deploy",
        &json!({"applicationName": app.name, "version": "v1", "token": app.token}),
        None,
    );
    assert_eq!(r.status, 502, "{r:?}");

    // Calling the RPC directly skips nothing: a viewer key is refused, and the webhook key
    // still needs the application's token.
    let mut rpc = WebhookServiceClient::new(node.channel().await);
    let rpc_request = |token: &str| pb::WebhookDeployRequest {
        application_name: Some(app.name.clone()),
        version: "v1".into(),
        token: token.into(),
        client_ip: "192.0.2.1".into(),
        ..Default::default()
    };
    let e = rpc
        .deploy(authed(rpc_request(&app.token), &viewer))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = rpc
        .deploy(authed(rpc_request("whk_wrong"), &key))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = rpc
        .deploy(authed(rpc_request(&app.token), ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        deployments(&node, &app.name).await.len(),
        4,
        "refused calls write nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Registry push -> auto-deploy
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_push_deploys_the_auto_deploy_application_and_leaves_the_others_alone() {
    if !docker_available() {
        return;
    }
    build_test_images();
    let d = dirs();
    // The control plane holds the secret and checks it; the shim only forwards it.
    let secret = format!("registry-notify-secret-{}", std::process::id());
    let (node, _) = start_with_webhook_env(
        d.data.path(),
        d.logs.path(),
        true,
        &[("BERTH_REGISTRY_NOTIFY_SECRET", &secret)],
    );
    wait_connected(&node, "local").await;
    let key = create_api_key(&node, "registry-shim", "webhook").await;
    let shim = StandaloneShim::start(&node, &key, &[], &[], d.logs.path());

    // The wrong secret is refused.
    let envelope = json!({"events": [{"action": "push", "target": {"repository": "web", "tag": "v9"}, "request": {"host": "x"}}]});
    assert_eq!(
        post(shim.port, "/webhook/registry", &envelope, Some("wrong")).status,
        401
    );
    assert_eq!(
        post(shim.port, "/webhook/registry", &envelope, None).status,
        401
    );
    // Called directly with the shim's key, the RPC asks for the same secret.
    let mut rpc = WebhookServiceClient::new(node.channel().await);
    let direct = pb::RegistryPushRequest {
        events: vec![pb::RegistryPushEvent {
            host: "127.0.0.1:1".into(),
            repository: "web".into(),
            tag: "v9".into(),
        }],
        client_ip: "192.0.2.1".into(),
        secret: String::new(),
    };
    let refused = rpc.registry_push(authed(direct, &key)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // A second registry that notifies the shim.
    let reg2 = Registry::start_notifying(
        "notify",
        &format!("http://127.0.0.1:{}/webhook/registry", shim.port),
        &secret,
    );
    let server = &reg2.server;
    add_repository(&node, "reg2", server, &reg2.username, &reg2.password).await;
    let auto = create_app(
        &node,
        &unique("auto"),
        AppSpec {
            repository: Some("reg2".into()),
            auto_deploy: true,
            ..Default::default()
        },
    )
    .await;
    let manual = create_app(
        &node,
        &unique("manual"),
        AppSpec {
            repository: Some("reg2".into()),
            ..Default::default()
        },
    )
    .await;

    // Push web:v2 as web:v7.
    reg2.push_keeping_the_local_tag("berth-test/web:v2", "web:v7");

    let deadline = Instant::now() + Duration::from_secs(60);
    let row = loop {
        if let Some(row) = deployments(&node, &auto.name).await.into_iter().next() {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "no deployment after the push; shim log:\n{}",
            shim.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        (row.version.as_str(), row.trigger_type.as_str()),
        ("v7", "registry")
    );
    assert_eq!(
        row.trigger_source.as_deref(),
        Some(format!("{server}/web:v7").as_str())
    );
    let done = wait_deployment(&node, &row.deployment_id, Duration::from_secs(120)).await;
    let done = done.deployment.unwrap();
    assert_eq!(done.status, "success", "{done:?}");
    // The pull by the agent notifies too; nothing deploys twice, the manual app never.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(deployments(&node, &auto.name).await.len(), 1);
    assert!(
        deployments(&node, &manual.name).await.is_empty(),
        "auto_deploy off: untouched"
    );
    assert!(!shim.log().contains(&secret));
    assert!(!node.log().contains(&secret));
    remove_app_containers(&auto.name);
}

/// An empty, blank or short registry secret would let anyone deploy: from a flag, the
/// environment or a file, the control plane (standalone or `berth dev`) refuses to start,
/// before it writes anything.
#[test]
fn a_registry_secret_that_is_empty_blank_or_short_refuses_to_start() {
    let d = dirs();
    let blank_file = d.logs.path().join("blank.secret");
    std::fs::write(&blank_file, " \n\t\n").unwrap();
    let short_file = d.logs.path().join("short.secret");
    std::fs::write(&short_file, "fifteen-chars-x\n").unwrap();
    let (blank, short) = (
        blank_file.display().to_string(),
        short_file.display().to_string(),
    );
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case; 7] = [
        (&["--registry-secret", ""], &[]),
        (&[], &[("BERTH_REGISTRY_NOTIFY_SECRET", "")]),
        (&["--registry-secret", "   "], &[]),
        (&[], &[("BERTH_REGISTRY_NOTIFY_SECRET", "short")]),
        (&[], &[("BERTH_REGISTRY_NOTIFY_SECRET", "   ")]),
        (&["--registry-secret-file", &blank], &[]),
        (&[], &[("BERTH_REGISTRY_NOTIFY_SECRET_FILE", &short)]),
    ];
    for (i, (args, env)) in cases.iter().enumerate() {
        for dev in [false, true] {
            let data = d.data.path().join(format!("case-{i}-{dev}"));
            let mut command = if dev {
                let mut c = Command::new(bin("berth"));
                c.args(["dev", "--no-agent", "--grpc-listen", "127.0.0.1:0"]);
                c
            } else {
                let mut c = Command::new(bin("berth-control-plane"));
                c.args(["--listen", "127.0.0.1:0"]);
                c
            };
            command
                .arg("--data-dir")
                .arg(&data)
                .args(["--agent-listen", "127.0.0.1:0"])
                .args(*args)
                .env_remove("BERTH_REGISTRY_NOTIFY_SECRET")
                .env_remove("BERTH_REGISTRY_NOTIFY_SECRET_FILE");
            for (k, v) in *env {
                command.env(k, v);
            }
            let log = d.logs.path().join(format!("refused-{i}-{dev}.log"));
            let mut process = Process::spawn(command, log);
            let deadline = Instant::now() + Duration::from_secs(30);
            let status = loop {
                if let Some(status) = process.exited() {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "case {i} (dev: {dev}) started:\n{}",
                    process.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            };
            let output = process.log();
            assert!(!status.success(), "case {i} (dev: {dev}): {output}");
            assert!(
                output.contains("registry notification secret")
                    && (output.contains("empty") || output.contains("at least 16")),
                "case {i} (dev: {dev}) gives no clear error: {output}"
            );
            assert!(!data.exists(), "case {i} (dev: {dev}) wrote its data dir");
        }
    }

    // The shim holds no registry secret any more: given one, it says where it went.
    let shim = Command::new(bin("berth-webhook"))
        .args(["--listen", "127.0.0.1:0", "--registry-secret-file", &blank])
        .env("BERTH_WEBHOOK_API_KEY", "bk_unused")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&shim.stderr);
    assert!(!shim.status.success(), "{said}");
    assert!(said.contains("moved to berth-control-plane"), "{said}");
}
