//! End to end: the real `sandhost serve` (real sandboxes, as root) driven by the CLI and by a tonic
//! client. Each test starts its own serve on free loopback ports with a temp state dir; the guard
//! stops it (and so every sandbox) even when the test panics.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;
mod e2e;

use common::Backend;
use e2e::{Serve, ServeOptions, ok, stderr, stdout};
use sandhost_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt as _;

on_both_backends!(sync:
    create_wait_logs_get_list_through_the_cli,
    a_generated_id_and_json_output,
    pause_resume_kill_and_kill_again,
    an_unknown_sandbox_is_not_found,
    metrics_are_served_in_the_prometheus_text_format,
    drain_shows_progress_until_drained_and_exits_0,
    force_stop_stops_every_sandbox,
    logs_follow_streams_until_the_sandbox_exits,
    a_second_serve_on_the_same_state_dir_is_refused,
    a_restarted_serve_readopts_the_sandboxes_of_a_killed_one,
    logs_since_holds_across_a_restart_of_the_agent,
);

on_both_backends!(async:
    update_moves_the_end_time_and_the_timeout_stops_the_sandbox,
    invalid_requests_name_the_field,
    node_limits_answer_resource_exhausted,
    with_a_token_every_call_needs_it,
    without_a_token_no_header_is_needed,
    health_follows_the_node_status_and_a_draining_node_refuses_with_75,
    wait_streams_end_when_the_server_shuts_down,
    reflection_lists_the_services_for_stock_tools,
    an_oversized_request_is_refused_and_changes_nothing,
    a_sandbox_is_bounded_by_the_node_s_defaults_its_tmp_included,
    a_log_longer_than_its_bound_says_how_much_was_dropped,
    logs_since_a_time_start_at_what_was_written_then,
);

/// The sandbox of `get --json` (the Get reply, in the proto3 JSON mapping).
fn sandbox_json(serve: &Serve, id: &str) -> serde_json::Value {
    let reply: serde_json::Value =
        serde_json::from_str(&ok(&serve.cli(&["get", id, "--json"]))).expect("get --json is JSON");
    reply["sandbox"].clone()
}

fn bad_request_field(status: &tonic::Status) -> String {
    let details = status.get_error_details();
    let bad = details.bad_request().unwrap_or_else(|| panic!("no BadRequest detail in {status:?}"));
    bad.field_violations[0].field.clone()
}

fn create_wait_logs_get_list_through_the_cli(backend: Backend) {
    let serve = Serve::start_on(backend.name());
    let id = ok(&serve.cli(&[
        "create",
        "--id",
        "hello",
        "--label",
        "team=a",
        "--",
        "sh",
        "-c",
        "echo hello; exit 3",
    ]));
    assert_eq!(id, "hello");

    let wait = serve.cli(&["wait", "hello", "--exit-code"]);
    assert_eq!(wait.status.code(), Some(3), "wait exits with the sandbox's code: {}", stderr(&wait));

    assert_eq!(ok(&serve.cli(&["logs", "hello"])), "hello");

    let sandbox = sandbox_json(&serve, "hello");
    assert_eq!(sandbox["state"], "SANDBOX_STATE_EXITED");
    assert_eq!(sandbox["exit"]["code"], 3);
    assert_eq!(sandbox["exit"]["reason"], "EXIT_REASON_EXITED");
    assert_eq!(sandbox["labels"]["team"], "a");
    assert_eq!(sandbox["argv"], serde_json::json!(["sh", "-c", "echo hello; exit 3"]));

    let list: serde_json::Value = serde_json::from_str(&ok(&serve.cli(&["list", "--json"]))).expect("JSON");
    assert!(list["sandboxes"].as_array().expect("array").iter().any(|s| s["id"] == "hello"), "{list}");
    let table = ok(&serve.cli(&["list"]));
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("hello"), "{table}");

    let human = ok(&serve.cli(&["get", "hello"]));
    assert!(human.contains("exited (code 3)"), "{human}");
}

fn a_generated_id_and_json_output(backend: Backend) {
    let serve = Serve::start_on(backend.name());
    let created: serde_json::Value =
        serde_json::from_str(&ok(&serve.cli(&["create", "--json", "--", "true"])))
            .expect("create --json is JSON");
    let id = created["sandbox"]["id"].as_str().expect("an id").to_owned();
    assert!(!id.is_empty());
    let wait = serve.cli(&["wait", &id]);
    assert_eq!(wait.status.code(), Some(0), "{}", stderr(&wait));
}

