//! Proto <-> domain conversions. Requests go proto -> domain and refuse only what cannot be
//! converted (negative durations, unknown enum values, timestamps out of range), with
//! `INVALID_ARGUMENT` naming the field; everything else is validated by the core. Replies go
//! domain -> proto and cannot fail.

use std::time::{Duration, SystemTime};

use sandhost_proto::v1 as pb;
use sandhost_runtime::{Exit, Limits, SnapshotInfo};
use tonic::Status;

use super::status::invalid_argument;
use crate::drain::{DrainFailure, DrainProgress, DrainRequest, NodeStatus};
use crate::node::{NodeInfo, Resources};
use crate::sandbox::{
    Condition, ConditionKind, CreateRequest, DrainPolicy, ExitInfo, ExitReason, ListFilter, NewEnd,
    SandboxInfo, SandboxState, UpdateRequest,
};

/// A `google.protobuf.Timestamp` from a time (times before 1970 clamp to the epoch).
pub(crate) fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

/// The seconds of 0001-01-01T00:00:00Z and of 9999-12-31T23:59:59Z: the range of a
/// `google.protobuf.Timestamp`.
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// A timestamp field: refused naming `field` unless it is a valid `google.protobuf.Timestamp`
/// (nanos from 0 to 999 999 999, from year 1 to year 9999) that this host can hold.
pub(crate) fn time(field: &str, value: prost_types::Timestamp) -> Result<SystemTime, Status> {
    // prost would carry nanos of a second or more (or negative ones) into the seconds: refused
    // instead, as the Timestamp message defines them.
    if !(0..1_000_000_000).contains(&value.nanos) {
        return Err(invalid_argument(field, "nanos must be from 0 to 999999999"));
    }
    if !TIMESTAMP_SECONDS.contains(&value.seconds) {
        return Err(invalid_argument(field, "must be from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z"));
    }
    SystemTime::try_from(value).map_err(|e| invalid_argument(field, &format!("not a valid time: {e}")))
}

