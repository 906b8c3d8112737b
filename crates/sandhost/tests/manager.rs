//! The sandbox manager on the recording fake runtime with tokio's paused clock: the lifecycle, end
//! times, retention, node limits, validation, logs and re-adoption.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use sandhost::config::SandboxConfig;
use sandhost::sandbox::{
    CreateError, CreateRequest, DrainPolicy, ExitReason, ListFilter, NewEnd, SandboxError, SandboxState,
    UpdateRequest,
};
use sandhost_runtime::fake::{Behaviour, Call, FakeRuntime, Op};
use sandhost_runtime::{Exit, Recovered, RecoveredState, SandboxSpec};
use support::{TestNode, key, metrics_text, request, within};

#[tokio::test(start_paused = true)]
async fn create_get_list_and_labels() {
    let t = TestNode::new();
    let mut labelled = request("web", DrainPolicy::Wait);
    labelled.labels = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
    let web = t.node.create(labelled).await.expect("create");
    assert_eq!(web.state, SandboxState::Running);
    assert!(web.started_at.is_some());
    t.create("db", DrainPolicy::Stop).await;

    assert_eq!(t.node.get("web").expect("get"), web);
    assert!(matches!(t.node.get("nope"), Err(SandboxError::NotFound(_))));
    assert!(matches!(t.node.get("../etc"), Err(SandboxError::Invalid(e)) if e.field == "id"));

    let all = t.node.list(&ListFilter::default());
    assert_eq!(all.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["db", "web"]);
    let filter =
        ListFilter { labels: BTreeMap::from([("team".to_owned(), "a".to_owned())]), ..ListFilter::default() };
    assert_eq!(t.node.list(&filter).len(), 1);
    let filter = ListFilter { state: Some(SandboxState::Exited), ..ListFilter::default() };
    assert!(t.node.list(&filter).is_empty());
}

#[tokio::test(start_paused = true)]
async fn generated_ids_are_valid_and_unique() {
    let t = TestNode::new();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        let mut req = request("x", DrainPolicy::Wait);
        req.id = None;
        let info = t.node.create(req).await.expect("create");
        assert!(info.id.as_str().starts_with("sbx-"));
        assert!(ids.insert(info.id));
    }
}

#[tokio::test(start_paused = true)]
async fn delete_stops_with_grace_or_now_and_is_idempotent() {
    let t = TestNode::new();
    let a = t.create("a", DrainPolicy::Wait).await;
    let deleted = t.node.delete("a", false).await.expect("delete");
    assert_eq!(deleted.state, SandboxState::Exited);
    let exit = deleted.exit.expect("exit");
    assert_eq!(exit.reason, ExitReason::Killed);
    assert_eq!(exit.exit, Some(Exit::Signal(15)));
    assert!(t.fake.calls().contains(&Call::Stop { key: key(&a), grace: Duration::from_secs(10) }));
    assert!(t.fake.is_cleaned_up(&key(&a)));
    // Again: the same answer, no new stop.
    assert_eq!(t.node.delete("a", false).await.expect("idempotent").exit, Some(exit));

    let b = t.create("b", DrainPolicy::Wait).await;
    let killed = t.node.delete("b", true).await.expect("delete now");
    assert_eq!(killed.exit.expect("exit").exit, Some(Exit::Signal(9)));
    assert!(t.fake.calls().contains(&Call::Kill(key(&b))));
    assert!(matches!(t.node.delete("zzz", false).await, Err(SandboxError::NotFound(_))));
}

#[tokio::test(start_paused = true)]
async fn an_id_can_be_reused_after_its_sandbox_exited_with_a_new_lifecycle() {
    let t = TestNode::new();
    let first = t.create("same", DrainPolicy::Wait).await;
    assert!(matches!(
        t.node.create(request("same", DrainPolicy::Wait)).await,
        Err(CreateError::AlreadyExists(id)) if id.as_str() == "same"
    ));
    t.node.delete("same", true).await.expect("delete");
    let second = t.create("same", DrainPolicy::Wait).await;
    assert_ne!(first.lifecycle, second.lifecycle);
    // A stale stop of the first lifecycle does not touch the second.
    t.fake.exit(&key(&first), Exit::Code(0));
    assert_eq!(t.node.get("same").expect("get").state, SandboxState::Running);
}

