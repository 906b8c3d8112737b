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
mod tests {
    use std::collections::BTreeMap;

    use sandhost_runtime::{LifecycleId, SandboxId, SandboxKey, SnapshotId};
    use tonic::Code;
    use tonic_types::StatusExt as _;

    use super::*;

    fn field_of(status: &Status) -> String {
        status.get_error_details().bad_request().expect("BadRequest").field_violations[0].field.clone()
    }

    fn full_request() -> pb::CreateRequest {
        pb::CreateRequest {
            id: "sb-1".into(),
            template: "img".into(),
            argv: vec!["sleep".into(), "5".into()],
            env: vec![pb::EnvVar { name: "A".into(), value: "1".into() }],
            cwd: "/tmp".into(),
            timeout: Some(prost_types::Duration { seconds: 90, nanos: 0 }),
            resources: Some(pb::Resources {
                cpu_millis: Some(500),
                memory_bytes: Some(1 << 20),
                pids_max: Some(64),
            }),
            labels: BTreeMap::from([("team".into(), "a".into())]),
            drain_policy: pb::DrainPolicy::Stop.into(),
            restore_from: "snap-1".into(),
            stop_grace: Some(prost_types::Duration { seconds: 2, nanos: 0 }),
        }
    }

    #[test]
    fn a_create_request_converts_field_by_field() {
        let request = create_request(full_request()).expect("converts");
        assert_eq!(request.id.as_deref(), Some("sb-1"));
        assert_eq!(request.template.as_deref(), Some("img"));
        assert_eq!(request.argv, ["sleep", "5"]);
        assert_eq!(request.env, [("A".to_owned(), "1".to_owned())]);
        assert_eq!(request.cwd.as_deref(), Some("/tmp"));
        assert_eq!(request.timeout, Some(Duration::from_secs(90)));
        assert_eq!(request.cpu_millis, Some(500));
        assert_eq!(request.memory_bytes, Some(1 << 20));
        assert_eq!(request.pids_max, Some(64));
        assert_eq!(request.labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(request.drain_policy, DrainPolicy::Stop);
        assert_eq!(request.restore_from.as_deref(), Some("snap-1"));
        assert_eq!(request.stop_grace, Some(Duration::from_secs(2)));
    }

    #[test]
    fn empty_fields_mean_defaults() {
        let request = create_request(pb::CreateRequest { argv: vec!["true".into()], ..Default::default() })
            .expect("converts");
        assert_eq!(request.id, None);
        assert_eq!(request.template, None);
        assert_eq!(request.cwd, None);
        assert_eq!(request.timeout, None);
        assert_eq!(request.memory_bytes, None);
        assert_eq!(request.drain_policy, DrainPolicy::Wait);
        assert_eq!(request.restore_from, None);
        assert_eq!(request.stop_grace, None);
    }

    #[test]
    fn unconvertible_fields_are_refused_by_name() {
        let mut request = full_request();
        request.timeout = Some(prost_types::Duration { seconds: -1, nanos: 0 });
        let error = create_request(request).expect_err("negative timeout");
        assert_eq!(error.code(), Code::InvalidArgument);
        assert_eq!(field_of(&error), "timeout");

        let mut request = full_request();
        request.stop_grace = Some(prost_types::Duration { seconds: -5, nanos: 0 });
        assert_eq!(field_of(&create_request(request).expect_err("negative grace")), "stop_grace");

        let mut request = full_request();
        request.drain_policy = 42;
        assert_eq!(field_of(&create_request(request).expect_err("unknown policy")), "drain_policy");

        let error =
            list_filter(pb::ListRequest { state: 99, ..Default::default() }).expect_err("unknown state");
        assert_eq!(field_of(&error), "state");
    }

    #[test]
    fn every_state_and_policy_round_trips() {
        for state in SandboxState::ALL {
            let proto = state_to_proto(state);
            assert_eq!(state_from_proto("state", proto.into()).expect("known"), Some(state));
        }
        assert_eq!(state_from_proto("state", 0).expect("known"), None);
        for policy in [DrainPolicy::Wait, DrainPolicy::Stop, DrainPolicy::Checkpoint] {
            let proto = drain_policy_to_proto(policy);
            assert_eq!(drain_policy_from_proto("p", proto.into()).expect("known"), policy);
        }
        for status in NodeStatus::ALL {
            let name = node_status_to_proto(status).as_str_name();
            assert_eq!(name, format!("NODE_STATUS_{}", status.as_str()));
        }
    }

    #[test]
    fn a_duration_s_nanos_are_refused_outside_a_second_not_carried() {
        let at = |seconds, nanos| duration("stop_grace", Some(prost_types::Duration { seconds, nanos }));
        assert_eq!(at(1, 999_999_999).expect("valid"), Some(Duration::new(1, 999_999_999)));
        for nanos in [1_000_000_000, 1_500_000_000, -1] {
            assert_eq!(field_of(&at(1, nanos).expect_err("out of range")), "stop_grace", "{nanos}");
        }
    }

    #[test]
    fn a_timestamp_is_refused_outside_its_range_naming_the_field_not_normalized() {
        let since = |seconds, nanos| {
            let request = pb::LogsRequest {
                id: "sb-1".into(),
                follow: false,
                since: Some(prost_types::Timestamp { seconds, nanos }),
            };
            logs_since(&request)
        };
        assert_eq!(
            since(1, 999_999_999).expect("valid"),
            Some(SystemTime::UNIX_EPOCH + Duration::new(1, 999_999_999))
        );
        assert_eq!(
            since(-1, 0).expect("before the epoch is a time"),
            SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(1))
        );
        assert!(since(253_402_300_799, 999_999_999).is_ok(), "9999-12-31T23:59:59.999999999Z");
        for (seconds, nanos) in [
            (1, 1_000_000_000),
            (1, -1),
            (1, i32::MAX),
            (1, i32::MIN),
            (253_402_300_800, 0),
            (-62_135_596_801, 0),
            (i64::MAX, 0),
            (i64::MIN, 0),
        ] {
            let error = since(seconds, nanos).expect_err("out of range");
            assert_eq!(field_of(&error), "since", "{seconds}.{nanos}");
            assert_eq!(error.code(), tonic::Code::InvalidArgument);
        }
        assert_eq!(logs_since(&pb::LogsRequest::default()).expect("absent"), None);
        // The same check for an Update's end time.
        let request = pb::UpdateRequest {
            id: "sb-1".into(),
            end: Some(pb::update_request::End::EndTime(prost_types::Timestamp { seconds: 2_000, nanos: -5 })),
            labels: None,
        };
        assert_eq!(
            field_of(&update_request(request, SystemTime::UNIX_EPOCH).expect_err("bad nanos")),
            "end_time"
        );
    }

