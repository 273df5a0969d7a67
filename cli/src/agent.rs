//! `berth agent`: enrollment tokens, the fleet and revocation (AgentAdminService).

use std::collections::HashMap;

use berth_proto::v1::{CreateEnrollmentTokenRequest, ListAgentsRequest, RevokeAgentRequest};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::ConnectOptions;
use crate::output::{self, Format, Table};

/// Where the printed `berth-agent` command keeps the agent's key, certificate and journal.
const AGENT_DATA_DIR: &str = "/var/lib/berth-agent";

#[derive(Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// One-time enrollment tokens for new agents
    Token(TokenArgs),
    /// List agents: status, labels, versions, certificate expiry
    List {
        /// Only how many agents are enrolled, connected and revoked (cheap on a large fleet)
        #[arg(long)]
        summary: bool,
    },
    /// Revoke an agent: its certificate is refused and its stream dropped at once
    Revoke {
        /// Name of the agent, as `berth agent list` shows it
        name: String,
    },
}

#[derive(Args)]
struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an enrollment token for an agent name; prints it once, with the command to run
    /// on the agent host
    Create {
        /// Name the agent enrolls as
        name: String,
        /// KEY=VALUE label of the agent, repeatable; targets select agents by label
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// How long the token stays valid: seconds (3600) or with a unit (90s, 30m, 1h, 7d);
        /// the server's default is 1h
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: Option<u32>,
    },
}

pub async fn run(args: AgentArgs, connect: &ConnectOptions, format: Format) -> anyhow::Result<()> {
    match args.command {
        AgentCommand::Token(TokenArgs {
            command: TokenCommand::Create { name, labels, ttl },
        }) => {
            // Before connecting: a usage error needs no server.
            let labels = label_map(labels)?;
            let mut client = connect.connect().await?.agents();
            let response = client
                .create_enrollment_token(CreateEnrollmentTokenRequest {
                    agent_name: name.clone(),
                    labels,
                    ttl_seconds: ttl.unwrap_or(0),
                })
                .await?
                .into_inner();
            let command = agent_command(connect.addr(), &response.token, &response.ca_fingerprint);
            match format {
                Format::Json => output::print_json(&json!({
                    "agent_name": name,
                    "token": response.token,
                    "expires_at": crate::output::time_json(&response.expires_at),
                    "ca_fingerprint": response.ca_fingerprint,
                    "command": command,
                })),
                Format::Table => {
                    println!(
                        "created an enrollment token for agent {name} (expires {})",
                        output::short_time(&response.expires_at)
                    );
                    println!();
                    println!("Enrollment token (shown once, works once; berth keeps only a hash):");
                    println!("  {}", response.token);
                    println!();
                    println!("Run on the agent host:");
                    println!("  {command}");
                }
            }
        }
        AgentCommand::List { summary } => {
            let listed = connect
                .connect()
                .await?
                .agents()
                .list_agents(ListAgentsRequest {
                    summary_only: summary,
                })
                .await?
                .into_inner();
            if summary {
                let counts = listed.counts.unwrap_or_default();
                let disconnected = counts
                    .total
                    .saturating_sub(counts.connected)
                    .saturating_sub(counts.revoked);
                match format {
                    Format::Json => output::print_json(&json!({
                        "total": counts.total,
                        "connected": counts.connected,
                        "disconnected": disconnected,
                        "revoked": counts.revoked,
                    })),
                    Format::Table => println!(
                        "{} agents: {} connected, {} disconnected, {} revoked",
                        counts.total, counts.connected, disconnected, counts.revoked
                    ),
                }
                return Ok(());
            }
            let agents = listed.agents;
            match format {
                Format::Json => output::print_json(&json!(agents
                    .iter()
                    .map(output::agent_json)
                    .collect::<Vec<_>>())),
                Format::Table => {
                    let mut table = Table::new(&[
                        "NAME",
                        "STATUS",
                        "LABELS",
                        "VERSION",
                        "DOCKER",
                        "LAST-SEEN",
                        "CERT-EXPIRES",
                    ]);
                    for agent in &agents {
                        table.row(vec![
                            agent.name.clone(),
                            agent.status.clone(),
                            output::labels_text(&agent.labels),
                            output::or_dash(agent.version.as_deref()),
                            output::or_dash(agent.docker_version.as_deref()),
                            agent
                                .last_seen_at
                                .as_deref()
                                .map(output::short_time)
                                .unwrap_or_else(|| "never".into()),
                            agent
                                .cert_not_after
                                .as_deref()
                                .map(output::short_time)
                                .unwrap_or_else(|| "-".into()),
                        ]);
                    }
                    table.print_or("no agents yet: enroll one with `berth agent token create`");
                }
            }
        }
        AgentCommand::Revoke { name } => {
            connect
                .connect()
                .await?
                .agents()
                .revoke_agent(RevokeAgentRequest { name: name.clone() })
                .await?;
            match format {
                Format::Json => output::print_json(&json!({ "revoked": name })),
                Format::Table => println!("revoked agent {name}"),
            }
        }
    }
    Ok(())
}

/// The `berth-agent` command line that enrolls with this token, ready to paste. The token is
/// in the environment: a command line is readable by every user of the host.
fn agent_command(addr: &str, token: &str, ca_fingerprint: &str) -> String {
    format!(
        "BERTH_ENROLL_TOKEN={} berth-agent --control-plane {} --ca-fingerprint {} --data-dir {AGENT_DATA_DIR}",
        shell_word(token),
        shell_word(addr),
        shell_word(ca_fingerprint),
    )
}

