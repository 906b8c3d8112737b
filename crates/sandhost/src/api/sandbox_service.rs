//! `sandhost.v1.SandboxService`: each RPC converts its request, calls the [`Node`], and maps the
//! result. Long calls (`Wait`, `Logs` with follow) end when the server shuts down.

use std::pin::Pin;
use std::time::SystemTime;

use futures::{Stream, StreamExt as _};
use sandhost_proto::v1 as pb;
use sandhost_proto::v1::sandbox_service_server::SandboxService;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::status::{create_error, sandbox_error, shutting_down};
use super::{convert, until_shutdown};
use crate::node::Node;

/// Most bytes of sandboxes in one `List` reply: below the 4 MiB a stock gRPC client accepts.
const MAX_LIST_REPLY_BYTES: usize = 3 << 20;
/// The bytes a repeated field adds around each entry (its tag and length).
const LIST_ENTRY_OVERHEAD: usize = 8;

/// The stream of a `Logs` call.
pub(crate) type LogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogsResponse, Status>> + Send>>;

/// Names the sandbox on the RPC's span (declared by the server's `trace_fn`). The id is the client's,
/// not yet validated: it is cut to the longest valid id.
fn record_sandbox_id(id: &str) {
    let id: String = id.chars().take(63).collect();
    tracing::Span::current().record("sandbox.id", tracing::field::display(&id));
}

/// The `SandboxService` implementation over a [`Node`].
#[derive(Debug, Clone)]
pub(crate) struct SandboxApi {
    node: Node,
    shutdown: CancellationToken,
}

impl SandboxApi {
    /// Serves `node`; long calls end once `shutdown` is cancelled.
    pub(crate) fn new(node: Node, shutdown: CancellationToken) -> Self {
        Self { node, shutdown }
    }
}

#[tonic::async_trait]
impl SandboxService for SandboxApi {
    async fn create(
        &self,
        request: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::CreateResponse>, Status> {
        let request = convert::create_request(request.into_inner())?;
        let info = self.node.create(request).await.map_err(|e| {
            tracing::debug!(error = %e, "create refused");
            create_error(&e)
        })?;
        record_sandbox_id(info.id.as_str());
        tracing::debug!(sandbox.id = %info.id, lifecycle.id = %info.lifecycle, "created");
        Ok(Response::new(pb::CreateResponse { sandbox: Some(convert::sandbox(info)) }))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        record_sandbox_id(&request.get_ref().id);
        let info = self.node.get(&request.get_ref().id).map_err(|e| sandbox_error(&e))?;
        Ok(Response::new(pb::GetResponse { sandbox: Some(convert::sandbox(info)) }))
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let mut filter = convert::list_filter(request.into_inner())?;
        let page_size = filter.limit;
        // One more than the page, to know whether another page follows.
        filter.limit = page_size.saturating_add(1);
        let mut found = self.node.list(&filter).into_iter();
        let mut sandboxes = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for info in found.by_ref() {
            let sandbox = convert::sandbox(info);
            let len = prost::Message::encoded_len(&sandbox) + LIST_ENTRY_OVERHEAD;
            if sandboxes.len() == page_size || (bytes + len > MAX_LIST_REPLY_BYTES && !sandboxes.is_empty()) {
                more = true;
                break;
            }
            bytes += len;
            sandboxes.push(sandbox);
        }
        let next_page_token = if more {
            sandboxes.last().map(|s: &pb::Sandbox| s.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListResponse { sandboxes, next_page_token }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        record_sandbox_id(&request.get_ref().id);
        let request = request.into_inner();
        let info = self.node.delete(&request.id, request.now).await.map_err(|e| sandbox_error(&e))?;
        Ok(Response::new(pb::DeleteResponse { sandbox: Some(convert::sandbox(info)) }))
    }

    async fn pause(&self, request: Request<pb::PauseRequest>) -> Result<Response<pb::PauseResponse>, Status> {
        record_sandbox_id(&request.get_ref().id);
        let info = self.node.pause(&request.get_ref().id).await.map_err(|e| sandbox_error(&e))?;
        Ok(Response::new(pb::PauseResponse { sandbox: Some(convert::sandbox(info)) }))
    }

    async fn resume(
        &self,
        request: Request<pb::ResumeRequest>,
    ) -> Result<Response<pb::ResumeResponse>, Status> {
        record_sandbox_id(&request.get_ref().id);
        let info = self.node.resume(&request.get_ref().id).await.map_err(|e| sandbox_error(&e))?;
        Ok(Response::new(pb::ResumeResponse { sandbox: Some(convert::sandbox(info)) }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        record_sandbox_id(&request.get_ref().id);
        let request = request.into_inner();
        let id = request.id.clone();
        let update = convert::update_request(request, SystemTime::now())?;
        let info = self.node.update(&id, update).map_err(|e| sandbox_error(&e))?;
        Ok(Response::new(pb::UpdateResponse { sandbox: Some(convert::sandbox(info)) }))
    }

    async fn checkpoint(
        &self,
        request: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointResponse>, Status> {
        record_sandbox_id(&request.get_ref().id);
        let request = request.into_inner();
        let snapshot =
            self.node.checkpoint(&request.id, request.stop).await.map_err(|e| sandbox_error(&e))?;
        Ok(Response::new(pb::CheckpointResponse { snapshot: Some(convert::snapshot(snapshot)) }))
    }

    async fn list_snapshots(
        &self,
        _request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let mut snapshots = self.node.list_snapshots().await.map_err(|e| sandbox_error(&e))?;
        snapshots.sort_by(|a, b| a.id.cmp(&b.id));
        let snapshots = snapshots.into_iter().map(convert::snapshot).collect();
        Ok(Response::new(pb::ListSnapshotsResponse { snapshots }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        self.node.delete_snapshot(&request.get_ref().id).await.map_err(|e| sandbox_error(&e))?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    type LogsStream = LogsStream;

    async fn logs(&self, request: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        record_sandbox_id(&request.get_ref().id);
        let request = request.into_inner();
        let since = convert::logs_since(&request)?;
        let logs = self.node.logs(&request.id, request.follow, since).map_err(|e| sandbox_error(&e))?;
        let stream = logs.map(|piece| {
            piece
                .map(|piece| pb::LogsResponse { data: piece.data, dropped_bytes: piece.dropped })
                .map_err(|e| sandbox_error(&e))
        });
        let stream = until_shutdown(stream, self.shutdown.clone());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn wait(&self, request: Request<pb::WaitRequest>) -> Result<Response<pb::WaitResponse>, Status> {
        record_sandbox_id(&request.get_ref().id);
        let id = &request.get_ref().id;
        let info = tokio::select! {
            result = self.node.wait(id) => result.map_err(|e| sandbox_error(&e))?,
            () = self.shutdown.cancelled() => return Err(shutting_down()),
        };
        Ok(Response::new(pb::WaitResponse { sandbox: Some(convert::sandbox(info)) }))
    }
}
