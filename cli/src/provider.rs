//! `berth provider`: external secret providers (ProviderService). A provider feeds one group
//! (`berth group create GROUP --provider NAME [--auto-sync]`); a sync brings that group's
//! `synced` secrets in line with the provider, all or nothing.
//!
//! The credential (a Vault token or AppRole secret id, an AWS secret access key, a client
//! secret, a GCP service-account key) comes from stdin or a hidden prompt, a file
//! (`--credential-file`) or an environment variable (`--credential-env`), never argv.

use std::collections::HashMap;

use anyhow::{bail, Context as _};
use berth_proto::v1::{
    AddProviderRequest, GetProviderRequest, ListProvidersRequest, ListSyncsRequest, Provider,
    RemoveProviderRequest, SecretSync, SyncProviderRequest, SyncProviderResponse,
    TestProviderRequest, UpdateProviderRequest,
};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::ConnectOptions;
use crate::output::{self, Format, Table};
use crate::prompt;

#[derive(Args)]
pub struct ProviderArgs {
    #[command(subcommand)]
    command: ProviderCommand,
}

#[derive(Subcommand)]
enum ProviderCommand {
    /// Register a provider; the credential is read from stdin, a prompt, a file or an env var
    Add {
        /// Name of the new provider
        name: String,
        /// hashicorp-vault | aws-secrets-manager | infisical | azure-keyvault | gcp-secret-manager
        #[arg(long = "type")]
        provider_type: String,
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        credential: CredentialArgs,
    },
    /// List providers with their group and last sync
    List,
    /// Show a provider's settings (never its credential) and last sync
    Show {
        /// The provider to show
        name: String,
    },
    /// Log in and list, writing nothing: how many values the provider would sync
    Test {
        /// The provider to test
        name: String,
    },
    /// Sync the provider's group now
    Sync {
        /// The provider to sync
        name: String,
        /// Show what would change, change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Change settings (an empty value removes one) and/or replace the credential
    Update {
        /// The provider to change
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
        /// Replace the credential (read from stdin or a prompt, or --credential-file/-env)
        #[arg(long)]
        credential: bool,
        #[command(flatten)]
        credential_source: CredentialArgs,
    },
    /// Remove a provider; its group and secrets stay, as manual ones
    Remove {
        /// The provider to remove
        name: String,
    },
    /// Past syncs, newest first
    History {
        /// The provider whose syncs are listed
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// The types' settings as flags (each becomes the setting of the same name); `--set k=v` for
/// anything else.
#[derive(Args, Default)]
struct SettingsArgs {
    /// vault: server address, e.g. https://vault.example:8200
    #[arg(long)]
    address: Option<String>,
    /// vault: KV v2 mount (default secret)
    #[arg(long)]
    mount: Option<String>,
    /// vault: path under the mount
    #[arg(long)]
    path: Option<String>,
    /// vault: namespace
    #[arg(long)]
    namespace: Option<String>,
    /// vault: token (default) or approle
    #[arg(long)]
    auth: Option<String>,
    /// vault: AppRole role id (the credential is then the secret id)
    #[arg(long)]
    role_id: Option<String>,
    /// aws: region, e.g. eu-west-1
    #[arg(long)]
    region: Option<String>,
    /// aws / gcp: API endpoint URL instead of the vendor's
    #[arg(long)]
    endpoint: Option<String>,
    /// aws / gcp: only secrets whose name starts with this (stripped from the names)
    #[arg(long)]
    prefix: Option<String>,
    /// aws: access key id (the credential is the secret access key)
    #[arg(long)]
    access_key_id: Option<String>,
    /// infisical: site URL (default https://app.infisical.com)
    #[arg(long)]
    site_url: Option<String>,
    /// infisical / azure: client id (the credential is the client secret)
    #[arg(long)]
    client_id: Option<String>,
    /// infisical: project id
    #[arg(long)]
    project_id: Option<String>,
    /// infisical: environment slug, e.g. prod
    #[arg(long)]
    environment: Option<String>,
    /// infisical: folder path (default /)
    #[arg(long)]
    secret_path: Option<String>,
    /// azure: vault URL, e.g. https://myvault.vault.azure.net
    #[arg(long)]
    vault_url: Option<String>,
    /// azure: tenant id
    #[arg(long)]
    tenant_id: Option<String>,
    /// azure: authority host (default https://login.microsoftonline.com)
    #[arg(long)]
    authority_host: Option<String>,
    /// gcp: project id (the credential is the service-account key JSON)
    #[arg(long)]
    project: Option<String>,
    /// gcp: Secret Manager list filter, e.g. labels.env=prod
    #[arg(long)]
    filter: Option<String>,
    /// PEM file of the CA that signed a self-hosted server's certificate (TLS is always verified)
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// Auto-sync interval in seconds (default 300, at least 30)
    #[arg(long, value_name = "SECONDS")]
    sync_interval: Option<u32>,
    /// Any other setting, KEY=VALUE (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl SettingsArgs {
    fn to_map(&self) -> anyhow::Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        let flags = [
            ("address", &self.address),
            ("mount", &self.mount),
            ("path", &self.path),
            ("namespace", &self.namespace),
            ("auth", &self.auth),
            ("role_id", &self.role_id),
            ("region", &self.region),
            ("endpoint", &self.endpoint),
            ("prefix", &self.prefix),
            ("access_key_id", &self.access_key_id),
            ("site_url", &self.site_url),
            ("client_id", &self.client_id),
            ("project_id", &self.project_id),
            ("environment", &self.environment),
            ("secret_path", &self.secret_path),
            ("vault_url", &self.vault_url),
            ("tenant_id", &self.tenant_id),
            ("authority_host", &self.authority_host),
            ("project", &self.project),
            ("filter", &self.filter),
        ];
        for (key, value) in flags {
            if let Some(value) = value {
                out.insert(key.to_string(), value.clone());
            }
        }
        if let Some(path) = &self.ca_cert {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
            out.insert("ca_cert".into(), pem);
        }
        for pair in &self.set {
            let Some((key, value)) = pair.split_once('=') else {
                bail!("--set takes KEY=VALUE, got {pair:?}");
            };
            out.insert(key.trim().to_string(), value.to_string());
        }
        Ok(out)
    }
}

#[derive(Args, Default)]
struct CredentialArgs {
    /// Read the credential from this file (e.g. a GCP service-account key)
    #[arg(long, value_name = "FILE", conflicts_with = "credential_env")]
    credential_file: Option<std::path::PathBuf>,
    /// Read the credential from this environment variable
    #[arg(long, value_name = "VAR")]
    credential_env: Option<String>,
}

impl CredentialArgs {
    fn given(&self) -> bool {
        self.credential_file.is_some() || self.credential_env.is_some()
    }

    /// From the file, the variable, or else stdin / a hidden prompt.
    fn read(&self, provider: &str) -> anyhow::Result<String> {
        let value = if let Some(path) = &self.credential_file {
            let mut v = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --credential-file {}", path.display()))?;
            if v.ends_with('\n') {
                v.pop();
            }
            v
        } else if let Some(var) = &self.credential_env {
            std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?
        } else {
            prompt::read_secret(&format!("credential of provider {provider}: "))?
        };
        if value.trim().is_empty() {
            bail!("empty credential: pipe it on stdin, type it at the prompt, or use --credential-file / --credential-env");
        }
        Ok(value)
    }
}

pub async fn run(
    args: ProviderArgs,
    connect: &ConnectOptions,
    format: Format,
) -> anyhow::Result<()> {
    match args.command {
        ProviderCommand::Add {
            name,
            provider_type,
            settings,
            credential,
        } => {
            let map = settings.to_map()?;
            let credential = credential.read(&name)?;
            let mut client = connect.connect().await?.providers();
            let provider = client
                .add_provider(AddProviderRequest {
                    name,
                    r#type: provider_type,
                    settings: map,
                    credential,
                    sync_interval_seconds: settings.sync_interval.unwrap_or(0),
                })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&provider_json(&provider)),
                Format::Table => {
                    println!("added provider {} ({})", provider.name, provider.r#type);
                    println!(
                        "link a group to it: berth group create GROUP --provider {} [--auto-sync]",
                        provider.name
                    );
                }
            }
        }
        ProviderCommand::List => {
            let providers = connect
                .connect()
                .await?
                .providers()
                .list_providers(ListProvidersRequest {})
                .await?
                .into_inner()
                .providers;
            match format {
                Format::Json => output::print_json(&json!(providers
                    .iter()
                    .map(provider_json)
                    .collect::<Vec<_>>())),
                Format::Table => {
                    let mut table =
                        Table::new(&["NAME", "TYPE", "GROUP", "AUTO-SYNC", "LAST SYNC", "STATUS"]);
                    for p in &providers {
                        table.row(vec![
                            p.name.clone(),
                            p.r#type.clone(),
                            output::or_dash(p.group.as_deref()),
                            auto_sync_text(p),
                            p.last_sync_at
                                .as_deref()
                                .map_or("-".into(), output::short_time),
                            output::or_dash(p.last_sync_status.as_deref()),
                        ]);
                    }
                    table.print_or("no providers yet: berth provider add NAME --type TYPE ...");
                }
            }
        }
        ProviderCommand::Show { name } => {
            let p = connect
                .connect()
                .await?
                .providers()
                .get_provider(GetProviderRequest { name })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&provider_json(&p)),
                Format::Table => print!("{}", render_provider(&p)),
            }
        }
        ProviderCommand::Test { name } => {
            let found = connect
                .connect()
                .await?
                .providers()
                .test_provider(TestProviderRequest { name: name.clone() })
                .await?
                .into_inner()
                .secrets;
            match format {
                Format::Json => output::print_json(&json!({ "provider": name, "secrets": found })),
                Format::Table => {
                    println!("provider {name}: logged in, {found} value(s) would be synced")
                }
            }
        }
        ProviderCommand::Sync { name, dry_run } => {
            let progress = output::progress(&format!("syncing {name} from its provider"), false);
            let r = connect
                .connect()
                .await?
                .providers()
                .sync_provider(SyncProviderRequest { name, dry_run })
                .await?
                .into_inner();
            progress.finish_and_clear();
            match format {
                Format::Json => output::print_json(&sync_json(&r)),
                Format::Table => print!("{}", render_sync(&r)),
            }
        }
        ProviderCommand::Update {
            name,
            settings,
            credential,
            credential_source,
        } => {
            let map = settings.to_map()?;
            let credential = if credential || credential_source.given() {
                Some(credential_source.read(&name)?)
            } else {
                None
            };
            if map.is_empty() && credential.is_none() && settings.sync_interval.is_none() {
                bail!("nothing to update: give settings, --sync-interval or --credential");
            }
            let p = connect
                .connect()
                .await?
                .providers()
                .update_provider(UpdateProviderRequest {
                    name,
                    settings: map,
                    credential,
                    sync_interval_seconds: settings.sync_interval,
                })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&provider_json(&p)),
                Format::Table => println!("updated provider {}", p.name),
            }
        }
        ProviderCommand::Remove { name } => {
            connect
                .connect()
                .await?
                .providers()
                .remove_provider(RemoveProviderRequest { name: name.clone() })
                .await?;
            match format {
                Format::Json => output::print_json(&json!({ "removed": name })),
                Format::Table => {
                    println!("removed provider {name}; its group and secrets stay, as manual ones")
                }
            }
        }
        ProviderCommand::History { name, limit } => {
            let syncs = connect
                .connect()
                .await?
                .providers()
                .list_syncs(ListSyncsRequest { name, limit })
                .await?
                .into_inner()
                .syncs;
            match format {
                Format::Json => {
                    output::print_json(&json!(syncs.iter().map(sync_row_json).collect::<Vec<_>>()))
                }
                Format::Table => {
                    let mut table = Table::new(&[
                        "STARTED",
                        "STATUS",
                        "CREATED",
                        "UPDATED",
                        "REMOVED",
                        "UNCHANGED",
                        "MS",
                        "ERROR",
                    ]);
                    for s in &syncs {
                        table.row(vec![
                            output::short_time(&s.started_at),
                            s.status.clone(),
                            s.created.to_string(),
                            s.updated.to_string(),
                            s.removed.to_string(),
                            s.unchanged.to_string(),
                            s.duration_ms.map_or("-".into(), |d| d.to_string()),
                            output::or_dash(s.error.as_deref()),
                        ]);
                    }
                    table.print_or("no syncs yet: berth provider sync NAME");
                }
            }
        }
    }
    Ok(())
}

