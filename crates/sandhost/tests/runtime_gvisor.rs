//! The `gvisor` runtime, for real: runsc (`apt-get install runsc`) as root. Without runsc these
//! tests fail loudly. Every test ends by checking that no runsc container, process or cgroup of it
//! is left.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sandhost_runtime::gvisor::{GvisorConfig, GvisorRuntime};
use sandhost_runtime::{
    Exit, LifecycleId, Limits, RecoveredState, Runtime, SandboxId, SandboxKey, SandboxSpec, SnapshotId,
    StartError,
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

const COUNTER_LOOP: &str = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.2; done";

struct Gv {
    runtime: GvisorRuntime,
    state_dir: PathBuf,
    prefix: String,
    _tmp: tempfile::TempDir,
}

/// The log bound of these tests: small, so that one test can overflow it cheaply.
const LOG_LIMIT: u64 = 64 * 1024;

fn open(state_dir: &Path, prefix: &str) -> GvisorRuntime {
    let mut config = GvisorConfig::new(state_dir);
    config.cgroup_parent = prefix.to_owned();
    config.log_limit_bytes = LOG_LIMIT;
    GvisorRuntime::open(config).expect("open the gvisor runtime: is runsc installed (apt-get install runsc)?")
}

impl Gv {
    fn new() -> Self {
        common::require_root();
        std::fs::create_dir_all("/var/tmp").expect("/var/tmp");
        let tmp = tempfile::Builder::new().prefix("sandhost-gv-").tempdir_in("/var/tmp").expect("temp dir");
        let prefix =
            format!("sandhost-gv-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let state_dir = tmp.path().join("state");
        let runtime = open(&state_dir, &prefix);
        Self { runtime, state_dir, prefix, _tmp: tmp }
    }

    fn sh(&self, script: &str) -> SandboxSpec {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        SandboxSpec {
            env: vec![("LANG".into(), "C".into())],
            limits: Limits { memory_bytes: Some(256 << 20), cpu_millis: Some(1000), pids_max: Some(64) },
            stop_grace: Duration::from_secs(10),
            ..SandboxSpec::new(
                SandboxKey {
                    id: SandboxId::parse(format!("gv-{n}")).expect("id"),
                    lifecycle: LifecycleId::parse(format!("{:x}", 0xbee0_0000_u64 + u64::from(n)))
                        .expect("lifecycle"),
                },
                vec!["/bin/sh".into(), "-c".into(), script.into()],
            )
        }
    }

    async fn log(&self, key: &SandboxKey) -> String {
        log_of(&self.runtime, key).await
    }

    /// Everything gone: no container in runsc's root, no process naming the state dir, no cgroup.
    fn assert_clean(&self) {
        assert_clean(&self.state_dir, &self.prefix);
    }
}

impl Drop for Gv {
    fn drop(&mut self) {
        common::purge(&self.prefix, &self.state_dir);
    }
}

async fn log_of(runtime: &GvisorRuntime, key: &SandboxKey) -> String {
    let chunk = runtime.read_logs(key, 0, 16 << 20).await.expect("read logs");
    String::from_utf8_lossy(&chunk.data).into_owned()
}

fn assert_clean(state_dir: &Path, prefix: &str) {
    let root = state_dir.join("runsc");
    let containers: Vec<_> = std::fs::read_dir(&root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name())
                .filter(|n| !n.to_string_lossy().starts_with("runsc-"))
                .collect()
        })
        .unwrap_or_default();
    let listed = std::process::Command::new("runsc")
        .arg("--root")
        .arg(&root)
        .args(["list", "-quiet"])
        .output()
        .expect("runsc list");
    let listed = String::from_utf8_lossy(&listed.stdout).trim().to_owned();
    assert!(listed.is_empty(), "runsc containers left: {listed:?} (root entries {containers:?})");
    let procs = common::processes_naming(&state_dir.to_string_lossy());
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
    let cgroups = common::leftover_cgroups(prefix);
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
}

