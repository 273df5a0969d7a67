//! `WatchDeployment` streams are bounded (issue 9, attack path 7): the server's task ends
//! when its client goes away, even if the deployment never moves again; a stream ends at its
//! maximum lifetime; and streams are capped per API key and in total, with a clear
//! RESOURCE_EXHAUSTED.

use berth_proto::v1 as pb;
use pb::deploy_service_client::DeployServiceClient;
use secrecy::ExposeSecret as _;
use tonic::{Code, Streaming};

use super::*;
use crate::fleet::WatchLimits;

/// A cluster whose one agent takes ten minutes over any deploy: a deployment stays running
/// for the whole test, with no step after its first ones.
async fn cluster_with(watch: WatchLimits) -> (Cluster, String) {
    let mut cluster = Cluster::start_with(|config| {
        config.fleet.rollout.result_timeout = Duration::from_secs(600);
        config.fleet.watch = watch;
    })
    .await;
    cluster
        .add_agent(
            "a1",
            FakeExecutor::new().with_delay(Duration::from_secs(600)),
        )
        .await;
    cluster.app("web", 1).await;
    let id = cluster.deploy("web", "v2").await;
    (cluster, id)
}

async fn viewer_key(cluster: &Cluster, name: &str) -> String {
    let created = cluster
        .fleet
        .service()
        .create_api_key(&Actor::system(), name, "viewer")
        .await
        .unwrap();
    created.key.expose_secret().to_string()
}

/// Opens a watch on a connection of its own, as a `berth deploy --follow` process does.
async fn watch(
    cluster: &Cluster,
    id: &str,
    key: &str,
) -> Result<Streaming<pb::DeploymentUpdate>, tonic::Status> {
    let mut client = DeployServiceClient::new(cluster.admin_channel().await);
    let mut request = tonic::Request::new(pb::GetDeploymentRequest {
        deployment_id: id.to_string(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    client
        .watch_deployment(request)
        .await
        .map(tonic::Response::into_inner)
}

async fn wait_watchers(cluster: &Cluster, live: usize) {
    let deadline = tokio::time::Instant::now() + MUST_HAPPEN;
    while cluster.fleet.live_watchers() != live {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} watch tasks alive, expected {live}",
            cluster.fleet.live_watchers()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_tasks_end_with_their_clients_and_streams_are_capped_per_key_and_in_total() {
    let (cluster, id) = cluster_with(WatchLimits {
        max_total: 6,
        max_per_caller: 4,
        max_lifetime: Duration::from_secs(600),
    })
    .await;
    let (a, b) = (
        viewer_key(&cluster, "a").await,
        viewer_key(&cluster, "b").await,
    );

    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(watch(&cluster, &id, &a).await.unwrap());
    }
    let refused = watch(&cluster, &id, &a).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("apikey:a already has 4 open"),
        "{refused:?}"
    );
    for _ in 0..2 {
        open.push(watch(&cluster, &id, &b).await.unwrap());
    }
    let refused = watch(&cluster, &id, &b).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("already serves 6"),
        "{refused:?}"
    );
    assert_eq!(cluster.fleet.live_watchers(), 6);

    // The clients go away while the deployment has nothing new to say: every task ends.
    drop(open);
    wait_watchers(&cluster, 0).await;
    // And the slots are free again.
    let again = watch(&cluster, &id, &a).await.unwrap();
    assert_eq!(cluster.fleet.live_watchers(), 1);
    drop(again);
    wait_watchers(&cluster, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_ends_at_its_maximum_lifetime_with_a_clear_status() {
    let (cluster, id) = cluster_with(WatchLimits {
        max_lifetime: Duration::from_secs(1),
        ..WatchLimits::default()
    })
    .await;
    let key = viewer_key(&cluster, "follower").await;
    let mut updates = watch(&cluster, &id, &key).await.unwrap();
    let ended = tokio::time::timeout(MUST_HAPPEN, async {
        loop {
            match updates.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without saying why"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream ends at its lifetime");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(
        ended.message().contains("maximum lifetime of 1 s")
            && ended.message().contains(&format!("berth deploy show {id}")),
        "{ended:?}"
    );
    wait_watchers(&cluster, 0).await;
    // The deployment itself is untouched.
    let (log, _) = cluster
        .fleet
        .service()
        .store()
        .deployment(&id)
        .await
        .unwrap();
    assert_eq!(log.status, DeploymentStatus::Running, "{log:?}");
}

/// An open `deploy --follow` of a deployment that keeps running does not hold the node's
/// clean stop up: the watch ends with UNAVAILABLE saying how to follow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_watch_ends_when_the_node_stops_and_does_not_hold_the_stop() {
    let (mut cluster, id) = cluster_with(WatchLimits::default()).await;
    let key = viewer_key(&cluster, "follower").await;
    let mut stream = watch(&cluster, &id, &key).await.unwrap();
    stream.message().await.unwrap().expect("a first step");
    cluster.stop_node().await.unwrap();
    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the watch ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("is stopping"), "{ended:?}");
}
