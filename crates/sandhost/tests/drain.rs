//! The drain state machine on the recording fake runtime, with tokio's paused clock: admission,
//! the graceful phase, the forced phase, undrain, escalation, restart, and the defects the origin's
//! reviewers found (as regression tests).

mod support;

use std::time::Duration;

use sandhost::drain::{DrainRequest, NodeStatus, Resumed};
use sandhost::sandbox::{CreateError, CreateRequest, DrainPolicy, ExitReason, SandboxInfo, SandboxState};
use sandhost_runtime::Exit;
use sandhost_runtime::fake::{Behaviour, Call, FakeRuntime, Op};
use support::{FORCE_TIMEOUT, TestNode, key, request, within};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn an_empty_node_drains_at_once() {
    let t = TestNode::new();
    t.node.drain(DrainRequest::default()).expect("drain");
    within("drain", t.coordinator().wait_drained()).await;
    assert_eq!(t.status(), NodeStatus::Drained);
    assert_eq!(t.coordinator().report().force_stopped, 0);
}

#[tokio::test(start_paused = true)]
async fn the_drain_ends_the_moment_the_last_sandbox_exits() {
    let t = TestNode::new();
    let a = t.create("a", DrainPolicy::Wait).await;
    let b = t.create("b", DrainPolicy::Wait).await;
    t.node.drain(DrainRequest::default()).expect("drain");
    assert_eq!(t.status(), NodeStatus::Draining);

    // Time passes; nothing is forced while there is no deadline.
    tokio::time::sleep(Duration::from_secs(3000)).await;
    assert_eq!(t.status(), NodeStatus::Draining);
    assert!(t.fake.exit(&key(&a), Exit::Code(0)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(t.status(), NodeStatus::Draining, "one sandbox is still live");

    let before = Instant::now();
    assert!(t.fake.exit(&key(&b), Exit::Code(0)));
    within("drain", t.coordinator().wait_drained()).await;
    // Event-driven: on the paused clock, no time passes between the last exit and DRAINED.
    assert_eq!(Instant::now(), before);
    let progress = t.node.watch_drain().borrow().clone();
    assert_eq!(progress.live, 0);
    assert_eq!(progress.exited, 2);
    assert_eq!(progress.force_stopped, 0);
    assert!(t.fake.is_cleaned_up(&key(&b)), "the drain waits for cleanup too");
}

#[tokio::test(start_paused = true)]
async fn once_draining_is_visible_every_create_is_refused() {
    let t = TestNode::new();
    let mut status = t.coordinator().watch_status();
    let node = t.node.clone();
    let watcher = tokio::spawn(async move {
        status.wait_for(|s| *s == NodeStatus::Draining).await.expect("status");
        node.create(request("late", DrainPolicy::Wait)).await
    });
    tokio::task::yield_now().await;
    t.node.drain(DrainRequest::default()).expect("drain");
    match within("watcher", watcher).await.expect("task") {
        Err(CreateError::NotAdmitting { status }) => assert_eq!(status, NodeStatus::Draining),
        other => panic!("a create after DRAINING was visible must be refused, got {other:?}"),
    }
    // And the rejection is what the API turns into UNAVAILABLE: nothing was started.
    assert!(!t.fake.calls().iter().any(|c| matches!(c, Call::Start(_))));
}

#[tokio::test(start_paused = true)]
async fn a_create_admitted_before_the_drain_completes_and_is_then_drained() {
    let t = TestNode::new();
    let hold = t.fake.hold_starts();
    let node = t.node.clone();
    let create = tokio::spawn(async move { node.create(request("inflight", DrainPolicy::Wait)).await });
    within("start held", hold.wait_held(1)).await;

    t.node.drain(DrainRequest::default()).expect("drain");
    assert_eq!(t.node.info().drain.in_flight_starts, 1);
    hold.release();
    let info = within("create", create).await.expect("task").expect("an admitted create is never aborted");
    assert_eq!(info.state, SandboxState::Running);
    assert_eq!(t.status(), NodeStatus::Draining, "the started sandbox keeps the node draining");

    t.fake.exit(&key(&info), Exit::Code(0));
    within("drain", t.coordinator().wait_drained()).await;
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_create_still_finishes_its_admitted_start() {
    let t = TestNode::new();
    let hold = t.fake.hold_starts();
    let node = t.node.clone();
    let create = tokio::spawn(async move { node.create(request("orphan", DrainPolicy::Wait)).await });
    within("start held", hold.wait_held(1)).await;
    create.abort();
    let _ = create.await;
    hold.release();
    let mut counts = t.manager.watch_counts();
    within("running", counts.wait_for(|c| c.get(SandboxState::Running) == 1)).await.expect("counts");
    let info = t.node.get("orphan").expect("the sandbox is known");
    assert_eq!(info.state, SandboxState::Running);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_forces_the_rest_and_reports_it() {
    let t = TestNode::new();
    let a = t.create("a", DrainPolicy::Wait).await;
    let start = Instant::now();
    t.node.drain(DrainRequest { timeout: Some(Duration::from_secs(60)), force: false }).expect("drain");
    let deadline = t.node.watch_drain().borrow().deadline.expect("a deadline is reported");
    assert!(deadline > std::time::SystemTime::now());

    within("drain", t.coordinator().wait_drained()).await;
    // Deadlines are absolute wall-clock times kept at millisecond precision (they are persisted),
    // while this test runs on tokio's paused clock: allow that precision, and no more.
    let waited = Instant::now() - start;
    assert!(waited >= Duration::from_millis(59_990), "nothing is forced before the deadline: {waited:?}");
    let report = t.coordinator().report();
    assert_eq!(report.force_stopped, 1);
    assert!(report.failures.is_empty());
    let info = t.node.get("a").expect("kept for retention");
    assert_eq!(info.exit.expect("exited").reason, ExitReason::ForceStopped);
    assert!(t.fake.calls().contains(&Call::Stop { key: key(&a), grace: Duration::from_secs(10) }));
}

#[tokio::test(start_paused = true)]
async fn the_forced_phase_is_bounded_even_when_a_stop_never_returns() {
    let t = TestNode::new();
    let stuck = t.create("stuck", DrainPolicy::Wait).await;
    let fine = t.create("fine", DrainPolicy::Wait).await;
    t.fake.script(Op::Stop, Behaviour::Hang);
    t.fake.on_stop(&key(&fine), sandhost_runtime::fake::StopBehaviour::default());
    let start = Instant::now();
    t.node.force_stop().expect("force stop");
    within("both stops in flight", t.fake.wait_hung(Op::Stop, 2)).await;
    // Let one of them through: it stops; the other never returns.
    t.fake.exit(&key(&fine), Exit::Signal(15));

    within("drain", t.coordinator().wait_drained()).await;
    let took = Instant::now() - start;
    assert!(
        took <= FORCE_TIMEOUT && took >= FORCE_TIMEOUT - Duration::from_secs(1),
        "the forced phase ends at its bound: {took:?}"
    );
    let report = t.coordinator().report();
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_eq!(report.failures[0].sandbox, key(&stuck), "{report:?}");
    assert_eq!(
        report.failures[0].error,
        sandhost::drain::StopFailure::NotStoppedInTime { bound: FORCE_TIMEOUT }
    );
    assert_eq!(t.node.get("stuck").expect("known").state, SandboxState::Stopping);
}

#[tokio::test(start_paused = true)]
async fn the_forced_phase_stops_everything_concurrently_and_once() {
    let t = TestNode::new();
    let mut keys = Vec::new();
    for i in 0..50 {
        keys.push(key(&t.create(&format!("s{i}"), DrainPolicy::Wait).await));
    }
    t.fake.script(Op::Stop, Behaviour::Hang);
    t.node.force_stop().expect("force");
    // All fifty are in flight at once: the stops run concurrently.
    within("concurrent stops", t.fake.wait_hung(Op::Stop, 50)).await;
    t.fake.script(Op::Stop, Behaviour::Normal);
    t.fake.release(Op::Stop);
    within("drain", t.coordinator().wait_drained()).await;
    let stops = t.fake.calls().iter().filter(|c| matches!(c, Call::Stop { .. })).count();
    assert_eq!(stops, 50, "each sandbox is stopped once");
    assert_eq!(t.coordinator().report().force_stopped, 50);
    assert!(t.fake.running().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_start_in_flight_during_the_forced_phase_is_caught_by_the_final_pass() {
    let t = TestNode::new();
    let hold = t.fake.hold_starts();
    let node = t.node.clone();
    let create = tokio::spawn(async move { node.create(request("late", DrainPolicy::Wait)).await });
    within("start held", hold.wait_held(1)).await;
    t.node.force_stop().expect("force");
    assert_eq!(t.status(), NodeStatus::Forcing);
    hold.release();
    let info = within("create", create).await.expect("task").expect("admitted create completes");
    within("drain", t.coordinator().wait_drained()).await;
    assert!(t.fake.exit_of(&key(&info)).is_some(), "the late sandbox was stopped");
    assert_eq!(t.coordinator().report().force_stopped, 1);
}

#[tokio::test(start_paused = true)]
async fn stop_sandboxes_get_sigterm_when_the_drain_begins_and_wait_ones_run_to_their_end() {
    let t = TestNode::new();
    let stop = t.create("batch", DrainPolicy::Stop).await;
    let mut wait_request = request("service", DrainPolicy::Wait);
    wait_request.timeout = Some(Duration::from_secs(120));
    let wait = t.node.create(wait_request).await.expect("create");
    let start = Instant::now();
    t.node.drain(DrainRequest::default()).expect("drain");

    within(
        "stop of the STOP sandbox",
        t.fake.wait_calls(1, |c| matches!(c, Call::Stop { key: k, .. } if *k == key(&stop))),
    )
    .await;
    assert_eq!(Instant::now(), start, "SIGTERM is sent when the drain begins");
    let mut counts = t.manager.watch_counts();
    within("one left", counts.wait_for(|c| c.live() == 1)).await.expect("counts");
    assert!(t.fake.exit_of(&key(&wait)).is_none(), "the WAIT sandbox keeps running");
    assert_eq!(t.node.get("batch").expect("known").exit.expect("exited").reason, ExitReason::DrainStopped);

    within("drain", t.coordinator().wait_drained()).await;
    assert!(Instant::now() - start >= Duration::from_secs(119), "the WAIT sandbox ran to its end time");
    assert_eq!(t.node.get("service").expect("known").exit.expect("exited").reason, ExitReason::Timeout);
    let report = t.coordinator().report();
    assert_eq!((report.force_stopped, report.policy_stopped), (0, 1), "nothing was forced: {report:?}");
    let progress = t.coordinator().progress();
    assert_eq!((progress.force_stopped, progress.policy_stopped), (0, 1), "{progress:?}");
    let metrics = support::metrics_text(&t);
    assert!(metrics.contains("sandhost_drain_policy_stopped 1"), "{metrics}");
    assert!(metrics.contains("sandhost_drain_force_stopped 0"), "{metrics}");
}

#[tokio::test(start_paused = true)]
async fn a_stop_that_fails_in_the_forced_phase_is_reported_once_with_its_error() {
    let t = TestNode::new();
    let a = t.create("a", DrainPolicy::Wait).await;
    t.fake.script(Op::Stop, Behaviour::Fail);
    t.node.force_stop().expect("force stop");
    within("drain", t.coordinator().wait_drained()).await;
    let report = t.coordinator().report();
    assert_eq!(report.failures.len(), 1, "reported once, not again at the bound: {report:?}");
    assert_eq!(report.failures[0].sandbox, key(&a));
    let sandhost::drain::StopFailure::Stop(error) = &report.failures[0].error else {
        panic!("the stop's own error: {report:?}");
    };
    assert!(matches!(**error, sandhost::sandbox::SandboxError::Runtime { op: "stop", .. }), "{error:?}");
    assert_eq!(report.force_stopped, 0);
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_sandbox_whose_checkpoint_and_stop_both_fail_names_both() {
    let t = TestNode::with(FakeRuntime::with_checkpoint(), sandhost::config::SandboxConfig::default());
    let a = t.create("a", DrainPolicy::Checkpoint).await;
    t.fake.script(Op::Checkpoint, Behaviour::Fail);
    t.fake.script(Op::Stop, Behaviour::Fail);
    t.node.force_stop().expect("force stop");
    within("drain", t.coordinator().wait_drained()).await;
    let report = t.coordinator().report();
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_eq!(report.failures[0].sandbox, key(&a));
    assert!(
        matches!(&report.failures[0].error, sandhost::drain::StopFailure::CheckpointAndStop { .. }),
        "{report:?}"
    );
    assert_eq!((report.checkpointed, report.force_stopped), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_sandbox_whose_checkpoint_fails_is_force_stopped() {
    let t = TestNode::with(FakeRuntime::with_checkpoint(), sandhost::config::SandboxConfig::default());
    t.create("a", DrainPolicy::Checkpoint).await;
    t.fake.script(Op::Checkpoint, Behaviour::Fail);
    t.node.force_stop().expect("force stop");
    within("drain", t.coordinator().wait_drained()).await;
    let report = t.coordinator().report();
    assert_eq!((report.checkpointed, report.force_stopped, report.failures.len()), (0, 1, 0), "{report:?}");
    assert_eq!(t.node.get("a").expect("known").exit.expect("exited").reason, ExitReason::ForceStopped);
}

#[tokio::test(start_paused = true)]
async fn undrain_mid_drain_restores_ready_and_cancels_the_escalation() {
    let t = TestNode::new();
    let a = t.create("a", DrainPolicy::Wait).await;
    t.node.drain(DrainRequest { timeout: Some(Duration::from_secs(10)), force: false }).expect("drain");
    let progress = t.node.undrain().expect("undrain");
    assert_eq!(progress.status, NodeStatus::Ready);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(t.status(), NodeStatus::Ready);
    assert!(t.fake.exit_of(&key(&a)).is_none(), "the pending escalation was cancelled");
    assert!(!t.fake.calls().iter().any(|c| matches!(c, Call::Stop { .. } | Call::Kill(_))));
    t.create("b", DrainPolicy::Wait).await;
    assert_eq!(t.status(), NodeStatus::Ready, "admission is open again");
}

#[tokio::test(start_paused = true)]
async fn undrain_during_a_shutdown_is_refused() {
    let t = TestNode::new();
    t.create("a", DrainPolicy::Wait).await;
    t.coordinator().begin_shutdown(None, false);
    assert_eq!(t.node.undrain(), Err(sandhost::drain::DrainError::ShuttingDown));
    assert_eq!(t.status(), NodeStatus::Draining);
}

#[tokio::test(start_paused = true)]
async fn a_second_signal_escalates_to_the_forced_phase() {
    let t = TestNode::new();
    let a = t.create("a", DrainPolicy::Wait).await;
    t.coordinator().begin_shutdown(None, false);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(t.status(), NodeStatus::Draining, "no deadline: the drain waits");
    t.coordinator().escalate();
    within("drain", t.coordinator().wait_drained()).await;
    assert_eq!(t.fake.exit_of(&key(&a)), Some(Exit::Signal(15)));
    assert_eq!(t.coordinator().report().force_stopped, 1);
}

#[tokio::test(start_paused = true)]
async fn force_stop_at_shutdown_skips_the_graceful_phase() {
    let t = TestNode::new();
    let a = t.create("a", DrainPolicy::Wait).await;
    let start = Instant::now();
    t.coordinator().begin_shutdown(Some(Duration::from_secs(3600)), true);
    within("drain", t.coordinator().wait_drained()).await;
    assert_eq!(Instant::now(), start);
    assert!(t.fake.exit_of(&key(&a)).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_and_continue_in_flight_when_the_drain_starts_completes() {
    let t = TestNode::with(FakeRuntime::with_checkpoint(), sandhost::config::SandboxConfig::default());
    let a = t.create("a", DrainPolicy::Wait).await;
    t.fake.script(Op::Checkpoint, Behaviour::Hang);
    let node = t.node.clone();
    let checkpoint = tokio::spawn(async move { node.checkpoint("a", false).await });
    within("checkpoint in flight", t.fake.wait_hung(Op::Checkpoint, 1)).await;
    t.node.drain(DrainRequest::default()).expect("drain");
    t.fake.release(Op::Checkpoint);
    let snapshot = within("checkpoint", checkpoint).await.expect("task").expect("the checkpoint completes");
    assert_eq!(snapshot.source, a.id);
    assert_eq!(t.node.get("a").expect("known").state, SandboxState::Running, "the sandbox keeps running");
    // A new checkpoint-and-continue would start work: it is refused while draining.
    assert!(matches!(
        t.node.checkpoint("a", false).await,
        Err(sandhost::sandbox::SandboxError::NotAdmitting { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn checkpoint_sandboxes_are_evacuated_where_the_backend_can() {
    let t = TestNode::with(FakeRuntime::with_checkpoint(), sandhost::config::SandboxConfig::default());
    let a = t.create("a", DrainPolicy::Checkpoint).await;
    t.node.force_stop().expect("force");
    within("drain", t.coordinator().wait_drained()).await;
    assert_eq!(t.coordinator().report().checkpointed, 1);
    assert_eq!(t.node.get("a").expect("known").exit.expect("exited").reason, ExitReason::Checkpointed);
    let snapshot = t
        .fake
        .calls()
        .iter()
        .find_map(|c| match c {
            Call::Checkpoint { key: k, snapshot, stop: true } if *k == key(&a) => Some(snapshot.to_string()),
            _ => None,
        })
        .expect("a checkpoint-and-stop of a");
    // The report and the progress name the sandbox and its snapshot.
    let named = vec![sandhost::drain::Evacuation { sandbox: "a".into(), snapshot }];
    assert_eq!(t.coordinator().report().evacuated, named);
    assert_eq!(t.coordinator().progress().evacuated, named);
}

#[tokio::test(start_paused = true)]
async fn checkpoint_sandboxes_are_stopped_and_reported_where_the_backend_cannot() {
    let t = TestNode::new();
    t.create("a", DrainPolicy::Checkpoint).await;
    t.node.force_stop().expect("force");
    within("drain", t.coordinator().wait_drained()).await;
    let report = t.coordinator().report();
    assert_eq!(report.checkpointed, 0);
    assert_eq!(report.force_stopped, 1);
    assert_eq!(t.node.get("a").expect("known").exit.expect("exited").reason, ExitReason::DrainStopped);
}

#[tokio::test(start_paused = true)]
async fn a_restart_mid_drain_keeps_the_original_deadline() {
    let fake = FakeRuntime::new();
    let first = TestNode::new();
    let a = first.create("a", DrainPolicy::Wait).await;
    first.node.drain(DrainRequest { timeout: Some(Duration::from_secs(300)), force: false }).expect("drain");
    let deadline = first.node.watch_drain().borrow().deadline.expect("deadline");

    // The agent dies; its sandbox keeps running; a new agent over the same state dir re-adopts it.
    let TestNode { dir, .. } = first;
    fake.seed_recovered(vec![sandhost_runtime::Recovered::new(
        sandhost_runtime::SandboxSpec {
            limits: a.limits,
            stop_grace: Duration::from_secs(10),
            ..sandhost_runtime::SandboxSpec::new(key(&a), a.argv.clone())
        },
        std::time::SystemTime::now(),
        sandhost_runtime::RecoveredState::Running { paused: false },
    )]);
    let second = TestNode::in_dir(fake, sandhost::config::SandboxConfig::default(), dir);
    assert_eq!(second.manager.recover().await.expect("recover"), 1);
    assert_eq!(second.coordinator().resume_persisted(), Resumed::Drain);
    assert_eq!(second.status(), NodeStatus::Draining);
    let resumed = second.node.watch_drain().borrow().deadline.expect("deadline");
    let skew = resumed.duration_since(deadline).unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_millis(1), "same deadline: {deadline:?} vs {resumed:?}");
    assert!(matches!(
        second.node.create(request("new", DrainPolicy::Wait)).await,
        Err(CreateError::NotAdmitting { .. })
    ));
    within("drain", second.coordinator().wait_drained()).await;
    assert_eq!(second.coordinator().report().force_stopped, 1);
}

/// A new agent over `dir` whose runtime reports `survivors` still running, re-adopted.
async fn restart_with(dir: tempfile::TempDir, survivors: &[&SandboxInfo]) -> TestNode {
    let fake = FakeRuntime::new();
    fake.seed_recovered(
        survivors
            .iter()
            .map(|info| {
                sandhost_runtime::Recovered::new(
                    sandhost_runtime::SandboxSpec::new(key(info), info.argv.clone()),
                    std::time::SystemTime::now(),
                    sandhost_runtime::RecoveredState::Running { paused: false },
                )
            })
            .collect(),
    );
    let node = TestNode::in_dir(fake, sandhost::config::SandboxConfig::default(), dir);
    assert_eq!(node.manager.recover().await.expect("recover"), survivors.len());
    node
}

#[tokio::test(start_paused = true)]
async fn the_forced_phase_caps_a_long_grace_at_half_its_bound_and_publishes_its_deadline() {
    let t = TestNode::new();
    // A grace longer than half the forced bound: SIGTERM, then the kill at half the bound, so the
    // kill and the cleanup still fit in it.
    let request =
        CreateRequest { stop_grace: Some(Duration::from_secs(25)), ..request("slow", DrainPolicy::Wait) };
    let slow = t.node.create(request).await.expect("create");
    t.fake.on_stop(&key(&slow), sandhost_runtime::fake::StopBehaviour::IgnoresTerm);
    let before = std::time::SystemTime::now();
    t.node.force_stop().expect("force stop");
    within("the stop", t.fake.wait_calls(1, |c| matches!(c, Call::Stop { .. }))).await;
    let progress = t.node.watch_drain().borrow().clone();
    assert_eq!(progress.status, NodeStatus::Forcing);
    let deadline = progress.deadline.expect("the forced phase's deadline is published");
    let bound = deadline.duration_since(before).expect("ahead");
    assert!(bound <= FORCE_TIMEOUT + Duration::from_millis(1), "{bound:?}");
    let grace = t.fake.calls().iter().find_map(|c| match c {
        Call::Stop { key: k, grace } if *k == key(&slow) => Some(*grace),
        _ => None,
    });
    // Half of what is left of the bound (kept at millisecond precision), not the sandbox's 25 s.
    let grace = grace.expect("a stop");
    assert!(grace <= FORCE_TIMEOUT / 2 && grace > FORCE_TIMEOUT / 2 - Duration::from_secs(1), "{grace:?}");
    within("drain", t.coordinator().wait_drained()).await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_in_the_forced_phase_keeps_its_deadline() {
    let first = TestNode::new();
    let a = first.create("a", DrainPolicy::Wait).await;
    first.fake.on_stop(&key(&a), sandhost_runtime::fake::StopBehaviour::IgnoresTerm);
    first.fake.script(Op::Stop, Behaviour::Hang);
    first.node.force_stop().expect("force stop");
    within("the stop in flight", first.fake.wait_hung(Op::Stop, 1)).await;
    let deadline = first.node.watch_drain().borrow().deadline.expect("a forced deadline");
    let TestNode { dir, .. } = first;

    let second = restart_with(dir, &[&a]).await;
    assert_eq!(second.coordinator().resume_persisted(), Resumed::Drain);
    let resumed = second.node.watch_drain().borrow().clone();
    assert_eq!(resumed.status, NodeStatus::Forcing, "the restarted agent goes on forcing");
    let skew = resumed.deadline.expect("deadline").duration_since(deadline).unwrap_or_else(|e| e.duration());
    assert!(
        skew < Duration::from_millis(1),
        "the same forced deadline: {deadline:?} vs {:?}",
        resumed.deadline
    );
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_cut_short_is_not_continued_the_next_agent_admits_and_reports_it() {
    let first = TestNode::new();
    let a = first.create("a", DrainPolicy::Wait).await;
    first.coordinator().begin_shutdown(None, false);
    let began = first.node.watch_drain().borrow().status_changed_at;
    // The supervisor's stop timeout kills the agent in the middle of its drain (its drain, waiting
    // with no deadline, writes nothing more).
    let TestNode { dir, .. } = first;

    let second = restart_with(dir, &[&a]).await;
    let Resumed::InterruptedShutdown(interrupted) = second.coordinator().resume_persisted() else {
        panic!("a cut-short shutdown is reported, not continued");
    };
    assert_eq!(interrupted.live_at_restart, 1);
    assert!(interrupted.began_at <= began, "{interrupted:?}");
    assert_eq!(second.status(), NodeStatus::Ready);
    assert_eq!(second.node.info().interrupted_shutdown, Some(interrupted));
    assert!(support::metrics_text(&second).contains("sandhost_previous_shutdown_interrupted 1"));
    assert_eq!(second.node.get("a").expect("re-adopted").state, SandboxState::Running);
    second.create("b", DrainPolicy::Wait).await;

    // Reported once: the agent after it finds nothing to report.
    let TestNode { dir, .. } = second;
    let third = restart_with(dir, &[]).await;
    assert_eq!(third.coordinator().resume_persisted(), Resumed::Nothing);
    assert_eq!(third.node.info().interrupted_shutdown, None);
}

#[tokio::test(start_paused = true)]
async fn an_operator_s_drain_outlives_a_shutdown_cut_short_and_a_completed_one() {
    let first = TestNode::new();
    let a = first.create("a", DrainPolicy::Wait).await;
    first.node.drain(DrainRequest::default()).expect("drain");
    // A shutdown signal comes during the operator's drain, and the agent is killed.
    first.coordinator().begin_shutdown(None, false);
    let TestNode { dir, .. } = first;

    let second = restart_with(dir, &[&a]).await;
    assert_eq!(second.coordinator().resume_persisted(), Resumed::Drain, "the operator's drain goes on");
    assert_eq!(second.status(), NodeStatus::Draining);
    // This time the shutdown completes: the node is empty, the process ends.
    second.coordinator().begin_shutdown(None, false);
    second.fake.exit(&key(&a), Exit::Code(0));
    within("drain", second.coordinator().wait_drained()).await;
    second.coordinator().complete_shutdown();
    let TestNode { dir, .. } = second;

    let third = restart_with(dir, &[]).await;
    assert_eq!(
        third.coordinator().resume_persisted(),
        Resumed::Drain,
        "the node stays closed, like a cordon"
    );
    within("drain", third.coordinator().wait_drained()).await;
    assert!(matches!(
        third.node.create(request("new", DrainPolicy::Wait)).await,
        Err(CreateError::NotAdmitting { status: NodeStatus::Drained })
    ));
    third.node.undrain().expect("undrain");
    third.create("new", DrainPolicy::Wait).await;
}

#[tokio::test(start_paused = true)]
async fn a_completed_shutdown_drain_leaves_the_next_agent_ready_with_nothing_to_report() {
    let first = TestNode::new();
    first.coordinator().begin_shutdown(None, false);
    within("drain", first.coordinator().wait_drained()).await;
    first.coordinator().complete_shutdown();
    let TestNode { dir, .. } = first;
    let second = restart_with(dir, &[]).await;
    assert_eq!(second.coordinator().resume_persisted(), Resumed::Nothing);
    assert_eq!(second.status(), NodeStatus::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_creates_racing_a_drain_are_each_started_or_refused_retryably() {
    let config = sandhost::config::SandboxConfig { max_admitted_starts: 2000, ..Default::default() };
    let t = TestNode::with(FakeRuntime::new(), config);
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let node = t.node.clone();
        creates.spawn(async move { node.create(request(&format!("r{i}"), DrainPolicy::Wait)).await });
        if i == 500 {
            t.node.drain(DrainRequest::default()).expect("drain");
        }
    }
    let (mut started, mut refused) = (Vec::new(), 0);
    while let Some(result) = within("creates", creates.join_next()).await {
        match result.expect("task") {
            Ok(info) => {
                assert_eq!(info.state, SandboxState::Running);
                started.push(key(&info));
            }
            Err(CreateError::NotAdmitting { status }) => {
                assert_ne!(status, NodeStatus::Ready);
                refused += 1;
            }
            Err(other) => panic!("a create racing a drain either starts or is refused retryably: {other:?}"),
        }
    }
    assert_eq!(started.len() + refused, 1000);
    let starts = t.fake.calls().iter().filter(|c| matches!(c, Call::Start(_))).count();
    assert_eq!(starts, started.len(), "a refused create started nothing");
    assert_eq!(t.status(), if started.is_empty() { NodeStatus::Drained } else { NodeStatus::Draining });

    t.node.force_stop().expect("force");
    within("drain", t.coordinator().wait_drained()).await;
    assert!(t.fake.running().is_empty(), "nothing is left running");
    for key in &started {
        assert!(t.fake.is_cleaned_up(key), "{key} was cleaned up");
    }
    assert_eq!(t.coordinator().report().force_stopped, started.len() as u64);
}

/// A node that runs one start at once, with `first` held in the runtime and `waiting` behind it.
async fn one_start_at_a_time_with_one_waiting(
    t: &TestNode,
) -> [tokio::task::JoinHandle<Result<sandhost::sandbox::SandboxInfo, CreateError>>; 2] {
    let node = t.node.clone();
    let first = tokio::spawn(async move { node.create(request("first", DrainPolicy::Wait)).await });
    within("first held", t.fake.wait_calls(1, |c| matches!(c, Call::Start(_)))).await;
    let node = t.node.clone();
    let waiting = tokio::spawn(async move { node.create(request("waiting", DrainPolicy::Wait)).await });
    t.until_admitted("waiting").await;
    [first, waiting]
}

fn one_at_a_time() -> TestNode {
    TestNode::with(
        FakeRuntime::new(),
        sandhost::config::SandboxConfig { start_parallelism: 1, ..Default::default() },
    )
}

#[tokio::test(start_paused = true)]
async fn starts_waiting_for_their_turn_when_a_drain_begins_are_still_started() {
    let t = one_at_a_time();
    let hold = t.fake.hold_starts();
    let [first, waiting] = one_start_at_a_time_with_one_waiting(&t).await;
    t.node.drain(DrainRequest::default()).expect("drain");
    assert_eq!(t.node.info().drain.in_flight_starts, 2, "a waiting start is in flight");
    hold.release();
    for create in [first, waiting] {
        let info = within("create", create).await.expect("task").expect("an admitted start is never aborted");
        assert_eq!(info.state, SandboxState::Running);
        t.fake.exit(&key(&info), Exit::Code(0));
    }
    within("drain", t.coordinator().wait_drained()).await;
    assert_eq!(t.coordinator().report().force_stopped, 0);
}

#[tokio::test(start_paused = true)]
async fn a_start_waiting_for_its_turn_when_the_forced_phase_begins_is_not_begun() {
    let t = one_at_a_time();
    let hold = t.fake.hold_starts();
    let [first, waiting] = one_start_at_a_time_with_one_waiting(&t).await;
    let waiting_key = key(&t.node.get("waiting").expect("get"));
    t.node.force_stop().expect("force");
    hold.release();

    let started = within("first", first).await.expect("task").expect("a begun start completes");
    let refused = within("waiting", waiting).await.expect("task");
    assert!(
        matches!(&refused, Err(CreateError::StoppedBeforeStart { reason: ExitReason::ForceStopped, .. })),
        "{refused:?}"
    );
    within("drain", t.coordinator().wait_drained()).await;
    assert!(t.fake.exit_of(&key(&started)).is_some(), "the begun one was stopped after its start");
    assert!(!t.fake.calls().contains(&Call::Start(waiting_key)), "the waiting one never reached the runtime");
    let exit = t.node.get("waiting").expect("get").exit.expect("exit");
    assert_eq!((exit.reason, exit.exit), (ExitReason::ForceStopped, None));
    let report = t.coordinator().report();
    assert_eq!((report.force_stopped, report.failures.len()), (2, 0), "{report:?}");
}

/// Creates racing a forced drain, on two threads, behind one held start: every Create the gate
/// admitted is in the table by the time the first force pass looks, so each one that waits for its
/// turn is stopped before it starts. A Create the pass missed would start once the hold is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_racing_a_forced_drain_are_refused_or_never_begun() {
    let config = sandhost::config::SandboxConfig {
        max_admitted_starts: 2000,
        start_parallelism: 1,
        ..Default::default()
    };
    let t = TestNode::with(FakeRuntime::new(), config);
    let hold = t.fake.hold_starts();
    let node = t.node.clone();
    let first = tokio::spawn(async move { node.create(request("first", DrainPolicy::Wait)).await });
    within("first held", hold.wait_held(1)).await;
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let node = t.node.clone();
        creates.spawn(async move { node.create(request(&format!("r{i}"), DrainPolicy::Wait)).await });
        if i == 500 {
            t.node.force_stop().expect("force");
        }
    }
    hold.release();
    let (mut skipped, mut refused) = (0, 0);
    while let Some(result) = within("creates", creates.join_next()).await {
        match result.expect("task") {
            Err(CreateError::StoppedBeforeStart { reason: ExitReason::ForceStopped, .. }) => skipped += 1,
            Err(CreateError::NotAdmitting { .. }) => refused += 1,
            other => panic!("a Create racing a forced drain is refused or never begun: {other:?}"),
        }
    }
    within("first", first).await.expect("task").expect("the begun start completes");
    within("drain", t.coordinator().wait_drained()).await;
    assert_eq!(skipped + refused, 1000);
    let starts = t.fake.calls().iter().filter(|c| matches!(c, Call::Start(_))).count();
    assert_eq!(starts, 1, "only the start that had begun reached the runtime");
    let report = t.coordinator().report();
    assert_eq!((report.force_stopped, report.failures.len()), (1 + skipped as u64, 0), "{report:?}");
}
