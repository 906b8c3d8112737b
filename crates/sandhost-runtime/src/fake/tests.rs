//! The fake's own tests, all under tokio's paused clock: nothing here waits on real time.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::*;
use crate::{
    CleanupError, LifecycleId, LogsError, RecoveredState, Runtime, SandboxId, SnapshotId, WaitError,
};

/// Bound on waits that must finish; under the paused clock it only fires if the fake hangs.
const HANG_GUARD: Duration = Duration::from_secs(3600);

fn sandbox_key(id: &str) -> SandboxKey {
    SandboxKey {
        id: SandboxId::parse(id).expect("a valid test id"),
        lifecycle: LifecycleId::parse("1").expect("a valid lifecycle id"),
    }
}

fn spec(id: &str) -> SandboxSpec {
    SandboxSpec {
        stop_grace: crate::DEFAULT_STOP_GRACE,
        ..SandboxSpec::new(sandbox_key(id), vec!["true".to_owned()])
    }
}

fn snapshot(id: &str) -> SnapshotId {
    SnapshotId::parse(id).expect("a valid snapshot id")
}

async fn started(fake: &FakeRuntime, id: &str) -> SandboxKey {
    fake.start(&spec(id)).await.expect("the fake starts");
    sandbox_key(id)
}

#[tokio::test(start_paused = true)]
async fn start_records_a_running_sandbox_with_increasing_pids() {
    let fake = FakeRuntime::new();
    let a = fake.start(&spec("a")).await.expect("starts");
    let b = fake.start(&spec("b")).await.expect("starts");
    assert!(b.pid > a.pid);
    assert_eq!(fake.pid_of(&sandbox_key("a")), Some(a.pid));
    assert_eq!(fake.running(), vec![sandbox_key("a"), sandbox_key("b")]);
    assert!(
        matches!(fake.start(&spec("a")).await, Err(StartError::AlreadyExists(k)) if k == sandbox_key("a"))
    );
    assert_eq!(
        fake.calls(),
        vec![Call::Start(sandbox_key("a")), Call::Start(sandbox_key("b")), Call::Start(sandbox_key("a"))]
    );
    assert_eq!(fake.name(), "fake");
}

#[tokio::test(start_paused = true)]
async fn many_waits_complete_when_the_sandbox_exits() {
    let fake = FakeRuntime::new();
    let key = started(&fake, "a").await;
    let waits: Vec<_> = (0..3)
        .map(|_| {
            let (fake, key) = (fake.clone(), key.clone());
            tokio::spawn(async move { fake.wait(&key).await })
        })
        .collect();
    fake.wait_calls(3, |call| matches!(call, Call::Wait(_))).await;
    assert!(fake.exit(&key, Exit::Code(3)));
    assert!(!fake.exit(&key, Exit::Code(4)), "an exited sandbox does not exit again");
    for wait in waits {
        assert_eq!(wait.await.expect("no panic").expect("known"), Exit::Code(3));
    }
    assert_eq!(fake.wait(&key).await.expect("known"), Exit::Code(3), "a late wait sees the exit");
    assert!(matches!(fake.wait(&sandbox_key("zz")).await, Err(WaitError::NotFound(_))));
}

#[tokio::test(start_paused = true)]
async fn wait_is_cancel_safe() {
    let fake = FakeRuntime::new();
    let key = started(&fake, "a").await;
    let cancelled = tokio::time::timeout(Duration::from_secs(1), fake.wait(&key)).await;
    assert!(cancelled.is_err(), "it runs, so the wait is still pending when cancelled");
    fake.exit(&key, Exit::Code(0));
    let exit = tokio::time::timeout(HANG_GUARD, fake.wait(&key)).await.expect("hang guard");
    assert_eq!(exit.expect("known"), Exit::Code(0));
}

