//! The API adapters: gRPC (tonic) and HTTP (axum). The only place that knows either.
//!
//! - [`grpc::serve`]: `sandhost.v1.SandboxService`, `sandhost.v1.NodeService`, `grpc.health.v1.Health`
//!   (SERVING only while the node is READY) and server reflection, behind the bearer-token check.
//! - [`http::serve`]: `/health/live`, `/health/ready`, `/metrics`.
//!
//! Requests are converted proto -> domain in `convert`, and every domain error is mapped to a
//! `tonic::Status` in `status`, exhaustively, in that one place.

mod auth;
mod convert;
pub mod grpc;
pub mod http;
mod node_service;
mod sandbox_service;
mod status;

pub use status::{RETRY_WHEN_EXHAUSTED, RETRY_WHILE_DRAINING};
