//! The gRPC server: `SandboxService`, `NodeService`, the standard health service and reflection, all
//! behind the bearer-token check, with bounded message sizes and one tracing span per RPC.
//!
//! Health (`health.rs`): `""` is admission, SERVING only while the node status is READY (driven by the
//! drain's progress watch, so once DRAINING is visible, `""` is NOT_SERVING too); the two sandhost
//! services are SERVING for as long as the server serves.
//!
//! Shutdown: when the `shutdown` token is cancelled, the listener stops accepting, long calls
//! (`Wait`, `Logs` with follow, `WatchDrain`, health `Watch`) end at once, and in-flight unary calls get
//! [`SHUTDOWN_GRACE`] to finish before the server returns anyway.

use std::time::Duration;

use sandhost_proto::v1::node_service_server::NodeServiceServer;
use sandhost_proto::v1::sandbox_service_server::SandboxServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::InterceptorLayer;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use super::auth::AuthInterceptor;
use super::grpc_metrics::GrpcMetricsLayer;
use super::health;
use super::node_service::NodeApi;
use super::sandbox_service::SandboxApi;
use crate::metrics::grpc::GrpcMetrics;
use crate::node::Node;

/// Largest request the server decodes.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest response the server encodes.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// How long in-flight calls get to finish once shutdown has begun.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Why the gRPC server could not run.
#[derive(Debug, thiserror::Error)]
pub enum GrpcServeError {
    /// The reflection service could not be built from the descriptors.
    #[error("building the reflection service failed")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The server failed.
    #[error("the gRPC server failed")]
    Transport(#[source] tonic::transport::Error),
}

/// Serves the gRPC API on `listener` until `shutdown` is cancelled, without per-call metrics.
///
/// `token`: when `Some`, every call must carry `authorization: Bearer <token>`.
///
/// # Errors
///
/// A [`GrpcServeError`] if the server cannot be built or fails.
pub async fn serve(
    listener: TcpListener,
    node: Node,
    token: Option<String>,
    shutdown: CancellationToken,
) -> Result<(), GrpcServeError> {
    serve_with_metrics(listener, node, token, None, shutdown).await
}

/// The `(service, method)` pairs this server serves (the API, health, reflection), read from their
/// descriptors: the label values of the per-call metrics.
#[must_use]
pub fn served_methods() -> Vec<(String, String)> {
    use prost::Message as _;
    [
        sandhost_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
    .into_iter()
    .filter_map(|bytes| prost_types::FileDescriptorSet::decode(bytes).ok())
    .flat_map(|set| set.file)
    .flat_map(|file| {
        let package = file.package.clone().unwrap_or_default();
        file.service.into_iter().flat_map(move |service| {
            let name = format!("{package}.{}", service.name.unwrap_or_default());
            service.method.into_iter().map(move |m| (name.clone(), m.name.unwrap_or_default()))
        })
    })
    .collect()
}

/// As [`serve`], counting and timing every call on `metrics` when given (`metrics::grpc`).
///
/// # Errors
///
/// A [`GrpcServeError`] if the server cannot be built or fails.
pub async fn serve_with_metrics(
    listener: TcpListener,
    node: Node,
    token: Option<String>,
    metrics: Option<GrpcMetrics>,
    shutdown: CancellationToken,
) -> Result<(), GrpcServeError> {
    // A child: cancelling it (when this server ends on its own) does not cancel the caller's token.
    let cancel = shutdown.child_token();
    let reflection_v1 = reflection().build_v1().map_err(GrpcServeError::Reflection)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(GrpcServeError::Reflection)?;
    let (health, health_task) = health::service(node.watch_drain(), cancel.clone());

    let sandboxes = SandboxServiceServer::new(SandboxApi::new(node.clone(), cancel.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    let nodes = NodeServiceServer::new(NodeApi::new(node, cancel.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);

    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, auth = token.is_some(), "gRPC API listening");
    }
    let server = Server::builder()
        .trace_fn(|request| {
            tracing::info_span!("rpc", method = %request.uri().path(), sandbox.id = tracing::field::Empty)
        })
        .layer(GrpcMetricsLayer::new(metrics))
        .layer(super::codes::layer())
        .layer(InterceptorLayer::new(AuthInterceptor::new(token)))
        .add_service(sandboxes)
        .add_service(nodes)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            cancel.clone().cancelled_owned(),
        );
    tokio::pin!(server);

    let shutdown_then_grace = {
        let cancel = cancel.clone();
        async move {
            cancel.cancelled().await;
            tracing::info!("gRPC API shutting down");
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    let result = tokio::select! {
        result = &mut server => result.map_err(GrpcServeError::Transport),
        () = shutdown_then_grace => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "gRPC calls still open after the shutdown grace: closing");
            Ok(())
        }
    };
    cancel.cancel();
    let _ = health_task.await;
    result
}

/// Reflection over the API and the health service (v1 for current tools, v1alpha for older ones).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sandhost_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