#[tokio::test(start_paused = true)]
async fn stop_and_kill_end_the_sandbox_idempotently() {
    let fake = FakeRuntime::new();
    let a = started(&fake, "a").await;
    let b = started(&fake, "b").await;
    let wait = tokio::spawn({
        let (fake, a) = (fake.clone(), a.clone());
        async move { fake.wait(&a).await }
    });
    fake.stop(&a, Duration::from_secs(5)).await.expect("stops");
    assert_eq!(wait.await.expect("no panic").expect("known"), Exit::Signal(15));
    fake.stop(&a, Duration::from_secs(5)).await.expect("idempotent");
    fake.kill(&a).await.expect("idempotent");
    assert_eq!(fake.exit_of(&a), Some(Exit::Signal(15)), "the first end wins");

    fake.kill(&b).await.expect("kills");
    fake.kill(&b).await.expect("idempotent");
    assert_eq!(fake.exit_of(&b), Some(Exit::Signal(9)));
    fake.stop(&sandbox_key("unknown"), Duration::ZERO).await.expect("nothing to stop is success");
    assert!(fake.running().is_empty());
}

#[tokio::test(start_paused = true)]
async fn stop_follows_the_scripted_stop_behaviour() {
    let fake = FakeRuntime::new();
    fake.on_stop(&sandbox_key("clean"), StopBehaviour::ExitsOnTerm(Exit::Code(0)));
    let clean = started(&fake, "clean").await;
    fake.stop(&clean, Duration::from_secs(10)).await.expect("stops");
    assert_eq!(fake.exit_of(&clean), Some(Exit::Code(0)));

    // A sandbox that ignores SIGTERM takes the whole grace (virtual time), then is killed.
    let stubborn = started(&fake, "stubborn").await;
    fake.on_stop(&stubborn, StopBehaviour::IgnoresTerm);
    let before = Instant::now();
    fake.stop(&stubborn, Duration::from_secs(10)).await.expect("stops");
    assert_eq!(before.elapsed(), Duration::from_secs(10));
    assert_eq!(fake.exit_of(&stubborn), Some(Exit::Signal(9)));

    // One that exits on its own during the grace ends the stop early, with its own exit.
    let late = started(&fake, "late").await;
    fake.on_stop(&late, StopBehaviour::IgnoresTerm);
    let before = Instant::now();
    let stop = tokio::spawn({
        let (fake, late) = (fake.clone(), late.clone());
        async move { fake.stop(&late, Duration::from_secs(10)).await }
    });
    fake.wait_calls(1, |call| matches!(call, Call::Stop { key, .. } if *key == late)).await;
    fake.exit(&late, Exit::Code(7));
    stop.await.expect("no panic").expect("stops");
    assert!(before.elapsed() < Duration::from_secs(10));
    assert_eq!(fake.exit_of(&late), Some(Exit::Code(7)));
}

#[tokio::test(start_paused = true)]
async fn pause_and_resume_toggle_a_running_sandbox() {
    let fake = FakeRuntime::new();
    let key = started(&fake, "a").await;
    fake.pause(&key).await.expect("pauses");
    assert!(fake.is_paused(&key));
    fake.resume(&key).await.expect("resumes");
    assert!(!fake.is_paused(&key));
    fake.pause(&key).await.expect("pauses");
    fake.kill(&key).await.expect("kills");
    assert!(!fake.is_paused(&key), "an exited sandbox is not paused");
    assert!(matches!(fake.resume(&key).await, Err(ControlError::NotRunning(_))));
    assert!(matches!(fake.pause(&sandbox_key("zz")).await, Err(ControlError::NotFound(_))));
}

#[tokio::test(start_paused = true)]
async fn logs_return_what_the_test_wrote() {
    let fake = FakeRuntime::new();
    let key = started(&fake, "a").await;
    assert!(fake.write_log(&key, b"hello "));
    assert!(fake.write_log(&key, b"world"));
    let chunk = fake.read_logs(&key, 0, 5).await.expect("known");
    assert_eq!((chunk.data.as_slice(), chunk.next_offset), (&b"hello"[..], 5));
    let chunk = fake.read_logs(&key, 5, 100).await.expect("known");
    assert_eq!((chunk.data.as_slice(), chunk.next_offset), (&b" world"[..], 11));
    let chunk = fake.read_logs(&key, 50, 100).await.expect("known");
    assert!(chunk.data.is_empty());
    assert_eq!(chunk.next_offset, 11);
    assert!(matches!(fake.read_logs(&sandbox_key("zz"), 0, 1).await, Err(LogsError::NotFound(_))));
    assert!(!fake.write_log(&sandbox_key("zz"), b"x"));
}