/// A duration field: absent stays `None`; negative or out of range is refused naming `field`.
pub(crate) fn duration(
    field: &str,
    value: Option<prost_types::Duration>,
) -> Result<Option<Duration>, Status> {
    value
        .map(|d| {
            // prost would carry nanos of a second or more into the seconds: refused instead, as the
            // Duration message defines them (from 0 to 999 999 999 for a duration that is not negative).
            if !(0..1_000_000_000).contains(&d.nanos) {
                return Err(invalid_argument(field, "nanos must be from 0 to 999999999"));
            }
            Duration::try_from(d).map_err(|e| invalid_argument(field, &format!("not a valid duration: {e}")))
        })
        .transpose()
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

// --- enums ---

pub(crate) fn state_to_proto(state: SandboxState) -> pb::SandboxState {
    match state {
        SandboxState::Starting => pb::SandboxState::Starting,
        SandboxState::Running => pb::SandboxState::Running,
        SandboxState::Paused => pb::SandboxState::Paused,
        SandboxState::Stopping => pb::SandboxState::Stopping,
        SandboxState::Exited => pb::SandboxState::Exited,
    }
}

/// A state filter: `UNSPECIFIED` is "any".
pub(crate) fn state_from_proto(field: &str, value: i32) -> Result<Option<SandboxState>, Status> {
    match pb::SandboxState::try_from(value) {
        Ok(pb::SandboxState::Unspecified) => Ok(None),
        Ok(pb::SandboxState::Starting) => Ok(Some(SandboxState::Starting)),
        Ok(pb::SandboxState::Running) => Ok(Some(SandboxState::Running)),
        Ok(pb::SandboxState::Paused) => Ok(Some(SandboxState::Paused)),
        Ok(pb::SandboxState::Stopping) => Ok(Some(SandboxState::Stopping)),
        Ok(pb::SandboxState::Exited) => Ok(Some(SandboxState::Exited)),
        Err(_) => Err(invalid_argument(field, &format!("unknown sandbox state {value}"))),
    }
}

pub(crate) fn drain_policy_to_proto(policy: DrainPolicy) -> pb::DrainPolicy {
    match policy {
        DrainPolicy::Wait => pb::DrainPolicy::Wait,
        DrainPolicy::Stop => pb::DrainPolicy::Stop,
        DrainPolicy::Checkpoint => pb::DrainPolicy::Checkpoint,
    }
}

/// `UNSPECIFIED` is the default, `WAIT`.
pub(crate) fn drain_policy_from_proto(field: &str, value: i32) -> Result<DrainPolicy, Status> {
    match pb::DrainPolicy::try_from(value) {
        Ok(pb::DrainPolicy::Unspecified | pb::DrainPolicy::Wait) => Ok(DrainPolicy::Wait),
        Ok(pb::DrainPolicy::Stop) => Ok(DrainPolicy::Stop),
        Ok(pb::DrainPolicy::Checkpoint) => Ok(DrainPolicy::Checkpoint),
        Err(_) => Err(invalid_argument(field, &format!("unknown drain policy {value}"))),
    }
}

pub(crate) fn exit_reason_to_proto(reason: ExitReason) -> pb::ExitReason {
    match reason {
        ExitReason::Exited => pb::ExitReason::Exited,
        ExitReason::Timeout => pb::ExitReason::Timeout,
        ExitReason::Killed => pb::ExitReason::Killed,
        ExitReason::ForceStopped => pb::ExitReason::ForceStopped,
        ExitReason::DrainStopped => pb::ExitReason::DrainStopped,
        ExitReason::Checkpointed => pb::ExitReason::Checkpointed,
        ExitReason::StartFailed => pb::ExitReason::StartFailed,
        ExitReason::Unidentified => pb::ExitReason::Unidentified,
    }
}

fn condition(condition: Condition) -> pb::SandboxCondition {
    let kind = match condition.kind {
        ConditionKind::RuntimeStateLost => pb::SandboxConditionType::RuntimeStateLost,
        ConditionKind::MetadataLost => pb::SandboxConditionType::MetadataLost,
        ConditionKind::Unidentified => pb::SandboxConditionType::Unidentified,
    };
    pb::SandboxCondition { r#type: kind.into(), message: condition.message }
}

pub(crate) fn node_status_to_proto(status: NodeStatus) -> pb::NodeStatus {
    match status {
        NodeStatus::Ready => pb::NodeStatus::Ready,
        NodeStatus::Draining => pb::NodeStatus::Draining,
        NodeStatus::Drained => pb::NodeStatus::Drained,
        NodeStatus::Forcing => pb::NodeStatus::Forcing,
        NodeStatus::Unhealthy => pb::NodeStatus::Unhealthy,
    }
}

// --- SandboxService ---

pub(crate) fn create_request(request: pb::CreateRequest) -> Result<CreateRequest, Status> {
    let resources = request.resources.unwrap_or_default();
    Ok(CreateRequest {
        id: non_empty(request.id),
        template: non_empty(request.template),
        argv: request.argv,
        env: request.env.into_iter().map(|var| (var.name, var.value)).collect(),
        cwd: non_empty(request.cwd),
        timeout: duration("timeout", request.timeout)?,
        memory_bytes: resources.memory_bytes,
        cpu_millis: resources.cpu_millis,
        pids_max: resources.pids_max,
        labels: request.labels,
        drain_policy: drain_policy_from_proto("drain_policy", request.drain_policy)?,
        restore_from: non_empty(request.restore_from),
        stop_grace: duration("stop_grace", request.stop_grace)?,
    })
}

/// `now` is when the request arrived (an `end_time` is turned into a timeout from then).
pub(crate) fn update_request(request: pb::UpdateRequest, now: SystemTime) -> Result<UpdateRequest, Status> {
    let end = match request.end {
        None => None,
        Some(pb::update_request::End::Timeout(timeout)) => {
            duration("timeout", Some(timeout))?.map(NewEnd::Timeout)
        }
        Some(pb::update_request::End::EndTime(end)) => {
            let end = time("end_time", end)?;
            let timeout =
                end.duration_since(now).map_err(|_| invalid_argument("end_time", "must be in the future"))?;
            Some(NewEnd::EndTime(timeout))
        }
    };
    Ok(UpdateRequest { end, labels: request.labels.map(|labels| labels.labels) })
}

/// The `since` of a `Logs` request.
pub(crate) fn logs_since(request: &pb::LogsRequest) -> Result<Option<SystemTime>, Status> {
    request.since.map(|since| time("since", since)).transpose()
}

/// Sandboxes in a `List` reply when the request names no page size.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 100;
/// Most sandboxes in a `List` reply.
pub(crate) const MAX_PAGE_SIZE: usize = 1000;

/// The filter of a `List` request, for one page; the page may end earlier (see
/// [`super::sandbox_service`]). The page token is the last id of the previous page.
pub(crate) fn list_filter(request: pb::ListRequest) -> Result<ListFilter, Status> {
    let after = match request.page_token.as_str() {
        "" => None,
        token => Some(
            sandhost_runtime::SandboxId::parse(token)
                .map_err(|_| invalid_argument("page_token", "not a token this node gave"))?,
        ),
    };
    let limit = match usize::try_from(request.page_size).unwrap_or(usize::MAX) {
        0 => DEFAULT_PAGE_SIZE,
        size => size.min(MAX_PAGE_SIZE),
    };
    crate::sandbox::check_labels(&request.labels).map_err(|e| invalid_argument(&e.field, &e.reason))?;
    Ok(ListFilter { state: state_from_proto("state", request.state)?, labels: request.labels, after, limit })
}

fn resources(limits: Limits) -> pb::Resources {
    pb::Resources {
        cpu_millis: limits.cpu_millis,
        memory_bytes: limits.memory_bytes,
        pids_max: limits.pids_max,
    }
}

fn exit(info: ExitInfo) -> pb::SandboxExit {
    pb::SandboxExit {
        status: info.exit.map(|exit| match exit {
            Exit::Code(code) => pb::sandbox_exit::Status::Code(code),
            Exit::Signal(signal) => pb::sandbox_exit::Status::Signal(signal),
        }),
        reason: exit_reason_to_proto(info.reason).into(),
        message: info.message.unwrap_or_default(),
        oom_killed: info.oom_killed,
    }
}

pub(crate) fn sandbox(info: SandboxInfo) -> pb::Sandbox {
    pb::Sandbox {
        id: info.id.into(),
        lifecycle_id: info.lifecycle.into(),
        state: state_to_proto(info.state).into(),
        argv: info.argv,
        template: info.template,
        resources: Some(resources(info.limits)),
        labels: info.labels,
        drain_policy: drain_policy_to_proto(info.drain_policy).into(),
        created_at: Some(timestamp(info.created_at)),
        started_at: info.started_at.map(timestamp),
        end_time: info.end_time.map(timestamp),
        exited_at: info.exited_at.map(timestamp),
        exit: info.exit.map(exit),
        restored_from: info.restored_from.map(String::from).unwrap_or_default(),
        conditions: info.conditions.into_iter().map(condition).collect(),
    }
}

pub(crate) fn snapshot(info: SnapshotInfo) -> pb::Snapshot {
    pb::Snapshot {
        id: info.id.into(),
        source_sandbox_id: info.source.into(),
        created_at: Some(timestamp(info.created_at)),
        size_bytes: info.size_bytes,
    }
}

// --- NodeService ---

pub(crate) fn drain_request(request: &pb::DrainRequest) -> Result<DrainRequest, Status> {
    let timeout = duration("timeout", request.timeout)?;
    if timeout.is_some_and(|t| t > crate::config::MAX_SANDBOX_TIMEOUT) {
        let longest = humantime::format_duration(crate::config::MAX_SANDBOX_TIMEOUT);
        return Err(invalid_argument(
            "timeout",
            &format!("at most {longest}, the longest a sandbox may run"),
        ));
    }
    Ok(DrainRequest { timeout, force: request.force })
}

fn failure(failure: &DrainFailure) -> pb::DrainFailure {
    pb::DrainFailure { subject: failure.sandbox.to_string(), message: crate::error_chain(&failure.error) }
}

pub(crate) fn drain_progress(progress: DrainProgress) -> pb::DrainProgress {
    pb::DrainProgress {
        status: node_status_to_proto(progress.status).into(),
        status_changed_at: Some(timestamp(progress.status_changed_at)),
        shutting_down: progress.shutting_down,
        in_flight_starts: progress.in_flight_starts,
        live: progress.live,
        exited: progress.exited,
        force_stopped: progress.force_stopped,
        policy_stopped: progress.policy_stopped,
        checkpointed: progress.checkpointed,
        deadline: progress.deadline.map(timestamp),
        failures: progress.failures.iter().map(failure).collect(),
        evacuated: progress
            .evacuated
            .into_iter()
            .map(|e| pb::Evacuation { sandbox_id: e.sandbox, snapshot_id: e.snapshot })
            .collect(),
    }
}

fn node_resources(resources: Resources) -> pb::NodeResources {
    pb::NodeResources {
        sandboxes: resources.sandboxes,
        memory_bytes: resources.memory_bytes,
        cpu_millis: resources.cpu_millis,
    }
}

pub(crate) fn node_info(info: NodeInfo) -> pb::GetInfoResponse {
    pb::GetInfoResponse {
        node_id: info.node_id,
        version: info.version.to_owned(),
        started_at: Some(timestamp(info.started_at)),
        runtime: info.runtime.to_owned(),
        status: node_status_to_proto(info.drain.status).into(),
        status_changed_at: Some(timestamp(info.drain.status_changed_at)),
        counts: info
            .counts
            .into_iter()
            .map(|(state, count)| pb::StateCount { state: state_to_proto(state).into(), count })
            .collect(),
        allocated: Some(node_resources(info.allocated)),
        capacity: Some(node_resources(info.capacity)),
        drain: Some(drain_progress(info.drain)),
        interrupted_shutdown: info.interrupted_shutdown.map(|interrupted| pb::InterruptedShutdown {
            began_at: Some(timestamp(interrupted.began_at)),
            live_at_restart: interrupted.live_at_restart,
        }),
    }
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
