//! `sandhost.v1.NodeService`: the node's info and its drain. `WatchDrain` ends when the server shuts
//! down.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use sandhost_proto::v1 as pb;
use sandhost_proto::v1::node_service_server::NodeService;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::status::drain_error;
use super::{convert, until_shutdown};
use crate::node::Node;

/// The stream of a `WatchDrain` call.
pub(crate) type WatchDrainStream = Pin<Box<dyn Stream<Item = Result<pb::WatchDrainResponse, Status>> + Send>>;

/// The `NodeService` implementation over a [`Node`].
#[derive(Debug, Clone)]
pub(crate) struct NodeApi {
    node: Node,
    shutdown: CancellationToken,
}

impl NodeApi {
    /// Serves `node`; `WatchDrain` streams end once `shutdown` is cancelled.
    pub(crate) fn new(node: Node, shutdown: CancellationToken) -> Self {
        Self { node, shutdown }
    }
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn get_info(
        &self,
        _request: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::GetInfoResponse>, Status> {
        Ok(Response::new(convert::node_info(self.node.info())))
    }

    async fn drain(&self, request: Request<pb::DrainRequest>) -> Result<Response<pb::DrainResponse>, Status> {
        let request = convert::drain_request(request.get_ref())?;
        tracing::info!(timeout = ?request.timeout, force = request.force, "drain requested through the API");
        let progress = self.node.drain(request).map_err(|e| drain_error(&e))?;
        Ok(Response::new(pb::DrainResponse { progress: Some(convert::drain_progress(progress)) }))
    }

    async fn undrain(
        &self,
        _request: Request<pb::UndrainRequest>,
    ) -> Result<Response<pb::UndrainResponse>, Status> {
        tracing::info!("undrain requested through the API");
        let progress = self.node.undrain().map_err(|e| drain_error(&e))?;
        Ok(Response::new(pb::UndrainResponse { progress: Some(convert::drain_progress(progress)) }))
    }

    async fn force_stop(
        &self,
        _request: Request<pb::ForceStopRequest>,
    ) -> Result<Response<pb::ForceStopResponse>, Status> {
        tracing::info!("force stop requested through the API");
        let progress = self.node.force_stop().map_err(|e| drain_error(&e))?;
        Ok(Response::new(pb::ForceStopResponse { progress: Some(convert::drain_progress(progress)) }))
    }

    type WatchDrainStream = WatchDrainStream;

    async fn watch_drain(
        &self,
        _request: Request<pb::WatchDrainRequest>,
    ) -> Result<Response<Self::WatchDrainStream>, Status> {
        let stream = WatchStream::new(self.node.watch_drain())
            .map(|progress| Ok(pb::WatchDrainResponse { progress: Some(convert::drain_progress(progress)) }));
        let stream = until_shutdown(stream, self.shutdown.clone());
        Ok(Response::new(Box::pin(stream)))
    }
}
