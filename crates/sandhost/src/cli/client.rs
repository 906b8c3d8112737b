//! The connection to a node, its bearer token, and the errors of a client command with their exit
//! codes.

use std::io;

use sandhost_proto::v1::node_service_client::NodeServiceClient;
use sandhost_proto::v1::sandbox_service_client::SandboxServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::{EXIT_UNAVAILABLE, Target};

/// How long connecting to the node may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest response the client decodes (matches the server's largest response).
const MAX_RESPONSE_BYTES: usize = crate::api::grpc::MAX_RESPONSE_BYTES;

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The node answered with an error.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(Status),
    /// The node could not be reached.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The transport error and its causes.
        reason: String,
    },
    /// A flag or variable has a value that cannot be used.
    #[error("invalid {name}: {reason}")]
    Usage {
        /// The flag or variable.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The node ended a stream before the command was done.
    #[error("{0}")]
    Ended(String),
    /// Writing the output failed.
    #[error("writing the output failed")]
    Output(#[from] io::Error),
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        Self::Rpc(status)
    }
}

impl ClientError {
    /// 75 when the node answered `UNAVAILABLE`; 1 otherwise.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Rpc(status) if status.code() == Code::Unavailable => EXIT_UNAVAILABLE,
            _ => 1,
        }
    }

    pub(crate) fn usage(name: &'static str, reason: impl Into<String>) -> Self {
        Self::Usage { name, reason: reason.into() }
    }
}

/// The canonical upper-case name of a gRPC code.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone)]
pub(crate) struct BearerToken(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BearerToken").field(&self.0.as_ref().map(|_| "<redacted>")).finish()
    }
}

impl BearerToken {
    /// From `SANDHOST_TOKEN`'s value (unset or empty: no token).
    pub(crate) fn new(token: Option<&str>) -> Result<Self, ClientError> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(Self(None)),
            Some(token) => format!("Bearer {token}")
                .parse()
                .map(|value| Self(Some(value)))
                .map_err(|_| ClientError::usage("SANDHOST_TOKEN", "not a valid header value")),
        }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, BearerToken>;

/// Both services of one node.
#[derive(Debug)]
pub(crate) struct Client {
    /// `sandhost.v1.SandboxService`.
    pub(crate) sandboxes: SandboxServiceClient<Authed>,
    /// `sandhost.v1.NodeService`.
    pub(crate) nodes: NodeServiceClient<Authed>,
}

impl Client {
    /// Connects to `target` with the token of `SANDHOST_TOKEN`.
    pub(crate) async fn connect(target: &Target) -> Result<Self, ClientError> {
        let token = BearerToken::new(std::env::var("SANDHOST_TOKEN").ok().as_deref())?;
        let endpoint = Endpoint::from_shared(target.addr.clone())
            .map_err(|e| ClientError::usage("--addr / SANDHOST_ADDR", format!("{:?}: {e}", target.addr)))?;
        let channel = endpoint.connect_timeout(CONNECT_TIMEOUT).connect().await.map_err(|e| {
            ClientError::Connect { addr: target.addr.clone(), reason: crate::error_chain(&e) }
        })?;
        Ok(Self {
            sandboxes: SandboxServiceClient::with_interceptor(channel.clone(), token.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            nodes: NodeServiceClient::with_interceptor(channel, token)
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_exits_75_and_everything_else_1() {
        assert_eq!(ClientError::Rpc(Status::unavailable("draining")).exit_code(), 75);
        for code in [Code::InvalidArgument, Code::NotFound, Code::Unauthenticated, Code::Internal] {
            assert_eq!(ClientError::Rpc(Status::new(code, "x")).exit_code(), 1, "{code:?}");
        }
        assert_eq!(ClientError::Connect { addr: "a".into(), reason: "refused".into() }.exit_code(), 1);
        assert_eq!(ClientError::usage("--x", "bad").exit_code(), 1);
    }

    #[test]
    fn the_message_names_the_code() {
        let error = ClientError::Rpc(Status::not_found("sandbox \"x\" not found"));
        assert_eq!(error.to_string(), "NOT_FOUND: sandbox \"x\" not found");
    }

    #[test]
    fn the_token_goes_into_the_authorization_header() {
        let mut token = BearerToken::new(Some("s3cret")).expect("valid");
        let request = token.call(Request::new(())).expect("passes");
        assert_eq!(
            request.metadata().get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer s3cret")
        );
        let mut none = BearerToken::new(Some("")).expect("valid");
        assert!(none.call(Request::new(())).expect("passes").metadata().get("authorization").is_none());
        assert!(BearerToken::new(Some("bad\ntoken")).is_err());
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
