//! `berth`: the admin CLI of the control plane.
//!
//! `berth <noun> <verb>`, one file per noun. This file only parses the command line,
//! dispatches and maps errors to exit codes: 0 ok, 1 server or runtime error, 2 usage error. Commands that talk to the control plane connect on their own (see
//! [`client::ConnectOptions::connect`]), so commands that need no server need no API key.

// The CLI talks to its user on stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]
#![forbid(unsafe_code)]

mod agent;
mod allowlist;
mod apikey;
mod app;
mod audit;
mod backup;
mod client;
mod deploy;
mod dev;
mod domain;
mod env;
mod group;
mod import_v1;
mod key;
mod output;
mod prompt;
mod provider;
mod repository;
mod secret;
mod webhook;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Admin CLI of the berth control plane"
)]
struct Cli {
    #[command(flatten)]
    connect: client::ConnectOptions,

    /// Output format of list and show commands
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = output::Format::Table)]
    output: output::Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an all-in-one node: control plane and local agent, SQLite and PKI in one directory
    Dev(dev::DevArgs),
    /// Secret groups
    Group(group::GroupArgs),
    /// Secrets inside groups
    Secret(secret::SecretArgs),
    /// Applications, their webhook and targets
    App(app::AppArgs),
    /// Environment variables of an application or global
    Env(env::EnvArgs),
    /// Host names the host proxy routes to an application (HTTP, HTTPS from files)
    Domain(domain::DomainArgs),
    /// API keys of the admin API
    Apikey(apikey::ApiKeyArgs),
    /// Image registries and their credentials
    Repository(repository::RepositoryArgs),
    /// External secret providers (Vault, AWS, Infisical, Azure, GCP) and their syncs
    Provider(Box<provider::ProviderArgs>),
    /// The image allowlist
    Allowlist(allowlist::AllowlistArgs),
    /// Deploy an application at a version; list and show deployments
    Deploy(deploy::DeployArgs),
    /// Agents: enrollment tokens, list, revoke
    Agent(agent::AgentArgs),
    /// Outgoing deployment notifications: signed webhooks and their delivery history
    Webhook(webhook::WebhookArgs),
    /// Import a database of the V1 system: secrets, applications (new webhook tokens),
    /// variables, registries, allowlist, domains, providers; all or nothing, idempotent
    #[command(name = "import-v1")]
    ImportV1(import_v1::ImportV1Args),
    /// Encryption keys: rotate (rewrap every row online), status, retire
    Key(key::KeyArgs),
    /// Encrypted backups of the control plane: create (online), verify
    Backup(backup::BackupArgs),
    /// The audit trail: who changed, revealed, exported or deployed what, and when (admins)
    Audit(audit::AuditArgs),
    /// Print a shell completion script
    Completion {
        /// The shell to generate the script for
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    // Before the runtime's threads exist: the only time the offset can be read soundly.
    output::init_local_offset();
    quiet_on_closed_pipe();
    let cli = parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return report(anyhow::Error::new(err).context("cannot start the runtime")),
    };
    // No tracing subscriber here: the admin commands log nothing of their own, and a
    // long-running command (`berth dev`) installs its own.
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(err),
    }
}

/// `berth dev` is a server, not a client of one: it is parsed on its own, so that its help
/// lists only its options and the client's (`--addr`, `--token`, `-o`) are refused there.
/// The `Dev` subcommand of [`Cli`] stays for `berth --help` and the completions.
#[derive(Parser)]
#[command(
    name = "berth dev",
    bin_name = "berth dev",
    about = "Run an all-in-one node: control plane, webhook shim, host proxy and a local agent; \
             SQLite and PKI in one directory"
)]
struct DevCli {
    #[command(flatten)]
    args: dev::DevArgs,
}

fn parse() -> Cli {
    let mut argv = std::env::args_os();
    let program = argv.next().unwrap_or_else(|| "berth".into());
    let mut rest: Vec<std::ffi::OsString> = argv.collect();
    if rest.len() == 2 && rest[0] == "help" && rest[1] == "dev" {
        rest = vec!["dev".into(), "--help".into()];
    }
    if rest.first().is_some_and(|first| first == "dev") {
        let dev = DevCli::parse_from(rest);
        return Cli {
            connect: client::ConnectOptions::default(),
            output: output::Format::Table,
            command: Command::Dev(dev.args),
        };
    }
    Cli::parse_from(std::iter::once(program).chain(rest))
}

