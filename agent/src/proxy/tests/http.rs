//! Layer 7: Host routing, keep-alive across a switch, HTTPS by SNI, redirects, upgrades, ACME.

use super::http_fixture::{get, http_backend, http_conn, send, tls_stream};
use super::*;

#[tokio::test]
async fn one_http_listener_serves_two_apps_by_host_and_404s_the_rest() {
    let (shop, blog) = (http_backend("shop").await, http_backend("blog").await);
    let mut fx = Fixture::start_with_http().await;
    fx.set_route(http_route("shop", &shop, vec![domain("shop.test", None)]))
        .await
        .expect("shop");
    fx.set_route(http_route("blog", &blog, vec![domain("blog.test", None)]))
        .await
        .expect("blog");
    let mut conn = http_conn(fx.http_addr()).await;

    let shop_answer = get(&mut conn, "Shop.Test:8080", "/cart?x=1").await;
    assert_eq!(shop_answer.status, 200);
    assert_eq!(
        shop_answer.body,
        "shop|127.0.0.1|http|Shop.Test:8080|/cart?x=1"
    );
    let mut forwarded = http_fixture::request("blog.test", "/");
    forwarded.headers_mut().insert(
        "x-forwarded-for",
        ::http::HeaderValue::from_static("203.0.113.9"),
    );
    assert_eq!(
        send(&mut conn, forwarded).await.body,
        "blog|203.0.113.9, 127.0.0.1|http|blog.test|/"
    );

    // The proxy's own listener port cannot be published by an app.
    let http_port = fx.http_addr().port();
    let mut on_80 = http_route("shop", &shop, vec![domain("shop.test", None)]);
    on_80.ports.push(pb::ProxyPort {
        host_port: http_port.into(),
        container_port: shop.addr.port().into(),
        protocol: "tcp".into(),
    });
    assert_status(
        fx.set_route(on_80).await,
        tonic::Code::FailedPrecondition,
        &format!("host port {http_port} is berth-proxy's HTTP listener"),
    );
    let unknown = get(&mut conn, "nobody.test", "/").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.body, "no app serves nobody.test\n");
    // A domain of another app is refused, naming it.
    let taken = fx
        .set_route(http_route("blog", &blog, vec![domain("shop.test", None)]))
        .await;
    assert_status(
        taken,
        tonic::Code::FailedPrecondition,
        "domain shop.test is already routed to app shop",
    );
}

#[tokio::test]
async fn a_keep_alive_client_connection_follows_a_switch() {
    let (a, b) = (http_backend("a").await, http_backend("b").await);
    let mut fx = Fixture::start_with_http().await;
    fx.set_route(http_route("web", &a, vec![domain("web.test", None)]))
        .await
        .expect("to a");
    let mut conn = http_conn(fx.http_addr()).await;
    assert!(get(&mut conn, "web.test", "/").await.body.starts_with("a|"));
    fx.set_route(http_route("web", &b, vec![domain("web.test", None)]))
        .await
        .expect("to b");
    // The same client connection (one handshake, kept alive): its next request goes to b.
    assert!(get(&mut conn, "web.test", "/").await.body.starts_with("b|"));
    let drained = fx.drain("id-a", 10_000).await.expect("drain a");
    assert_eq!(drained.closed, 0, "a finished request was still counted");
}

#[tokio::test]
async fn an_unreachable_backend_is_a_502() {
    let gone = TcpBackend {
        name: "gone",
        addr: SocketAddr::new(LOCALHOST, free_port()),
    };
    let mut fx = Fixture::start_with_http().await;
    fx.set_route(http_route("web", &gone, vec![domain("web.test", None)]))
        .await
        .expect("route");
    let answer = get(&mut http_conn(fx.http_addr()).await, "web.test", "/").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.body, "the backend of web.test is unreachable\n");
}

