//! The overhead benchmark's backend: HTTP/1.1 with keep-alive (and pipelining), one fixed
//! `200 OK` answer per request. Requests are assumed to carry no body (wrk and the proxy send
//! GETs), so a request ends at its blank line.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

#[derive(clap::Args, Debug)]
pub struct BackendArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Bytes of body in each answer.
    #[arg(long, default_value_t = 13)]
    body_bytes: usize,
    /// Runtime worker threads (the machine's cores are shared with wrk and the proxy).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

pub fn run(args: BackendArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: BackendArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let body = "x".repeat(args.body_bytes.saturating_sub(1)) + "\n";
    let answer: &'static [u8] = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .leak();
    // The port, for the script that started it with port 0.
    println!("{}", listener.local_addr()?.port());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, answer));
    }
}

/// Answers every complete request header in what was read, then reads more.
async fn connection(mut stream: TcpStream, answer: &'static [u8]) {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let mut out = Vec::with_capacity(answer.len() * 4);
    loop {
        let read = match stream.read(&mut buffer[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        filled += read;
        let mut start = 0;
        while let Some(end) = find_blank_line(&buffer[start..filled]) {
            out.extend_from_slice(answer);
            start += end;
        }
        buffer.copy_within(start..filled, 0);
        filled -= start;
        if filled == buffer.len() {
            return; // A header larger than the buffer: not a benchmark request.
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// The end (exclusive) of the first `\r\n\r\n` in `bytes`.
fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}
