//! The notifier against a receiver on 127.0.0.1 (private destinations allowed explicitly):
//! queueing, signing, retries, restarts; and, by default, the refusal of that receiver.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::service::testing::{admin, service};

#[test]
fn backoff_doubles_from_one_second_and_stops_after_six_attempts() {
    let schedule: Vec<Option<u64>> = (1..=MAX_ATTEMPTS)
        .map(|n| retry_delay(n).map(|d| d.as_secs()))
        .collect();
    assert_eq!(
        schedule,
        vec![Some(1), Some(2), Some(4), Some(8), Some(16), None]
    );
    assert_eq!(retry_delay(0), None);
    assert_eq!(retry_delay(u32::MAX), None);
}

#[test]
fn finished_matches_both_outcomes_and_rolled_back_counts_as_failed() {
    assert_eq!(event_for_status(DeploymentStatus::Success), EVENT_SUCCEEDED);
    assert_eq!(event_for_status(DeploymentStatus::Failed), EVENT_FAILED);
    assert_eq!(event_for_status(DeploymentStatus::RolledBack), EVENT_FAILED);
    assert_eq!(
        event_for_status(DeploymentStatus::Superseded),
        EVENT_SUPERSEDED
    );
    let finished = vec![EVENT_FINISHED.to_string()];
    assert!(subscribed(&finished, EVENT_SUCCEEDED) && subscribed(&finished, EVENT_FAILED));
    let failed = vec![EVENT_FAILED.to_string()];
    assert!(!subscribed(&failed, EVENT_SUCCEEDED) && subscribed(&failed, EVENT_FAILED));
}

/// One request as the receiver saw it (header names lowercased).
struct Received {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// Answers each request with the next status of `answers` (then 200) and reports it.
async fn receiver(answers: Vec<u16>) -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/hooks/berth?team=ops",
        listener.local_addr().unwrap()
    );
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut answers = answers.into_iter();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let headers: HashMap<String, String> = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let length: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + length {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let code = answers.next().unwrap_or(200);
            let _ = tx.send(Received {
                headers,
                body: buf[head_end..head_end + length].to_vec(),
            });
            let reply =
                format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = stream.write_all(reply.as_bytes()).await;
        }
    });
    (url, rx)
}

fn finished_log(status: &str) -> DeploymentLog {
    DeploymentLog {
        id: 1,
        application_id: 1,
        version: "v2".into(),
        deployment_id: format!("dep-{status}"),
        trigger_type: "api".into(),
        trigger_source: Some("apikey:admin".into()),
        status: status.parse().expect("a deployment status"),
        error_message: (status != "success")
            .then(|| "image busybox is not on the image allowlist".to_string()),
        started_at: "2025-10-23 10:30:00".into(),
        completed_at: Some("2025-10-23 10:30:01".into()),
        duration_ms: Some(1000),
        superseded_by: None,
        public_reason: (status != "success").then(|| "image not allowed".to_string()),
    }
}