async fn run(mut cli: Cli) -> anyhow::Result<()> {
    if !matches!(cli.command, Command::Dev(_) | Command::Completion { .. }) {
        cli.connect.read_stdin_token()?;
    }
    let (connect, format) = (&cli.connect, cli.output);
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Group(args) => group::run(args, connect, format).await,
        Command::Secret(args) => secret::run(args, connect, format).await,
        Command::App(args) => app::run(args, connect, format).await,
        Command::Env(args) => env::run(args, connect, format).await,
        Command::Domain(args) => domain::run(args, connect, format).await,
        Command::Apikey(args) => apikey::run(args, connect, format).await,
        Command::Repository(args) => repository::run(args, connect, format).await,
        Command::Provider(args) => provider::run(*args, connect, format).await,
        Command::Allowlist(args) => allowlist::run(args, connect, format).await,
        Command::Deploy(args) => deploy::run(args, connect, format).await,
        Command::Agent(args) => agent::run(args, connect, format).await,
        Command::Webhook(args) => webhook::run(args, connect, format).await,
        Command::ImportV1(args) => import_v1::run(args, connect, format).await,
        Command::Key(args) => key::run(args, connect, format).await,
        Command::Backup(args) => backup::run(args, connect, format).await,
        Command::Audit(args) => audit::run(args, connect, format).await,
        Command::Completion { shell } => {
            // Into a buffer first: clap_complete panics when a write fails (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "berth", &mut script);
            std::io::stdout()
                .write_all(&script)
                .context("cannot write the completion script")
        }
    }
}

/// Prints `error: ...` and picks the exit code. Usage errors found after parsing (a
/// [`clap::Error`]) are printed by clap and exit with 2, like the ones found while parsing.
/// Exit status of a command whose reader went away (`berth … | head`): what a process killed
/// by SIGPIPE reports, and what `git log | head` gives.
const CLOSED_PIPE: u8 = 141;

/// `berth … | head -1` closes the pipe early: that is the reader's choice, not an error to
/// print. Rust ignores SIGPIPE, so a print to the closed pipe panics ("failed printing to
/// stdout: Broken pipe"); this ends the process quietly instead, as a SIGPIPE would.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("Broken pipe") {
            std::process::exit(i32::from(CLOSED_PIPE));
        }
        default(info);
    }));
}

/// Whether an error is a write to a pipe whose reader went away.
fn closed_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn report(err: anyhow::Error) -> ExitCode {
    if closed_pipe(&err) {
        return ExitCode::from(CLOSED_PIPE);
    }
    if let Some(usage) = err.downcast_ref::<clap::Error>() {
        let _ = usage.print();
        return ExitCode::from(2);
    }
    if err.downcast_ref::<deploy::DeploymentFailed>().is_some() {
        // The command's own output already said how the deployment ended.
        return ExitCode::from(1);
    }
    if err.downcast_ref::<import_v1::ImportConflicts>().is_some() {
        // The report already listed the conflicts and said that nothing was written.
        return ExitCode::from(1);
    }
    if err.downcast_ref::<deploy::DeploymentSuperseded>().is_some() {
        // Not a failure: a newer deployment of the application replaced it.
        return ExitCode::from(3);
    }
    eprintln!("error: {}", client::describe_error(&err));
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks: ids named in conflicts and groups exist, no flag clashes
    /// with a global one, and so on.
    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `berth dev` is a server: its help has its listen options with their environment
    /// variables, and none of the client's.
    #[test]
    fn dev_help_lists_its_own_options_only() {
        let help = DevCli::command().render_long_help().to_string();
        for client in ["--addr", "--token", "--output", "BERTH_ADDR"] {
            assert!(!help.contains(client), "{client} in: {help}");
        }
        for own in [
            "--listen",
            "BERTH_LISTEN",
            "--agent-listen",
            "BERTH_AGENT_LISTEN",
            "BERTH_WEBHOOK_LISTEN",
            "--enable-legacy-deploy",
            "BERTH_DATA_DIR",
        ] {
            assert!(help.contains(own), "{own} missing from: {help}");
        }
        assert!(DevCli::try_parse_from(["dev", "--addr", "https://x:1"]).is_err());
        // The old name still works.
        let old = DevCli::try_parse_from(["dev", "--grpc-listen", "127.0.0.1:9"]).unwrap();
        assert_eq!(old.args.listen.port(), 9);
    }

    /// As the README says: every option of `berth dev` reads an environment variable.
    #[test]
    fn every_dev_option_reads_an_environment_variable() {
        let missing = berth_control_plane::node::options_without_env(&DevCli::command());
        assert!(missing.is_empty(), "without a variable: {missing:?}");
    }

    /// Every positional argument says what it is in `--help`.
    #[test]
    fn every_positional_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_positionals() {
                if arg.get_help().is_none() && !arg.is_hide_set() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "berth", &mut missing);
        assert!(missing.is_empty(), "positionals without help: {missing:?}");
    }

    /// Keys are accepted from a file or stdin, and the help says why argv is the wrong place.
    #[test]
    fn the_help_says_a_token_on_the_command_line_is_visible_to_other_users() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--token-file"), "{help}");
        assert!(help.contains("visible to other users"), "{help}");
    }
}
