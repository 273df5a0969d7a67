//! `berth domain`: host names the host proxy routes to an application, with plain HTTP, TLS
//! from a certificate and key file, or TLS from a certificate the control plane obtains and
//! renews from its ACME CA (`--acme`) (DomainService).
//!
//! The key is read from a file named on the command line (never given on argv itself) and
//! sent once; the control plane stores it encrypted and never returns it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use berth_proto::v1::{AddDomainRequest, ListDomainsRequest, RemoveDomainRequest};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::ConnectOptions;
use crate::output::{self, Format, Table};

/// Larger files are not a PEM certificate chain or key.
const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Args)]
pub struct DomainArgs {
    #[command(subcommand)]
    command: DomainCommand,
}

#[derive(Subcommand)]
enum DomainCommand {
    /// Route a host name to an application through the host proxy (80/443)
    Add {
        /// The application the host name routes to
        app: String,
        /// Host name, e.g. shop.example.com (no port, no wildcard)
        host: String,
        /// The app's container port requests go to (default: its first port)
        #[arg(long, default_value_t = 0)]
        container_port: u32,
        /// PEM certificate chain, leaf first, for HTTPS
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of the certificate (stored encrypted)
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Obtain and renew the certificate from the control plane's ACME CA (HTTP-01 through
        /// the host proxy: HOST must resolve to the app's hosts, port 80 must reach them);
        /// plain HTTP until it is issued
        #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
        acme: bool,
    },
    /// List domains (never their keys)
    List {
        /// Only this application's domains
        #[arg(long)]
        app: Option<String>,
    },
    /// Stop routing a host name
    Remove {
        /// The host name to stop routing
        host: String,
    },
}

pub async fn run(args: DomainArgs, connect: &ConnectOptions, format: Format) -> anyhow::Result<()> {
    let mut client = connect.connect().await?.domains();
    match args.command {
        DomainCommand::Add {
            app,
            host,
            container_port,
            tls_cert,
            tls_key,
            acme,
        } => {
            let tls_cert_pem = match &tls_cert {
                Some(path) => read_pem(path, "certificate")?,
                None => String::new(),
            };
            let tls_key_pem = match &tls_key {
                Some(path) => read_pem(path, "key")?,
                None => String::new(),
            };
            let response = client
                .add_domain(AddDomainRequest {
                    app,
                    host,
                    container_port,
                    tls_cert_pem,
                    tls_key_pem,
                    acme,
                })
                .await?
                .into_inner();
            let domain = response.domain.unwrap_or_default();
            match format {
                Format::Json => output::print_json(&json!({
                    "domain": output::domain_json(&domain),
                    "agents_notified": response.agents_notified,
                })),
                Format::Table => {
                    println!(
                        "routed {} to {} ({}); sent to {} connected agent(s)",
                        domain.host,
                        domain.app,
                        output::domain_tls_text(&domain),
                        response.agents_notified
                    );
                    if acme {
                        println!(
                            "the certificate is being ordered; see `berth domain list` for its status"
                        );
                    }
                }
            }
        }
        DomainCommand::List { app } => {
            let domains = client
                .list_domains(ListDomainsRequest { app })
                .await?
                .into_inner()
                .domains;
            match format {
                Format::Json => output::print_json(&json!(domains
                    .iter()
                    .map(output::domain_json)
                    .collect::<Vec<_>>())),
                Format::Table => {
                    let mut table =
                        Table::new(&["HOST", "APP", "CONTAINER PORT", "TLS", "CREATED"]);
                    for domain in &domains {
                        table.row(vec![
                            domain.host.clone(),
                            domain.app.clone(),
                            output::container_port_text(domain.container_port),
                            output::domain_tls_text(domain),
                            output::short_time(&domain.created_at),
                        ]);
                    }
                    table.print_or("no domains");
                }
            }
        }
        DomainCommand::Remove { host } => {
            let response = client
                .remove_domain(RemoveDomainRequest { host })
                .await?
                .into_inner();
            let domain = response.domain.unwrap_or_default();
            match format {
                Format::Json => output::print_json(&json!({
                    "removed": output::domain_json(&domain),
                    "agents_notified": response.agents_notified,
                })),
                Format::Table => println!(
                    "removed domain {} of {}; sent to {} connected agent(s)",
                    domain.host, domain.app, response.agents_notified
                ),
            }
        }
    }
    Ok(())
}

fn read_pem(path: &Path, what: &str) -> anyhow::Result<String> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?
        .len();
    if size > MAX_PEM_FILE_BYTES {
        bail!(
            "the {what} file {} is {size} bytes: expected a PEM file",
            path.display()
        );
    }
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Root {
        #[command(subcommand)]
        command: DomainCommand,
    }

    fn parse(args: &[&str]) -> Result<DomainCommand, clap::Error> {
        Root::try_parse_from(std::iter::once("domain").chain(args.iter().copied()))
            .map(|r| r.command)
    }

    #[test]
    fn a_certificate_needs_its_key_and_the_other_way_round() {
        assert!(parse(&["add", "web", "shop.example.com", "--tls-cert", "c.pem"]).is_err());
        assert!(parse(&["add", "web", "shop.example.com", "--tls-key", "k.pem"]).is_err());
        match parse(&[
            "add",
            "web",
            "shop.example.com",
            "--container-port",
            "8080",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ])
        .unwrap()
        {
            DomainCommand::Add {
                container_port,
                tls_cert,
                tls_key,
                ..
            } => {
                assert_eq!(container_port, 8080);
                assert_eq!(tls_cert, Some(PathBuf::from("c.pem")));
                assert_eq!(tls_key, Some(PathBuf::from("k.pem")));
            }
            _ => unreachable!(),
        }
        match parse(&["add", "web", "shop.example.com"]).unwrap() {
            DomainCommand::Add {
                container_port,
                tls_cert,
                ..
            } => {
                assert_eq!(container_port, 0);
                assert!(tls_cert.is_none());
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn acme_excludes_certificate_files() {
        assert!(parse(&[
            "add",
            "web",
            "shop.example.com",
            "--acme",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem"
        ])
        .is_err());
        match parse(&["add", "web", "shop.example.com", "--acme"]).unwrap() {
            DomainCommand::Add { acme, tls_cert, .. } => {
                assert!(acme);
                assert!(tls_cert.is_none());
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_missing_file_names_it() {
        let e = read_pem(Path::new("/nonexistent/k.pem"), "key").unwrap_err();
        assert!(e.to_string().contains("key file /nonexistent/k.pem"), "{e}");
    }
}