fn auto_sync_text(p: &Provider) -> String {
    if p.auto_sync {
        format!("every {}s", p.sync_interval_seconds)
    } else {
        "off".into()
    }
}

fn render_provider(p: &Provider) -> String {
    let mut out = format!("Provider: {}\n  Type:         {}\n", p.name, p.r#type);
    let mut keys: Vec<&String> = p.settings.keys().collect();
    keys.sort();
    for key in keys {
        out.push_str(&format!(
            "  {:<13} {}\n",
            format!("{key}:"),
            p.settings[key]
        ));
    }
    out.push_str(&format!(
        "  Credential:   {}\n  Group:        {}\n  Auto-sync:    {}\n  Last sync:    {}\n",
        if p.has_credential {
            "(set, never shown)"
        } else {
            "-"
        },
        output::or_dash(p.group.as_deref()),
        auto_sync_text(p),
        match (&p.last_sync_at, &p.last_sync_status) {
            (Some(at), Some(status)) => format!("{} {status}", output::short_time(at)),
            _ => "never".into(),
        },
    ));
    if let Some(error) = &p.last_sync_error {
        out.push_str(&format!("  Last error:   {error}\n"));
    }
    out
}

/// `synced vault into vault-group: 2 created, 1 updated, ...` and the names, never values.
fn render_sync(r: &SyncProviderResponse) -> String {
    let verb = if r.dry_run { "would sync" } else { "synced" };
    let mut out = format!(
        "{verb} {} into {} ({}): {} created, {} updated, {} removed, {} unchanged, {} stale\n",
        r.provider,
        r.group,
        r.status,
        r.created.len(),
        r.updated.len(),
        r.removed.len(),
        r.unchanged,
        r.stale.len()
    );
    for (what, names) in [
        ("created", &r.created),
        ("updated", &r.updated),
        ("removed", &r.removed),
    ] {
        if !names.is_empty() {
            out.push_str(&format!("  {what}: {}\n", names.join(", ")));
        }
    }
    for s in &r.stale {
        out.push_str(&format!(
            "  stale: {} is gone upstream but kept: referenced by {}\n",
            s.name,
            s.references.join(", ")
        ));
    }
    out
}

fn provider_json(p: &Provider) -> Value {
    json!({
        "name": p.name,
        "type": p.r#type,
        "settings": p.settings,
        "has_credential": p.has_credential,
        "group": p.group,
        "auto_sync": p.auto_sync,
        "sync_interval_seconds": p.sync_interval_seconds,
        "last_sync_at": crate::output::time_json(&p.last_sync_at),
        "last_sync_status": p.last_sync_status,
        "last_sync_error": p.last_sync_error,
        "created_at": crate::output::time_json(&p.created_at),
    })
}

fn sync_json(r: &SyncProviderResponse) -> Value {
    json!({
        "provider": r.provider,
        "group": r.group,
        "dry_run": r.dry_run,
        "status": r.status,
        "created": r.created,
        "updated": r.updated,
        "removed": r.removed,
        "unchanged": r.unchanged,
        "stale": r.stale.iter().map(|s| json!({"name": s.name, "references": s.references})).collect::<Vec<_>>(),
    })
}

fn sync_row_json(s: &SecretSync) -> Value {
    json!({
        "status": s.status,
        "created": s.created,
        "updated": s.updated,
        "removed": s.removed,
        "unchanged": s.unchanged,
        "duration_ms": s.duration_ms,
        "error": s.error,
        "started_at": crate::output::time_json(&s.started_at),
        "completed_at": crate::output::time_json(&s.completed_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::v1::StaleSecret;

    #[test]
    fn a_sync_prints_counts_and_names_never_values() {
        let r = SyncProviderResponse {
            provider: "vault".into(),
            group: "prod".into(),
            dry_run: true,
            status: "partial".into(),
            created: vec!["A".into(), "B".into()],
            updated: vec![],
            removed: vec!["C".into()],
            unchanged: 4,
            stale: vec![StaleSecret {
                name: "OLD".into(),
                references: vec!["web:DB".into()],
            }],
        };
        assert_eq!(
            render_sync(&r),
            "would sync vault into prod (partial): 2 created, 0 updated, 1 removed, 4 unchanged, 1 stale\n\
             \x20 created: A, B\n\
             \x20 removed: C\n\
             \x20 stale: OLD is gone upstream but kept: referenced by web:DB\n"
        );
    }

    #[test]
    fn settings_flags_become_settings_and_set_adds_any_other() {
        let args = SettingsArgs {
            address: Some("https://v:8200".into()),
            role_id: Some("r".into()),
            set: vec!["custom=1".into(), "empty=".into()],
            ..Default::default()
        };
        let map = args.to_map().unwrap();
        assert_eq!(map["address"], "https://v:8200");
        assert_eq!(map["role_id"], "r");
        assert_eq!(map["custom"], "1");
        assert_eq!(map["empty"], "");
        let bad = SettingsArgs {
            set: vec!["novalue".into()],
            ..Default::default()
        };
        assert!(bad.to_map().is_err());
    }
}
