//! How `berth-control-plane` and `berth-webhook` end: an error is one line on stderr, `error: ` and its causes, as
//! the CLI prints them (`cli/src/main.rs`), and exit status 1. The same as
//! `berth_agent::exit` for `berth-agent` and `berth-proxy` (neither crate depends on the other).

use std::process::ExitCode;

/// The exit status of a program's `run`, printing its error.
#[allow(clippy::print_stderr)]
pub fn status(result: anyhow::Result<()>) -> ExitCode {
    let Err(error) = result else {
        return ExitCode::SUCCESS;
    };
    eprintln!("error: {error:#}");
    ExitCode::FAILURE
}
