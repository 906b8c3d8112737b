//! What only the `gvisor` backend has: checkpoint and restore, for real (runsc, as root). The rest
//! of the runtime suite runs on this backend too (`runtime.rs`). Every test ends by checking that
//! no runsc container, process or cgroup of it is left.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestEnv, last_number, numbers};
use sandhost_runtime::{Limits, Runtime, SandboxKey, SandboxSpec, SnapshotId, StartError};

const COUNTER_LOOP: &str = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.2; done";

/// How far an unpaused twin counts while a paused sandbox must not (a second of `COUNTER_LOOP`):
/// what a sandbox that runs when it should not would show, well past one stray tick.
const WITNESS_TICKS: u64 = 5;

fn gvisor() -> TestEnv {
    TestEnv::on(Backend::Gvisor)
}

/// A counter with limits (a restore may set others).
fn counter(t: &TestEnv) -> SandboxSpec {
    SandboxSpec {
        limits: Limits { memory_bytes: Some(256 << 20), cpu_millis: Some(1000), pids_max: Some(64) },
        ..t.sh(COUNTER_LOOP)
    }
}

/// The counter never restarted: every line is the one before plus one.
fn assert_counts_on(log: &str) {
    let n = numbers(log);
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "the counter restarted or skipped: {log:?}");
}

