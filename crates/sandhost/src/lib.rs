//! sandhost: the node agent of a sandbox fleet.
//!
//! One `sandhost serve` per host runs untrusted code in isolated sandboxes behind a gRPC API and,
//! above all, never loses a sandbox by accident: on a deploy, an upgrade or a decommission it drains
//! (see [`drain`]). The modules mirror the domain:
//!
//! - [`sandbox`]: the sandbox manager: the live table, the lifecycle state machine, timeouts,
//!   retention, node limits, events.
//! - [`admission`]: the admission gate and the node status, with one owner (the drain
//!   coordinator) and a narrow handle for the manager.
//! - [`drain`]: the drain coordinator: the node status, the graceful and forced phases, the
//!   persisted drain intent, the report.
//! - [`node`]: the one handle the API layers use, and the wiring that builds it.
//! - `api`: gRPC and HTTP adapters (the only place that knows tonic and axum).
//! - `cli`: the client subcommands.
//! - [`config`]: typed configuration of `serve`.
#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod cli;
pub mod config;
pub mod drain;
pub mod metrics;
pub mod node;
pub mod sandbox;
pub mod serve;

/// `message: cause: cause ...`: an error with its whole chain of causes, for messages and reports.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Sleeps for `duration`, or forever when there is none (an unset deadline).
pub(crate) async fn sleep_or_forever(duration: Option<std::time::Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}
