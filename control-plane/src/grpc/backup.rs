//! `berth.v1.BackupService`: streams an encrypted backup archive of the node.

use std::path::PathBuf;
use std::pin::Pin;

use berth_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{authenticate, status};
use crate::service::Service;

/// Bytes per streamed message.
const MESSAGE_BYTES: usize = 256 * 1024;

pub struct BackupApi {
    service: Service,
    data_dir: PathBuf,
}

impl BackupApi {
    pub fn new(service: Service, data_dir: PathBuf) -> Self {
        BackupApi { service, data_dir }
    }
}

/// A blocking writer that sends what it gets to the response stream.
struct ChannelWriter {
    tx: mpsc::Sender<Result<pb::BackupChunk, Status>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(MESSAGE_BYTES));
        self.tx
            .blocking_send(Ok(pb::BackupChunk {
                data,
                root_key_id: None,
            }))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= MESSAGE_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

type ChunkStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::backup_service_server::BackupService for BackupApi {
    type CreateBackupStream = ChunkStream;

    async fn create_backup(
        &self,
        request: Request<pb::CreateBackupRequest>,
    ) -> Result<Response<Self::CreateBackupStream>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        actor
            .require(crate::service::Permission::ManageEncryption)
            .map_err(status)?;
        let (tx, rx) = mpsc::channel(8);
        let service = self.service.clone();
        let data_dir = self.data_dir.clone();
        tokio::spawn(async move {
            let writer = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(MESSAGE_BYTES),
            };
            let last = match service.write_backup(&actor, &data_dir, writer).await {
                Ok(manifest) => Ok(pb::BackupChunk {
                    data: Vec::new(),
                    root_key_id: Some(manifest.root_key_id),
                }),
                Err(e) => Err(status(e)),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
