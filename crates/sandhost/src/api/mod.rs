//! The API adapters: gRPC (tonic) and HTTP (axum). The only place that knows either.
//!
//! - [`grpc::serve`]: `sandhost.v1.SandboxService`, `sandhost.v1.NodeService`, `grpc.health.v1.Health`
//!   (`""` SERVING only while the node is READY, the services while the process serves) and server
//!   reflection, behind the bearer-token check; every call counted and timed (`grpc_metrics`).
//! - [`http::serve`]: `/health/live`, `/health/ready`, `/metrics`.
//!
//! Requests are converted proto -> domain in `convert`, and every domain error is mapped to a
//! `tonic::Status` in `status`, exhaustively, in that one place.

mod auth;
mod codes;
mod convert;
pub mod grpc;
mod grpc_metrics;
mod health;
pub mod http;
mod node_service;
mod sandbox_service;
mod status;

pub use status::{RETRY_WHEN_EXHAUSTED, RETRY_WHILE_DRAINING};

use futures::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Ends `stream` when `shutdown` is cancelled, with a last `UNAVAILABLE` item so the client knows it
/// was cut short (and retries elsewhere or later) rather than finished. Items that are ready win over
/// the shutdown, so a last update (say, DRAINED) sent just before it still goes out.
pub(crate) fn until_shutdown<T, S>(
    stream: S,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<T, Status>>
where
    S: Stream<Item = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    futures::stream::unfold(Some((Box::pin(stream), shutdown)), |state| async move {
        let (mut stream, shutdown) = state?;
        tokio::select! {
            biased;
            item = stream.next() => item.map(|item| (item, Some((stream, shutdown)))),
            () = shutdown.cancelled() => Some((Err(status::shutting_down()), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;
    use tonic::Code;

    use super::*;

    #[tokio::test]
    async fn a_finished_stream_ends_without_an_error() {
        let items: Vec<_> =
            until_shutdown(futures::stream::iter([Ok::<_, Status>(1), Ok(2)]), CancellationToken::new())
                .collect()
                .await;
        assert_eq!(items.iter().map(|i| *i.as_ref().expect("ok")).collect::<Vec<_>>(), [1, 2]);
    }

    #[tokio::test]
    async fn a_stream_cut_by_the_shutdown_ends_with_unavailable() {
        let shutdown = CancellationToken::new();
        let stream = futures::stream::iter([Ok::<_, Status>(1)]).chain(futures::stream::pending());
        let mut cut = Box::pin(until_shutdown(stream, shutdown.clone()));
        assert_eq!(*cut.next().await.expect("an item").as_ref().expect("ok"), 1);
        shutdown.cancel();
        let last = cut.next().await.expect("a last item").expect_err("an error");
        assert_eq!(last.code(), Code::Unavailable);
        assert!(cut.next().await.is_none());
    }
}
