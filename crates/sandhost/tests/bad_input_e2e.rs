//! Every bad input gets a clear answer and changes nothing: one table of hostile requests (ids,
//! paths, sizes, environment names, durations, limits, snapshot names, labels, tokens, malformed
//! and oversized messages), sent over real gRPC to the real `sandhost serve` on each backend.
//!
//! Every row must be refused with its code and, for INVALID_ARGUMENT, a `BadRequest` detail naming
//! the field (the message names it too). Afterwards the node is as it was: the same sandboxes in
//! the same states and lifecycles, the live one still running its command, no snapshot, no
//! sandbox directory or cgroup of a refused request, READY and SERVING, and a good Create works.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;
mod e2e;

use std::future::Future;
use std::pin::Pin;

use common::Backend;
use e2e::{Serve, ServeOptions, ok};
use prost_types::{Duration, Timestamp};
use sandhost_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt as _;

on_both_backends!(async: every_bad_input_is_refused_naming_its_field_and_changes_nothing);

type Call = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

/// One hostile request: what it is, the code it must get, and (for INVALID_ARGUMENT) the field
/// its BadRequest detail must name, as a prefix (`env[...]`, `labels[...]` name the entry).
struct Row {
    what: String,
    code: Code,
    field: Option<&'static str>,
    call: Call,
}

/// A request message whose field 1 is a varint: as the bytes of a request whose field 1 is a
/// string, it is not valid protobuf for that method.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(uint64, tag = "1")]
    id: u64,
}

/// The ids a request may not carry (as a sandbox or snapshot id; an empty one is no id).
fn bad_ids() -> Vec<String> {
    vec![
        String::new(),
        "Bad_Id".into(),
        "../alive".into(),
        "alive/..".into(),
        "a/b".into(),
        "a b".into(),
        "-alive".into(),
        "alive.".into(),
        "x".repeat(64),
        "alive\0".into(),
        "alivé".into(),
        "alive\n".into(),
        "\u{1b}[2J".into(),
    ]
}

fn secs(seconds: i64, nanos: i32) -> Option<Duration> {
    Some(Duration { seconds, nanos })
}

fn resources(memory: Option<u64>, cpu: Option<u32>, pids: Option<u32>) -> Option<pb::Resources> {
    Some(pb::Resources { memory_bytes: memory, cpu_millis: cpu, pids_max: pids })
}

fn env(name: &str, value: &str) -> Vec<pb::EnvVar> {
    vec![pb::EnvVar { name: name.into(), value: value.into() }]
}

