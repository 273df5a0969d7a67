//! Routes set on a berth-proxy through its control socket, as the agent would: app
//! `bench-<i>` publishes host port `first_port + i`, forwarded to one backend.

use std::path::PathBuf;

use berth_proto::v1 as pb;

#[derive(clap::Args, Debug)]
pub struct RoutesArgs {
    /// The proxy's control socket.
    #[arg(long)]
    socket: PathBuf,
    /// How many apps (one route each).
    #[arg(long, default_value_t = 100)]
    count: u16,
    /// Host port of the first app; the others follow.
    #[arg(long)]
    first_port: u16,
    /// The backend every route points at.
    #[arg(long, default_value = "127.0.0.1")]
    backend_ip: String,
    #[arg(long)]
    backend_port: u16,
    /// A domain routed (HTTP, by Host) to the first app's backend.
    #[arg(long)]
    domain: Option<String>,
}

pub fn run(args: RoutesArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(set_routes(args))
}

async fn set_routes(args: RoutesArgs) -> anyhow::Result<()> {
    let mut client = berth_agent::proxy::client::connect(&args.socket).await?;
    for i in 0..args.count {
        let domains = match (&args.domain, i) {
            (Some(host), 0) => vec![pb::ProxyDomain {
                host: host.clone(),
                container_port: u32::from(args.backend_port),
                ..Default::default()
            }],
            _ => Vec::new(),
        };
        let route = pb::ProxyRoute {
            app: format!("bench-{i}"),
            backend: Some(pb::ProxyBackend {
                container_id: format!("bench-container-{i}"),
                container_name: format!("bench-{i}"),
                version: "v1".into(),
                address: args.backend_ip.clone(),
            }),
            ports: vec![pb::ProxyPort {
                host_port: u32::from(args.first_port + i),
                container_port: u32::from(args.backend_port),
                protocol: "tcp".into(),
            }],
            domains,
            deployment_id: String::new(),
        };
        client
            .set_route(pb::SetRouteRequest { route: Some(route) })
            .await
            .map_err(|s| anyhow::anyhow!("SetRoute bench-{i}: {}", s.message()))?;
    }
    Ok(())
}
