//! The one mapping from domain errors to `tonic::Status`. Exhaustive: a new error variant does not
//! compile until it is given a code here. Each code means one thing (see `sandbox.proto`):
//!
//! | code | when |
//! | --- | --- |
//! | `INVALID_ARGUMENT` | a request field is malformed; a `BadRequest` detail names it |
//! | `NOT_FOUND` | no such sandbox, snapshot or template; a `ResourceInfo` detail names it |
//! | `ALREADY_EXISTS` | the id is taken |
//! | `FAILED_PRECONDITION` | wrong state, or a backend that cannot do it (named) |
//! | `RESOURCE_EXHAUSTED` | a node limit; a `QuotaFailure` detail names it |
//! | `UNAVAILABLE` | the node does not admit new work (status in the message), or its forced phase stopped a Create waiting for its turn, or the agent shut down under a start or checkpoint; `RetryInfo` |
//! | `ABORTED` | a Delete killed the sandbox while its Create waited for its turn |
//! | `UNAUTHENTICATED` | no or a wrong bearer token |
//! | `INTERNAL` | the runtime failed; a short message and an error id (an `ErrorInfo` detail too): the log has the cause chain under that id |

use std::error::Error as StdError;
use std::time::Duration;

use sandhost_runtime::{CheckpointError, StartError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::drain::{DrainError, NodeStatus};
use crate::sandbox::{CreateError, ExitReason, InvalidArgument, SandboxError};

/// How long a client refused by a draining node should wait before it retries (here or elsewhere).
pub const RETRY_WHILE_DRAINING: Duration = Duration::from_secs(5);
/// How long a client refused by a node limit should wait before it retries.
pub const RETRY_WHEN_EXHAUSTED: Duration = Duration::from_secs(1);

/// `INVALID_ARGUMENT` naming `field`, with a `BadRequest` detail.
pub(crate) fn invalid_argument(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid argument: {field}: {reason}"),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

fn from_invalid(error: &InvalidArgument) -> Status {
    invalid_argument(&error.field, &error.reason)
}

/// `UNAVAILABLE` for a node that does not admit new work, naming its status, with `RetryInfo`.
fn not_admitting(message: String, status: NodeStatus) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(RETRY_WHILE_DRAINING));
    details.set_error_info(
        "NODE_NOT_ADMITTING",
        "sandhost",
        [("node_status".to_owned(), status.as_str().to_owned())]
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
    );
    Status::with_error_details(Code::Unavailable, message, details)
}

fn not_found(resource_type: &str, name: &str, message: String) -> Status {
    Status::with_error_details(
        Code::NotFound,
        message,
        ErrorDetails::with_resource_info(resource_type, name, "", "not found"),
    )
}

fn not_supported(backend: &str, what: &str, message: String) -> Status {
    Status::with_error_details(
        Code::FailedPrecondition,
        message,
        ErrorDetails::with_precondition_failure_violation("BACKEND", backend, format!("cannot {what}")),
    )
}

/// `UNAVAILABLE` with `RetryInfo`: the agent went away under the call; ask again (here or elsewhere).
fn retry_later(message: String) -> Status {
    Status::with_error_details(
        Code::Unavailable,
        message,
        ErrorDetails::with_retry_info(Some(RETRY_WHILE_DRAINING)),
    )
}

/// Longest message of an `INTERNAL` answer.
const MAX_INTERNAL_MESSAGE: usize = 200;