#[tokio::test]
async fn a_domain_with_a_certificate_is_served_over_https_by_sni_and_redirected_from_http() {
    let shop = http_backend("shop").await;
    let mut fx = Fixture::start_with_http().await;
    let (cert, key) = self_signed("shop.test");
    fx.set_route(http_route(
        "shop",
        &shop,
        vec![domain("shop.test", Some((cert.clone(), key)))],
    ))
    .await
    .expect("route");

    let redirect = get(
        &mut http_conn(fx.http_addr()).await,
        "shop.test",
        "/cart?x=1",
    )
    .await;
    assert_eq!(redirect.status, 308);
    let https_port = fx.https_addr().port();
    assert_eq!(
        redirect.headers["location"],
        format!("https://shop.test:{https_port}/cart?x=1").as_str()
    );

    let tls = tls_stream(fx.https_addr(), "shop.test", &cert)
        .await
        .expect("handshake with SNI shop.test");
    // Offered h2 and http/1.1: the proxy speaks HTTP/1.1 only.
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut conn = http_fixture::handshake(tls).await;
    let answer = get(&mut conn, "shop.test", "/cart").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "shop|127.0.0.1|https|shop.test|/cart");
    // The connection was opened for shop.test: another Host on it is misdirected.
    assert_eq!(get(&mut conn, "blog.test", "/").await.status, 421);

    // No certificate for the name: the handshake is refused (no default certificate).
    assert!(tls_stream(fx.https_addr(), "other.test", &cert)
        .await
        .is_err());
}

#[tokio::test]
async fn an_upgrade_is_spliced_counted_and_drained() {
    let (a, b) = (http_backend("a").await, http_backend("b").await);
    let mut fx = Fixture::start_with_http().await;
    fx.set_route(http_route("web", &a, vec![domain("web.test", None)]))
        .await
        .expect("to a");
    let mut conn = http_conn(fx.http_addr()).await;
    let mut request = http_fixture::request("web.test", "/socket");
    request
        .headers_mut()
        .insert("connection", ::http::HeaderValue::from_static("upgrade"));
    request
        .headers_mut()
        .insert("upgrade", ::http::HeaderValue::from_static("echo"));
    bounded("ready", conn.ready()).await.expect("ready");
    let response = bounded("101", conn.send_request(request))
        .await
        .expect("send");
    assert_eq!(response.status(), 101);
    let upgraded = bounded("upgrade", hyper::upgrade::on(response))
        .await
        .expect("upgraded");
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    io.write_all(b"hello through the proxy")
        .await
        .expect("write");
    let mut buf = [0u8; 23];
    bounded("echo", io.read_exact(&mut buf))
        .await
        .expect("read echo");
    assert_eq!(&buf, b"hello through the proxy");

    fx.set_route(http_route("web", &b, vec![domain("web.test", None)]))
        .await
        .expect("to b");
    let routes = fx.list().await;
    assert_eq!(
        routes[0].connections.get("id-a"),
        Some(&1),
        "the upgraded connection is not counted"
    );
    let drained = fx.drain("id-a", 50).await.expect("drain a");
    assert_eq!((drained.finished, drained.closed), (0, 1));
    let mut rest = Vec::new();
    let read = bounded("closed", io.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the drained upgrade is still open: {read:?}"
    );
}

#[tokio::test]
async fn acme_challenges_are_answered_until_removed() {
    let shop = http_backend("shop").await;
    let mut fx = Fixture::start_with_http().await;
    let (cert, key) = self_signed("shop.test");
    fx.set_route(http_route(
        "shop",
        &shop,
        vec![domain("shop.test", Some((cert, key)))],
    ))
    .await
    .expect("route");
    let path = "/.well-known/acme-challenge/tok_EN-1";
    let mut conn = http_conn(fx.http_addr()).await;
    assert_eq!(get(&mut conn, "shop.test", path).await.status, 404);

    fx.set_challenge("tok_EN-1", "tok_EN-1.thumbPRINT_x", 300)
        .await
        .expect("set challenge");
    // Any host, and not redirected to HTTPS although shop.test has a certificate.
    for host in ["shop.test", "unknown.test"] {
        let answer = get(&mut conn, host, path).await;
        assert_eq!(
            (answer.status.as_u16(), answer.body.as_str()),
            (200, "tok_EN-1.thumbPRINT_x")
        );
    }
    fx.set_challenge("tok_EN-1", "", 0)
        .await
        .expect("remove challenge");
    assert_eq!(get(&mut conn, "shop.test", path).await.status, 404);

    assert_status(
        fx.set_challenge("../etc", "x.y", 60).await,
        tonic::Code::InvalidArgument,
        "base64url",
    );
    assert_status(
        fx.set_challenge("tok", "other.thumb", 60).await,
        tonic::Code::InvalidArgument,
        "TOKEN.THUMBPRINT",
    );
}