/// Waits (hang guard: 60 s) until `f(log)` holds.
async fn wait_log(runtime: &GvisorRuntime, key: &SandboxKey, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let log = log_of(runtime, key).await;
        if f(&log) {
            return log;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {log:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn numbers(log: &str) -> Vec<u64> {
    log.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn last_number(log: &str) -> u64 {
    numbers(log).last().copied().unwrap_or(0)
}

/// The counter never restarted: every line is the one before plus one.
fn assert_counts_on(log: &str) {
    let n = numbers(log);
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "the counter restarted or skipped: {log:?}");
}

async fn finish(runtime: &GvisorRuntime, key: &SandboxKey) {
    runtime.kill(key).await.expect("kill");
    runtime.cleanup(key).await.expect("cleanup");
    runtime.forget(key).await.expect("forget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_wait_stop_kill_pause_resume_and_logs() {
    let t = Gv::new();
    assert_eq!(t.runtime.name(), "gvisor");
    assert!(t.runtime.can_checkpoint());

    let exits = t.sh("echo hello from $(id -u); echo oops >&2; exit 3");
    t.runtime.start(&exits).await.expect("start");
    assert_eq!(t.runtime.wait(&exits.key).await.expect("wait"), Exit::Code(3));
    let log = t.log(&exits.key).await;
    assert!(log.contains("hello from 65534") && log.contains("oops"), "log: {log:?}");

    // SIGTERM ends a plain loop within the grace.
    let polite = t.sh(COUNTER_LOOP);
    t.runtime.start(&polite).await.expect("start");
    wait_log(&t.runtime, &polite.key, "output", |l| last_number(l) >= 1).await;
    // Pause: the counter stands still; resume: it goes on.
    t.runtime.pause(&polite.key).await.expect("pause");
    let frozen = last_number(&t.log(&polite.key).await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let still = last_number(&t.log(&polite.key).await);
    assert!(still <= frozen + 1, "a paused sandbox counted on: {frozen} -> {still}");
    t.runtime.resume(&polite.key).await.expect("resume");
    wait_log(&t.runtime, &polite.key, "counting after resume", |l| last_number(l) > still + 1).await;
    t.runtime.stop(&polite.key, Duration::from_secs(30)).await.expect("stop");
    assert_eq!(t.runtime.wait(&polite.key).await.expect("wait"), Exit::Signal(libc_sigterm()));

    // A sandbox that ignores SIGTERM is killed after its grace.
    let stubborn = t.sh("trap '' TERM; echo ready; while true; do sleep 0.2; done");
    t.runtime.start(&stubborn).await.expect("start");
    wait_log(&t.runtime, &stubborn.key, "ready", |l| l.contains("ready")).await;
    t.runtime.stop(&stubborn.key, Duration::from_millis(300)).await.expect("stop");
    assert_eq!(t.runtime.wait(&stubborn.key).await.expect("wait"), Exit::Signal(9));
    t.runtime.stop(&stubborn.key, Duration::from_millis(300)).await.expect("stop is idempotent");

    // A missing command is a start error that leaves nothing.
    let missing = Gv::sh(&t, "x");
    let mut missing = missing;
    missing.argv = vec!["/no/such/binary".into()];
    let err = t.runtime.start(&missing).await.expect_err("a missing binary cannot start");
    assert!(matches!(err, StartError::Host { .. } | StartError::Exec { .. }), "{err}");
    assert!(!t.state_dir.join("sandboxes").join(missing.key.id.as_str()).exists());

    // The log is bounded: the oldest bytes go, the offsets stay, the newest are kept.
    let chatty = t.sh("head -c 1000000 /dev/zero | tr '\\0' x; echo; echo the-end");
    t.runtime.start(&chatty).await.expect("start");
    assert_eq!(t.runtime.wait(&chatty.key).await.expect("wait"), Exit::Code(0));
    let chunk = t.runtime.read_logs(&chatty.key, 0, 16 << 20).await.expect("read logs");
    assert!(chunk.dropped > 0, "nothing was dropped");
    assert!(chunk.data.len() as u64 <= LOG_LIMIT, "{} bytes kept", chunk.data.len());
    assert!(String::from_utf8_lossy(&chunk.data).ends_with("the-end\n"));
    assert_eq!(chunk.next_offset, 1_000_000 + "\nthe-end\n".len() as u64);

    for spec in [&exits, &polite, &stubborn, &chatty] {
        finish(&t.runtime, &spec.key).await;
    }
    t.assert_clean();
}

fn libc_sigterm() -> i32 {
    15
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_and_continue_keeps_the_memory_of_the_sandbox() {
    let t = Gv::new();
    let spec = t.sh(COUNTER_LOOP);
    t.runtime.start(&spec).await.expect("start");
    wait_log(&t.runtime, &spec.key, "a few counts", |l| last_number(l) >= 3).await;
    let snapshot = SnapshotId::parse("cont-1").expect("snapshot id");
    let info = t.runtime.checkpoint(&spec.key, &snapshot, false).await.expect("checkpoint");
    assert_eq!(info.source, spec.key.id);
    assert!(info.size_bytes > 0);
    let at = last_number(&t.log(&spec.key).await);
    let log =
        wait_log(&t.runtime, &spec.key, "counting after the checkpoint", |l| last_number(l) >= at + 3).await;
    assert_counts_on(&log);
    let listed = t.runtime.list_snapshots().await.expect("list");
    assert!(listed.iter().any(|s| s.id == snapshot), "{listed:?}");
    // Again, on the restored container.
    let second = SnapshotId::parse("cont-2").expect("snapshot id");
    t.runtime.checkpoint(&spec.key, &second, false).await.expect("second checkpoint");
    let at = last_number(&t.log(&spec.key).await);
    let log =
        wait_log(&t.runtime, &spec.key, "counting after the 2nd checkpoint", |l| last_number(l) >= at + 2)
            .await;
    assert_counts_on(&log);
    // A paused sandbox stays paused across checkpoint-and-continue, and counts on once resumed.
    t.runtime.pause(&spec.key).await.expect("pause");
    let third = SnapshotId::parse("cont-3").expect("snapshot id");
    t.runtime.checkpoint(&spec.key, &third, false).await.expect("checkpoint while paused");
    let frozen = last_number(&t.log(&spec.key).await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(last_number(&t.log(&spec.key).await) <= frozen + 1, "it runs after a paused checkpoint");
    t.runtime.resume(&spec.key).await.expect("resume");
    let log =
        wait_log(&t.runtime, &spec.key, "counting after resume", |l| last_number(l) >= frozen + 2).await;
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
    let a = Gv::new();
    let spec = a.sh(COUNTER_LOOP);
    a.runtime.start(&spec).await.expect("start");
    wait_log(&a.runtime, &spec.key, "a few counts", |l| last_number(l) >= 3).await;
    let snapshot = SnapshotId::parse("move-1").expect("snapshot id");
    a.runtime.checkpoint(&spec.key, &snapshot, true).await.expect("checkpoint and stop");
    tokio::time::timeout(Duration::from_secs(30), a.runtime.wait(&spec.key))
        .await
        .expect("the checkpointed sandbox stops")
        .expect("wait");
    let at = last_number(&a.log(&spec.key).await);
    finish(&a.runtime, &spec.key).await;

    // Another "host": a fresh state dir with the snapshot's directory copied in.
    let b = Gv::new();
    let from = a.state_dir.join("snapshots").join(snapshot.as_str());
    let to = b.state_dir.join("snapshots").join(snapshot.as_str());
    let copied = std::process::Command::new("cp").arg("-a").arg(&from).arg(&to).status().expect("cp");
    assert!(copied.success());
    let listed = b.runtime.list_snapshots().await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let mut restored = b.sh("true");
    restored.restore_from = Some(snapshot.clone());
    b.runtime.start(&restored).await.expect("restore");
    let log = wait_log(&b.runtime, &restored.key, "counting on", |l| last_number(l) >= at + 2).await;
    let first = numbers(&log).first().copied().unwrap_or(0);
    assert!(first > 1, "the restored sandbox started over: {log:?}");
    assert_counts_on(&log);
    finish(&b.runtime, &restored.key).await;

    // Missing and corrupt snapshots: a clear error, nothing left behind.
    let mut missing = b.sh("true");
    missing.restore_from = Some(SnapshotId::parse("nope").expect("id"));
    let err = b.runtime.start(&missing).await.expect_err("missing snapshot");
    assert!(matches!(err, StartError::Snapshot { .. }), "{err}");
    std::fs::write(to.join("checkpoint.img"), b"garbage").expect("corrupt the image");
    let mut corrupt = b.sh("true");
    corrupt.restore_from = Some(snapshot.clone());
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
async fn a_new_runtime_re_adopts_running_sandboxes() {
    let t = Gv::new();
    let running = t.sh(COUNTER_LOOP);
    let ended = t.sh("exit 7");
    t.runtime.start(&running).await.expect("start");
    t.runtime.start(&ended).await.expect("start");
    assert_eq!(t.runtime.wait(&ended.key).await.expect("wait"), Exit::Code(7));
    wait_log(&t.runtime, &running.key, "output", |l| last_number(l) >= 1).await;

    let again = open(&t.state_dir, &t.prefix);
    let found = again.recover().await.expect("recover");
    let state_of = |key: &SandboxKey| found.iter().find(|r| &r.spec.key == key).map(|r| r.state);
    assert_eq!(state_of(&running.key), Some(RecoveredState::Running { paused: false }), "{found:?}");
    assert_eq!(state_of(&ended.key), Some(RecoveredState::Exited(Some(Exit::Code(7)))), "{found:?}");
    wait_log(&again, &running.key, "counting on", |l| last_number(l) >= 3).await;
    again.kill(&running.key).await.expect("kill");
    assert_eq!(again.wait(&running.key).await.expect("wait"), Exit::Signal(9));
    for key in [&running.key, &ended.key] {
        again.cleanup(key).await.expect("cleanup");
        again.forget(key).await.expect("forget");
    }
    t.assert_clean();
}