async fn wait_for_status(
    svc: &Service,
    webhook_id: i64,
    status: &str,
) -> crate::store::DeliveryRow {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = svc
            .store()
            .list_deliveries(Some(webhook_id), 10)
            .await
            .unwrap();
        if let Some(row) = rows.iter().find(|r| r.status == status) {
            return row.clone();
        }
        assert!(Instant::now() < deadline, "no {status} delivery: {rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start(notifier: Notifier) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(notifier.run(async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

#[tokio::test]
async fn a_failed_deployment_is_signed_sent_retried_and_recorded() {
    let svc = service().await;
    let (url, mut requests) = receiver(vec![500]).await;
    let hook_failed = svc
        .add_webhook(&admin(), &url, &[EVENT_FAILED.to_string()], None)
        .await
        .unwrap();
    let notifier = Notifier::new(svc.clone(), DestinationPolicy::AllowPrivate);
    let hook = notifier.finished_hook();
    let (stop, task) = start(notifier);

    // Not subscribed: a success raises nothing for this webhook.
    hook(&finished_log("success"), "web");
    hook(&finished_log("failed"), "web");

    let first = tokio::time::timeout(Duration::from_secs(10), requests.recv())
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), requests.recv())
        .await
        .unwrap()
        .unwrap();
    let row = wait_for_status(&svc, hook_failed.webhook.id, "delivered").await;
    assert_eq!(
        (row.attempt, row.response_code, row.event.as_str()),
        (2, Some(200), EVENT_FAILED)
    );

    for request in [&first, &second] {
        let expected = signature(hook_failed.secret.expose_secret().as_bytes(), &request.body);
        assert_eq!(
            request.headers.get("x-berth-signature-256"),
            Some(&expected)
        );
        assert_eq!(
            request.headers.get("x-berth-event").map(String::as_str),
            Some(EVENT_FAILED)
        );
        assert_eq!(request.headers.get("x-berth-delivery"), Some(&row.id));
        assert_eq!(
            request.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["id"], row.id.as_str());
        assert_eq!(body["deployment"]["deploymentId"], "dep-failed");
        assert_eq!(body["deployment"]["status"], "failed");
        // The public reason, never the detail the admin API shows.
        assert_eq!(body["deployment"]["errorMessage"], "image not allowed");
        let text = String::from_utf8_lossy(&request.body);
        assert!(
            !text.contains("busybox") && !text.contains("allowlist"),
            "{text}"
        );
        assert!(
            !String::from_utf8_lossy(&request.body).contains(hook_failed.secret.expose_secret())
        );
    }
    let all = svc.store().list_deliveries(None, 10).await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");

    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn pending_rows_left_by_a_previous_run_are_sent() {
    let svc = service().await;
    let (url, mut requests) = receiver(vec![]).await;
    let created = svc
        .add_webhook(&admin(), &url, &[EVENT_FINISHED.to_string()], None)
        .await
        .unwrap();
    let payload =
        serde_json::to_string(&DeploymentPayload::new(&finished_log("success"), "web")).unwrap();
    svc.store()
        .insert_deliveries(&[NewDelivery {
            id: "left-over".into(),
            webhook_id: created.webhook.id,
            event: EVENT_SUCCEEDED,
            deployment_id: "dep-success".into(),
            payload,
        }])
        .await
        .unwrap();

    let (stop, task) = start(Notifier::new(svc.clone(), DestinationPolicy::AllowPrivate));
    let request = tokio::time::timeout(Duration::from_secs(10), requests.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        request.headers.get("x-berth-delivery").map(String::as_str),
        Some("left-over")
    );
    let row = wait_for_status(&svc, created.webhook.id, "delivered").await;
    assert_eq!(row.attempt, 1);
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn an_unreachable_receiver_is_retried_then_failed() {
    let svc = service().await;
    // A port nothing listens on: bind, note the port, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let created = svc
        .add_webhook(
            &admin(),
            &format!("http://127.0.0.1:{port}/"),
            &[EVENT_FINISHED.to_string()],
            None,
        )
        .await
        .unwrap();
    let payload =
        serde_json::to_string(&DeploymentPayload::new(&finished_log("failed"), "web")).unwrap();
    svc.store()
        .insert_deliveries(&[NewDelivery {
            id: "doomed".into(),
            webhook_id: created.webhook.id,
            event: EVENT_FAILED,
            deployment_id: "dep-failed".into(),
            payload,
        }])
        .await
        .unwrap();
    // The last retry is due 1+2+4+8+16 s after the first attempt: record attempts directly
    // instead of waiting, by running single attempts.
    let sender = HttpSender::new(DestinationPolicy::AllowPrivate);
    for n in 1..=MAX_ATTEMPTS {
        make_due(&svc, "doomed").await;
        let due = svc
            .store()
            .due_deliveries(10)
            .await
            .unwrap()
            .pop()
            .expect("due");
        assert_eq!(due.attempt, i64::from(n - 1));
        attempt(&svc, &sender, due).await;
    }
    let rows = svc
        .store()
        .list_deliveries(Some(created.webhook.id), 10)
        .await
        .unwrap();
    assert_eq!(rows[0].status, "failed");
    assert_eq!(rows[0].attempt, i64::from(MAX_ATTEMPTS));
    assert!(
        rows[0]
            .error
            .as_deref()
            .unwrap_or("")
            .starts_with("connect:"),
        "{:?}",
        rows[0].error
    );
    assert!(rows[0].next_attempt_at.is_none());
}

/// Makes a pending delivery due now (a zero-length lease).
async fn make_due(svc: &Service, id: &str) {
    svc.store().lease_delivery(id, 0.0).await.unwrap();
}

#[tokio::test]
async fn an_https_receiver_without_a_trusted_certificate_is_refused() {
    // Speaks plain HTTP where TLS is expected.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let err = HttpSender::new(DestinationPolicy::AllowPrivate)
        .post(
            &format!("https://127.0.0.1:{port}/hook"),
            &[],
            b"{}".to_vec(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("tls:"), "{err}");
}

/// A listener on 127.0.0.1 that counts the connections it accepts.
async fn counting_listener() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn private_destinations_are_refused_before_any_connection_by_default() {
    let (open, accepted) = counting_listener().await;
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sender = HttpSender::default();
    let mut errors = Vec::new();
    for url in [
        format!("http://127.0.0.1:{open}/hook"),
        format!("http://127.0.0.1:{closed}/hook"),
        // A name is checked on what it resolves to.
        format!("http://localhost:{open}/hook"),
        format!("http://[::ffff:127.0.0.1]:{open}/hook"),
        format!("https://127.0.0.1:{open}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1:9/x".to_string(),
    ] {
        let err = sender.post(&url, &[], b"{}".to_vec()).await.unwrap_err();
        assert!(
            matches!(err, SendError::DestinationNotAllowed),
            "{url}: {err}"
        );
        errors.push(err.to_string());
    }
    // An open and a closed port read the same: no port-scan oracle.
    assert!(errors.windows(2).all(|w| w[0] == w[1]), "{errors:?}");
    assert_eq!(
        errors[0],
        "destination address is not allowed (private/loopback); start the control plane with --notify-allow-private to allow it"
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a refused destination was connected to"
    );

    // Allowed explicitly, the same receiver gets the request.
    let code = HttpSender::new(DestinationPolicy::AllowPrivate)
        .post(
            &format!("http://127.0.0.1:{open}/hook"),
            &[],
            b"{}".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refused_delivery_is_recorded_with_the_clear_error_and_never_sent() {
    let svc = service().await;
    let (port, accepted) = counting_listener().await;
    let created = svc
        .add_webhook(
            &admin(),
            &format!("http://127.0.0.1:{port}/hook"),
            &[EVENT_FINISHED.to_string()],
            None,
        )
        .await
        .unwrap();
    let payload =
        serde_json::to_string(&DeploymentPayload::new(&finished_log("failed"), "web")).unwrap();
    svc.store()
        .insert_deliveries(&[NewDelivery {
            id: "refused".into(),
            webhook_id: created.webhook.id,
            event: EVENT_FAILED,
            deployment_id: "dep-failed".into(),
            payload,
        }])
        .await
        .unwrap();
    let due = svc.store().due_deliveries(10).await.unwrap().pop().unwrap();
    attempt(&svc, &HttpSender::default(), due).await;
    let row = &svc
        .store()
        .list_deliveries(Some(created.webhook.id), 10)
        .await
        .unwrap()[0];
    assert_eq!((row.attempt, row.response_code), (1, None));
    assert!(
        row.error
            .as_deref()
            .unwrap_or_default()
            .contains("--notify-allow-private"),
        "{row:?}"
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
}
