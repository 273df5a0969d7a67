//! berth's end-to-end suite: one test binary, real processes (`berth dev`, the `berth` CLI),
//! real TLS, real SQLite files. Build the binaries first (`cargo build --workspace --bins`);
//! the README's test command does.

mod agents;
mod common;
mod foundation;
mod notify;
mod registry;
mod webhook;
