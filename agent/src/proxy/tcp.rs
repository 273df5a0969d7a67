//! Layer 4: one listener per published host port; each accepted connection is spliced to the
//! backend the port is routed to at accept time.
//!
//! Architecture invariant: the backend is chosen once per connection, from the snapshot of
//! the moment it is accepted; a connection never moves, it ends, is drained or is shut down.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error::ProxyError;
use super::DataPath;

/// How long dialing a backend may take before the client's connection is closed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A host port bound but not accepting yet: connections wait in the backlog until
/// [`BoundPort::serve`] (after the route naming it is in the table).
#[derive(Debug)]
pub struct BoundPort {
    port: u16,
    listener: TcpListener,
}

/// A host port accepting connections until [`ServedPort::close`] (or drop).
#[derive(Debug)]
pub struct ServedPort {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// Binds `ip:port`, or says who holds it.
pub async fn bind(ip: IpAddr, port: u16) -> Result<BoundPort, ProxyError> {
    match TcpListener::bind(SocketAddr::new(ip, port)).await {
        Ok(listener) => Ok(BoundPort { port, listener }),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Err(ProxyError::FailedPrecondition(format!(
                "address in use: another process holds port {port} ({e}): stop it or publish another port"
            )))
        }
        Err(e) => Err(ProxyError::FailedPrecondition(format!(
            "cannot bind port {port} on {ip}: {e}"
        ))),
    }
}

impl BoundPort {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts accepting: each connection goes to the port's backend in the current snapshot.
    pub fn serve(self, data: Arc<DataPath>) -> ServedPort {
        let stop = data.shutdown.child_token();
        let task = tokio::spawn(accept_loop(self, data, stop.clone()));
        ServedPort {
            stop,
            task: Some(task),
        }
    }
}

impl ServedPort {
    /// Stops accepting and waits until the listening socket is closed (so the port can be
    /// bound again right away). Connections already accepted keep going.
    pub async fn close(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServedPort {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(bound: BoundPort, data: Arc<DataPath>, stop: CancellationToken) {
    let BoundPort { port, listener } = bound;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                let data_for_task = data.clone();
                data.tasks.spawn(forward(data_for_task, port, client, peer));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(port, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn forward(data: Arc<DataPath>, port: u16, mut client: TcpStream, peer: SocketAddr) {
    let Some(target) = data.table.load().port_target(port) else {
        tracing::debug!(port, %peer, "no route for the port any more: connection closed");
        return;
    };
    let guard = data.connections.open(target.app(), target.container_id());
    let mut backend = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr))
        .await
    {
        Ok(Ok(backend)) => backend,
        Ok(Err(e)) => {
            tracing::warn!(port, app = target.app(), backend = %target.addr, error = %e, "backend refused the connection: client closed");
            return;
        }
        Err(_) => {
            tracing::warn!(port, app = target.app(), backend = %target.addr, "backend did not answer within 5 s: client closed");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
            if let Err(e) = result {
                tracing::debug!(port, %peer, error = %e, "connection ended with an error");
            }
        }
        _ = guard.closed() => {
            tracing::debug!(port, %peer, container = target.container_id(), "connection closed by a drain");
        }
        _ = data.shutdown.cancelled() => {}
    }
}
