//! The agent API: `AgentEnrollment` (admin port, enrollment token) and `AgentService`
//! (agent port, mTLS; identity = the client certificate).

use std::pin::Pin;
use std::time::Duration;

use berth_proto::v1 as pb;
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::status;
use crate::fleet::Fleet;
use crate::store::AgentRow;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AgentEnrollmentApi {
    fleet: Fleet,
}

impl AgentEnrollmentApi {
    pub fn new(fleet: Fleet) -> Self {
        AgentEnrollmentApi { fleet }
    }
}

#[tonic::async_trait]
impl pb::agent_enrollment_server::AgentEnrollment for AgentEnrollmentApi {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let r = request.into_inner();
        let token = SecretString::from(r.token);
        let (agent_name, labels, issued) = self
            .fleet
            .enroll(&token, &r.csr_pem)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::EnrollResponse {
            agent_name,
            labels: labels.into_iter().collect(),
            certificate_pem: issued.pem,
            ca_pem: self.fleet.ca_pem().to_string(),
            agent_endpoint: self.fleet.agent_endpoint().to_string(),
            not_after_unix: issued.not_after.unix_timestamp(),
        }))
    }
}

pub struct AgentApi {
    fleet: Fleet,
}

impl AgentApi {
    pub fn new(fleet: Fleet) -> Self {
        AgentApi { fleet }
    }

    /// The agent behind a request: its client certificate, checked against `agents`.
    async fn identify<T>(&self, request: &Request<T>) -> Result<AgentRow, Status> {
        Ok(self.identify_with_fingerprint(request).await?.0)
    }

    /// The agent and the fingerprint of the certificate it presented.
    async fn identify_with_fingerprint<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(AgentRow, String), Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a berth client certificate is required"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("a berth client certificate is required"))?;
        let fingerprint = format!("sha256:{}", hex::encode(Sha256::digest(leaf.as_ref())));
        let agent = self
            .fleet
            .authenticate_agent(&fingerprint)
            .await
            .map_err(status)?;
        Ok((agent, fingerprint))
    }
}

type ControlStream =
    Pin<Box<dyn Stream<Item = Result<pb::ControlMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentApi {
    type ConnectStream = ControlStream;

    async fn connect(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let agent = self.identify(&request).await?;
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Hello(hello)),
            }))) => hello,
            Ok(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on the stream must be hello",
                ))
            }
        };
        // The session is opened, served and closed in one task of its own: this handler's
        // future is dropped when the client goes away before it answers, and a session
        // registered by a dropped future would never be closed (a ghost stream, no
        // disconnect recorded).
        let (opened_tx, opened) = oneshot::channel();
        let fleet = self.fleet.clone();
        tokio::spawn(async move {
            let mut session = match fleet.open_session(&agent, &hello).await {
                Ok(session) => session,
                Err(e) => {
                    let _ = opened_tx.send(Err(status(e)));
                    return;
                }
            };
            let (tx, rx) = mpsc::channel::<Result<pb::ControlMessage, Status>>(64);
            // A client already gone is seen below: its inbound stream ends.
            let _ = opened_tx.send(Ok(rx));
            // Commands go out on a task of their own: handling an inbound message may wait for
            // a durable write (a result is fsync'd before it is acknowledged), and a command
            // queued meanwhile must not wait for that fsync (it was the p99 of queued ->
            // agent). One forwarder per stream keeps the commands in order.
            let mut outbound = session.outbound;
            let forward_tx = tx.clone();
            let mut forward = tokio::spawn(async move {
                while let Some(message) = outbound.recv().await {
                    if forward_tx.send(Ok(message)).await.is_err() {
                        break;
                    }
                }
            });
            loop {
                tokio::select! {
                    // The control plane dropped the stream's queue, or the client is gone.
                    _ = &mut forward => break,
                    reason = &mut session.killed => {
                        forward.abort();
                        let reason = reason.unwrap_or("stream closed by the control plane");
                        let end = if reason == crate::fleet::SHUTTING_DOWN {
                            Status::unavailable(reason)
                        } else {
                            Status::permission_denied(reason)
                        };
                        let _ = tx.send(Err(end)).await;
                        break;
                    }
                    inbound = inbound.message() => match inbound {
                        Ok(Some(message)) => {
                            if let Err(e) = fleet.handle_message(&agent.name, session.id, message).await {
                                tracing::warn!(agent = %agent.name, error = %e, "bad message from agent");
                                forward.abort();
                                let _ = tx.send(Err(status(e))).await;
                                break;
                            }
                        }
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            forward.abort();
            fleet.close_session(&agent.name, session.id).await;
            // Only when this task ends is the rest of the session (its guard) dropped: the
            // session counts as open until then, so the node does not close the store first.
        });
        let rx = opened
            .await
            .map_err(|_| Status::internal("the agent session ended before it opened"))??;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let (agent, presented) = self.identify_with_fingerprint(&request).await?;
        let issued = self
            .fleet
            .renew(&agent.name, &presented, &request.get_ref().csr_pem)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RenewResponse {
            certificate_pem: issued.pem,
            not_after_unix: issued.not_after.unix_timestamp(),
        }))
    }
}
