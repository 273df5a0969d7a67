//! Layer 4: switches, drains, restarts and host-port conflicts.

use super::*;

#[tokio::test]
async fn a_switch_sends_new_connections_to_the_new_backend_and_drain_closes_the_old() {
    let (a, b) = (tcp_backend("a").await, tcp_backend("b").await);
    let port = free_port();
    let mut fx = Fixture::start().await;
    let reply = fx
        .set_route(tcp_route("web", &a, &[port]))
        .await
        .expect("route to a");
    assert!(reply.previous.is_none());

    let mut on_a = connect(port).await;
    assert_eq!(on_a.backend, "a");

    let reply = fx
        .set_route(tcp_route("web", &b, &[port]))
        .await
        .expect("switch to b");
    assert_eq!(reply.previous.expect("previous").container_id, "id-a");
    assert_eq!(reply.previous_connections, 1);
    let on_b = connect(port).await;
    assert_eq!(on_b.backend, "b");
    // The established connection still goes to a.
    assert_eq!(on_a.echo("still here").await, "still here");

    let routes = fx.list().await;
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].connections.get("id-a"), Some(&1));
    assert_eq!(routes[0].connections.get("id-b"), Some(&1));

    // b is routed: draining it is refused.
    assert_status(
        fx.drain("id-b", 10).await,
        tonic::Code::FailedPrecondition,
        "app web still routes to container id-b",
    );
    // a's connection does not end by itself: closed at the timeout.
    let reply = fx.drain("id-a", 50).await.expect("drain a");
    assert_eq!((reply.finished, reply.closed), (0, 1));
    assert!(
        on_a.closed_by_peer().await,
        "the drained connection is still open"
    );
    let mut on_b = on_b;
    assert_eq!(on_b.echo("b lives").await, "b lives");
}

#[tokio::test]
async fn a_drain_returns_when_the_old_connections_end_by_themselves() {
    let (a, b) = (tcp_backend("a").await, tcp_backend("b").await);
    let port = free_port();
    let mut fx = Fixture::start().await;
    fx.set_route(tcp_route("web", &a, &[port]))
        .await
        .expect("route to a");
    let on_a = connect(port).await;
    fx.set_route(tcp_route("web", &b, &[port]))
        .await
        .expect("switch to b");

    let mut control = fx.control.clone();
    let drain = tokio::spawn(async move {
        control
            .drain(pb::DrainRequest {
                container_id: "id-a".into(),
                // Far longer than the test may run: the drain must end because a did.
                timeout_ms: 3_600_000,
            })
            .await
    });
    let connections = fx.proxy().data.connections.clone();
    bounded("drain registered", async {
        while connections.draining("id-a") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    drop(on_a);
    let reply = bounded("drain", drain)
        .await
        .expect("task")
        .expect("drain")
        .into_inner();
    assert_eq!((reply.finished, reply.closed), (1, 0));
}

#[tokio::test]
async fn a_restarted_proxy_serves_its_routes_before_any_control_call() {
    let a = tcp_backend("a").await;
    let (port, other) = (free_port(), free_port());
    let mut fx = Fixture::start().await;
    fx.set_route(tcp_route("web", &a, &[port, other]))
        .await
        .expect("route");
    let Fixture { dir, proxy, .. } = fx;
    let proxy = proxy.expect("running");
    let socket = proxy.socket_path().to_path_buf();
    proxy.shutdown().await;
    assert!(!socket.exists(), "the socket outlived the proxy");
    assert!(
        TcpStream::connect((LOCALHOST, port)).await.is_err(),
        "port served after shutdown"
    );

    let proxy = start(config(dir.path())).await.expect("restart");
    // No control call yet: the persisted route is served.
    assert_eq!(connect(port).await.backend, "a");
    assert_eq!(connect(other).await.backend, "a");
    let mut control = client::connect(proxy.socket_path()).await.expect("control");
    let routes = control
        .list_routes(pb::ListRoutesRequest {})
        .await
        .expect("list")
        .into_inner()
        .routes;
    let route = routes[0].route.as_ref().expect("route");
    assert_eq!(
        (route.app.as_str(), route.deployment_id.as_str()),
        ("web", "deploy-a")
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_port_routed_to_another_app_is_refused_and_nothing_changes() {
    let (a, b) = (tcp_backend("a").await, tcp_backend("b").await);
    let (shared, own) = (free_port(), free_port());
    let mut fx = Fixture::start().await;
    fx.set_route(tcp_route("web", &a, &[shared]))
        .await
        .expect("route web");
    let before = std::fs::read(fx.state_file()).expect("state");

    let refused = fx.set_route(tcp_route("api", &b, &[own, shared])).await;
    assert_status(
        refused,
        tonic::Code::FailedPrecondition,
        &format!("host port {shared} is already routed to app web"),
    );
    assert_eq!(connect(shared).await.backend, "a");
    // api's other port was not bound: the OS lets us take it.
    std::net::TcpListener::bind((LOCALHOST, own)).expect("the refused route's port stayed bound");
    assert_eq!(fx.list().await.len(), 1);
    assert_eq!(std::fs::read(fx.state_file()).expect("state"), before);
}

#[tokio::test]
async fn a_port_another_process_holds_is_refused_and_nothing_changes() {
    let (a, b) = (tcp_backend("a").await, tcp_backend("b").await);
    let (port, own) = (free_port(), free_port());
    let held = std::net::TcpListener::bind((LOCALHOST, 0)).expect("bind");
    let held_port = held.local_addr().expect("addr").port();
    let mut fx = Fixture::start().await;
    fx.set_route(tcp_route("web", &a, &[port]))
        .await
        .expect("route web");

    let refused = fx
        .set_route(tcp_route("web", &b, &[port, own, held_port]))
        .await;
    assert_status(
        refused,
        tonic::Code::FailedPrecondition,
        &format!("another process holds port {held_port}"),
    );
    assert_eq!(
        connect(port).await.backend,
        "a",
        "the refused switch changed the backend"
    );
    std::net::TcpListener::bind((LOCALHOST, own))
        .expect("a port of the refused route stayed bound");
    let routes = fx.list().await;
    assert_eq!(
        routes[0]
            .route
            .as_ref()
            .expect("route")
            .backend
            .as_ref()
            .expect("backend")
            .container_id,
        "id-a"
    );
}

#[tokio::test]
async fn a_port_no_longer_published_is_closed_and_a_removed_route_frees_its_ports() {
    let a = tcp_backend("a").await;
    let (kept, dropped) = (free_port(), free_port());
    let mut fx = Fixture::start().await;
    fx.set_route(tcp_route("web", &a, &[kept, dropped]))
        .await
        .expect("route");
    fx.set_route(tcp_route("web", &a, &[kept]))
        .await
        .expect("fewer ports");
    std::net::TcpListener::bind((LOCALHOST, dropped)).expect("the dropped port is still bound");
    assert_eq!(connect(kept).await.backend, "a");

    let removed = fx
        .control
        .remove_route(pb::RemoveRouteRequest { app: "web".into() })
        .await
        .expect("remove");
    assert!(removed.into_inner().removed);
    std::net::TcpListener::bind((LOCALHOST, kept))
        .expect("the removed route's port is still bound");
    let again = fx
        .control
        .remove_route(pb::RemoveRouteRequest { app: "web".into() })
        .await
        .expect("remove");
    assert!(!again.into_inner().removed);
    assert!(fx.list().await.is_empty());
}
