//! `berth.v1.DomainService`: domains routed by the host proxy. The handler goes through the
//! fleet, which pushes an app's routes to its connected agents after a change.

use berth_proto::v1 as pb;
use secrecy::SecretString;
use tonic::{Request, Response, Status};

use super::{authenticate, convert, status};
use crate::fleet::Fleet;
use crate::service::domains::{DomainSpec, DomainTls, TlsFiles};

pub struct DomainApi {
    fleet: Fleet,
}

impl DomainApi {
    pub fn new(fleet: Fleet) -> Self {
        DomainApi { fleet }
    }
}

fn notified(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[tonic::async_trait]
impl pb::domain_service_server::DomainService for DomainApi {
    async fn add_domain(
        &self,
        request: Request<pb::AddDomainRequest>,
    ) -> Result<Response<pb::AddDomainResponse>, Status> {
        let actor = authenticate(self.fleet.service(), &request).await?;
        let r = request.into_inner();
        let files = TlsFiles::from_parts(r.tls_cert_pem, SecretString::from(r.tls_key_pem))
            .map_err(status)?;
        let tls = match (files, r.acme) {
            (None, false) => DomainTls::None,
            (Some(files), false) => DomainTls::Files(files),
            (None, true) => DomainTls::Acme,
            (Some(_), true) => {
                return Err(Status::invalid_argument(
                    "give either --tls-cert/--tls-key or --acme, not both",
                ))
            }
        };
        let spec = DomainSpec {
            app: r.app,
            host: r.host,
            container_port: r.container_port,
            tls,
        };
        let (domain, agents) = self.fleet.add_domain(&actor, spec).await.map_err(status)?;
        Ok(Response::new(pb::AddDomainResponse {
            domain: Some(convert::domain(domain)),
            agents_notified: notified(agents),
        }))
    }

    async fn list_domains(
        &self,
        request: Request<pb::ListDomainsRequest>,
    ) -> Result<Response<pb::ListDomainsResponse>, Status> {
        let actor = authenticate(self.fleet.service(), &request).await?;
        let domains = self
            .fleet
            .service()
            .list_domains(&actor, request.get_ref().app.as_deref())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListDomainsResponse {
            domains: domains.into_iter().map(convert::domain).collect(),
        }))
    }

    async fn remove_domain(
        &self,
        request: Request<pb::RemoveDomainRequest>,
    ) -> Result<Response<pb::RemoveDomainResponse>, Status> {
        let actor = authenticate(self.fleet.service(), &request).await?;
        let (domain, agents) = self
            .fleet
            .remove_domain(&actor, &request.get_ref().host)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveDomainResponse {
            domain: Some(convert::domain(domain)),
            agents_notified: notified(agents),
        }))
    }
}