#[tokio::test(start_paused = true)]
async fn pause_and_resume_follow_the_state_machine() {
    let t = TestNode::new();
    let a = t.create("a", DrainPolicy::Wait).await;
    assert_eq!(t.node.pause("a").await.expect("pause").state, SandboxState::Paused);
    assert!(t.fake.is_paused(&key(&a)));
    assert_eq!(t.node.pause("a").await.expect("pause again").state, SandboxState::Paused);
    assert_eq!(t.node.resume("a").await.expect("resume").state, SandboxState::Running);
    assert!(!t.fake.is_paused(&key(&a)));
    t.node.delete("a", false).await.expect("delete");
    assert!(matches!(
        t.node.pause("a").await,
        Err(SandboxError::WrongState { state: SandboxState::Exited, op: "pause", .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_pause_that_loses_the_race_with_the_sandbox_s_exit_is_a_failed_precondition() {
    let t = TestNode::new();
    let a = t.create("a", DrainPolicy::Wait).await;
    t.fake.script(Op::Pause, Behaviour::Hang);
    let pause = tokio::spawn({
        let node = t.node.clone();
        async move { node.pause("a").await }
    });
    within("the pause in flight", async {
        while t.fake.hung(Op::Pause) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // The command exits while the runtime's pause is under way.
    assert!(t.fake.exit(&key(&a), Exit::Code(0)));
    t.fake.release(Op::Pause);
    let result = within("the pause", pause).await.expect("the task");
    assert!(
        matches!(result, Err(SandboxError::WrongState { state: SandboxState::Exited, op: "pause", .. })),
        "not an internal error: {result:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_paused_sandbox_is_thawed_before_its_graceful_stop() {
    let t = TestNode::new();
    let a = t.create("a", DrainPolicy::Wait).await;
    t.node.pause("a").await.expect("pause");
    t.node.delete("a", false).await.expect("delete");
    let calls = t.fake.calls();
    let resume = calls.iter().position(|c| *c == Call::Resume(key(&a))).expect("resumed");
    let stop = calls.iter().position(|c| matches!(c, Call::Stop { .. })).expect("stopped");
    assert!(resume < stop);
}

#[tokio::test(start_paused = true)]
async fn a_sandbox_is_stopped_at_its_end_time_and_update_moves_it() {
    let t = TestNode::new();
    let mut short = request("short", DrainPolicy::Wait);
    short.timeout = Some(Duration::from_secs(30));
    t.node.create(short).await.expect("create");
    let mut moved = request("moved", DrainPolicy::Wait);
    moved.timeout = Some(Duration::from_secs(30));
    t.node.create(moved).await.expect("create");
    let update = UpdateRequest { end: Some(NewEnd::Timeout(Duration::from_secs(300))), labels: None };
    t.node.update("moved", update).expect("update");

    let done = within("wait", t.node.wait("short")).await.expect("wait");
    assert_eq!(done.exit.expect("exit").reason, ExitReason::Timeout);
    assert_eq!(t.node.get("moved").expect("get").state, SandboxState::Running, "its end time moved");
    let done = within("wait", t.node.wait("moved")).await.expect("wait");
    assert_eq!(done.exit.expect("exit").reason, ExitReason::Timeout);

    let bad = UpdateRequest { end: Some(NewEnd::Timeout(Duration::ZERO)), labels: None };
    assert!(matches!(t.node.update("moved", bad), Err(SandboxError::Invalid(e)) if e.field == "timeout"));
}

#[tokio::test(start_paused = true)]
async fn wait_returns_the_exit_of_a_sandbox_that_ends_on_its_own() {
    let t = TestNode::new();
    let a = t.create("a", DrainPolicy::Wait).await;
    let node = t.node.clone();
    let waiter = tokio::spawn(async move { node.wait("a").await });
    tokio::task::yield_now().await;
    t.fake.exit(&key(&a), Exit::Code(3));
    let info = within("wait", waiter).await.expect("task").expect("wait");
    let exit = info.exit.expect("exit");
    assert_eq!((exit.exit, exit.reason), (Some(Exit::Code(3)), ExitReason::Exited));
}

#[tokio::test(start_paused = true)]
async fn exited_sandboxes_are_forgotten_after_the_retention_period() {
    let config = SandboxConfig { retention: Duration::from_secs(60), ..SandboxConfig::default() };
    let t = TestNode::with(FakeRuntime::new(), config);
    let a = t.create("a", DrainPolicy::Wait).await;
    t.fake.exit(&key(&a), Exit::Code(0));
    within("wait", t.node.wait("a")).await.expect("wait");
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(t.node.get("a").expect("still readable").state, SandboxState::Exited);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(matches!(t.node.get("a"), Err(SandboxError::NotFound(_))));
    assert!(!t.fake.knows(&key(&a)), "the runtime forgot its last files");
}

#[tokio::test(start_paused = true)]
async fn a_create_that_names_no_limits_gets_the_node_s_defaults_shown_as_applied() {
    let t = TestNode::new();
    let defaults = SandboxConfig::default().default_limits;
    let plain = t.create("plain", DrainPolicy::Wait).await;
    assert_eq!(plain.limits, defaults);
    assert!(defaults.memory_bytes.is_some() && defaults.cpu_millis.is_some() && defaults.pids_max.is_some());
    let mut some = request("some", DrainPolicy::Wait);
    some.memory_bytes = Some(64 << 20);
    let some = t.node.create(some).await.expect("create");
    assert_eq!(
        (some.limits.memory_bytes, some.limits.cpu_millis, some.limits.pids_max),
        (Some(64 << 20), defaults.cpu_millis, defaults.pids_max),
        "a field the request names wins; the others are the defaults"
    );
    assert_eq!(t.node.get("some").expect("get").limits, some.limits);
    let allocated = t.node.info().allocated;
    assert_eq!(allocated.memory_bytes, defaults.memory_bytes.unwrap_or(0) + (64 << 20));
}

#[tokio::test(start_paused = true)]
async fn a_create_past_the_allocatable_memory_is_resource_exhausted_until_memory_is_freed() {
    // 23.5 GiB of host, 1 GiB reserved, no overcommit: 22.5 GiB allocatable.
    let host = 47 << 29;
    let dir = tempfile::tempdir().expect("temp dir");
    let t = TestNode::on_host(FakeRuntime::new(), SandboxConfig::default(), dir, host);
    let twenty = |id: &str| CreateRequest { memory_bytes: Some(20 << 30), ..request(id, DrainPolicy::Wait) };
    let a = t.node.create(twenty("a")).await.expect("the first fits");
    let allocatable = (47u64 << 29) - (1 << 30);
    assert!(matches!(
        t.node.create(twenty("b")).await,
        Err(CreateError::ResourceExhausted { limit: "allocatable memory", max }) if max == allocatable
    ));
    assert!(t.node.get("b").is_err(), "a refused Create leaves nothing behind");
    t.create("small", DrainPolicy::Wait).await;
    t.fake.exit(&key(&a), Exit::Code(0));
    within("wait", t.node.wait("a")).await.expect("wait");
    t.node.create(twenty("b")).await.expect("admitted once a's memory is freed");

    // With an overcommit of 3, three fit and a fourth does not.
    let config = SandboxConfig { memory_overcommit: 3.0, ..SandboxConfig::default() };
    let t = TestNode::on_host(FakeRuntime::new(), config, tempfile::tempdir().expect("temp dir"), host);
    for id in ["x", "y", "z"] {
        t.node.create(twenty(id)).await.expect("within the overcommitted allocation");
    }
    assert!(matches!(t.node.create(twenty("w")).await, Err(CreateError::ResourceExhausted { .. })));
}

#[tokio::test(start_paused = true)]
async fn node_limits_are_resource_exhausted() {
    let config = SandboxConfig { max_sandboxes: 2, max_admitted_starts: 1, ..SandboxConfig::default() };
    let t = TestNode::with(FakeRuntime::new(), config);
    let hold = t.fake.hold_starts();
    let node = t.node.clone();
    let first = tokio::spawn(async move { node.create(request("a", DrainPolicy::Wait)).await });
    within("held", hold.wait_held(1)).await;
    assert!(matches!(
        t.node.create(request("b", DrainPolicy::Wait)).await,
        Err(CreateError::ResourceExhausted { limit: "admitted starts", max: 1 })
    ));
    hold.release();
    within("first", first).await.expect("task").expect("create");
    t.create("b", DrainPolicy::Wait).await;
    assert!(matches!(
        t.node.create(request("c", DrainPolicy::Wait)).await,
        Err(CreateError::ResourceExhausted { limit: "live sandboxes", max: 2 })
    ));
}

#[tokio::test(start_paused = true)]
async fn invalid_requests_name_the_field_and_start_nothing() {
    let t = TestNode::new();
    let cases: Vec<(CreateRequest, &str)> = vec![
        (CreateRequest { id: Some("Bad_Id".into()), ..request("x", DrainPolicy::Wait) }, "id"),
        (CreateRequest { argv: Vec::new(), ..request("x", DrainPolicy::Wait) }, "argv"),
        (CreateRequest { cwd: Some("../up".into()), ..request("x", DrainPolicy::Wait) }, "cwd"),
        (
            CreateRequest { memory_bytes: Some(1), ..request("x", DrainPolicy::Wait) },
            "resources.memory_bytes",
        ),
        (CreateRequest { pids_max: Some(0), ..request("x", DrainPolicy::Wait) }, "resources.pids_max"),
        (
            CreateRequest { cpu_millis: Some(u32::MAX), ..request("x", DrainPolicy::Wait) },
            "resources.cpu_millis",
        ),
        (
            CreateRequest {
                timeout: Some(Duration::from_secs(365 * 24 * 3600)),
                ..request("x", DrainPolicy::Wait)
            },
            "timeout",
        ),
        (
            CreateRequest { env: vec![("A=B".into(), "c".into())], ..request("x", DrainPolicy::Wait) },
            "env[\"A=B\"]",
        ),
        (
            CreateRequest { restore_from: Some("../../etc".into()), ..request("x", DrainPolicy::Wait) },
            "restore_from",
        ),
    ];
    for (req, field) in cases {
        match t.node.create(req).await {
            Err(CreateError::Invalid(e)) => assert_eq!(e.field, field),
            other => panic!("{field}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    assert!(matches!(
        t.node.create(CreateRequest { template: Some("nope".into()), ..request("x", DrainPolicy::Wait) }).await,
        Err(CreateError::TemplateNotFound(name)) if name == "nope"
    ));
    assert!(matches!(
        t.node
            .create(CreateRequest {
                restore_from: Some("snap".into()),
                argv: Vec::new(),
                ..request("x", DrainPolicy::Wait)
            })
            .await,
        Err(CreateError::NotSupported { what: "restore from a snapshot", .. })
    ));
    // A restore that also names a command is the request's own fault, named before the backend's.
    assert!(matches!(
        t.node
            .create(CreateRequest { restore_from: Some("snap".into()), ..request("x", DrainPolicy::Wait) })
            .await,
        Err(CreateError::Invalid(e)) if e.field == "argv"
    ));
    assert!(t.fake.calls().is_empty(), "nothing reached the runtime");
    assert!(t.node.list(&ListFilter::default()).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_is_reported_and_leaves_nothing_running() {
    let t = TestNode::new();
    t.fake.script(Op::Start, Behaviour::Fail);
    assert!(matches!(t.node.create(request("a", DrainPolicy::Wait)).await, Err(CreateError::Start(_))));
    let info = t.node.get("a").expect("the failure is readable");
    assert_eq!(info.state, SandboxState::Exited);
    assert_eq!(info.exit.expect("exit").reason, ExitReason::StartFailed);
    assert!(t.fake.running().is_empty());
    assert_eq!(t.manager.watch_counts().borrow().live(), 0);
}

#[tokio::test(start_paused = true)]
async fn logs_stream_and_follow_until_exit() {
    let t = TestNode::new();
    let a = t.create("a", DrainPolicy::Wait).await;
    t.fake.write_log(&key(&a), b"hello ");
    let mut all = t.node.logs("a", false, None).expect("logs");
    assert_eq!(all.next().await.expect("chunk").expect("bytes").data, b"hello ");
    assert!(all.next().await.is_none(), "without follow the stream ends at the end of the log");

    let mut follow = t.node.logs("a", true, None).expect("logs");
    assert_eq!(follow.next().await.expect("chunk").expect("bytes").data, b"hello ");
    t.fake.write_log(&key(&a), b"world");
    assert_eq!(within("more", follow.next()).await.expect("chunk").expect("bytes").data, b"world");
    t.fake.exit(&key(&a), Exit::Code(0));
    assert!(within("end", follow.next()).await.is_none(), "the stream ends when the sandbox exits");
}

#[tokio::test(start_paused = true)]
async fn logs_since_a_time_start_where_the_runtime_says_and_a_future_one_gives_nothing() {
    let t = TestNode::new();
    let a = t.create("a", DrainPolicy::Wait).await;
    let early = SystemTime::now() - Duration::from_secs(60);
    t.fake.write_log_at(&key(&a), b"early\n", early);
    t.fake.write_log_at(&key(&a), b"late\n", early + Duration::from_secs(2));
    let since = early + Duration::from_secs(1);
    let mut logs = t.node.logs("a", false, Some(since)).expect("logs");
    assert_eq!(logs.next().await.expect("chunk").expect("bytes").data, b"late\n");
    assert!(logs.next().await.is_none());
    assert!(t.fake.calls().contains(&Call::LogOffsetAt { key: key(&a), since }));

    // Following from that time: what is there, then what comes.
    let mut follow = t.node.logs("a", true, Some(since)).expect("logs");
    assert_eq!(follow.next().await.expect("chunk").expect("bytes").data, b"late\n");
    t.fake.write_log(&key(&a), b"live\n");
    assert_eq!(within("more", follow.next()).await.expect("chunk").expect("bytes").data, b"live\n");

    // A time to come, without follow: nothing, and the runtime is not asked.
    let future = SystemTime::now() + Duration::from_secs(3600);
    let mut nothing = t.node.logs("a", false, Some(future)).expect("logs");
    assert!(nothing.next().await.is_none());
    assert!(!t.fake.calls().iter().any(|c| matches!(c, Call::LogOffsetAt { since, .. } if *since == future)));
    t.fake.exit(&key(&a), Exit::Code(0));
    assert!(within("end", follow.next()).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn recovery_adopts_running_sandboxes_and_records_the_ones_that_ended() {
    let fake = FakeRuntime::new();
    let spec = |id: &str, lifecycle: &str| SandboxSpec {
        stop_grace: Duration::from_secs(10),
        ..SandboxSpec::new(
            sandhost_runtime::SandboxKey {
                id: sandhost_runtime::SandboxId::parse(id).expect("id"),
                lifecycle: sandhost_runtime::LifecycleId::parse(lifecycle).expect("lifecycle"),
            },
            vec!["sleep".into(), "1000".into()],
        )
    };
    fake.seed_recovered(vec![
        Recovered::new(
            spec("alive", "a1"),
            std::time::SystemTime::now(),
            RecoveredState::Running { paused: true },
        ),
        Recovered::new(
            spec("gone", "b2"),
            std::time::SystemTime::now(),
            RecoveredState::Exited(Some(Exit::Code(7))),
        ),
    ]);
    let t = TestNode::with(fake, SandboxConfig::default());
    assert_eq!(t.manager.recover().await.expect("recover"), 1);
    assert_eq!(t.node.get("alive").expect("adopted").state, SandboxState::Paused);
    let gone = t.node.get("gone").expect("recorded");
    assert_eq!(gone.exit.expect("exit").exit, Some(Exit::Code(7)));
    // The adopted sandbox is managed like any other.
    let stopped = t.node.delete("alive", false).await.expect("delete");
    assert_eq!(stopped.state, SandboxState::Exited);
}

#[tokio::test(start_paused = true)]
async fn metrics_count_sandboxes_by_state_and_creates_by_result() {
    let t = TestNode::new();
    t.create("a", DrainPolicy::Wait).await;
    let _ = t.node.create(request("a", DrainPolicy::Wait)).await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &t.registry).expect("encode");
    assert!(text.contains("sandhost_sandboxes{state=\"running\"} 1"), "{text}");
    assert!(text.contains("sandhost_sandbox_creates_total{result=\"started\"} 1"), "{text}");
    assert!(text.contains("sandhost_sandbox_creates_total{result=\"rejected\"} 1"), "{text}");
    assert!(text.contains("sandhost_node_status{status=\"ready\"} 1"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn starts_beyond_the_parallelism_wait_their_turn_first_come_first_served() {
    let config = SandboxConfig { start_parallelism: 2, ..SandboxConfig::default() };
    let t = TestNode::with(FakeRuntime::new(), config);
    let hold = t.fake.hold_starts();
    let ids = ["a", "b", "c", "d", "e"];
    let mut creates = Vec::new();
    for id in ids {
        let node = t.node.clone();
        creates.push(tokio::spawn(async move { node.create(request(id, DrainPolicy::Wait)).await }));
        t.until_admitted(id).await;
    }
    within("two held", hold.wait_held(2)).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(hold.held(), 2, "no more than the parallelism run at once");
    for id in ids {
        assert_eq!(t.node.get(id).expect("get").state, SandboxState::Starting, "{id}");
    }
    assert!(metrics_text(&t).contains("sandhost_starts_waiting 3"), "{}", metrics_text(&t));

    hold.release();
    for create in creates {
        let info = within("create", create).await.expect("task").expect("every admitted start runs");
        assert_eq!(info.state, SandboxState::Running);
    }
    let started: Vec<_> = t
        .fake
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::Start(key) => Some(key.id.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(started, ids, "started in the order they were admitted");
    assert!(metrics_text(&t).contains("sandhost_starts_waiting 0"));
}

#[tokio::test(start_paused = true)]
async fn a_sandbox_killed_while_waiting_for_its_turn_is_not_started() {
    let config = SandboxConfig { start_parallelism: 1, ..SandboxConfig::default() };
    let t = TestNode::with(FakeRuntime::new(), config);
    let hold = t.fake.hold_starts();
    let node = t.node.clone();
    let first = tokio::spawn(async move { node.create(request("first", DrainPolicy::Wait)).await });
    within("held", hold.wait_held(1)).await;
    let node = t.node.clone();
    let waiting = tokio::spawn(async move { node.create(request("waiting", DrainPolicy::Wait)).await });
    t.until_admitted("waiting").await;
    let key = key(&t.node.get("waiting").expect("get"));

    // The kill returns at once; the exit is recorded when the start's turn comes.
    let node = t.node.clone();
    let delete = tokio::spawn(async move { node.delete("waiting", true).await });
    hold.release();
    let refused = within("create", waiting).await.expect("task");
    assert!(
        matches!(&refused, Err(CreateError::StoppedBeforeStart { reason: ExitReason::Killed, .. })),
        "{refused:?}"
    );
    let deleted = within("delete", delete).await.expect("task").expect("delete");
    assert_eq!(deleted.state, SandboxState::Exited);
    let exit = deleted.exit.expect("exit");
    assert_eq!((exit.reason, exit.exit), (ExitReason::Killed, None));
    assert!(exit.message.expect("message").contains("before it started"));
    assert!(!t.fake.calls().contains(&Call::Start(key.clone())), "the runtime never saw it");
    assert!(!t.fake.knows(&key));
    within("first", first).await.expect("task").expect("the running start is untouched");
}

#[tokio::test(start_paused = true)]
async fn an_oom_kill_is_in_the_exit() {
    let t = TestNode::new();
    let hog = t.create("hog", DrainPolicy::Wait).await;
    let fine = t.create("fine", DrainPolicy::Wait).await;
    t.fake.set_oom_kills(&key(&hog), 1);
    t.fake.exit(&key(&hog), Exit::Signal(libc::SIGKILL));
    t.fake.exit(&key(&fine), Exit::Code(0));
    let hog = within("exit", t.node.wait("hog")).await.expect("wait").exit.expect("exit");
    assert_eq!((hog.exit, hog.oom_killed), (Some(Exit::Signal(libc::SIGKILL)), Some(true)));
    let fine = within("exit", t.node.wait("fine")).await.expect("wait").exit.expect("exit");
    assert_eq!(fine.oom_killed, Some(false));
}