/// The rows, built over the live sandbox `alive` of `serve`.
#[allow(clippy::too_many_lines)] // one table, read top to bottom
async fn rows(serve: &Serve, backend: Backend) -> Vec<Row> {
    let sandboxes = serve.sandboxes().await;
    let nodes = serve.nodes().await;
    let mut rows: Vec<Row> = Vec::new();
    macro_rules! row {
        ($what:expr, $code:expr, $field:expr, $method:ident($request:expr)) => {{
            let request = $request;
            let mut client = sandboxes.clone();
            rows.push(Row {
                what: $what.to_string(),
                code: $code,
                field: $field,
                call: Box::pin(async move { client.$method(request).await.map(drop) }),
            });
        }};
    }
    let invalid = Code::InvalidArgument;
    let create = |request: pb::CreateRequest| pb::CreateRequest {
        argv: if request.argv.is_empty() && request.restore_from.is_empty() {
            vec!["true".into()]
        } else {
            request.argv
        },
        ..request
    };

    // Ids, on every call that takes one.
    for id in bad_ids() {
        let shown = format!("{id:?}");
        row!(format!("Get {shown}"), invalid, Some("id"), get(pb::GetRequest { id: id.clone() }));
        row!(
            format!("Delete {shown}"),
            invalid,
            Some("id"),
            delete(pb::DeleteRequest { id: id.clone(), now: true })
        );
        row!(format!("Pause {shown}"), invalid, Some("id"), pause(pb::PauseRequest { id: id.clone() }));
        row!(format!("Resume {shown}"), invalid, Some("id"), resume(pb::ResumeRequest { id: id.clone() }));
        row!(
            format!("Update {shown}"),
            invalid,
            Some("id"),
            update(pb::UpdateRequest {
                id: id.clone(),
                end: Some(pb::update_request::End::Timeout(Duration { seconds: 1, nanos: 0 })),
                labels: None,
            })
        );
        row!(
            format!("Checkpoint {shown}"),
            invalid,
            Some("id"),
            checkpoint(pb::CheckpointRequest { id: id.clone(), stop: true })
        );
        row!(
            format!("Logs {shown}"),
            invalid,
            Some("id"),
            logs(pb::LogsRequest { id: id.clone(), ..Default::default() })
        );
        row!(format!("Wait {shown}"), invalid, Some("id"), wait(pb::WaitRequest { id: id.clone() }));
        row!(
            format!("DeleteSnapshot {shown}"),
            invalid,
            Some("id"),
            delete_snapshot(pb::DeleteSnapshotRequest { id: id.clone() })
        );
        // An empty id on Create asks the node for one, and an empty `restore_from` is no restore.
        if !id.is_empty() {
            row!(
                format!("Create id {shown}"),
                invalid,
                Some("id"),
                create(create(pb::CreateRequest { id: id.clone(), ..Default::default() }))
            );
            row!(
                format!("Create restore_from {shown}"),
                invalid,
                Some("restore_from"),
                create(pb::CreateRequest { restore_from: id.clone(), ..Default::default() })
            );
        }
    }
    // A well-formed id of nothing: NOT_FOUND, on every call.
    row!("Get unknown", Code::NotFound, None, get(pb::GetRequest { id: "nobody".into() }));
    row!(
        "Delete unknown",
        Code::NotFound,
        None,
        delete(pb::DeleteRequest { id: "nobody".into(), now: true })
    );
    row!("Pause unknown", Code::NotFound, None, pause(pb::PauseRequest { id: "nobody".into() }));
    row!("Wait unknown", Code::NotFound, None, wait(pb::WaitRequest { id: "nobody".into() }));
    row!(
        "Logs unknown",
        Code::NotFound,
        None,
        logs(pb::LogsRequest { id: "nobody".into(), ..Default::default() })
    );
    // A live id that is taken.
    row!(
        "Create over a live id",
        Code::AlreadyExists,
        None,
        create(create(pb::CreateRequest { id: "alive".into(), ..Default::default() }))
    );

    // Paths: the command and the working directory.
    let paths: Vec<(&str, pb::CreateRequest, &'static str)> = vec![
        ("argv[0] empty", pb::CreateRequest { argv: vec![String::new()], ..Default::default() }, "argv"),
        ("argv NUL", pb::CreateRequest { argv: vec!["/bin/tr\0ue".into()], ..Default::default() }, "argv[0]"),
        (
            "argv[1] NUL",
            pb::CreateRequest { argv: vec!["echo".into(), "a\0b".into()], ..Default::default() },
            "argv[1]",
        ),
        (
            "argv[0] missing",
            pb::CreateRequest { argv: vec!["/no/such/file".into()], ..Default::default() },
            "argv",
        ),
        (
            "argv[0] a directory",
            pb::CreateRequest { argv: vec!["/usr/bin".into()], ..Default::default() },
            "argv",
        ),
        (
            "argv[0] escapes",
            pb::CreateRequest { argv: vec!["/../../../bin/true/..".into()], ..Default::default() },
            "argv",
        ),
        (
            "argv[0] the state dir",
            pb::CreateRequest {
                argv: vec![serve.state_dir.join("node-id").display().to_string()],
                ..Default::default()
            },
            "argv",
        ),
        ("cwd relative", pb::CreateRequest { cwd: "tmp".into(), ..Default::default() }, "cwd"),
        ("cwd ..", pb::CreateRequest { cwd: "/tmp/../etc".into(), ..Default::default() }, "cwd"),
        ("cwd .", pb::CreateRequest { cwd: "/./tmp".into(), ..Default::default() }, "cwd"),
        ("cwd NUL", pb::CreateRequest { cwd: "/tmp\0x".into(), ..Default::default() }, "cwd"),
        (
            "cwd too long",
            pb::CreateRequest { cwd: format!("/{}", "a".repeat(5000)), ..Default::default() },
            "cwd",
        ),
        ("cwd a file", pb::CreateRequest { cwd: "/etc/passwd".into(), ..Default::default() }, "cwd"),
        ("cwd missing", pb::CreateRequest { cwd: "/no/such/dir".into(), ..Default::default() }, "cwd"),
        (
            "cwd the state dir",
            pb::CreateRequest { cwd: serve.state_dir.display().to_string(), ..Default::default() },
            "cwd",
        ),
    ];
    for (what, request, field) in paths {
        row!(what, invalid, Some(field), create(create(request.clone())));
    }
    // Templates and snapshots by name.
    row!(
        "template ..",
        invalid,
        Some("template"),
        create(create(pb::CreateRequest { template: "../etc".into(), ..Default::default() }))
    );
    row!(
        "template a path",
        invalid,
        Some("template"),
        create(create(pb::CreateRequest { template: "/".into(), ..Default::default() }))
    );
    row!(
        "template unknown",
        Code::NotFound,
        None,
        create(create(pb::CreateRequest { template: "nosuch".into(), ..Default::default() }))
    );
    // Restoring names no command: the snapshot's runs.
    row!(
        "restore with argv",
        invalid,
        Some("argv"),
        create(pb::CreateRequest {
            restore_from: "snap".into(),
            argv: vec!["true".into()],
            ..Default::default()
        })
    );
    let (missing_snapshot, missing_snapshot_field) = match backend {
        Backend::Gvisor => (Code::NotFound, None),
        Backend::Process => (Code::FailedPrecondition, None),
    };
    row!(
        "restore unknown snapshot",
        missing_snapshot,
        missing_snapshot_field,
        create(pb::CreateRequest { restore_from: "nosnap".into(), ..Default::default() })
    );

    // Sizes.
    let many_args: Vec<String> =
        std::iter::once("echo".to_owned()).chain((0..1100).map(|i| i.to_string())).collect();
    row!(
        "1101 arguments",
        invalid,
        Some("argv"),
        create(pb::CreateRequest { argv: many_args.clone(), ..Default::default() })
    );
    let long_args = vec!["echo".to_owned(), "x".repeat(300 * 1024)];
    row!(
        "a 300 KiB argument",
        invalid,
        Some("argv"),
        create(pb::CreateRequest { argv: long_args.clone(), ..Default::default() })
    );
    let many_env: Vec<pb::EnvVar> =
        (0..1100).map(|i| pb::EnvVar { name: format!("V{i}"), value: String::new() }).collect();
    row!(
        "1100 variables",
        invalid,
        Some("env"),
        create(create(pb::CreateRequest { env: many_env.clone(), ..Default::default() }))
    );
    let big_env = vec![pb::EnvVar { name: "BIG".into(), value: "x".repeat(300 * 1024) }];
    row!(
        "a 300 KiB variable",
        invalid,
        Some("argv"),
        create(create(pb::CreateRequest { env: big_env.clone(), ..Default::default() }))
    );

    // Environment names and values.
    for (name, value) in
        [("", "x"), ("A=B", "x"), ("A\0B", "x"), ("1ABC", "x"), ("A B", "x"), ("É", "x"), ("OK", "a\0b")]
    {
        let vars = env(name, value);
        row!(
            format!("env {name:?}={value:?}"),
            invalid,
            Some("env"),
            create(create(pb::CreateRequest { env: vars.clone(), ..Default::default() }))
        );
    }
    let long_name = env(&"N".repeat(300), "x");
    row!(
        "env name of 300 bytes",
        invalid,
        Some("env"),
        create(create(pb::CreateRequest { env: long_name.clone(), ..Default::default() }))
    );

    // Durations.
    for (what, duration) in [
        ("negative", secs(-1, 0)),
        ("zero", secs(0, 0)),
        ("negative nanos", secs(1, -1)),
        ("nanos of a second", secs(1, 1_000_000_000)),
        ("the longest i64", secs(i64::MAX, 0)),
        ("a year", secs(365 * 24 * 3600, 0)),
    ] {
        row!(
            format!("timeout {what}"),
            invalid,
            Some("timeout"),
            create(create(pb::CreateRequest { timeout: duration, ..Default::default() }))
        );
    }
    for (what, duration) in [
        ("negative", secs(-1, 0)),
        ("negative nanos", secs(0, -5)),
        ("nanos of a second", secs(0, 1_000_000_000)),
        ("an hour", secs(3600, 0)),
    ] {
        row!(
            format!("stop_grace {what}"),
            invalid,
            Some("stop_grace"),
            create(create(pb::CreateRequest { stop_grace: duration, ..Default::default() }))
        );
    }
    row!(
        "Update timeout bad nanos",
        invalid,
        Some("timeout"),
        update(pb::UpdateRequest {
            id: "alive".into(),
            end: Some(pb::update_request::End::Timeout(Duration { seconds: 5, nanos: -1 })),
            labels: None,
        })
    );
    row!(
        "Update timeout zero",
        invalid,
        Some("timeout"),
        update(pb::UpdateRequest {
            id: "alive".into(),
            end: Some(pb::update_request::End::Timeout(Duration { seconds: 0, nanos: 0 })),
            labels: None,
        })
    );
    row!(
        "Update end_time in the past",
        invalid,
        Some("end_time"),
        update(pb::UpdateRequest {
            id: "alive".into(),
            end: Some(pb::update_request::End::EndTime(Timestamp { seconds: 1, nanos: 0 })),
            labels: None,
        })
    );
    row!(
        "Update end_time bad nanos",
        invalid,
        Some("end_time"),
        update(pb::UpdateRequest {
            id: "alive".into(),
            end: Some(pb::update_request::End::EndTime(Timestamp {
                seconds: 4_000_000_000,
                nanos: 2_000_000_000
            })),
            labels: None,
        })
    );
    row!(
        "Update end_time beyond any timestamp",
        invalid,
        Some("end_time"),
        update(pb::UpdateRequest {
            id: "alive".into(),
            end: Some(pb::update_request::End::EndTime(Timestamp { seconds: i64::MAX, nanos: 0 })),
            labels: None,
        })
    );

    for (what, seconds, nanos) in [
        ("Logs since bad nanos", 1_700_000_000, 2_000_000_000),
        ("Logs since negative nanos", 1_700_000_000, -1),
        ("Logs since after year 9999", 253_402_300_800, 0),
        ("Logs since beyond any timestamp", i64::MIN, 0),
    ] {
        row!(
            what,
            invalid,
            Some("since"),
            logs(pb::LogsRequest {
                id: "alive".into(),
                follow: true,
                since: Some(Timestamp { seconds, nanos })
            })
        );
    }

    // Limits.
    for (what, limits, field) in [
        ("memory of 1 byte", resources(Some(1), None, None), "resources.memory_bytes"),
        ("memory of 2^62 bytes", resources(Some(1 << 62), None, None), "resources.memory_bytes"),
        ("memory of u64::MAX", resources(Some(u64::MAX), None, None), "resources.memory_bytes"),
        ("cpu of 1 milli", resources(None, Some(1), None), "resources.cpu_millis"),
        ("cpu of 0", resources(None, Some(0), None), "resources.cpu_millis"),
        ("cpu of u32::MAX", resources(None, Some(u32::MAX), None), "resources.cpu_millis"),
        ("pids of 0", resources(None, None, Some(0)), "resources.pids_max"),
        ("pids of 1", resources(None, None, Some(1)), "resources.pids_max"),
        ("pids of 40000", resources(None, None, Some(40_000)), "resources.pids_max"),
    ] {
        row!(
            what,
            invalid,
            Some(field),
            create(create(pb::CreateRequest { resources: limits, ..Default::default() }))
        );
    }
    row!(
        "drain_policy 42",
        invalid,
        Some("drain_policy"),
        create(create(pb::CreateRequest { drain_policy: 42, ..Default::default() }))
    );
    row!(
        "drain_policy -1",
        invalid,
        Some("drain_policy"),
        create(create(pb::CreateRequest { drain_policy: -1, ..Default::default() }))
    );

    // Labels: on Create, Update and List's filter.
    let label_sets: Vec<(&str, std::collections::BTreeMap<String, String>)> = vec![
        ("an empty key", [(String::new(), "v".into())].into()),
        ("a key with a space", [("a key".into(), "v".into())].into()),
        ("a key of 64 bytes", [("k".repeat(64), "v".into())].into()),
        ("a key with a newline", [("k\n".into(), "v".into())].into()),
        ("a value of 257 characters", [("k".into(), "v".repeat(257))].into()),
        ("a value with an escape", [("k".into(), "\u{1b}[2J".into())].into()),
        ("65 labels", (0..65).map(|i| (format!("k{i}"), String::new())).collect()),
    ];
    for (what, labels) in label_sets {
        let for_update = labels.clone();
        let for_list = labels.clone();
        row!(
            format!("Create labels: {what}"),
            invalid,
            Some("labels"),
            create(create(pb::CreateRequest { labels: labels.clone(), ..Default::default() }))
        );
        row!(
            format!("Update labels: {what}"),
            invalid,
            Some("labels"),
            update(pb::UpdateRequest {
                id: "alive".into(),
                end: None,
                labels: Some(pb::Labels { labels: for_update.clone() }),
            })
        );
        row!(
            format!("List labels: {what}"),
            invalid,
            Some("labels"),
            list(pb::ListRequest { labels: for_list.clone(), ..Default::default() })
        );
    }

    // List's own fields.
    row!("List state 77", invalid, Some("state"), list(pb::ListRequest { state: 77, ..Default::default() }));
    row!(
        "List a forged page token",
        invalid,
        Some("page_token"),
        list(pb::ListRequest { page_token: "Not A Token!".into(), ..Default::default() })
    );
    row!(
        "List a page token of 1 MiB",
        invalid,
        Some("page_token"),
        list(pb::ListRequest { page_token: "x".repeat(1 << 20), ..Default::default() })
    );

    // The node service.
    for (what, duration) in [
        ("negative", secs(-1, 0)),
        ("bad nanos", secs(1, 1_000_000_000)),
        ("the longest i64", secs(i64::MAX, 0)),
    ] {
        let mut n = nodes.clone();
        rows.push(Row {
            what: format!("Drain timeout {what}"),
            code: invalid,
            field: Some("timeout"),
            call: Box::pin(async move {
                n.drain(pb::DrainRequest { timeout: duration, force: false }).await.map(drop)
            }),
        });
    }

    // Credentials: none, another token, another scheme, a token that is not ASCII-safe.
    for (what, header) in [
        ("no token", None),
        ("a wrong token", Some("Bearer s3cret-tokeN")),
        ("a prefix of the token", Some("Bearer s3cret")),
        ("the Basic scheme", Some("Basic s3cret-token")),
        ("no scheme", Some("s3cret-token")),
        ("an empty bearer", Some("Bearer ")),
    ] {
        let mut client = pb::sandbox_service_client::SandboxServiceClient::new(serve.channel().await);
        let mut request = tonic::Request::new(pb::GetRequest { id: "alive".into() });
        if let Some(header) = header {
            request.metadata_mut().insert("authorization", header.parse().expect("ascii"));
        }
        rows.push(Row {
            what: format!("Get with {what}"),
            code: Code::Unauthenticated,
            field: None,
            call: Box::pin(async move { client.get(request).await.map(drop) }),
        });
    }

    // Messages that are not the method's protobuf, and messages over the limit.
    for method in ["Create", "Get", "Delete", "Update", "Logs", "Wait"] {
        let channel = serve.channel().await;
        let token = serve.token.clone();
        rows.push(Row {
            what: format!("{method}: not its protobuf"),
            code: invalid,
            field: None,
            call: Box::pin(async move { garbage(channel, token, method).await }),
        });
    }
    let huge = "x".repeat(sandhost::api::grpc::MAX_REQUEST_BYTES + 1);
    let huge_labels: std::collections::BTreeMap<String, String> = [("k".to_owned(), huge.clone())].into();
    row!(
        "Create over the size limit",
        Code::ResourceExhausted,
        None,
        create(pb::CreateRequest { argv: vec!["echo".into(), huge.clone()], ..Default::default() })
    );
    row!("Get over the size limit", Code::ResourceExhausted, None, get(pb::GetRequest { id: huge }));
    row!(
        "List over the size limit",
        Code::ResourceExhausted,
        None,
        list(pb::ListRequest { labels: huge_labels, ..Default::default() })
    );
    rows
}

