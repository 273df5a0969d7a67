//! The fixture every suite shares, one module per concern:
//!
//! - [`process`]: the workspace's binaries, free ports, child processes that log to a file;
//! - [`node`]: `berth dev` nodes, their directories, and the CLI run against them;
//! - [`data_dir`]: what a node leaves on disk (plaintext scans, a database dump);
//! - [`agent`]: `berth-agent` processes enrolled through the real token/CSR path;
//! - [`admin`]: the admin API as a gRPC client (applications, keys, deployments);
//! - [`shim`]: the standalone `berth-webhook` process;
//! - [`http`]: raw HTTP/1.1 requests, pages served on a host port, and a poller;
//! - [`load`]: a bounded load loop (new and keep-alive connections) that counts every failure;
//! - [`proxy`]: `berth-proxy` processes on a state dir of their own;
//! - [`docker`]: the Docker Engine, the test images, containers by label;
//! - [`registry`]: private registries with basic auth, and the one the binary shares;
//! - [`openbao`]: a real OpenBao dev server, the Vault-API peer of the provider suite;
//! - [`pebble`]: Pebble, the real ACME peer, with a DNS that resolves every name to 127.0.0.1;
//! - [`executor`]: an [`berth_agent::executor::Executor`] driven directly, and an app of one
//!   test on the real engine.
//!
//! Processes listen on `127.0.0.1` ports chosen at run time, write their logs apart from their
//! data, and are killed when their handle drops. Docker tests never skip silently: with `CI`
//! set, an unreachable engine fails them ([`docker::docker_available`]).

use std::path::{Path, PathBuf};

pub mod admin;
pub mod agent;
pub mod data_dir;
pub mod docker;
pub mod executor;
pub mod http;
pub mod load;
pub mod node;
pub mod openbao;
pub mod pebble;
pub mod process;
pub mod proxy;
pub mod registry;
pub mod shim;

/// The repository root, where the test scripts live (`tests/images`, `tests/registry`, ...).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}
