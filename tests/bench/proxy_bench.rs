//! Helpers of the host-proxy benchmarks (issue 8, `tests/bench/proxy.sh`), one subcommand each:
//!
//! - `backend`: a tiny keep-alive HTTP/1.1 server with a fixed small body, the backend the
//!   overhead benchmark measures through (busybox httpd forks per connection and closes after
//!   each answer, so wrk would measure busybox, not the proxy);
//! - `routes`: sets N routes on a berth-proxy through its control socket (the RSS benchmark,
//!   and the one route of the overhead benchmark);
//! - `wait-page`: polls a port until its page names a version (a deploy's "port answers");
//! - `load`: a load loop (a new connection per request) until SIGTERM, then one report line:
//!   answers, failed requests and the longest gap between two answers.
//!
//! Nothing here asserts a time: the script prints what it measured.

// A benchmark reports on stdout.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use clap::{Parser, Subcommand};

#[path = "proxy_bench/backend.rs"]
mod backend;
#[path = "proxy_bench/load.rs"]
mod load;
#[path = "proxy_bench/routes.rs"]
mod routes;

#[derive(Parser, Debug)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Backend(backend::BackendArgs),
    Routes(routes::RoutesArgs),
    WaitPage(load::WaitPageArgs),
    Load(load::LoadArgs),
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Backend(args) => backend::run(args),
        Command::Routes(args) => routes::run(args),
        Command::WaitPage(args) => load::wait_page(args),
        Command::Load(args) => load::run(args),
    }
}