/// Sends `Garbage` to `method` of the sandbox service: bytes that do not decode as its request.
async fn garbage(
    channel: tonic::transport::Channel,
    token: Option<String>,
    method: &str,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let path: tonic::codegen::http::uri::PathAndQuery =
        format!("/sandhost.v1.SandboxService/{method}").parse().expect("a path");
    let mut request = tonic::Request::new(Garbage { id: 7 });
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    }
    if method == "Logs" {
        let codec = tonic_prost::ProstCodec::<Garbage, pb::LogsResponse>::default();
        let mut stream = grpc.server_streaming(request, path, codec).await?.into_inner();
        return stream.message().await.map(drop);
    }
    let codec = tonic_prost::ProstCodec::<Garbage, Garbage>::default();
    grpc.unary(request, path, codec).await.map(drop)
}

/// What must not change of a sandbox: its id, lifecycle, state, labels and end time.
type Unchanged = (String, String, i32, Vec<(String, String)>, Option<Timestamp>);

fn snapshot_of(list: &pb::ListResponse) -> Vec<Unchanged> {
    list.sandboxes
        .iter()
        .map(|s| {
            let mut labels: Vec<_> = s.labels.clone().into_iter().collect();
            labels.sort();
            (s.id.clone(), s.lifecycle_id.clone(), s.state, labels, s.end_time)
        })
        .collect()
}