#[tokio::test(start_paused = true)]
async fn the_offset_at_a_time_is_where_the_first_write_at_or_after_it_begins() {
    let fake = FakeRuntime::new();
    let key = started(&fake, "a").await;
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    assert!(fake.write_log_at(&key, b"early\n", t0));
    assert!(fake.write_log_at(&key, b"late\n", t0 + Duration::from_secs(2)));
    assert_eq!(fake.log_offset_at(&key, t0).await.expect("known"), 0);
    assert_eq!(fake.log_offset_at(&key, t0 + Duration::from_secs(1)).await.expect("known"), 6);
    assert_eq!(fake.log_offset_at(&key, t0 + Duration::from_secs(2)).await.expect("known"), 6);
    assert_eq!(fake.log_offset_at(&key, t0 + Duration::from_secs(3)).await.expect("known"), 11);
    assert!(fake.calls().contains(&Call::LogOffsetAt { key: key.clone(), since: t0 }));
    assert!(matches!(fake.log_offset_at(&sandbox_key("zz"), t0).await, Err(LogsError::NotFound(_))));
}

#[tokio::test(start_paused = true)]
async fn cleanup_and_forget_remove_an_exited_sandbox() {
    let fake = FakeRuntime::new();
    let key = started(&fake, "a").await;
    fake.write_log(&key, b"bye");
    assert!(matches!(fake.cleanup(&key).await, Err(CleanupError::Host { what: "cgroup", .. })));
    assert!(fake.forget(&key).await.is_err(), "a running sandbox cannot be forgotten");

    let wait = tokio::spawn({
        let (fake, key) = (fake.clone(), key.clone());
        async move { fake.wait(&key).await }
    });
    fake.exit(&key, Exit::Code(0));
    assert_eq!(wait.await.expect("no panic").expect("known"), Exit::Code(0));
    fake.cleanup(&key).await.expect("cleans up");
    fake.cleanup(&key).await.expect("idempotent");
    assert!(fake.is_cleaned_up(&key));
    assert_eq!(fake.read_logs(&key, 0, 10).await.expect("kept until forget").data, b"bye");

    fake.forget(&key).await.expect("forgets");
    fake.forget(&key).await.expect("idempotent");
    assert!(!fake.knows(&key));
    assert!(matches!(fake.wait(&key).await, Err(WaitError::NotFound(_))));
    assert!(matches!(fake.read_logs(&key, 0, 10).await, Err(LogsError::NotFound(_))));
    let again = fake.start(&spec("a")).await;
    assert!(again.is_ok(), "a forgotten key can be started again");
}

#[tokio::test(start_paused = true)]
async fn close_is_recorded_and_idempotent() {
    let fake = FakeRuntime::new();
    fake.settle().await;
    fake.close().await.expect("closes");
    fake.close().await.expect("idempotent");
    assert_eq!(fake.calls(), vec![Call::Close, Call::Close]);
    assert_eq!(Call::Close.op(), None, "close is not scriptable");
}

#[tokio::test(start_paused = true)]
async fn a_wait_pending_when_the_sandbox_is_forgotten_ends() {
    let fake = FakeRuntime::new();
    let key = started(&fake, "a").await;
    let wait = tokio::spawn({
        let (fake, key) = (fake.clone(), key.clone());
        async move { fake.wait(&key).await }
    });
    fake.wait_calls(1, |call| matches!(call, Call::Wait(_))).await;
    fake.kill(&key).await.expect("kills");
    fake.forget(&key).await.expect("forgets");
    // Either it saw the exit or the removal; it never hangs.
    let ended = tokio::time::timeout(HANG_GUARD, wait).await.expect("hang guard");
    assert!(matches!(ended.expect("no panic"), Ok(Exit::Signal(9)) | Err(WaitError::NotFound(_))));
}

