//! The sockets the two gRPC ports accept: at most [`MAX_CONNECTIONS`] open at once per port
//! (a connection above the cap is closed at once), each holding its slot until it closes.
//! With the TLS handshake timeout and HTTP/2 keepalive set on the servers (`node.rs`), a socket
//! that never finishes its handshake, or a peer that vanished, cannot hold a file descriptor
//! for long.
//!
//! Architecture invariant: every accepted socket the servers see carries a permit of its
//! port's semaphore until it is dropped.
//!
//! The ports listen with a backlog of [`LISTEN_BACKLOG`] (tokio's `bind` asks for 1,024):
//! 10,000 agents dialing back at once after a restart overflowed the accept queue, and each
//! dropped connection cost its agent a SYN retransmission (1 s, then 3 s) on top of its
//! backoff.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Far below the units' LimitNOFILE (65536); above the 10,000 agents one node is built for.
pub const MAX_CONNECTIONS: usize = 16_384;

/// Connections the kernel holds for a port before they are accepted (the kernel caps it at
/// `net.core.somaxconn`, 4,096 by default).
pub const LISTEN_BACKLOG: u32 = 16_384;

/// Binds `addr` (address reuse on, as tokio's `bind` does) with [`LISTEN_BACKLOG`].
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// An accepted socket and its slot.
pub struct Capped {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

/// The accepted sockets of `listener`, at most `max` open at once.
pub fn capped(
    listener: TcpListener,
    max: usize,
    port: &'static str,
) -> impl Stream<Item = io::Result<Capped>> {
    let slots = Arc::new(Semaphore::new(max));
    TcpListenerStream::new(listener).filter_map(move |accepted| match accepted {
        Ok(stream) => match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let _ = stream.set_nodelay(true);
                Some(Ok(Capped {
                    stream,
                    _slot: slot,
                }))
            }
            Err(_) => {
                tracing::warn!(port, max, "connection cap reached; refusing a connection");
                None
            }
        },
        // A reset before accept, or out of descriptors: keep serving the others.
        Err(error) => {
            tracing::warn!(port, %error, "accept failed");
            None
        }
    })
}

impl Connected for Capped {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