    #[test]
    fn update_turns_an_end_time_into_a_timeout() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let request = pb::UpdateRequest {
            id: "sb-1".into(),
            end: Some(pb::update_request::End::EndTime(timestamp(now + Duration::from_secs(60)))),
            labels: Some(pb::Labels { labels: BTreeMap::new() }),
        };
        let update = update_request(request, now).expect("converts");
        assert_eq!(update.end, Some(NewEnd::EndTime(Duration::from_secs(60))));
        assert_eq!(update.end.map(NewEnd::field), Some("end_time"), "an error about it names end_time");
        assert_eq!(update.labels, Some(BTreeMap::new()));

        let past = pb::UpdateRequest {
            id: "sb-1".into(),
            end: Some(pb::update_request::End::EndTime(timestamp(now - Duration::from_secs(1)))),
            labels: None,
        };
        assert_eq!(field_of(&update_request(past, now).expect_err("past")), "end_time");

        let unchanged = update_request(pb::UpdateRequest { id: "x".into(), end: None, labels: None }, now)
            .expect("converts");
        assert_eq!(unchanged.end, None);
        assert_eq!(unchanged.labels, None);
    }

    #[test]
    fn a_sandbox_converts_with_its_exit() {
        let created = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let info = SandboxInfo {
            id: SandboxId::parse("sb-1").expect("id"),
            lifecycle: LifecycleId::parse("ab12").expect("lifecycle"),
            state: SandboxState::Exited,
            argv: vec!["false".into()],
            template: "host".into(),
            limits: Limits { memory_bytes: Some(5), cpu_millis: None, pids_max: Some(3) },
            labels: BTreeMap::from([("k".into(), "v".into())]),
            drain_policy: DrainPolicy::Checkpoint,
            created_at: created,
            started_at: Some(created),
            end_time: None,
            exited_at: Some(created + Duration::from_secs(1)),
            exit: Some(ExitInfo {
                exit: Some(Exit::Signal(9)),
                reason: ExitReason::Killed,
                message: None,
                oom_killed: Some(true),
            }),
            restored_from: Some(SnapshotId::parse("snap").expect("id")),
            conditions: vec![Condition { kind: ConditionKind::MetadataLost, message: "lost".into() }],
        };
        let proto = sandbox(info);
        assert_eq!(proto.id, "sb-1");
        assert_eq!(proto.lifecycle_id, "ab12");
        assert_eq!(proto.state(), pb::SandboxState::Exited);
        assert_eq!(proto.drain_policy(), pb::DrainPolicy::Checkpoint);
        assert_eq!(proto.created_at, Some(timestamp(created)));
        assert_eq!(proto.end_time, None);
        let resources = proto.resources.expect("resources");
        assert_eq!(
            (resources.memory_bytes, resources.cpu_millis, resources.pids_max),
            (Some(5), None, Some(3))
        );
        let exit = proto.exit.expect("exit");
        assert_eq!(exit.status, Some(pb::sandbox_exit::Status::Signal(9)));
        assert_eq!(exit.reason(), pb::ExitReason::Killed);
        assert_eq!(exit.oom_killed, Some(true));
        assert_eq!(proto.restored_from, "snap");
        assert_eq!(proto.conditions[0].r#type(), pb::SandboxConditionType::MetadataLost);
    }

    #[test]
    fn every_condition_has_its_proto_name() {
        for kind in ConditionKind::ALL {
            let proto = condition(Condition { kind, message: String::new() });
            let name = proto.r#type().as_str_name();
            assert_eq!(name, format!("SANDBOX_CONDITION_TYPE_{}", kind.as_str().to_uppercase()));
        }
    }

    #[test]
    fn every_exit_reason_has_its_proto_name() {
        for reason in ExitReason::ALL {
            let name = exit_reason_to_proto(reason).as_str_name();
            assert_eq!(name, format!("EXIT_REASON_{}", reason.as_str().to_uppercase()));
        }
    }

    #[test]
    fn drain_progress_and_requests_convert() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let progress = DrainProgress {
            status: NodeStatus::Forcing,
            status_changed_at: now,
            shutting_down: true,
            in_flight_starts: 1,
            live: 2,
            exited: 3,
            force_stopped: 4,
            policy_stopped: 6,
            checkpointed: 5,
            deadline: Some(now + Duration::from_secs(30)),
            failures: vec![DrainFailure {
                sandbox: SandboxKey {
                    id: SandboxId::parse("sb-1").expect("id"),
                    lifecycle: LifecycleId::parse("ab12").expect("lifecycle"),
                },
                error: crate::drain::StopFailure::NotStoppedInTime { bound: Duration::from_secs(30) },
            }],
            evacuated: vec![crate::drain::Evacuation {
                sandbox: "sb-2".into(),
                snapshot: "sb-2-snap".into(),
            }],
        };
        let proto = drain_progress(progress);
        assert_eq!(
            (proto.evacuated[0].sandbox_id.as_str(), proto.evacuated[0].snapshot_id.as_str()),
            ("sb-2", "sb-2-snap")
        );
        assert_eq!(proto.status(), pb::NodeStatus::Forcing);
        assert!(proto.shutting_down);
        assert_eq!(
            (
                proto.in_flight_starts,
                proto.live,
                proto.exited,
                proto.force_stopped,
                proto.checkpointed,
                proto.policy_stopped
            ),
            (1, 2, 3, 4, 5, 6)
        );
        assert_eq!(proto.deadline, Some(timestamp(now + Duration::from_secs(30))));
        assert_eq!(proto.failures[0].subject, "sb-1/ab12");
        assert_eq!(proto.failures[0].message, "not stopped within FORCE_SHUTDOWN_TIMEOUT (30s)");

        let request = drain_request(&pb::DrainRequest {
            timeout: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
            force: true,
        })
        .expect("converts");
        assert_eq!(request, DrainRequest { timeout: Some(Duration::from_secs(5)), force: true });
        let error = drain_request(&pb::DrainRequest {
            timeout: Some(prost_types::Duration { seconds: -5, nanos: 0 }),
            force: false,
        })
        .expect_err("negative");
        assert_eq!(field_of(&error), "timeout");
        // At most the longest a sandbox may run: that much is accepted, a second more is not.
        let longest = i64::try_from(crate::config::MAX_SANDBOX_TIMEOUT.as_secs()).expect("fits");
        let at = |seconds| pb::DrainRequest {
            timeout: Some(prost_types::Duration { seconds, nanos: 0 }),
            force: false,
        };
        assert!(drain_request(&at(longest)).is_ok());
        assert_eq!(field_of(&drain_request(&at(longest + 1)).expect_err("too long")), "timeout");
    }
}
