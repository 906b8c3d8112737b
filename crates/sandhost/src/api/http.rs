//! The HTTP server for probes and scrapes:
//!
//! - `GET /health/live`: 200 while the process serves.
//! - `GET /health/ready`: 200 only when the node status is READY, else 503; the body is the status.
//! - `GET /metrics`: the registry in Prometheus' text format (0.0.4), or in OpenMetrics when the
//!   `Accept` header asks for `application/openmetrics-text` (`metrics::exposition`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::drain::NodeStatus;
use crate::metrics::exposition;
use crate::node::Node;

#[derive(Debug, Clone)]
struct AppState {
    node: Node,
    registry: Arc<Registry>,
}

/// The routes, over `node` and `registry`.
pub fn router(node: Node, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(AppState { node, registry })
}

/// Serves the routes on `listener` until `shutdown` is cancelled.
///
/// # Errors
///
/// The I/O error that stopped the server.
pub async fn serve(
    listener: TcpListener,
    node: Node,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP health and metrics listening");
    }
    axum::serve(listener, router(node, registry)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

async fn live() -> &'static str {
    "live\n"
}

async fn ready(State(state): State<AppState>) -> Response {
    let status = state.node.status();
    let code = if status == NodeStatus::Ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, format!("{status}\n")).into_response()
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = exposition::negotiate(accept);
    match exposition::encode(&state.registry, format) {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "encoding the metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n").into_response()
        }
    }
}