#[tokio::test(start_paused = true)]
async fn recover_returns_the_seeded_sandboxes_and_adopts_the_running_ones() {
    let fake = FakeRuntime::new();
    let running =
        Recovered::new(spec("live"), SystemTime::UNIX_EPOCH, RecoveredState::Running { paused: true });
    let gone =
        Recovered::new(spec("gone"), SystemTime::UNIX_EPOCH, RecoveredState::Exited(Some(Exit::Code(1))));
    fake.seed_recovered(vec![running, gone]);
    let found = fake.recover().await.expect("recovers");
    let ids: Vec<_> = found.iter().map(|r| r.spec.key.id.as_str().to_owned()).collect();
    assert_eq!(ids, ["live", "gone"]);
    assert_eq!(fake.running(), vec![sandbox_key("live")]);
    assert!(fake.is_paused(&sandbox_key("live")));
    assert!(!fake.knows(&sandbox_key("gone")));
    fake.stop(&sandbox_key("live"), Duration::ZERO).await.expect("an adopted sandbox can be stopped");
    assert_eq!(fake.wait(&sandbox_key("live")).await.expect("known"), Exit::Signal(15));
    assert_eq!(fake.recover().await.expect("recovers").len(), 2, "recovering twice adopts once");
}

#[tokio::test(start_paused = true)]
async fn checkpoint_is_not_supported_by_default() {
    let fake = FakeRuntime::new();
    assert!(!fake.can_checkpoint());
    let key = started(&fake, "a").await;
    let refused = fake.checkpoint(&key, &snapshot("s"), false).await;
    assert!(matches!(refused, Err(CheckpointError::NotSupported { backend: "fake" })));
    assert!(matches!(fake.list_snapshots().await, Err(CheckpointError::NotSupported { .. })));
    let mut restore = spec("b");
    restore.restore_from = Some(snapshot("s"));
    assert!(matches!(fake.start(&restore).await, Err(StartError::NotSupported { .. })));
    assert!(!fake.knows(&sandbox_key("b")), "a refused start leaves nothing");
    assert_eq!(fake.exit_of(&key), None, "still running");
}

