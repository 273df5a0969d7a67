//! Failure path: a clean stop. The servers stop and every agent stream's handler finishes —
//! recording the disconnect — before the store closes; nothing is written to a closed pool.

use super::*;
use crate::store::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_records_every_disconnect_before_the_store_closes() {
    let mut cluster = Cluster::start().await;
    cluster.add_agent("a1", FakeExecutor::new()).await;
    cluster.add_agent("a2", FakeExecutor::new()).await;

    // The agents stay up, as remote hosts do: the node must not wait for them to leave.
    cluster.stop_node().await.unwrap();

    let store = Store::open(&cluster.dir.path().join("control-plane").join(DATABASE_FILE))
        .await
        .unwrap();
    let status: Vec<(String, String)> = store
        .list_agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.name, a.status))
        .collect();
    assert_eq!(
        status,
        [
            ("a1".to_string(), "disconnected".to_string()),
            ("a2".to_string(), "disconnected".to_string())
        ],
        "every disconnect is recorded before the store closes"
    );
}

/// `berth dev`'s case: the local agents stop with the node. Their streams end while the
/// servers drain; each handler's disconnect is still written before the store closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_stopping_with_the_node_still_record_their_disconnect() {
    let mut cluster = Cluster::start().await;
    let names: Vec<String> = (1..=16).map(|i| format!("a{i}")).collect();
    for name in &names {
        cluster.add_agent(name, FakeExecutor::new()).await;
    }
    let mut agents = Vec::new();
    for name in &names {
        let mut agent = cluster.agents.remove(name).unwrap();
        let _ = agent.stop.take().unwrap().send(());
        agents.push(agent.task);
    }
    cluster.stop_node().await.unwrap();
    for agent in agents {
        agent.await.unwrap().unwrap();
    }

    let store = Store::open(&cluster.dir.path().join("control-plane").join(DATABASE_FILE))
        .await
        .unwrap();
    for agent in store.list_agents().await.unwrap() {
        assert_eq!(agent.status, "disconnected", "{}", agent.name);
    }
}