fn pause_resume_kill_and_kill_again(backend: Backend) {
    let serve = Serve::start_on(backend.name());
    ok(&serve.cli(&["create", "--id", "sleeper", "--", "sleep", "1000"]));
    assert_eq!(sandbox_json(&serve, "sleeper")["state"], "SANDBOX_STATE_RUNNING");

    ok(&serve.cli(&["pause", "sleeper"]));
    assert_eq!(sandbox_json(&serve, "sleeper")["state"], "SANDBOX_STATE_PAUSED");
    ok(&serve.cli(&["resume", "sleeper"]));
    assert_eq!(sandbox_json(&serve, "sleeper")["state"], "SANDBOX_STATE_RUNNING");

    assert!(!serve.leftover_processes().is_empty(), "the sandbox's init is found by its state dir");
    let killed = ok(&serve.cli(&["kill", "sleeper", "--now"]));
    assert!(killed.contains("killed"), "{killed}");
    let sandbox = sandbox_json(&serve, "sleeper");
    assert_eq!(sandbox["state"], "SANDBOX_STATE_EXITED");
    assert_eq!(sandbox["exit"]["reason"], "EXIT_REASON_KILLED");
    assert_eq!(serve.leftover_processes(), Vec::<String>::new(), "a killed sandbox leaves no process");
    // Idempotent.
    ok(&serve.cli(&["kill", "sleeper"]));

    // Pausing an exited sandbox is a precondition failure: exit 1, the code on stderr.
    let pause = serve.cli(&["pause", "sleeper"]);
    assert_eq!(pause.status.code(), Some(1));
    assert!(stderr(&pause).contains("FAILED_PRECONDITION"), "{}", stderr(&pause));
}

fn an_unknown_sandbox_is_not_found(backend: Backend) {
    let serve = Serve::start_on(backend.name());
    let get = serve.cli(&["get", "nope"]);
    assert_eq!(get.status.code(), Some(1));
    assert!(stderr(&get).contains("NOT_FOUND"), "{}", stderr(&get));
}