/// `INTERNAL`: a short message (the error itself, its first line, bounded) and an error id; the
/// whole cause chain (which may hold a runtime's diagnostics, such as runsc's stack traces) goes to
/// the log under that id, never to the client.
fn internal(error: &(dyn StdError + 'static)) -> Status {
    let id = error_id();
    tracing::error!(error_id = %id, error = %crate::error_chain(error), "internal error");
    let summary: String =
        error.to_string().lines().next().unwrap_or_default().chars().take(MAX_INTERNAL_MESSAGE).collect();
    let details = ErrorDetails::with_error_info(
        "INTERNAL",
        "sandhost",
        [("error_id".to_owned(), id.clone())].into_iter().collect::<std::collections::HashMap<_, _>>(),
    );
    Status::with_error_details(
        Code::Internal,
        format!("{summary} (error id {id}; the agent's log has the cause)"),
        details,
    )
}

/// A random id that ties an `INTERNAL` answer to its log line.
fn error_id() -> String {
    use rand::RngCore as _;
    format!("{:016x}", rand::rng().next_u64())
}

/// The status of a failed `Create`.
pub(crate) fn create_error(error: &CreateError) -> Status {
    match error {
        CreateError::Invalid(invalid) => from_invalid(invalid),
        CreateError::NotAdmitting { status } => not_admitting(error.to_string(), *status),
        CreateError::AlreadyExists(id) => Status::already_exists(format!("sandbox {id} already exists")),
        CreateError::ResourceExhausted { limit, max } => {
            let mut details =
                ErrorDetails::with_quota_failure_violation(*limit, format!("node limit {limit} is {max}"));
            details.set_retry_info(Some(RETRY_WHEN_EXHAUSTED));
            Status::with_error_details(Code::ResourceExhausted, error.to_string(), details)
        }
        CreateError::TemplateNotFound(name) => not_found("template", name, error.to_string()),
        CreateError::NotSupported { backend, what } => not_supported(backend, what, error.to_string()),
        CreateError::StoppedBeforeStart { reason, .. } => match reason {
            // The drain's forced phase: nothing ran, so the caller retries elsewhere.
            ExitReason::ForceStopped | ExitReason::DrainStopped => {
                not_admitting(error.to_string(), NodeStatus::Forcing)
            }
            _ => Status::aborted(error.to_string()),
        },
        CreateError::Start(start) => start_error(start),
        CreateError::Interrupted(interrupted) => retry_later(interrupted.to_string()),
    }
}

/// The status of a runtime start failure: what the caller can fix gets its own code.
fn start_error(error: &StartError) -> Status {
    match error {
        StartError::InvalidSpec { field, reason, .. } => invalid_argument(field, reason),
        StartError::Exec { command, reason, .. } => {
            invalid_argument("argv", &format!("cannot run {command:?}: {reason}"))
        }
        StartError::AlreadyExists(key) => {
            Status::already_exists(format!("sandbox {} already exists", key.id))
        }
        StartError::NotSupported { backend, what, .. } => {
            not_supported(backend, what, format!("the {backend} backend does not support {what}"))
        }
        StartError::SnapshotNotFound { snapshot, .. } => {
            not_found("snapshot", snapshot.as_str(), format!("no snapshot {snapshot}"))
        }
        StartError::Snapshot { snapshot, reason, .. } => Status::with_error_details(
            Code::FailedPrecondition,
            format!("cannot restore from snapshot {snapshot}: {reason}"),
            ErrorDetails::with_precondition_failure_violation("SNAPSHOT", snapshot.as_str(), reason),
        ),
        StartError::Host { .. } => internal(error),
    }
}

/// The status of a failed operation on an existing sandbox or snapshot.
pub(crate) fn sandbox_error(error: &SandboxError) -> Status {
    match error {
        SandboxError::Invalid(invalid) => from_invalid(invalid),
        SandboxError::NotFound(id) => not_found("sandbox", id, error.to_string()),
        SandboxError::WrongState { id, state, op } => Status::with_error_details(
            Code::FailedPrecondition,
            error.to_string(),
            ErrorDetails::with_precondition_failure_violation(
                "STATE",
                id.as_str(),
                format!("{} cannot {op}", state.as_str()),
            ),
        ),
        SandboxError::NotAdmitting { status } => not_admitting(error.to_string(), *status),
        SandboxError::NotSupported { backend, what } => not_supported(backend, what, error.to_string()),
        SandboxError::Checkpoint(checkpoint) => checkpoint_error(checkpoint),
        SandboxError::Runtime { .. } => internal(error),
        SandboxError::Interrupted(interrupted) => retry_later(interrupted.to_string()),
    }
}

fn checkpoint_error(error: &CheckpointError) -> Status {
    match error {
        CheckpointError::NotSupported { backend } => not_supported(backend, "checkpoint", error.to_string()),
        CheckpointError::NotFound(key) => not_found("sandbox", key.id.as_str(), error.to_string()),
        CheckpointError::SnapshotNotFound(id) => not_found("snapshot", id.as_str(), error.to_string()),
        CheckpointError::SnapshotExists(id) => {
            Status::already_exists(format!("snapshot {id} already exists"))
        }
        CheckpointError::Host { .. } => internal(error),
    }
}

/// The status of a refused drain request.
pub(crate) fn drain_error(error: &DrainError) -> Status {
    match error {
        DrainError::ShuttingDown => Status::with_error_details(
            Code::FailedPrecondition,
            error.to_string(),
            ErrorDetails::with_precondition_failure_violation(
                "NODE",
                "shutdown",
                "the node is shutting down",
            ),
        ),
    }
}

/// `UNAUTHENTICATED`, for a call without the node's bearer token.
pub(crate) fn unauthenticated(reason: &str) -> Status {
    Status::unauthenticated(format!("{reason}: this node needs `authorization: Bearer <token>`"))
}

/// `UNAVAILABLE` for a long call cut short because the server shuts down.
pub(crate) fn shutting_down() -> Status {
    retry_later("the server is shutting down".to_owned())
}

#[cfg(test)]
mod tests {
    use std::io;

    use sandhost_runtime::{LifecycleId, SandboxId, SandboxKey, SnapshotId};

    use super::*;
    use crate::sandbox::SandboxState;

    fn key() -> SandboxKey {
        SandboxKey {
            id: SandboxId::parse("sb-1").expect("valid id"),
            lifecycle: LifecycleId::parse("abc").expect("valid lifecycle"),
        }
    }

    fn io_error() -> io::Error {
        io::Error::other("boom")
    }

    fn snapshot() -> SnapshotId {
        SnapshotId::parse("snap-1").expect("valid id")
    }

    fn bad_request_field(status: &Status) -> String {
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("a BadRequest detail").field_violations;
        violations[0].field.clone()
    }

    #[test]
    fn create_errors_map_to_their_codes() {
        let cases: Vec<(CreateError, Code)> = vec![
            (CreateError::Invalid(InvalidArgument::new("argv", "empty")), Code::InvalidArgument),
            (CreateError::NotAdmitting { status: NodeStatus::Draining }, Code::Unavailable),
            (CreateError::AlreadyExists(key().id), Code::AlreadyExists),
            (CreateError::ResourceExhausted { limit: "max_sandboxes", max: 2 }, Code::ResourceExhausted),
            (CreateError::TemplateNotFound("img".into()), Code::NotFound),
            (
                CreateError::StoppedBeforeStart { id: key().id, reason: ExitReason::ForceStopped },
                Code::Unavailable,
            ),
            (CreateError::StoppedBeforeStart { id: key().id, reason: ExitReason::Killed }, Code::Aborted),
            (CreateError::NotSupported { backend: "process", what: "restore" }, Code::FailedPrecondition),
            (
                CreateError::Start(StartError::InvalidSpec {
                    key: key(),
                    field: "cwd",
                    reason: "relative".into(),
                }),
                Code::InvalidArgument,
            ),
            (
                CreateError::Start(StartError::Exec {
                    key: key(),
                    command: "nope".into(),
                    reason: "ENOENT".into(),
                }),
                Code::InvalidArgument,
            ),
            (CreateError::Start(StartError::AlreadyExists(key())), Code::AlreadyExists),
            (
                CreateError::Start(StartError::NotSupported {
                    key: key(),
                    backend: "process",
                    what: "restore",
                }),
                Code::FailedPrecondition,
            ),
            (
                CreateError::Start(StartError::Snapshot {
                    key: key(),
                    snapshot: snapshot(),
                    reason: "gone".into(),
                }),
                Code::FailedPrecondition,
            ),
            (
                CreateError::Start(StartError::Host { key: key(), step: "clone", source: io_error() }),
                Code::Internal,
            ),
            (CreateError::Interrupted(crate::sandbox::Interrupted), Code::Unavailable),
        ];
        for (error, code) in cases {
            assert_eq!(create_error(&error).code(), code, "{error}");
        }
    }

    #[test]
    fn not_admitting_is_retryable_and_names_the_status() {
        for status in [NodeStatus::Draining, NodeStatus::Forcing, NodeStatus::Drained, NodeStatus::Unhealthy]
        {
            let mapped = create_error(&CreateError::NotAdmitting { status });
            assert_eq!(mapped.code(), Code::Unavailable);
            assert!(mapped.message().contains(status.as_str()), "{}", mapped.message());
            let retry = mapped.get_error_details().retry_info().cloned().expect("RetryInfo");
            assert_eq!(retry.retry_delay, Some(RETRY_WHILE_DRAINING));

            let mapped = sandbox_error(&SandboxError::NotAdmitting { status });
            assert_eq!(mapped.code(), Code::Unavailable);
            assert!(mapped.message().contains(status.as_str()), "{}", mapped.message());
            assert!(mapped.get_error_details().retry_info().is_some());
        }
    }

    #[test]
    fn invalid_arguments_name_the_field() {
        let mapped = create_error(&CreateError::Invalid(InvalidArgument::new("labels[\"x\"]", "too long")));
        assert_eq!(bad_request_field(&mapped), "labels[\"x\"]");
        assert!(mapped.message().contains("labels[\"x\"]"), "{}", mapped.message());

        let mapped = create_error(&CreateError::Start(StartError::InvalidSpec {
            key: key(),
            field: "cwd",
            reason: "relative".into(),
        }));
        assert_eq!(bad_request_field(&mapped), "cwd");

        let mapped = sandbox_error(&SandboxError::Invalid(InvalidArgument::new("id", "bad")));
        assert_eq!(mapped.code(), Code::InvalidArgument);
        assert_eq!(bad_request_field(&mapped), "id");
    }

    #[test]
    fn sandbox_errors_map_to_their_codes() {
        let cases: Vec<(SandboxError, Code)> = vec![
            (SandboxError::Invalid(InvalidArgument::new("id", "bad")), Code::InvalidArgument),
            (SandboxError::NotFound("sb-9".into()), Code::NotFound),
            (
                SandboxError::WrongState { id: key().id, state: SandboxState::Exited, op: "pause" },
                Code::FailedPrecondition,
            ),
            (SandboxError::NotAdmitting { status: NodeStatus::Draining }, Code::Unavailable),
            (SandboxError::NotSupported { backend: "process", what: "checkpoint" }, Code::FailedPrecondition),
            (
                SandboxError::Checkpoint(CheckpointError::NotSupported { backend: "process" }),
                Code::FailedPrecondition,
            ),
            (SandboxError::Checkpoint(CheckpointError::NotFound(key())), Code::NotFound),
            (SandboxError::Checkpoint(CheckpointError::SnapshotNotFound(snapshot())), Code::NotFound),
            (SandboxError::Checkpoint(CheckpointError::SnapshotExists(snapshot())), Code::AlreadyExists),
            (
                SandboxError::Checkpoint(CheckpointError::Host { step: "dump", source: io_error() }),
                Code::Internal,
            ),
            (
                SandboxError::Runtime { id: key().id, op: "pause", source: Box::new(io_error()) },
                Code::Internal,
            ),
            (SandboxError::Interrupted(crate::sandbox::Interrupted), Code::Unavailable),
        ];
        for (error, code) in cases {
            assert_eq!(sandbox_error(&error).code(), code, "{error}");
        }
    }

    #[test]
    fn a_backend_that_cannot_checkpoint_names_itself() {
        let mapped =
            sandbox_error(&SandboxError::Checkpoint(CheckpointError::NotSupported { backend: "process" }));
        assert!(mapped.message().contains("process"), "{}", mapped.message());
    }

    #[test]
    fn internal_errors_carry_a_short_message_and_an_error_id_not_the_cause() {
        let source = io::Error::other("boom\ngoroutine 1 [running]:\nmain.main()");
        let mapped =
            sandbox_error(&SandboxError::Runtime { id: key().id, op: "pause", source: Box::new(source) });
        let message = mapped.message();
        assert!(message.starts_with(&format!("sandbox {}: pause failed (error id ", key().id)), "{message}");
        assert!(!message.contains("boom") && !message.contains("goroutine"), "{message}");
        let info = mapped.get_error_details().error_info().cloned().expect("ErrorInfo");
        let id = info.metadata.get("error_id").expect("error id");
        assert!(message.contains(id.as_str()), "{message}");
        let other =
            sandbox_error(&SandboxError::Runtime { id: key().id, op: "pause", source: Box::new(io_error()) });
        assert_ne!(
            other.get_error_details().error_info().expect("ErrorInfo").metadata.get("error_id"),
            Some(id)
        );
    }

    #[test]
    fn an_internal_message_is_bounded_to_its_first_line() {
        let long = format!("{}\nsecond line", "x".repeat(500));
        let mapped = internal(&io::Error::other(long));
        assert!(mapped.message().starts_with(&"x".repeat(MAX_INTERNAL_MESSAGE)), "{}", mapped.message());
        assert!(!mapped.message().contains(&"x".repeat(MAX_INTERNAL_MESSAGE + 1)));
        assert!(!mapped.message().contains("second line"));
    }

    #[test]
    fn drain_and_auth_errors() {
        assert_eq!(drain_error(&DrainError::ShuttingDown).code(), Code::FailedPrecondition);
        assert_eq!(unauthenticated("missing token").code(), Code::Unauthenticated);
        assert_eq!(shutting_down().code(), Code::Unavailable);
    }
}
