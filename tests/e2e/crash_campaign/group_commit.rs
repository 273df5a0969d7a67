//! kill -9 of the control plane while 1,000 deploys are in flight through the
//! group-committing writer (issue 11; SPEC §11 invariant 1).
//!
//! Group commit acknowledges every write of a batch after the batch's one fsync. The promise
//! is unchanged from a transaction per write: every deploy the API acknowledged (answered
//! with a deployment id) is in the database after the restart, exactly once; a deploy that
//! was not acknowledged may or may not be there (the process can die between the fsync and
//! the reply), but never twice; and SQLite's file passes its integrity check.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use pb::deploy_service_client::DeployServiceClient;

use crate::fixture::admin::{authed, create_app, deployments, AppSpec};
use crate::fixture::data_dir::integrity_check;
use crate::fixture::node::{dirs, DevNode};

const APPS: usize = 50;
const DEPLOYS_PER_APP: usize = 20;
/// Acknowledged deploys before the kill: the rest of the 1,000 are in flight or not sent.
const KILL_AFTER_ACKS: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_with_a_thousand_deploys_in_flight_loses_no_acknowledged_one_and_doubles_none() {
    let d = dirs();
    let mut node = DevNode::start_without_agent(&d);
    let token = node.admin_token();
    let mut apps = Vec::new();
    for i in 0..APPS {
        let name = format!("gc-{i:02}");
        create_app(&node, &name, AppSpec::default()).await;
        apps.push(name);
    }

    // 1,000 deploys at once over one HTTP/2 connection; each version names its call.
    let channel = node.channel().await;
    let acked = Arc::new(AtomicUsize::new(0));
    let mut calls = Vec::new();
    for app in &apps {
        for n in 0..DEPLOYS_PER_APP {
            let (app, version) = (app.clone(), format!("v{n}"));
            let mut client = DeployServiceClient::new(channel.clone());
            let (token, acked) = (token.clone(), acked.clone());
            calls.push(tokio::spawn(async move {
                let reply = client
                    .deploy(authed(
                        pb::DeployRequest {
                            app: app.clone(),
                            version: version.clone(),
                            cancel_in_progress: false,
                        },
                        &token,
                    ))
                    .await;
                let id = reply.ok()?.into_inner().deployment?.deployment_id;
                acked.fetch_add(1, Ordering::SeqCst);
                Some((app, version, id))
            }));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::SeqCst) < KILL_AFTER_ACKS {
        assert!(
            Instant::now() < deadline,
            "deploys are not being acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    node.kill();
    let at_kill = acked.load(Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    for call in calls {
        if let Some(done) = call.await.unwrap() {
            acknowledged.push(done);
        }
    }
    eprintln!(
        "kill -9 after {at_kill} acknowledged deploys; {} acknowledged in all, {} not answered",
        acknowledged.len(),
        APPS * DEPLOYS_PER_APP - acknowledged.len()
    );
    assert!(
        acknowledged.len() < APPS * DEPLOYS_PER_APP,
        "every deploy was answered before the kill: nothing was in flight"
    );

    let db = d.data.path().join("berth.db");
    assert_eq!(integrity_check(&db).await, "ok");
    let node = DevNode::start_without_agent(&d);
    let mut stored: HashMap<(String, String), Vec<String>> = HashMap::new();
    for app in &apps {
        for row in deployments(&node, app).await {
            stored
                .entry((app.clone(), row.version.clone()))
                .or_default()
                .push(row.deployment_id);
        }
    }
    let doubles: Vec<_> = stored.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(doubles.is_empty(), "deploys stored twice: {doubles:?}");
    let ids: HashSet<&String> = stored.values().flatten().collect();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|(_, _, id)| !ids.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged deploys lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!(
        "after restart: {} deploys stored ({} acknowledged, {} committed but never answered)",
        ids.len(),
        acknowledged.len(),
        ids.len() - acknowledged.len()
    );
}