/// The text as one shell word: as it is when it holds only safe characters, else in single
/// quotes.
fn shell_word(text: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The labels as the request's map; a key given twice is a usage error, not a silent override.
fn label_map(labels: Vec<(String, String)>) -> Result<HashMap<String, String>, clap::Error> {
    let mut map = HashMap::new();
    for (key, value) in labels {
        if map.contains_key(&key) {
            return Err(clap::Error::raw(
                clap::error::ErrorKind::ArgumentConflict,
                format!("label {key:?} is given more than once\n"),
            ));
        }
        map.insert(key, value);
    }
    Ok(map)
}

/// `KEY=VALUE`, e.g. `env=prod`; the key is not empty, the value may be.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() && key.trim() == key => {
            Ok((key.to_string(), value.to_string()))
        }
        Some((key, _)) if !key.is_empty() && key.trim() != key => {
            Err(format!("label key {key:?} has leading or trailing spaces"))
        }
        _ => Err("expected KEY=VALUE, e.g. env=prod".to_string()),
    }
}

/// `3600` (seconds), or a number with one unit: `90s`, `30m`, `1h`, `7d`. Zero is refused: the
/// server would read it as "the default".
fn parse_ttl(text: &str) -> Result<u32, String> {
    let expected =
        || "expected seconds or a number with s, m, h or d, e.g. 3600, 30m, 1h".to_string();
    let (number, unit) = match text.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => (&text[..at], c.to_ascii_lowercase()),
        _ => (text, 's'),
    };
    let scale: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(expected()),
    };
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit()) {
        return Err(expected());
    }
    let too_long = || format!("{text:?} is too long");
    let seconds = number
        .parse::<u64>()
        .map_err(|_| too_long())?
        .checked_mul(scale)
        .ok_or_else(too_long)?;
    if seconds == 0 {
        return Err("the ttl must be at least 1 second".to_string());
    }
    u32::try_from(seconds).map_err(|_| too_long())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_takes_seconds_or_one_unit() {
        assert_eq!(parse_ttl("3600"), Ok(3600));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("1H"), Ok(3600));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
    }

    #[test]
    fn bad_ttls_say_what_is_expected() {
        let expected = "expected seconds or a number with s, m, h or d, e.g. 3600, 30m, 1h";
        for text in [
            "", "h", "1w", "1.5h", "-1", "+5", "1h30m", " 1h", "1 h", "abc",
        ] {
            assert_eq!(parse_ttl(text), Err(expected.to_string()), "{text:?}");
        }
        assert_eq!(
            parse_ttl("0"),
            Err("the ttl must be at least 1 second".into())
        );
        assert_eq!(
            parse_ttl("0m"),
            Err("the ttl must be at least 1 second".into())
        );
        assert_eq!(
            parse_ttl("5000000000"),
            Err("\"5000000000\" is too long".into())
        );
        assert_eq!(parse_ttl("50000d"), Err("\"50000d\" is too long".into()));
        assert!(parse_ttl("99999999999999999999999h").is_err());
    }

    #[test]
    fn labels_parse_as_key_and_value() {
        assert_eq!(parse_label("env=prod"), Ok(("env".into(), "prod".into())));
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_label("empty="), Ok(("empty".into(), "".into())));
    }

    #[test]
    fn bad_labels_say_what_is_expected() {
        let expected = Err("expected KEY=VALUE, e.g. env=prod".to_string());
        assert_eq!(parse_label("env"), expected);
        assert_eq!(parse_label("=prod"), expected);
        assert_eq!(parse_label(""), expected);
        assert_eq!(
            parse_label(" env=prod"),
            Err("label key \" env\" has leading or trailing spaces".into())
        );
    }

    #[test]
    fn a_label_key_given_twice_is_refused() {
        let labels = vec![("env".to_string(), "prod".to_string())];
        assert_eq!(label_map(labels.clone()).unwrap().len(), 1);
        let twice = [labels.clone(), vec![("env".into(), "dev".into())]].concat();
        assert!(label_map(twice).is_err());
    }

    #[test]
    fn the_agent_command_is_ready_to_paste() {
        // The token travels in the environment, not on berth-agent's command line (which
        // other users of the host can read).
        assert_eq!(
            agent_command("https://cp.example:7443", "bet_abc-123", "sha256:00ff"),
            "BERTH_ENROLL_TOKEN=bet_abc-123 berth-agent --control-plane https://cp.example:7443 \
             --ca-fingerprint sha256:00ff --data-dir /var/lib/berth-agent"
        );
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn token_create_parses_repeated_labels_and_a_ttl() {
        use clap::Parser;
        #[derive(Parser)]
        struct Root {
            #[command(subcommand)]
            command: AgentCommand,
        }
        let root = Root::try_parse_from([
            "agent", "token", "create", "web-1", "--label", "env=prod", "--label", "zone=a",
            "--ttl", "30m",
        ])
        .unwrap();
        match root.command {
            AgentCommand::Token(TokenArgs {
                command: TokenCommand::Create { name, labels, ttl },
            }) => {
                assert_eq!(name, "web-1");
                assert_eq!(labels.len(), 2);
                assert_eq!(ttl, Some(1800));
            }
            _ => unreachable!(),
        }
        assert!(Root::try_parse_from(["agent", "token", "create", "w", "--ttl", "0"]).is_err());
        assert!(Root::try_parse_from(["agent", "token", "create", "w", "--label", "x"]).is_err());
    }
}