async fn every_bad_input_is_refused_naming_its_field_and_changes_nothing(backend: Backend) {
    let mut options = ServeOptions::on(backend.name());
    options.token = Some("s3cret-token".into());
    let serve = Serve::start_with(options);
    ok(&serve.cli(&[
        "create",
        "--id",
        "alive",
        "--label",
        "team=a",
        "--timeout",
        "1h",
        "--",
        "sleep",
        "3600",
    ]));
    ok(&serve.cli(&["create", "--id", "done", "--", "true"]));
    ok(&serve.cli(&["wait", "done"]));
    let mut sandboxes = serve.sandboxes().await;
    let before = sandboxes.list(pb::ListRequest::default()).await.expect("list").into_inner();
    let dirs_before = sandbox_dirs(&serve);
    assert!(dirs_before.iter().any(|d| d.contains("alive")), "the sandboxes' directories: {dirs_before:?}");

    let mut failures = Vec::new();
    let rows = rows(&serve, backend).await;
    let count = rows.len();
    for row in rows {
        let status = match row.call.await {
            Ok(()) => {
                failures.push(format!("{}: accepted", row.what));
                continue;
            }
            Err(status) => status,
        };
        if status.code() != row.code {
            failures.push(format!(
                "{}: {:?} {:?}, expected {:?}",
                row.what,
                status.code(),
                status.message(),
                row.code
            ));
            continue;
        }
        if let Some(field) = row.field {
            let named = status
                .get_error_details()
                .bad_request()
                .and_then(|bad| bad.field_violations.first().map(|v| v.field.clone()));
            match named {
                Some(named) if named.starts_with(field) && status.message().contains(field) => {}
                other => failures.push(format!(
                    "{}: field {other:?} in {:?}, expected {field:?}",
                    row.what,
                    status.message()
                )),
            }
        }
        // Nothing of the request is echoed raw: no control character reaches a client's message.
        if status.message().chars().any(|c| c.is_control() && c != '\n') {
            failures.push(format!("{}: raw control characters in {:?}", row.what, status.message()));
        }
    }
    assert!(failures.is_empty(), "{} of {count} rows failed:\n{}", failures.len(), failures.join("\n"));

    // Nothing changed.
    let after = sandboxes.list(pb::ListRequest::default()).await.expect("list").into_inner();
    assert_eq!(snapshot_of(&before), snapshot_of(&after), "the sandboxes changed");
    assert_eq!(sandbox_dirs(&serve), dirs_before, "a refused request left a sandbox directory");
    let snapshots = sandboxes.list_snapshots(pb::ListSnapshotsRequest {}).await;
    if let Ok(snapshots) = snapshots {
        assert!(snapshots.into_inner().snapshots.is_empty(), "a refused request left a snapshot");
    }
    let exec = serve.cli(&["logs", "alive"]);
    assert!(exec.status.success(), "the live sandbox's log is still readable");

    // The node is healthy: READY, SERVING, and it still starts sandboxes.
    let info = serve.nodes().await.get_info(pb::GetInfoRequest {}).await.expect("get info").into_inner();
    assert_eq!(info.status(), pb::NodeStatus::Ready, "{info:?}");
    assert_eq!(serve.http_get("/health/ready").map(|(code, _)| code), Some(200));
    let created = sandboxes
        .create(pb::CreateRequest { id: "after".into(), argv: vec!["true".into()], ..Default::default() })
        .await
        .expect("a good create after the bad ones")
        .into_inner();
    assert_eq!(created.sandbox.expect("sandbox").id, "after");
}

/// The sandbox directories in the state dir.
fn sandbox_dirs(serve: &Serve) -> Vec<String> {
    let mut names: Vec<String> = walkdir(&serve.state_dir);
    names.sort();
    names
}

/// The names of the directories two levels under `root` (`<kind>/<sandbox>`), which is where each
/// backend keeps a sandbox's files.
fn walkdir(root: &std::path::Path) -> Vec<String> {
    let mut names = Vec::new();
    for level1 in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if !level1.path().is_dir() {
            continue;
        }
        for level2 in std::fs::read_dir(level1.path()).into_iter().flatten().flatten() {
            names.push(format!(
                "{}/{}",
                level1.file_name().to_string_lossy(),
                level2.file_name().to_string_lossy()
            ));
        }
    }
    names
}
