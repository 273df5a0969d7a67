//! The shim's HTTP server loop: hyper with a timer, so a client that never finishes its
//! request headers, or holds an idle keep-alive connection, is cut; and a cap on open
//! connections, so a flood of slow sockets cannot take every file descriptor (slowloris).
//! axum's own `serve` runs hyper without a timer, which is why this loop exists.
//!
//! Architecture invariant: every accepted connection holds a permit of [`Limits::max_connections`]
//! until it closes, and every connection reads its headers under
//! [`Limits::header_timeout`]; a request being served is never cut by these limits (a
//! `?wait=true` deploy is bounded by its own timeout, in `routes`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

/// How many connections the shim holds at once, and how long a client may take to send its
/// request headers (also the longest an idle keep-alive connection is kept).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        // Far below the units' LimitNOFILE (65536), far above what CI callers open.
        Limits {
            max_connections: 8192,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors or a reset before accept: keep serving the others.
                    tracing::warn!(%error, "webhook shim: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // At the cap: close at once rather than queue (the client sees a reset and can
            // retry; the sockets already open are cut by their own header timeout).
            tracing::warn!(%peer, max = limits.max_connections, "webhook shim: connection cap reached; refusing a connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let app = app.clone();
                async move {
                    let response = app.oneshot(request.map(axum::body::Body::new)).await;
                    Ok::<_, Infallible>(match response {
                        Ok(response) => response,
                        Err(never) => match never {},
                    })
                }
            });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "webhook shim: connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use secrecy::SecretString;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;

    /// A shim (without a control plane behind it) with these limits.
    async fn shim(limits: Limits) -> SocketAddr {
        let mut config = crate::webhook::ShimConfig::new(
            "http://127.0.0.1:1",
            None,
            SecretString::from("bk_shim".to_string()),
        );
        config.limits = limits;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::webhook::serve(
            config,
            listener,
            std::future::pending(),
        ));
        addr
    }

    /// `GET /healthz`: the status code, within 5 s.
    async fn healthz(addr: SocketAddr) -> Result<u16, String> {
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer).await;
            answer
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("no answer: {answer:?}"))
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| "no answer within 5 s".to_string())?
    }

    /// Whether the server closed `stream` (EOF or reset) within `within`.
    async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(within, stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                // A 408 or similar before the close is fine.
                Ok(Ok(_)) => continue,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_thousand_slow_or_idle_connections_neither_starve_a_real_request_nor_stay_open() {
        let addr = shim(Limits {
            max_connections: 4096,
            header_timeout: Duration::from_millis(1500),
        })
        .await;
        let mut slow = Vec::new();
        for i in 0..2000 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 0 {
                // Headers that never end.
                stream
                    .write_all(b"POST /webhook/deploy HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    .await
                    .unwrap();
            }
            slow.push(stream);
        }
        // A real caller is served while all of them hang on.
        assert_eq!(healthz(addr).await, Ok(200));
        // Then every one of them is cut by the header timeout.
        for (i, stream) in slow.iter_mut().enumerate() {
            assert!(
                closed_by_server(stream, Duration::from_secs(10)).await,
                "slow connection {i} still open"
            );
        }
        assert_eq!(healthz(addr).await, Ok(200));
    }

    #[tokio::test]
    async fn connections_above_the_cap_are_refused_until_one_closes() {
        let addr = shim(Limits {
            max_connections: 8,
            header_timeout: Duration::from_secs(60),
        })
        .await;
        let mut idle = Vec::new();
        for _ in 0..8 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Let the server accept all eight before the ninth.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut ninth = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_by_server(&mut ninth, Duration::from_secs(5)).await,
            "a connection above the cap is closed at once"
        );
        drop(idle.pop());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match healthz(addr).await {
                Ok(200) => break,
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "a freed slot serves again: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
