//! Both gRPC ports against sockets that connect and never speak: a real client is still
//! served, and the silent sockets are disconnected once the TLS handshake timeout passes, so
//! they cannot pile up until the node runs out of file descriptors (issue 9, attack path 4).

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

use super::*;

/// Whether the node closed `stream` within `within`.
async fn closed_by_node(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_finish_a_tls_handshake_are_cut_on_both_ports() {
    let cluster = Cluster::start().await;
    let admin: std::net::SocketAddr = cluster
        .admin_url
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(admin).await.unwrap());
        silent.push(TcpStream::connect(cluster.agent_addr).await.unwrap());
    }
    // A real client completes its handshake and is served meanwhile.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(cluster.admin_channel().await);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("served while 400 silent sockets are open");
    assert_eq!(
        answer.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let within = TLS_HANDSHAKE_TIMEOUT + Duration::from_secs(10);
    for (i, stream) in silent.iter_mut().enumerate() {
        assert!(
            closed_by_node(stream, within).await,
            "silent socket {i} still open after {within:?}"
        );
    }
}
