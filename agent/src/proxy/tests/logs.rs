//! Capture of everything logged, to prove no key is ever in it.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Everything logged on this thread (every level) while the returned capture lives.
pub struct Logs {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
    _second: tracing::Dispatch,
}

#[derive(Clone)]
struct Writer(Arc<Mutex<Vec<u8>>>);

impl Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures logs for a current-thread test runtime (every task runs on this thread).
pub fn capture_logs() -> Logs {
    // With a single registered dispatcher, tracing decides a callsite's interest from the
    // default of whichever thread hits it first: another test's thread (no subscriber) would
    // switch it off for good. A second registered dispatcher makes every callsite ask each
    // thread's own subscriber.
    let second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let writer = Writer(buffer.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    Logs {
        buffer,
        _guard: guard,
        _second: second,
    }
}

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().expect("log buffer")).into_owned()
    }
}