async fn finish(runtime: &Arc<dyn Runtime>, key: &SandboxKey) {
    runtime.kill(key).await.expect("kill");
    runtime.cleanup(key).await.expect("cleanup");
    runtime.forget(key).await.expect("forget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_and_continue_keeps_the_memory_of_the_sandbox() {
    let t = gvisor();
    let spec = counter(&t);
    t.runtime.start(&spec).await.expect("start");
    t.wait_for_log_where(&spec.key, "a few counts", |l| last_number(l) >= 3).await;
    let snapshot = SnapshotId::parse("cont-1").expect("snapshot id");
    let info = t.runtime.checkpoint(&spec.key, &snapshot, false).await.expect("checkpoint");
    assert_eq!(info.source, spec.key.id);
    assert!(info.size_bytes > 0);
    let at = last_number(&t.log(&spec.key).await);
    let log =
        t.wait_for_log_where(&spec.key, "counting after the checkpoint", |l| last_number(l) >= at + 3).await;
    assert_counts_on(&log);
    let listed = t.runtime.list_snapshots().await.expect("list");
    assert!(listed.iter().any(|s| s.id == snapshot), "{listed:?}");
    // Again, on the restored container.
    let second = SnapshotId::parse("cont-2").expect("snapshot id");
    t.runtime.checkpoint(&spec.key, &second, false).await.expect("second checkpoint");
    let at = last_number(&t.log(&spec.key).await);
    let log = t
        .wait_for_log_where(&spec.key, "counting after the 2nd checkpoint", |l| last_number(l) >= at + 2)
        .await;
    assert_counts_on(&log);
    // A paused sandbox can be checkpointed: the checkpoint thaws it and it runs on, then it is
    // paused again (as the manager does) and counts on once resumed. The witness that it had time to
    // run: an unpaused twin, the same counter, counts on meanwhile.
    let twin = counter(&t);
    t.runtime.start(&twin).await.expect("start the twin");
    t.runtime.pause(&spec.key).await.expect("pause");
    let third = SnapshotId::parse("cont-3").expect("snapshot id");
    t.runtime.checkpoint(&spec.key, &third, false).await.expect("checkpoint while paused");
    assert!(!t.is_frozen(&spec.key), "a checkpoint leaves the sandbox running");
    t.runtime.pause(&spec.key).await.expect("pause again");
    let frozen = last_number(&t.log(&spec.key).await);
    let from = last_number(&t.log(&twin.key).await);
    t.wait_for_log_where(&twin.key, "the unpaused twin to count on", |l| {
        last_number(l) >= from + WITNESS_TICKS
    })
    .await;
    // One tick may land between the log's read and the freeze; a sandbox left running would have
    // counted about as many as the twin.
    let after = last_number(&t.log(&spec.key).await);
    assert!(
        after <= frozen + 1,
        "it runs after a paused checkpoint: {frozen} -> {after} while the twin counted {WITNESS_TICKS}"
    );
    finish(&t.runtime, &twin.key).await;
    t.runtime.resume(&spec.key).await.expect("resume");
    let log =
        t.wait_for_log_where(&spec.key, "counting after resume", |l| last_number(l) >= frozen + 2).await;
    assert_counts_on(&log);
    t.runtime.delete_snapshot(&third).await.expect("delete snapshot");
    assert!(matches!(
        t.runtime.checkpoint(&spec.key, &second, false).await,
        Err(sandhost_runtime::CheckpointError::SnapshotExists(_))
    ));
    finish(&t.runtime, &spec.key).await;
    for s in [&snapshot, &second] {
        t.runtime.delete_snapshot(s).await.expect("delete snapshot");
    }
    assert!(t.runtime.list_snapshots().await.expect("list").is_empty());
    t.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_and_stop_then_restore_on_another_state_dir() {
    let a = gvisor();
    let spec = counter(&a);
    a.runtime.start(&spec).await.expect("start");
    a.wait_for_log_where(&spec.key, "a few counts", |l| last_number(l) >= 3).await;
    let snapshot = SnapshotId::parse("move-1").expect("snapshot id");
    a.runtime.checkpoint(&spec.key, &snapshot, true).await.expect("checkpoint and stop");
    tokio::time::timeout(Duration::from_secs(30), a.runtime.wait(&spec.key))
        .await
        .expect("the checkpointed sandbox stops")
        .expect("wait");
    let at = last_number(&a.log(&spec.key).await);
    finish(&a.runtime, &spec.key).await;

    // Another "host": a fresh state dir with the snapshot's directory copied in.
    let b = gvisor();
    let from = a.state_dir.join("snapshots").join(snapshot.as_str());
    let to = b.state_dir.join("snapshots").join(snapshot.as_str());
    let copied = std::process::Command::new("cp").arg("-a").arg(&from).arg(&to).status().expect("cp");
    assert!(copied.success());
    let listed = b.runtime.list_snapshots().await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    // Restored without limits: the new lifecycle's own apply.
    let restored = b.restore_spec(snapshot.as_str());
    b.runtime.start(&restored).await.expect("restore");
    let log = b.wait_for_log_where(&restored.key, "counting on", |l| last_number(l) >= at + 2).await;
    let first = numbers(&log).first().copied().unwrap_or(0);
    assert!(first > 1, "the restored sandbox started over: {log:?}");
    assert_counts_on(&log);
    finish(&b.runtime, &restored.key).await;

    // Missing and corrupt snapshots: a clear error, nothing left behind.
    let missing = b.restore_spec("nope");
    let err = b.runtime.start(&missing).await.expect_err("missing snapshot");
    assert!(matches!(err, StartError::Snapshot { .. }), "{err}");
    std::fs::write(to.join("checkpoint.img"), b"garbage").expect("corrupt the image");
    let corrupt = b.restore_spec(snapshot.as_str());
    let err = b.runtime.start(&corrupt).await.expect_err("corrupt snapshot");
    assert!(matches!(err, StartError::Snapshot { .. }), "{err}");
    for spec in [&missing, &corrupt] {
        assert!(
            !b.state_dir.join("sandboxes").join(spec.key.id.as_str()).exists(),
            "state left for {}",
            spec.key
        );
    }
    b.runtime.delete_snapshot(&snapshot).await.expect("delete");
    a.runtime.delete_snapshot(&snapshot).await.expect("delete");
    a.assert_clean();
    b.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_whose_caller_goes_away_completes_and_the_sandbox_counts_on() {
    let t = gvisor();
    let spec = counter(&t);
    t.runtime.start(&spec).await.expect("start");
    t.wait_for_log_where(&spec.key, "a few counts", |l| last_number(l) >= 3).await;
    let mut snapshots = Vec::new();
    // Dropped at its first step, in the middle of `runsc checkpoint`, and during the restore.
    for (i, after) in [0, 40, 400].into_iter().enumerate() {
        let snapshot = SnapshotId::parse(format!("dropped-{i}")).expect("snapshot id");
        let call = t.runtime.checkpoint(&spec.key, &snapshot, false);
        let _ = tokio::time::timeout(Duration::from_millis(after), call).await;
        tokio::time::timeout(Duration::from_secs(120), t.runtime.settle()).await.expect("hang guard");
        let listed = t.runtime.list_snapshots().await.expect("list");
        assert!(listed.iter().any(|s| s.id == snapshot), "the checkpoint did not complete: {listed:?}");
        let partial: Vec<_> = std::fs::read_dir(t.state_dir.join("snapshots"))
            .expect("snapshots dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(partial.is_empty(), "half-written snapshots left: {partial:?}");
        let at = last_number(&t.log(&spec.key).await);
        let log = t.wait_for_log_where(&spec.key, "counting on", |l| last_number(l) >= at + 2).await;
        assert_counts_on(&log);
        snapshots.push(snapshot);
    }
    finish(&t.runtime, &spec.key).await;
    for snapshot in &snapshots {
        t.runtime.delete_snapshot(snapshot).await.expect("delete snapshot");
    }
    t.assert_clean();
}