#[tokio::test(start_paused = true)]
async fn checkpoint_with_support_stores_snapshots() {
    let fake = FakeRuntime::with_checkpoint();
    assert!(fake.can_checkpoint());
    let a = started(&fake, "a").await;
    let kept = fake.checkpoint(&a, &snapshot("s1"), false).await.expect("checkpoints");
    assert_eq!((kept.id.as_str(), kept.source.as_str()), ("s1", "a"));
    assert_eq!(fake.exit_of(&a), None, "checkpoint-and-continue keeps it running");
    let exists = fake.checkpoint(&a, &snapshot("s1"), false).await;
    assert!(matches!(exists, Err(CheckpointError::SnapshotExists(_))));
    fake.checkpoint(&a, &snapshot("s2"), true).await.expect("checkpoints");
    assert_eq!(fake.exit_of(&a), Some(Exit::Signal(9)), "checkpoint-and-stop ends it");
    let gone = fake.checkpoint(&a, &snapshot("s3"), false).await;
    assert!(matches!(gone, Err(CheckpointError::NotFound(_))));

    let ids: Vec<_> = fake.list_snapshots().await.expect("lists").into_iter().map(|s| s.id).collect();
    assert_eq!(ids, [snapshot("s1"), snapshot("s2")]);

    let mut restore = spec("b");
    restore.restore_from = Some(snapshot("s2"));
    fake.start(&restore).await.expect("restores");
    restore.key = sandbox_key("c");
    restore.restore_from = Some(snapshot("nope"));
    assert!(matches!(fake.start(&restore).await, Err(StartError::Snapshot { .. })));

    fake.delete_snapshot(&snapshot("s1")).await.expect("deletes");
    let missing = fake.delete_snapshot(&snapshot("s1")).await;
    assert!(matches!(missing, Err(CheckpointError::SnapshotNotFound(_))));
    assert_eq!(fake.list_snapshots().await.expect("lists").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn scripted_failures_change_nothing() {
    let fake = FakeRuntime::new();
    fake.script(Op::Start, Behaviour::Fail);
    assert!(matches!(fake.start(&spec("a")).await, Err(StartError::Host { step: "scripted", .. })));
    assert!(!fake.knows(&sandbox_key("a")), "a failed start leaves nothing");
    fake.script(Op::Start, Behaviour::Normal);
    let key = started(&fake, "a").await;

    for op in [Op::Stop, Op::Kill, Op::Pause, Op::Resume, Op::Wait, Op::Cleanup] {
        fake.script(op, Behaviour::Fail);
    }
    assert!(fake.stop(&key, Duration::ZERO).await.is_err());
    assert!(fake.kill(&key).await.is_err());
    assert!(matches!(fake.pause(&key).await, Err(ControlError::Host { .. })));
    assert!(matches!(fake.resume(&key).await, Err(ControlError::Host { .. })));
    assert!(matches!(fake.wait(&key).await, Err(WaitError::Host { .. })));
    assert!(matches!(fake.cleanup(&key).await, Err(CleanupError::Host { what: "scripted", .. })));
    assert_eq!(fake.running(), vec![key.clone()], "still running, unpaused");
    assert!(!fake.is_paused(&key));

    let fake = FakeRuntime::with_checkpoint();
    let key = started(&fake, "a").await;
    fake.script(Op::Checkpoint, Behaviour::Fail);
    let failed = fake.checkpoint(&key, &snapshot("s"), true).await;
    assert!(matches!(failed, Err(CheckpointError::Host { step: "scripted", .. })));
    assert!(fake.list_snapshots().await.expect("lists").is_empty());
    assert_eq!(fake.exit_of(&key), None);
}

#[tokio::test(start_paused = true)]
async fn hung_calls_wait_until_released_or_failed() {
    let fake = FakeRuntime::new();
    let key = started(&fake, "a").await;
    fake.script(Op::Kill, Behaviour::Hang);
    let kill = tokio::spawn({
        let (fake, key) = (fake.clone(), key.clone());
        async move { fake.kill(&key).await }
    });
    fake.wait_hung(Op::Kill, 1).await;
    assert_eq!(fake.hung(Op::Kill), 1);
    assert_eq!(fake.calls().last(), Some(&Call::Kill(key.clone())), "recorded before it hangs");
    assert_eq!(fake.exit_of(&key), None, "a hung kill has done nothing yet");
    assert_eq!(fake.release(Op::Kill), 1);
    kill.await.expect("no panic").expect("kills once released");
    assert_eq!(fake.exit_of(&key), Some(Exit::Signal(9)));

    let key = started(&fake, "b").await;
    fake.script(Op::Stop, Behaviour::Hang);
    let stops: Vec<_> = (0..2)
        .map(|_| {
            let (fake, key) = (fake.clone(), key.clone());
            tokio::spawn(async move { fake.stop(&key, Duration::ZERO).await })
        })
        .collect();
    fake.wait_hung(Op::Stop, 2).await;
    assert_eq!(fake.fail_hung(Op::Stop), 2);
    for stop in stops {
        assert!(stop.await.expect("no panic").is_err());
    }
    assert_eq!(fake.exit_of(&key), None, "failed stops changed nothing");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_hung_call_is_no_longer_hung() {
    let fake = FakeRuntime::new();
    fake.script(Op::Wait, Behaviour::Hang);
    let cancelled = tokio::time::timeout(Duration::from_secs(1), fake.wait(&sandbox_key("a"))).await;
    assert!(cancelled.is_err());
    assert_eq!(fake.hung(Op::Wait), 0);
    assert_eq!(fake.release(Op::Wait), 0);
}

#[tokio::test(start_paused = true)]
async fn held_starts_are_in_flight_until_released() {
    let fake = FakeRuntime::new();
    let hold = fake.hold_starts();
    let start = tokio::spawn({
        let fake = fake.clone();
        async move { fake.start(&spec("a")).await }
    });
    hold.wait_held(1).await;
    assert_eq!(hold.held(), 1);
    assert_eq!(fake.calls(), vec![Call::Start(sandbox_key("a"))]);
    assert!(!fake.knows(&sandbox_key("a")), "in flight: not started yet");

    // A held start that is cancelled stops counting.
    let cancelled = tokio::time::timeout(Duration::from_secs(1), fake.start(&spec("b"))).await;
    assert!(cancelled.is_err());
    assert_eq!(hold.held(), 1);

    hold.release();
    start.await.expect("no panic").expect("starts once released");
    assert!(fake.knows(&sandbox_key("a")));
    fake.start(&spec("c")).await.expect("no hold: starts at once");
    let again = fake.hold_starts();
    drop(again);
    fake.start(&spec("d")).await.expect("a dropped hold holds nothing");
}
