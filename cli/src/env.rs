//! `berth env`: environment variables of one application or of all (EnvService).

use berth_proto::v1::{
    env_scope, set_env_request, EffectiveEnvVar, EnvOrigin, EnvScope, EnvVar, ExportEnvRequest,
    ImportGroupRequest, ListEffectiveEnvRequest, ListEnvRequest, SetEnvRequest, UnsetEnvRequest,
};
use clap::error::ErrorKind;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::ConnectOptions;
use crate::output::{self, Format, Table};
use crate::prompt;

#[derive(Args)]
pub struct EnvArgs {
    #[command(subcommand)]
    command: EnvCommand,
}

#[derive(Subcommand)]
enum EnvCommand {
    /// Set a variable to a plain value, a secret reference or a group reference
    Set {
        /// Variable name, as the container sees it
        key: String,
        /// A plain value; with none of VALUE, --secret, --group it is read from stdin
        value: Option<String>,
        #[command(flatten)]
        scope: Scope,
        /// Reference the secret GROUP/NAME; resolved at deploy time
        #[arg(long, value_name = "GROUP/NAME", conflicts_with = "value", value_parser = parse_secret_path)]
        secret: Option<String>,
        /// Reference every secret of a group
        #[arg(long, conflicts_with_all = ["value", "secret"])]
        group: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List variables (secret values are never shown)
    List {
        #[command(flatten)]
        scope: Scope,
        /// Every key the application's containers get (globals, its own rows, expanded
        /// groups): where each comes from, what it overrides, unresolvable references marked
        #[arg(long, requires = "app")]
        effective: bool,
    },
    /// Remove a variable
    Unset {
        /// Variable name to remove
        key: String,
        #[command(flatten)]
        scope: Scope,
    },
    /// Add one secret reference per secret of a group to an application
    ImportGroup {
        /// The secret group whose secrets all become variables (@group:NAME)
        group: String,
        #[arg(long)]
        app: String,
    },
    /// Print the resolved environment of an application as .env, plaintext (audited)
    Export {
        #[arg(long)]
        app: String,
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
}

/// Exactly one of `--app NAME` / `--global`.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct Scope {
    /// The variables of this application
    #[arg(long)]
    app: Option<String>,
    /// The global variables, shared by every application
    #[arg(long)]
    global: bool,
}

impl Scope {
    fn to_proto(&self) -> EnvScope {
        let scope = match &self.app {
            Some(app) => env_scope::Scope::App(app.clone()),
            None => env_scope::Scope::Global(true),
        };
        EnvScope { scope: Some(scope) }
    }
}

pub async fn run(args: EnvArgs, connect: &ConnectOptions, format: Format) -> anyhow::Result<()> {
    match args.command {
        EnvCommand::Set {
            key,
            value,
            scope,
            secret,
            group,
            description,
        } => {
            let value = match (value, secret, group) {
                (Some(plain), _, _) => set_env_request::Value::Plain(plain),
                (None, Some(path), _) => set_env_request::Value::Secret(path),
                (None, None, Some(group)) => set_env_request::Value::Group(group),
                (None, None, None) if !prompt::stdin_is_terminal() => {
                    set_env_request::Value::Plain(prompt::read_stdin()?)
                }
                (None, None, None) => {
                    return Err(clap::Error::raw(
                        ErrorKind::MissingRequiredArgument,
                        "give a VALUE, --secret GROUP/NAME or --group GROUP, or pipe the value on stdin\n",
                    )
                    .into())
                }
            };
            let mut client = connect.connect().await?.env();
            let var = client
                .set_env(SetEnvRequest {
                    scope: Some(scope.to_proto()),
                    key,
                    value: Some(value),
                    description,
                })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&output::env_var_json(&var)),
                Format::Table => {
                    println!("set {} ({}) {}", var.key, var.value_type, scope_text(&var))
                }
            }
        }
        EnvCommand::List {
            scope,
            effective: true,
        } => {
            let app = scope.app.unwrap_or_default();
            let vars = connect
                .connect()
                .await?
                .env()
                .list_effective_env(ListEffectiveEnvRequest { app: app.clone() })
                .await?
                .into_inner()
                .vars;
            match format {
                Format::Json => {
                    output::print_json(&json!(vars.iter().map(effective_json).collect::<Vec<_>>()))
                }
                Format::Table => {
                    effective_table(&vars).print_or("no variables reach the containers");
                    if let Some(note) = unresolved_note(&vars, &app) {
                        println!();
                        println!("{note}");
                    }
                }
            }
        }
        EnvCommand::List { scope, .. } => {
            let mut client = connect.connect().await?.env();
            let vars = client
                .list_env(ListEnvRequest {
                    scope: Some(scope.to_proto()),
                })
                .await?
                .into_inner()
                .vars;
            match format {
                Format::Json => output::print_json(&json!(vars
                    .iter()
                    .map(output::env_var_json)
                    .collect::<Vec<_>>())),
                Format::Table => {
                    let mut table = Table::new(&["KEY", "VALUE", "TYPE", "SCOPE", "DESCRIPTION"]);
                    for var in &vars {
                        table.row(vec![
                            var.key.clone(),
                            value_text(var),
                            var.value_type.clone(),
                            scope_text(var),
                            output::or_dash(var.description.as_deref()),
                        ]);
                    }
                    table.print_or("no variables yet");
                }
            }
        }
        EnvCommand::Unset { key, scope } => {
            let mut client = connect.connect().await?.env();
            client
                .unset_env(UnsetEnvRequest {
                    scope: Some(scope.to_proto()),
                    key: key.clone(),
                })
                .await?;
            match format {
                Format::Json => output::print_json(&json!({ "unset": key })),
                Format::Table => println!("unset {key}"),
            }
        }
        EnvCommand::ImportGroup { group, app } => {
            let mut client = connect.connect().await?.env();
            let counts = client
                .import_group(ImportGroupRequest {
                    group: group.clone(),
                    app: app.clone(),
                })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&json!({
                    "imported": counts.imported,
                    "skipped": counts.skipped,
                    "skipped_keys": counts.skipped_keys,
                })),
                Format::Table => {
                    println!(
                        "imported {} variables from group {group} into {app}, skipped {}",
                        counts.imported, counts.skipped
                    );
                    if !counts.skipped_keys.is_empty() {
                        println!("skipped (already set): {}", counts.skipped_keys.join(", "));
                    }
                }
            }
        }
        EnvCommand::Export { app, yes } => {
            prompt::confirm(&format!("export the plaintext environment of {app}"), yes)?;
            let mut client = connect.connect().await?.env();
            let vars = client
                .export_env(ExportEnvRequest { app, confirm: true })
                .await?
                .into_inner()
                .vars;
            match format {
                Format::Json => {
                    let map: serde_json::Map<String, serde_json::Value> = vars
                        .into_iter()
                        .map(|pair| (pair.key, pair.value.into()))
                        .collect();
                    output::print_json(&serde_json::Value::Object(map));
                }
                Format::Table => {
                    for pair in &vars {
                        println!("{}={}", pair.key, dotenv_value(&pair.value));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The value column: plain values as they are, references with what they point to, e.g.
/// `@secret:1 → production-db/DATABASE_URL`.
pub fn value_text(var: &EnvVar) -> String {
    match (var.value_type.as_str(), var.secret_path.as_deref()) {
        ("secret_ref", Some(path)) => format!("{} → {path}", var.value),
        _ => var.value.clone(),
    }
}

/// Where a key comes from: `global`, `app`, `app secret db/PASSWORD`, `global group db
/// (ALL_DB)`.
fn origin_text(origin: &EnvOrigin) -> String {
    let scope = &origin.scope;
    match origin.kind.as_str() {
        "secret" => format!(
            "{scope} secret {}",
            origin.secret.as_deref().unwrap_or("(missing)")
        ),
        "group" => format!(
            "{scope} group {} ({})",
            origin.group.as_deref().unwrap_or_default(),
            origin.via.as_deref().unwrap_or_default()
        ),
        _ => scope.clone(),
    }
}

/// The effective environment (`env list --effective`, `app show`): one row per key.
pub fn effective_table(vars: &[EffectiveEnvVar]) -> Table {
    let mut table = Table::new(&["KEY", "VALUE", "TYPE", "SOURCE", "OVERRIDES", "PROBLEM"]);
    for var in vars {
        let origin = var.origin.clone().unwrap_or_default();
        let overrides: Vec<String> = var.overrides.iter().map(origin_text).collect();
        table.row(vec![
            var.key.clone(),
            if var.problem.is_some() {
                "-".to_string()
            } else {
                var.value.clone()
            },
            var.value_type.clone(),
            origin_text(&origin),
            if overrides.is_empty() {
                "-".to_string()
            } else {
                overrides.join(", ")
            },
            match &var.problem {
                Some(problem) => format!("UNRESOLVED: {problem}"),
                None => "-".to_string(),
            },
        ]);
    }
    table
}

/// What to do about unresolvable references, when there are any.
pub fn unresolved_note(vars: &[EffectiveEnvVar], app: &str) -> Option<String> {
    let count = vars.iter().filter(|v| v.problem.is_some()).count();
    (count > 0).then(|| {
        format!(
            "{count} unresolvable reference(s): a deployment of {app} is refused until they \
             are fixed (berth env set / unset, berth secret set, berth group create)"
        )
    })
}

fn origin_json(origin: &EnvOrigin) -> Value {
    json!({
        "scope": origin.scope,
        "kind": origin.kind,
        "secret": origin.secret,
        "group": origin.group,
        "via": origin.via,
        "text": origin_text(origin),
    })
}

pub fn effective_json(var: &EffectiveEnvVar) -> Value {
    json!({
        "key": var.key,
        "value": var.value,
        "value_type": var.value_type,
        "source": var.origin.as_ref().map(origin_json),
        "overrides": var.overrides.iter().map(origin_json).collect::<Vec<_>>(),
        "problem": var.problem,
    })
}

fn scope_text(var: &EnvVar) -> String {
    match &var.app {
        Some(app) if var.scope != "global" => format!("app {app}"),
        _ => "global".to_string(),
    }
}

/// `--secret` takes `GROUP/NAME`.
fn parse_secret_path(text: &str) -> Result<String, String> {
    match text.split_once('/') {
        Some((group, name)) if !group.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(text.to_string())
        }
        _ => Err("expected GROUP/NAME, e.g. production-db/DATABASE_URL".to_string()),
    }
}

/// A value as dotenv writes it: bare when it only has characters no parser misreads, else
/// double-quoted with `\`, `"`, newline and `$` escaped.
fn dotenv_value(value: &str) -> String {
    let bare = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_./:@+-".contains(c));
    if bare {
        return value.to_string();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '\n' => quoted.push_str("\\n"),
            '$' => quoted.push_str("\\$"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_values_stay_bare() {
        assert_eq!(dotenv_value("production"), "production");
        assert_eq!(
            dotenv_value("postgres://u@db:5432/app"),
            "postgres://u@db:5432/app"
        );
        assert_eq!(dotenv_value("a+b-c_d.e"), "a+b-c_d.e");
        assert_eq!(dotenv_value(""), "");
    }

    #[test]
    fn other_values_are_quoted_and_escaped() {
        assert_eq!(dotenv_value("two words"), "\"two words\"");
        assert_eq!(dotenv_value("pa$$word"), "\"pa\\$\\$word\"");
        assert_eq!(dotenv_value("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(dotenv_value("C:\\dir"), "\"C:\\\\dir\"");
        assert_eq!(dotenv_value("line1\nline2"), "\"line1\\nline2\"");
        assert_eq!(dotenv_value("a=b#c'd"), "\"a=b#c'd\"");
    }

    /// The double-quote rules of the control plane's .env import (`parse_dotenv`): a backslash
    /// takes the next character literally, except `\n` (newline) and `\t` (tab).
    fn read_back(written: &str) -> String {
        let Some(body) = written.strip_prefix('"') else {
            return written.to_string();
        };
        let body = body.strip_suffix('"').expect("closing quote");
        let mut value = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next().expect("escaped character") {
                    'n' => value.push('\n'),
                    't' => value.push('\t'),
                    other => value.push(other),
                },
                '"' => panic!("unescaped quote inside {written}"),
                c => value.push(c),
            }
        }
        value
    }

    #[test]
    fn import_reads_back_what_export_writes() {
        let values = [
            "plain",
            "",
            "two words",
            "pa$$word${HOME}$HOME",
            "say \"hi\" and 'bye'",
            "back\\slash\\n\\t",
            "multi\nline\n",
            "# not a comment = really",
            "ünïcødé ✓",
        ];
        for value in values {
            let written = dotenv_value(value);
            assert!(!written.contains('\n'), "one line per variable: {written}");
            assert_eq!(read_back(&written), value);
        }
    }

    #[test]
    fn secret_paths_need_a_group_and_a_name() {
        assert_eq!(parse_secret_path("db/URL"), Ok("db/URL".into()));
        assert!(parse_secret_path("URL").is_err());
        assert!(parse_secret_path("/URL").is_err());
        assert!(parse_secret_path("db/").is_err());
        assert!(parse_secret_path("a/b/c").is_err());
    }
}
