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

use super::exit::{EXIT_ERROR, EXIT_UNAVAILABLE};
use super::json::JsonError;

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
    /// The node could not be reached (refused, unreachable, timed out): retryable, like
    /// `UNAVAILABLE`.
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
    /// A file could not be written (`man --dir`).
    #[error("cannot write {}", .path.display())]
    WriteFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A reply could not be printed as JSON.
    #[error("cannot print the reply as JSON")]
    Json(#[from] JsonError),
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        Self::Rpc(status)
    }
}

impl ClientError {
    /// 75 when the node answered `UNAVAILABLE`, could not be reached, or went away during the call
    /// (a retry loop keyed on 75 retries an agent that drains or restarts); 1 otherwise.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Rpc(status) if status.code() == Code::Unavailable || lost_in_transport(status) => {
                EXIT_UNAVAILABLE
            }
            Self::Connect { .. } => EXIT_UNAVAILABLE,
            Self::Rpc(_)
            | Self::Usage { .. }
            | Self::Ended(_)
            | Self::Output(_)
            | Self::WriteFile { .. }
            | Self::Json(_) => EXIT_ERROR,
        }
    }

    pub(crate) fn usage(name: &'static str, reason: impl Into<String>) -> Self {
        Self::Usage { name, reason: reason.into() }
    }
}

/// Whether the connection broke during the call (the node was killed or restarted under it): tonic
/// makes such a status itself (UNKNOWN "transport error", CANCELLED "h2 protocol error") with the
/// transport's error as its source, where a status the node sent has none. The call's outcome is
/// unknown; a retry finds out (a Create that landed answers ALREADY_EXISTS).
fn lost_in_transport(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
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
    /// Connects to `addr` (as [`endpoint`] reads it) with the token of `SANDHOST_TOKEN`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Usage`] for an address or token that cannot be used; [`ClientError::Connect`]
    /// when the node cannot be reached.
    pub(crate) async fn connect(addr: &str) -> Result<Self, ClientError> {
        let token = BearerToken::new(std::env::var("SANDHOST_TOKEN").ok().as_deref())?;
        let uri = endpoint(addr).map_err(|e| ClientError::usage("--addr / SANDHOST_ADDR", e))?;
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| ClientError::usage("--addr / SANDHOST_ADDR", format!("{addr:?}: {e}")))?;
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(|e| ClientError::Connect { addr: uri, reason: crate::error_chain(&e) })?;
        Ok(Self {
            sandboxes: SandboxServiceClient::with_interceptor(channel.clone(), token.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            nodes: NodeServiceClient::with_interceptor(channel, token)
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
        })
    }
}

/// The node's address as the CLI takes it, `HOST:PORT` (`127.0.0.1:5008`, `node-7:5008`,
/// `[::1]:5008`), `HOST` (port 5008), or either with `http://` before it, as the URI to dial.
/// `https://` is refused: TLS is planned, not built.
pub(crate) fn endpoint(addr: &str) -> Result<String, String> {
    let text = addr.trim();
    let authority = match text.split_once("://") {
        None => text,
        Some(("http", rest)) => rest,
        Some(("https", _)) => {
            return Err(format!("{addr:?}: TLS is not supported yet; give HOST:PORT or http://HOST:PORT"));
        }
        Some((scheme, _)) => return Err(format!("{addr:?}: unknown scheme {scheme:?}; give HOST:PORT")),
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    let invalid = || format!("{addr:?}: expected HOST:PORT, such as 127.0.0.1:5008 or [::1]:5008");
    if authority.is_empty()
        || authority.contains(['/', '?', '#', '@'])
        || authority.contains(char::is_whitespace)
    {
        return Err(invalid());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (inside, after) = v6.split_once(']').ok_or_else(invalid)?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(invalid)?),
        };
        (format!("[{inside}]"), port)
    } else {
        match authority.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err(format!("{addr:?}: write an IPv6 address in brackets, as [::1]:5008"));
            }
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(invalid)?,
    };
    if host.is_empty() || host == "[]" {
        return Err(invalid());
    }
    Ok(format!("http://{host}:{port}"))
}

/// The port of `serve`'s default `--listen`.
const DEFAULT_PORT: u16 = 5008;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_and_unreachable_exit_75_and_everything_else_1() {
        assert_eq!(ClientError::Rpc(Status::unavailable("draining")).exit_code(), 75);
        // A refused or unreachable node is retried like a draining one: it may be restarting.
        assert_eq!(ClientError::Connect { addr: "a".into(), reason: "refused".into() }.exit_code(), 75);
        for code in [Code::InvalidArgument, Code::NotFound, Code::Unauthenticated, Code::Internal] {
            assert_eq!(ClientError::Rpc(Status::new(code, "x")).exit_code(), 1, "{code:?}");
        }
        assert_eq!(ClientError::usage("--x", "bad").exit_code(), 1);
        assert_eq!(ClientError::Ended("gone".into()).exit_code(), 1);
        // The node went away during the call: tonic's own status, with the transport's error.
        let broken = Status::from_error(Box::new(io::Error::from(io::ErrorKind::ConnectionReset)));
        assert_eq!(broken.code(), Code::Unknown);
        assert_eq!(ClientError::Rpc(broken).exit_code(), 75);
        // The same code sent by the node is its answer, not a lost connection.
        assert_eq!(ClientError::Rpc(Status::unknown("transport error")).exit_code(), 1);
    }

    #[test]
    fn an_address_needs_no_scheme() {
        for (text, uri) in [
            ("127.0.0.1:5008", "http://127.0.0.1:5008"),
            ("http://127.0.0.1:5008", "http://127.0.0.1:5008"),
            ("http://127.0.0.1:5008/", "http://127.0.0.1:5008"),
            ("node-7:6000", "http://node-7:6000"),
            ("node-7", "http://node-7:5008"),
            ("[::1]:5008", "http://[::1]:5008"),
            ("[::1]", "http://[::1]:5008"),
            (" localhost:1 ", "http://localhost:1"),
        ] {
            assert_eq!(endpoint(text).as_deref(), Ok(uri), "{text}");
        }
        for bad in
            ["", "https://a:1", "unix:///run/x", "::1", "a:b", "a:0", "a:70000", "a:1/path", ":5008", "[::1"]
        {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
        assert!(endpoint("https://a:1").is_err_and(|e| e.contains("TLS")));
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