async fn update_moves_the_end_time_and_the_timeout_stops_the_sandbox(backend: Backend) {
    let serve = Serve::start_on(backend.name());
    let mut sandboxes = serve.sandboxes().await;
    let created = sandboxes
        .create(pb::CreateRequest {
            id: "short".into(),
            argv: vec!["sleep".into(), "1000".into()],
            timeout: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .sandbox
        .expect("sandbox");
    assert!(created.end_time.is_some());

    let updated = sandboxes
        .update(pb::UpdateRequest {
            id: "short".into(),
            end: Some(pb::update_request::End::Timeout(prost_types::Duration { seconds: 1, nanos: 0 })),
            labels: Some(pb::Labels { labels: [("moved".to_owned(), "yes".to_owned())].into() }),
        })
        .await
        .expect("update")
        .into_inner()
        .sandbox
        .expect("sandbox");
    assert_eq!(updated.labels.get("moved").map(String::as_str), Some("yes"));
    let seconds = |t: Option<prost_types::Timestamp>| t.expect("an end time").seconds;
    assert!(seconds(updated.end_time) < seconds(created.end_time), "the end time moved earlier");

    let waited =
        tokio::time::timeout(e2e::HANG_GUARD, sandboxes.wait(pb::WaitRequest { id: "short".into() }))
            .await
            .expect("hang guard")
            .expect("wait")
            .into_inner()
            .sandbox
            .expect("sandbox");
    let exit = waited.exit.expect("an exit");
    assert_eq!(exit.reason(), pb::ExitReason::Timeout);
}

async fn invalid_requests_name_the_field(backend: Backend) {
    let serve = Serve::start_on(backend.name());
    let mut sandboxes = serve.sandboxes().await;
    let base = || pb::CreateRequest { argv: vec!["true".into()], ..Default::default() };

    let cases: Vec<(pb::CreateRequest, &str)> = vec![
        (pb::CreateRequest { id: "Bad_Id".into(), ..base() }, "id"),
        (pb::CreateRequest { argv: vec![], ..base() }, "argv"),
        (
            pb::CreateRequest { timeout: Some(prost_types::Duration { seconds: -1, nanos: 0 }), ..base() },
            "timeout",
        ),
        (pb::CreateRequest { drain_policy: 42, ..base() }, "drain_policy"),
        (
            pb::CreateRequest {
                env: vec![pb::EnvVar { name: "BAD=NAME".into(), value: "x".into() }],
                ..base()
            },
            "env",
        ),
        (pb::CreateRequest { cwd: "../escape".into(), ..base() }, "cwd"),
        (
            pb::CreateRequest { stop_grace: Some(prost_types::Duration { seconds: -1, nanos: 0 }), ..base() },
            "stop_grace",
        ),
        (
            pb::CreateRequest {
                resources: Some(pb::Resources { memory_bytes: Some(1 << 62), ..Default::default() }),
                ..base()
            },
            "resources.memory_bytes",
        ),
        (
            pb::CreateRequest {
                resources: Some(pb::Resources { cpu_millis: Some(u32::MAX), ..Default::default() }),
                ..base()
            },
            "resources.cpu_millis",
        ),
        (
            pb::CreateRequest {
                resources: Some(pb::Resources { pids_max: Some(0), ..Default::default() }),
                ..base()
            },
            "resources.pids_max",
        ),
        (pb::CreateRequest { labels: [("k".to_owned(), "v".repeat(10_000))].into(), ..base() }, "labels"),
        (pb::CreateRequest { restore_from: "../../etc".into(), ..base() }, "restore_from"),
        // What the runtime tells before anything is made: the command and the working directory
        // must exist in the sandbox's view of its root.
        (pb::CreateRequest { argv: vec!["/no/such/binary".into()], ..base() }, "argv"),
        (pb::CreateRequest { argv: vec!["no-such-command-anywhere".into()], ..base() }, "argv"),
        (pb::CreateRequest { argv: vec!["/etc/shadow".into()], ..base() }, "argv"),
        (pb::CreateRequest { argv: vec!["/etc/ssh".into()], ..base() }, "argv"),
        // The host template shows its allow list of host paths only: not the host's sandhost
        // binary (a program the host has, outside the list), nor the state dir.
        (pb::CreateRequest { argv: vec![e2e::BIN.into()], ..base() }, "argv"),
        (pb::CreateRequest { argv: vec!["/work/anything/bin".into()], ..base() }, "argv"),
        (pb::CreateRequest { cwd: serve.state_dir.display().to_string(), ..base() }, "cwd"),
        (pb::CreateRequest { cwd: "/var".into(), ..base() }, "cwd"),
        (pb::CreateRequest { cwd: "/no/such/dir".into(), ..base() }, "cwd"),
        (pb::CreateRequest { cwd: "/tmp/made-later".into(), ..base() }, "cwd"),
        (pb::CreateRequest { cwd: "/etc/hostname".into(), ..base() }, "cwd"),
    ];
    for (request, field) in cases {
        let status = sandboxes.create(request.clone()).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}: {status:?}");
        let named = bad_request_field(&status);
        assert!(named.starts_with(field), "{request:?}: field {named:?}, expected {field:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
    // Nothing of a refused Create is left, not even a start_failed record.
    let listed = sandboxes.list(pb::ListRequest::default()).await.expect("list").into_inner();
    assert!(listed.sandboxes.is_empty(), "{listed:?}");

    let status = sandboxes
        .create(pb::CreateRequest { template: "no-such-template".into(), ..base() })
        .await
        .expect_err("unknown template");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let status =
        sandboxes.list(pb::ListRequest { state: 77, ..Default::default() }).await.expect_err("bad state");
    assert_eq!(bad_request_field(&status), "state");

    // Update: a past end time is refused by name; an unknown sandbox is NOT_FOUND.
    let status = sandboxes
        .update(pb::UpdateRequest {
            id: "nope".into(),
            end: Some(pb::update_request::End::EndTime(prost_types::Timestamp { seconds: 1, nanos: 0 })),
            labels: None,
        })
        .await
        .expect_err("past end time");
    assert_eq!(bad_request_field(&status), "end_time");
    let status = sandboxes
        .update(pb::UpdateRequest { id: "nope".into(), end: None, labels: None })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // The CLI refuses what it cannot parse before calling (exit 1, the flag named).
    let bad_memory = serve.cli(&["create", "--memory", "lots", "--", "true"]);
    assert_eq!(bad_memory.status.code(), Some(1));
    assert!(stderr(&bad_memory).contains("--memory"), "{}", stderr(&bad_memory));

    // The CLI: exit 1 with the code and the field on stderr; nothing was created.
    let create = serve.cli(&["create", "--id", "Bad_Id", "--", "true"]);
    assert_eq!(create.status.code(), Some(1));
    assert!(stderr(&create).contains("INVALID_ARGUMENT"), "{}", stderr(&create));
    assert!(stderr(&create).contains("id"), "{}", stderr(&create));
    let list = sandboxes.list(pb::ListRequest::default()).await.expect("list").into_inner();
    assert!(list.sandboxes.is_empty(), "a refused create left {:?}", list.sandboxes);

    // What the allow list shows passes the same check, and runs.
    let request =
        pb::CreateRequest { id: "env".into(), argv: vec!["/usr/bin/env".into(), "true".into()], ..base() };
    sandboxes.create(request).await.expect("/usr/bin/env is on the host template");
    let waited = tokio::time::timeout(e2e::HANG_GUARD, sandboxes.wait(pb::WaitRequest { id: "env".into() }))
        .await
        .expect("hang guard")
        .expect("wait")
        .into_inner();
    let exit = waited.sandbox.and_then(|s| s.exit).and_then(|e| e.status);
    assert_eq!(exit, Some(pb::sandbox_exit::Status::Code(0)));
}

async fn node_limits_answer_resource_exhausted(backend: Backend) {
    let mut options = ServeOptions::on(backend.name());
    options.env.push(("SANDHOST_MAX_SANDBOXES".into(), "1".into()));
    let serve = Serve::start_with(options);
    ok(&serve.cli(&["create", "--id", "one", "--", "sleep", "1000"]));
    let mut sandboxes = serve.sandboxes().await;
    let status = sandboxes
        .create(pb::CreateRequest { id: "two".into(), argv: vec!["true".into()], ..Default::default() })
        .await
        .expect_err("over the limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let cli = serve.cli(&["create", "--id", "three", "--", "true"]);
    assert_eq!(cli.status.code(), Some(1));
    assert!(stderr(&cli).contains("RESOURCE_EXHAUSTED"), "{}", stderr(&cli));

    // Once the first leaves, there is room again.
    ok(&serve.cli(&["kill", "one", "--now"]));
    ok(&serve.cli(&["create", "--id", "four", "--", "true"]));
}

async fn a_sandbox_is_bounded_by_the_node_s_defaults_its_tmp_included(backend: Backend) {
    let mut options = ServeOptions::on(backend.name());
    options.env.push(("SANDHOST_DEFAULT_MEMORY".into(), "64m".into()));
    options.env.push(("SANDHOST_DEFAULT_PIDS".into(), "128".into()));
    let serve = Serve::start_with(options);
    let mut sandboxes = serve.sandboxes().await;
    // 256 MiB into /tmp: the private tmpfs is charged to the sandbox's 64 MiB, not to the host.
    let script = "dd if=/dev/zero of=/tmp/big bs=1M count=256 2>/dev/null; echo rc=$?";
    let created = sandboxes
        .create(pb::CreateRequest {
            id: "filler".into(),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    let applied = created.sandbox.and_then(|s| s.resources).expect("resources");
    assert_eq!(
        (applied.memory_bytes, applied.pids_max, applied.cpu_millis),
        (Some(64 << 20), Some(128), Some(1000)),
        "Get shows the limits as applied"
    );
    // Its memory limit ends it (the kernel's OOM killer) or its /tmp is full (dd fails): either
    // way dd does not succeed.
    let done = serve.cli(&["wait", "filler"]);
    let log = ok(&serve.cli(&["logs", "filler"]));
    assert!(!log.contains("rc=0"), "256 MiB went into a sandbox of 64 MiB: {log} / {:?}", done.status);
}

async fn a_log_longer_than_its_bound_says_how_much_was_dropped(backend: Backend) {
    let mut options = ServeOptions::on(backend.name());
    options.env.push(("SANDHOST_LOG_MAX_BYTES".into(), "16k".into()));
    let serve = Serve::start_with(options);
    // 2000 lines of 61 bytes, 119 KiB, then a pause (gvisor trims its log every second) and a last
    // line.
    let script = "i=1000; while [ $i -lt 3000 ]; do \
                  echo \"line $i ..................................................\"; i=$((i+1)); done; \
                  sleep 3; echo last-line";
    ok(&serve.cli(&["create", "--id", "chatty", "--", "sh", "-c", script]));
    ok(&serve.cli(&["wait", "chatty"]));
    let total = 2000 * 61 + "last-line\n".len() as u64;

    let mut sandboxes = serve.sandboxes().await;
    let request = pb::LogsRequest { id: "chatty".into(), follow: false, since: None };
    let mut stream = sandboxes.logs(request).await.expect("logs").into_inner();
    let (mut dropped, mut kept) = (0u64, Vec::new());
    while let Some(reply) = stream.message().await.expect("a reply") {
        dropped += reply.dropped_bytes;
        kept.extend_from_slice(&reply.data);
    }
    assert!(dropped > 0, "a log of {total} bytes kept whole under a bound of 16 KiB");
    assert_eq!(dropped + kept.len() as u64, total, "what was dropped and what was kept add up");
    assert!(kept.ends_with(b"last-line\n"), "the newest bytes are kept");
    assert!(kept.len() <= 64 << 10, "kept {} bytes", kept.len());

    // The CLI prints what is kept and says, on stderr, that it is not the whole.
    let cli = serve.cli(&["logs", "chatty"]);
    assert!(stderr(&cli).contains(&format!("{dropped} bytes of this log were dropped")), "{}", stderr(&cli));
    assert!(stdout(&cli).trim_end().ends_with("last-line"), "{}", stdout(&cli));
}

/// Sleeps until the time of day `time` (one the test set itself).
fn sleep_until(time: std::time::SystemTime) {
    while let Ok(left) = time.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(left.max(std::time::Duration::from_millis(1)));
    }
}

async fn logs_since_a_time_start_at_what_was_written_then(backend: Backend) {
    let serve = Serve::start_on(backend.name());
    // "early" at once; "late" only when the test says so (a graceful kill: SIGTERM).
    let script = "trap 'echo late; exit 0' TERM; echo early; while :; do sleep 1; done";
    ok(&serve.cli(&["create", "--id", "clock", "--", "sh", "-c", script]));
    let mut follower = serve.spawn_cli(&["logs", "clock", "-f"]);
    assert_eq!(follower.next_line().as_deref(), Some("early"));
    // "early" was written before it was read here; the node dates its logs to about a second, so a
    // second later is after it for sure. "late" is written only once that time has passed.
    let since = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
    let when = humantime::format_rfc3339_nanos(since).to_string();
    // Following from a time still to come: the node waits for it, then follows.
    let from_since = serve.spawn_cli(&["logs", "clock", "-f", "--since", &when]);
    assert_eq!(ok(&serve.cli(&["logs", "clock", "--since", &when])), "", "a time to come: nothing yet");
    sleep_until(since);
    assert_eq!(ok(&serve.cli(&["logs", "clock", "--since", &when])), "", "\"early\" is from before");
    assert_eq!(ok(&serve.cli(&["logs", "clock", "--since", "1h"])), "early", "a duration before now");

    ok(&serve.cli(&["kill", "clock"]));
    assert_eq!(follower.finish(), (vec!["late".to_owned()], Some(0)));
    assert_eq!(from_since.finish(), (vec!["late".to_owned()], Some(0)), "waited for the time, then followed");
    assert_eq!(ok(&serve.cli(&["logs", "clock", "--since", &when])), "late");
    assert_eq!(ok(&serve.cli(&["logs", "clock", "--since", &when, "--tail", "5"])), "late");
    assert_eq!(ok(&serve.cli(&["logs", "clock", "--since", "1h", "--tail", "1"])), "late");
    assert_eq!(ok(&serve.cli(&["logs", "clock", "--since", "1h"])), "early\nlate");

    // A time to come prints nothing; following, it ends with the sandbox, which has exited.
    let future =
        humantime::format_rfc3339(std::time::SystemTime::now() + std::time::Duration::from_secs(3600));
    let future = future.to_string();
    assert_eq!(ok(&serve.cli(&["logs", "clock", "--since", &future])), "");
    assert_eq!(ok(&serve.cli(&["logs", "clock", "-f", "--since", &future])), "");

    // A bad --since is refused naming it, before any call.
    let bad = serve.cli(&["logs", "clock", "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("invalid --since"), "{}", stderr(&bad));
    // Over gRPC, a Timestamp the proto does not allow is INVALID_ARGUMENT naming `since`.
    let mut sandboxes = serve.sandboxes().await;
    for (seconds, nanos) in [(1, 1_000_000_000), (1, -1), (253_402_300_800, 0)] {
        let since = Some(prost_types::Timestamp { seconds, nanos });
        let request = pb::LogsRequest { id: "clock".into(), follow: false, since };
        let status = sandboxes.logs(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{seconds}.{nanos}: {status:?}");
        assert_eq!(bad_request_field(&status), "since");
    }
}

async fn with_a_token_every_call_needs_it(backend: Backend) {
    let serve =
        Serve::start_with(ServeOptions { token: Some("s3cret".into()), ..ServeOptions::on(backend.name()) });

    // The CLI passes SANDHOST_TOKEN.
    ok(&serve.cli(&["list"]));

    // Without it: UNAUTHENTICATED, exit 1.
    let mut command = std::process::Command::new(e2e::BIN);
    command.args(["list"]).env("SANDHOST_ADDR", serve.url()).env_remove("SANDHOST_TOKEN");
    let output = e2e::run_bounded(command);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("UNAUTHENTICATED"), "{}", stderr(&output));

    // A wrong token, on every service (health included).
    let channel = serve.channel().await;
    let mut wrong = pb::sandbox_service_client::SandboxServiceClient::with_interceptor(
        channel.clone(),
        e2e::Bearer(Some("wrong".into())),
    );
    let status = wrong.list(pb::ListRequest::default()).await.expect_err("wrong token");
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut nodes = pb::node_service_client::NodeServiceClient::new(channel.clone());
    let status = nodes.get_info(pb::GetInfoRequest {}).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);

    // The right one works.
    let mut nodes = serve.nodes().await;
    nodes.get_info(pb::GetInfoRequest {}).await.expect("with the token");
}

async fn without_a_token_no_header_is_needed(backend: Backend) {
    let serve = Serve::start_on(backend.name());
    let mut nodes = pb::node_service_client::NodeServiceClient::new(serve.channel().await);
    nodes.get_info(pb::GetInfoRequest {}).await.expect("no auth configured");
}

async fn grpc_health(serve: &Serve, service: &str) -> tonic_health::pb::health_check_response::ServingStatus {
    let mut health = tonic_health::pb::health_client::HealthClient::new(serve.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
        .await
        .expect("health check")
        .into_inner()
        .status()
}

async fn health_follows_the_node_status_and_a_draining_node_refuses_with_75(backend: Backend) {
    use tonic_health::pb::health_check_response::ServingStatus;

    let serve = Serve::start_on(backend.name());
    assert_eq!(serve.http_get("/health/live").map(|r| r.0), Some(200));
    let (code, body) = serve.http_get("/health/ready").expect("ready answers");
    assert_eq!((code, body.trim()), (200, "READY"));
    assert_eq!(grpc_health(&serve, "").await, ServingStatus::Serving);
    assert_eq!(grpc_health(&serve, "sandhost.v1.SandboxService").await, ServingStatus::Serving);

    let status: serde_json::Value =
        serde_json::from_str(&ok(&serve.cli(&["status", "--json"]))).expect("JSON");
    assert_eq!(status["status"], "NODE_STATUS_READY");
    assert!(status["nodeId"].as_str().is_some_and(|id| !id.is_empty()), "{status}");
    let table = ok(&serve.cli(&["status"]));
    assert!(table.contains("READY"), "{table}");

    // Drain (nothing live: it goes straight to DRAINED). --detach returns at once.
    ok(&serve.cli(&["drain", "--detach"]));
    let (code, body) = serve.http_get("/health/ready").expect("ready answers");
    assert_eq!(code, 503);
    assert!(body.contains("DRAIN"), "{body}");
    assert_eq!(grpc_health(&serve, "").await, ServingStatus::NotServing);
    assert_eq!(serve.http_get("/health/live").map(|r| r.0), Some(200), "live while serving");

    // Creates are refused with UNAVAILABLE + RetryInfo; the CLI exits 75.
    let mut sandboxes = serve.sandboxes().await;
    let refused = sandboxes
        .create(pb::CreateRequest { argv: vec!["true".into()], ..Default::default() })
        .await
        .expect_err("draining");
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(refused.message().contains("DRAIN"), "{refused:?}");
    assert!(refused.get_error_details().retry_info().is_some(), "{refused:?}");
    let cli = serve.cli(&["create", "--", "true"]);
    assert_eq!(cli.status.code(), Some(75), "{}", stderr(&cli));
    assert!(stderr(&cli).contains("UNAVAILABLE"), "{}", stderr(&cli));
    // Reads keep working.
    ok(&serve.cli(&["list"]));

    // Undrain: READY again.
    ok(&serve.cli(&["undrain"]));
    assert_eq!(serve.http_get("/health/ready").map(|r| r.0), Some(200));
    assert_eq!(grpc_health(&serve, "").await, ServingStatus::Serving);
    ok(&serve.cli(&["create", "--", "true"]));
}

fn metrics_are_served_in_the_prometheus_text_format(backend: Backend) {
    let serve = Serve::start_on(backend.name());
    ok(&serve.cli(&["create", "--id", "m", "--", "true"]));
    let _ = serve.cli(&["wait", "m"]);
    let (code, body) = serve.http_get("/metrics").expect("metrics answers");
    assert_eq!(code, 200);
    assert!(body.contains("sandhost_sandboxes"), "{body}");
    assert!(body.contains("sandhost_starts_waiting 0"), "{body}");
    assert!(body.contains("# EOF"), "{body}");
    assert_eq!(serve.http_get("/nope").map(|r| r.0), Some(404));
}

fn drain_shows_progress_until_drained_and_exits_0(backend: Backend) {
    let serve = Serve::start_on(backend.name());
    ok(&serve.cli(&["create", "--id", "brief", "--", "sleep", "1"]));
    let drain = serve.cli(&["drain", "--timeout", "1m"]);
    assert_eq!(drain.status.code(), Some(0), "{}", stderr(&drain));
    assert!(stdout(&drain).contains("DRAINED"), "{}", stdout(&drain));
    let status: serde_json::Value =
        serde_json::from_str(&ok(&serve.cli(&["status", "--json"]))).expect("JSON");
    assert_eq!(status["status"], "NODE_STATUS_DRAINED");
    // The sandbox left on its own: not force-stopped.
    assert_eq!(sandbox_json(&serve, "brief")["exit"]["reason"], "EXIT_REASON_EXITED");
}

fn force_stop_stops_every_sandbox(backend: Backend) {
    let serve = Serve::start_on(backend.name());
    ok(&serve.cli(&["create", "--id", "stuck", "--", "sleep", "1000"]));
    ok(&serve.cli(&["force-stop"]));
    let wait = serve.cli(&["wait", "stuck"]);
    assert_ne!(wait.status.code(), Some(0), "a killed sandbox does not exit 0");
    assert_eq!(sandbox_json(&serve, "stuck")["exit"]["reason"], "EXIT_REASON_FORCE_STOPPED");
}

fn logs_follow_streams_until_the_sandbox_exits(backend: Backend) {
    let serve = Serve::start_on(backend.name());
    ok(&serve.cli(&["create", "--id", "talker", "--", "sh", "-c", "echo one; sleep 1; echo two"]));
    let logs = serve.cli(&["logs", "talker", "-f"]);
    assert_eq!(ok(&logs), "one\ntwo");
}

fn a_second_serve_on_the_same_state_dir_is_refused(backend: Backend) {
    let first = Serve::start_on(backend.name());
    let mut second = Serve::spawn(ServeOptions {
        state_dir: Some(first.state_dir.clone()),
        ..ServeOptions::on(backend.name())
    });
    let code = second.wait_exit();
    assert!(code.is_some_and(|c| c != 0), "the second serve must refuse: {code:?}");
    // The first one is unharmed.
    ok(&first.cli(&["list"]));
}

fn a_restarted_serve_readopts_the_sandboxes_of_a_killed_one(backend: Backend) {
    let state = tempfile::tempdir().expect("state dir");
    let options =
        ServeOptions { state_dir: Some(state.path().to_path_buf()), ..ServeOptions::on(backend.name()) };
    let mut first = Serve::start_with(options.clone());
    ok(&first.cli(&["create", "--id", "survivor", "--", "sleep", "1000"]));
    first.kill();

    // The sandbox outlived its agent.
    assert!(!first.leftover_processes().is_empty(), "the sandbox died with its agent");

    let mut second = Serve::start_with(options);
    assert_eq!(sandbox_json(&second, "survivor")["state"], "SANDBOX_STATE_RUNNING");
    ok(&second.cli(&["create", "--id", "another", "--", "sleep", "1000"]));
    ok(&second.cli(&["kill", "survivor", "--now"]));
    assert_eq!(sandbox_json(&second, "survivor")["state"], "SANDBOX_STATE_EXITED");

    // A stop (FORCE_STOP) leaves nothing running, and no cgroup.
    let parent = e2e::cgroup_parent_for(&second.state_dir);
    assert!(!e2e::leftover_cgroups(&parent).is_empty(), "the live sandbox's cgroup is found under {parent}");
    second.stop();
    assert_eq!(second.leftover_processes(), Vec::<String>::new());
    assert_eq!(e2e::leftover_cgroups(&parent), Vec::<std::path::PathBuf>::new());
}

fn logs_since_holds_across_a_restart_of_the_agent(backend: Backend) {
    let state = tempfile::tempdir().expect("state dir");
    let options =
        ServeOptions { state_dir: Some(state.path().to_path_buf()), ..ServeOptions::on(backend.name()) };
    let mut first = Serve::start_with(options.clone());
    let script = "trap 'echo late; exit 0' TERM; echo early; while :; do sleep 1; done";
    ok(&first.cli(&["create", "--id", "clock", "--", "sh", "-c", script]));
    let mut follower = first.spawn_cli(&["logs", "clock", "-f"]);
    assert_eq!(follower.next_line().as_deref(), Some("early"));
    let since = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
    let when = humantime::format_rfc3339_nanos(since).to_string();
    drop(follower);
    first.kill();

    // The next agent reads the times the first one (or the sandbox's init) recorded.
    let mut second = Serve::start_with(options);
    sleep_until(since);
    assert_eq!(ok(&second.cli(&["logs", "clock", "--since", &when])), "", "\"early\" is from before");
    ok(&second.cli(&["kill", "clock"]));
    assert_eq!(ok(&second.cli(&["logs", "clock", "--since", &when])), "late");
    assert_eq!(ok(&second.cli(&["logs", "clock"])), "early\nlate");
    second.stop();
    assert_eq!(second.leftover_processes(), Vec::<String>::new());
}

async fn wait_streams_end_when_the_server_shuts_down(backend: Backend) {
    let mut serve = Serve::start_on(backend.name());
    ok(&serve.cli(&["create", "--id", "long", "--", "sleep", "1000"]));
    let mut sandboxes = serve.sandboxes().await;
    let waiter = tokio::spawn(async move { sandboxes.wait(pb::WaitRequest { id: "long".into() }).await });
    // The watch is open once its first update (the current progress) has arrived.
    let mut nodes = serve.nodes().await;
    let mut watch = nodes.watch_drain(pb::WatchDrainRequest {}).await.expect("watch").into_inner();
    let first = watch.message().await.expect("first update").expect("an update");
    assert_eq!(first.progress.expect("progress").status(), pb::NodeStatus::Ready);

    // FORCE_STOP=true: the sandbox is stopped, the streams end, serve exits.
    let code = tokio::task::spawn_blocking(move || serve.stop()).await.expect("join");
    assert!(code.is_some(), "serve exited normally");
    let waited = tokio::time::timeout(e2e::HANG_GUARD, waiter).await.expect("wait ended").expect("join");
    match waited {
        // The sandbox was force-stopped before the call was cut...
        Ok(response) => {
            let state = response.into_inner().sandbox.expect("sandbox").state();
            assert_eq!(state, pb::SandboxState::Exited);
        }
        // ...or the call was cut by the shutdown: retryable, or the connection closed.
        Err(status) => assert!(matches!(status.code(), Code::Unavailable | Code::Unknown), "{status:?}"),
    }
    // The watch saw the drain and then ended (with UNAVAILABLE or the connection's end), never hanging.
    let ended = tokio::time::timeout(e2e::HANG_GUARD, async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the WatchDrain stream ended");
}

async fn reflection_lists_the_services_for_stock_tools(backend: Backend) {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let serve = Serve::start_on(backend.name());
    let mut client = ServerReflectionClient::new(serve.channel().await);
    let ask = |request: MessageRequest| {
        tokio_stream::once(ServerReflectionRequest { host: String::new(), message_request: Some(request) })
    };
    let first = |mut stream: tonic::Streaming<ServerReflectionResponse>| async move {
        stream.message().await.expect("a reply").expect("not empty").message_response.expect("a response")
    };

    let reply = first(
        client
            .server_reflection_info(ask(MessageRequest::ListServices(String::new())))
            .await
            .expect("list")
            .into_inner(),
    )
    .await;
    let MessageResponse::ListServicesResponse(list) = reply else { panic!("unexpected {reply:?}") };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["sandhost.v1.SandboxService", "sandhost.v1.NodeService", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected), "{names:?}");
    }

    // A type that imports a well-known type resolves, with its dependencies.
    let reply = first(
        client
            .server_reflection_info(ask(MessageRequest::FileContainingSymbol(
                "sandhost.v1.CreateRequest".into(),
            )))
            .await
            .expect("symbol")
            .into_inner(),
    )
    .await;
    let MessageResponse::FileDescriptorResponse(files) = reply else { panic!("unexpected {reply:?}") };
    assert!(!files.file_descriptor_proto.is_empty());
}

async fn an_oversized_request_is_refused_and_changes_nothing(backend: Backend) {
    let serve = Serve::start_on(backend.name());
    let mut sandboxes = serve.sandboxes().await;
    let huge = "x".repeat(sandhost::api::grpc::MAX_REQUEST_BYTES + 1);
    let status = sandboxes
        .create(pb::CreateRequest {
            id: "huge".into(),
            argv: vec!["echo".into(), huge],
            ..Default::default()
        })
        .await
        .expect_err("too large");
    assert_ne!(status.code(), Code::Ok);
    let list = sandboxes.list(pb::ListRequest::default()).await.expect("list").into_inner();
    assert!(list.sandboxes.is_empty(), "{:?}", list.sandboxes);
}

#[test]
fn the_process_backend_refuses_checkpoints_naming_itself() {
    let serve = Serve::start();
    ok(&serve.cli(&["create", "--id", "cp", "--", "sleep", "1000"]));
    let checkpoint = serve.cli(&["checkpoint", "cp"]);
    assert_eq!(checkpoint.status.code(), Some(1));
    let text = stderr(&checkpoint);
    assert!(text.contains("FAILED_PRECONDITION") && text.contains("process"), "{text}");
    // The sandbox is unharmed.
    assert_eq!(sandbox_json(&serve, "cp")["state"], "SANDBOX_STATE_RUNNING");

    let snapshots: serde_json::Value =
        serde_json::from_str(&ok(&serve.cli(&["snapshots", "--json"]))).expect("JSON");
    assert_eq!(snapshots, serde_json::json!({}), "no snapshots: an empty reply");
    let table = ok(&serve.cli(&["snapshots"]));
    assert!(table.starts_with("ID"), "{table}");
    let rm = serve.cli(&["snapshot-rm", "no-such-snapshot"]);
    assert_eq!(rm.status.code(), Some(1));
    // The process backend has no snapshots at all: it says so, naming itself.
    let text = stderr(&rm);
    assert!(text.contains("FAILED_PRECONDITION") && text.contains("process"), "{text}");
}
