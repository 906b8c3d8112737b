//! The tests of `convert.rs`: each message both ways, and every refusal naming its field.

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

    let error = list_filter(pb::ListRequest { state: 99, ..Default::default() }).expect_err("unknown state");
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

    let unchanged =
        update_request(pb::UpdateRequest { id: "x".into(), end: None, labels: None }, now).expect("converts");
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
    assert_eq!((resources.memory_bytes, resources.cpu_millis, resources.pids_max), (Some(5), None, Some(3)));
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
        evacuated: vec![crate::drain::Evacuation { sandbox: "sb-2".into(), snapshot: "sb-2-snap".into() }],
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
