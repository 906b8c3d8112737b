//! The runtime suite, for real and on both backends: `process` (as root, with the real `sandhost`
//! binary as each sandbox's init) and `gvisor` (runsc). Each shared test is an `async fn(Backend)`
//! run once per backend (`<test>::process`, `<test>::gvisor`); where the backends differ by design
//! the test says so in a branch on the backend. What only one backend has is tested in
//! `runtime_process.rs` (our init, the seccomp filter) and `runtime_gvisor.rs` (checkpoint and
//! restore); what a restarted agent finds, in `runtime_readoption.rs`. Every test ends by checking
//! that nothing of it is left on the host.

#[macro_use]
mod common;

use std::time::Duration;

use common::{Backend, HANG_GUARD, TestEnv, last_number};
use sandhost_runtime::Exit;

/// Counts up, a number a line, every 10 ms.
const FAST_COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.01; done";

/// How far an unpaused twin of `FAST_COUNTER` counts while its paused sibling must not.
const WITNESS_TICKS: u64 = 20;

/// How often a follower that cannot watch the log looks again: `Runtime::log_grown`'s default.
const DEFAULT_POLL: Duration = Duration::from_millis(200);

/// How many of those rounds pass while a follower with nothing to read must stay asleep.
const POLLS_WITNESSED: u32 = 5;

on_both_backends!(async:
    the_command_sees_no_host_process,
    the_host_is_read_only_and_the_state_dir_invisible,
    the_network_is_loopback_only_and_up,
    memory_limit_oom_kills_the_command,
    pids_limit_makes_fork_fail,
    the_command_has_no_privileges_even_as_root,
    stop_sends_sigterm_and_waits_for_a_graceful_exit,
    a_command_that_ignores_sigterm_is_killed_after_the_grace,
    children_that_outlive_the_command_go_with_the_sandbox,
    kill_reaches_processes_of_the_cgroup,
    pause_freezes_and_resume_thaws,
    exit_codes_and_signals_are_reported,
    logs_capture_stdout_and_stderr_and_are_bounded,
    a_log_follower_is_woken_by_the_next_write_and_not_before,
    failed_starts_leave_nothing_behind,
    a_start_that_times_out_is_undone_and_leaves_nothing,
    many_concurrent_starts_and_stops_leak_nothing,
    a_rootfs_template_is_the_whole_world_and_read_only,
    the_cpu_limit_is_written_to_the_cgroup,
    a_cancelled_start_leaves_nothing_behind,
    operations_on_unknown_or_exited_sandboxes_answer_typed_errors,
    cleanup_of_a_running_sandbox_kills_it_and_keeps_its_log,
    stop_kill_and_cleanup_may_race_on_one_sandbox,
);

async fn the_command_sees_no_host_process(backend: Backend) {
    let t = TestEnv::on(backend);
    // No `ls`: coreutils' statx flags are refused by Debian's gVisor (EINVAL); a glob is not.
    let spec = t.sh("echo pid=$$; cat /proc/1/cmdline | tr '\\0' ' '; echo; set -- /proc/[0-9]*; echo $#");
    t.runtime.start(&spec).await.expect("start");
    let exit = t.runtime.wait(&spec.key).await.expect("wait");
    let log = t.log(&spec.key).await;
    assert_eq!(exit, Exit::Code(0), "log: {log}");
    match backend {
        // sandhost's init is pid 1 and the command pid 2.
        Backend::Process => {
            assert!(log.contains("pid=2"), "log: {log}");
            assert!(log.contains("__init"), "pid 1 must be our init: {log}");
        }
        // gVisor's kernel runs the command as pid 1 of its own pid namespace.
        Backend::Gvisor => assert!(log.contains("pid=1"), "log: {log}"),
    }
    let count: u32 = log.lines().last().and_then(|l| l.trim().parse().ok()).expect("process count");
    assert!(count < 8, "the sandbox sees {count} processes: {log}");
    t.runtime.stop(&spec.key, Duration::from_secs(1)).await.expect("stop");
    t.runtime.forget(&spec.key).await.expect("forget");
    t.assert_clean();
}

async fn the_host_is_read_only_and_the_state_dir_invisible(backend: Backend) {
    let t = TestEnv::on(backend);
    // A host directory that anyone may write to: only the sandbox's mounts can stop the write.
    let host_dir =
        tempfile::Builder::new().prefix("sandhost-host-").tempdir_in("/var/tmp").expect("host dir");
    std::fs::set_permissions(host_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let target = host_dir.path().join("written");
    let script = format!(
        "echo x > {target} && echo wrote-host; echo y > /tmp/f && cat /tmp/f; echo z > $HOME/g && echo home-ok; \
         echo {state}/*; echo state-listed; cat /etc/shadow; \
         for f in /root/* /root/.[!.]*; do [ -e \"$f\" ] && echo \"$f\"; done; echo secrets-checked",
        target = target.display(),
        state = t.state_dir.display(),
    );
    for user in [sandhost_runtime::User::UNPRIVILEGED, sandhost_runtime::User { uid: 0, gid: 0 }] {
        let mut spec = t.sh(&script);
        spec.user = user;
        t.runtime.start(&spec).await.expect("start");
        t.runtime.wait(&spec.key).await.expect("wait");
        let log = t.log(&spec.key).await;
        assert!(!target.exists(), "the sandbox wrote into the host as {user:?}: {log}");
        assert!(!log.contains("wrote-host"), "{log}");
        assert!(log.contains("y\n"), "/tmp must be writable: {log}");
        assert!(log.contains("home-ok"), "home must be writable: {log}");
        let listing: Vec<&str> = log
            .lines()
            .skip_while(|l| !l.starts_with("home-ok"))
            .skip(1)
            .take_while(|l| *l != "state-listed")
            .collect();
        assert!(
            listing.iter().all(|l| !l.contains("sandboxes")),
            "the state dir is visible inside: {listing:?}"
        );
        let secrets: Vec<&str> = log
            .lines()
            .skip_while(|l| *l != "state-listed")
            .skip(1)
            .take_while(|l| *l != "secrets-checked")
            .collect();
        assert!(secrets.is_empty(), "host secrets are readable inside as {user:?}: {secrets:?}");
        t.runtime.forget(&spec.key).await.expect("forget");
    }
    t.assert_clean();
}

async fn the_network_is_loopback_only_and_up(backend: Backend) {
    let t = TestEnv::on(backend);
    let spec = t.sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; echo flags=$(cat /sys/class/net/lo/flags 2>/dev/null)");
    t.runtime.start(&spec).await.expect("start");
    t.runtime.wait(&spec.key).await.expect("wait");
    let log = t.log(&spec.key).await;
    let interfaces: Vec<&str> = log.lines().take_while(|l| !l.starts_with("flags=")).collect();
    assert_eq!(interfaces, ["lo"], "only loopback: {log}");
    match backend {
        Backend::Process => {
            let flags = log.lines().find_map(|l| l.strip_prefix("flags=0x")).expect("flags");
            assert_eq!(u32::from_str_radix(flags, 16).expect("hex") & 1, 1, "lo must be up: {log}");
        }
        // gVisor's sysfs has no class/net; its netstack's loopback is up.
        Backend::Gvisor => {}
    }
    t.runtime.forget(&spec.key).await.expect("forget");
    t.assert_clean();
}

async fn memory_limit_oom_kills_the_command(backend: Backend) {
    let t = TestEnv::on(backend);
    // `tail` keeps the last ten lines; /dev/zero has no newline, so it grows without bound.
    let mut spec = t.spec(&["tail", "/dev/zero"]);
    spec.limits.memory_bytes = Some(32 << 20);
    t.runtime.start(&spec).await.expect("start");
    let exit =
        tokio::time::timeout(Duration::from_secs(120), t.runtime.wait(&spec.key)).await.expect("hang guard");
    assert_eq!(exit.expect("wait"), Exit::Signal(libc::SIGKILL));
    // The init survived the OOM and recorded the command's death (not a kill of the whole sandbox).
    let record = t
        .state_dir
        .join("sandboxes")
        .join(spec.key.id.as_str())
        .join(spec.key.lifecycle.as_str())
        .join("exit.json");
    let recorded = sandhost_runtime::state_file::read_path::<Exit>(&record).expect("exit record");
    assert_eq!(recorded, Some(Exit::Signal(libc::SIGKILL)));
    // Its cgroup counted the kill, until the cleanup removes it (on gvisor too: sandhost made the
    // container's cgroup, which runsc leaves).
    assert!(t.runtime.oom_kills(&spec.key).is_some_and(|kills| kills >= 1), "{backend:?}");
    t.runtime.forget(&spec.key).await.expect("forget");
    t.assert_clean();
}

async fn pids_limit_makes_fork_fail(backend: Backend) {
    let t = TestEnv::on(backend);
    // gVisor: the host limit is this plus its kernel's own tasks; each process of the command takes
    // host tasks too (ptrace platform), so the fork bomb is larger.
    let (limit, forks) = match backend {
        Backend::Process => (6, 20),
        Backend::Gvisor => (6, 200),
    };
    let mut spec =
        t.sh(&format!("i=0; while [ $i -lt {forks} ]; do sleep 1000 & i=$((i+1)); done; echo all-forked"));
    spec.limits.pids_max = Some(limit);
    t.runtime.start(&spec).await.expect("start");
    let exit =
        tokio::time::timeout(Duration::from_secs(60), t.runtime.wait(&spec.key)).await.expect("hang guard");
    let log = t.log(&spec.key).await;
    let exit = exit.expect("wait");
    match backend {
        Backend::Process => assert!(log.to_lowercase().contains("fork"), "fork must fail: {log}"),
        // gVisor's shell ends at the failed fork without a word on these hosts (status 2).
        Backend::Gvisor => {}
    }
    assert!(!log.contains("all-forked"), "{log}");
    assert_ne!(exit, Exit::Code(0));
    t.runtime.stop(&spec.key, Duration::ZERO).await.expect("stop");
    t.runtime.forget(&spec.key).await.expect("forget");
    t.assert_clean();
}

async fn the_command_has_no_privileges_even_as_root(backend: Backend) {
    let t = TestEnv::on(backend);
    let script =
        "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; id -u; id -g";
    for (user, uid) in
        [(sandhost_runtime::User::UNPRIVILEGED, "65534"), (sandhost_runtime::User { uid: 0, gid: 0 }, "0")]
    {
        let mut spec = t.sh(script);
        spec.user = user;
        t.runtime.start(&spec).await.expect("start");
        assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), Exit::Code(0));
        let log = t.log(&spec.key).await;
        // gVisor's /proc has no CapAmb (nor can it grant ambient capabilities).
        let sets: &[&str] = match backend {
            Backend::Process => &["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"],
            Backend::Gvisor => &["CapInh", "CapPrm", "CapEff", "CapBnd"],
        };
        for set in sets {
            assert!(log.contains(&format!("{set}:\t0000000000000000")), "{set} must be empty: {log}");
        }
        if backend == Backend::Process {
            // gVisor's kernel is the filter: its /proc shows neither field.
            assert!(log.contains("NoNewPrivs:\t1"), "{log}");
            assert!(log.contains("Seccomp:\t2"), "{log}");
        }
        assert_eq!(log.lines().rev().nth(1), Some(uid), "{log}");
        t.runtime.forget(&spec.key).await.expect("forget");
    }
    t.assert_clean();
}

async fn stop_sends_sigterm_and_waits_for_a_graceful_exit(backend: Backend) {
    let t = TestEnv::on(backend);
    let spec = t.sh("trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done");
    t.runtime.start(&spec).await.expect("start");
    t.wait_for_log(&spec.key, "ready").await;
    t.runtime.stop(&spec.key, Duration::from_secs(60)).await.expect("stop");
    assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), Exit::Code(7));
    assert!(t.log(&spec.key).await.contains("got-term"));
    assert!(t.cgroup_pids(&spec.key).is_empty());
    // Idempotent.
    t.runtime.stop(&spec.key, Duration::from_secs(1)).await.expect("second stop");
    t.runtime.kill(&spec.key).await.expect("kill after stop");
    t.runtime.forget(&spec.key).await.expect("forget");
    t.assert_clean();
}

async fn a_command_that_ignores_sigterm_is_killed_after_the_grace(backend: Backend) {
    let t = TestEnv::on(backend);
    let spec = t.sh("trap '' TERM; echo ready; sleep 1000");
    t.runtime.start(&spec).await.expect("start");
    t.wait_for_log(&spec.key, "ready").await;
    t.runtime.stop(&spec.key, Duration::from_millis(300)).await.expect("stop");
    assert!(t.cgroup_pids(&spec.key).is_empty(), "stop returned with processes left");
    assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), Exit::Signal(libc::SIGKILL));
    t.runtime.forget(&spec.key).await.expect("forget");
    t.assert_clean();
}

async fn children_that_outlive_the_command_go_with_the_sandbox(backend: Backend) {
    let t = TestEnv::on(backend);
    let spec = t.sh("sleep 1000 & setsid sleep 1000 & exit 3");
    t.runtime.start(&spec).await.expect("start");
    assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), Exit::Code(3));
    t.runtime.stop(&spec.key, Duration::from_secs(1)).await.expect("stop");
    assert!(t.cgroup_pids(&spec.key).is_empty());
    t.runtime.forget(&spec.key).await.expect("forget");
    t.assert_clean();
}

async fn kill_reaches_processes_of_the_cgroup(backend: Backend) {
    let t = TestEnv::on(backend);
    let spec = t.sh("(sleep 1000 &) ; echo ready; sleep 1000");
    t.runtime.start(&spec).await.expect("start");
    t.wait_for_log(&spec.key, "ready").await;
    assert!(t.cgroup_pids(&spec.key).len() >= 3);
    t.runtime.kill(&spec.key).await.expect("kill");
    assert!(t.cgroup_pids(&spec.key).is_empty());
    assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), Exit::Signal(libc::SIGKILL));
    t.runtime.forget(&spec.key).await.expect("forget");
    t.assert_clean();
}

async fn pause_freezes_and_resume_thaws(backend: Backend) {
    let t = TestEnv::on(backend);
    // Two sandboxes count alike; only the first is paused. The second is the witness that there was
    // time to count: a pause that left the first running would show about as many ticks.
    let (spec, twin) = (t.sh(FAST_COUNTER), t.sh(FAST_COUNTER));
    for s in [&spec, &twin] {
        t.runtime.start(s).await.expect("start");
        t.wait_for_log(&s.key, "\n3\n").await;
    }
    t.runtime.pause(&spec.key).await.expect("pause");
    assert!(
        t.is_frozen(&spec.key),
        "the kernel must report the cgroup frozen: {:?}",
        t.freezer_states(&spec.key)
    );
    let before = t.log_chunk(&spec.key, 0).await.next_offset;
    let from = last_number(&t.log(&twin.key).await);
    t.wait_for_log_where(&twin.key, "the unpaused twin to count on", |log| {
        last_number(log) >= from + WITNESS_TICKS
    })
    .await;
    assert_eq!(
        t.log_chunk(&spec.key, 0).await.next_offset,
        before,
        "a frozen sandbox's counter advanced while its twin counted {WITNESS_TICKS}"
    );
    assert!(t.is_frozen(&spec.key));
    t.runtime.kill(&twin.key).await.expect("kill the twin");
    t.runtime.forget(&twin.key).await.expect("forget the twin");
    let frozen = last_number(&t.log(&spec.key).await);
    t.runtime.resume(&spec.key).await.expect("resume");
    assert!(!t.is_frozen(&spec.key));
    t.wait_for_log_where(&spec.key, "the counter to resume", |log| last_number(log) > frozen).await;
    // Many pauses in a row each complete (a v1 freezer that misses a task of a busy gVisor sandbox
    // stays FREEZING unless asked again).
    for round in 0..20 {
        t.runtime.pause(&spec.key).await.unwrap_or_else(|e| panic!("pause {round}: {e}"));
        t.runtime.resume(&spec.key).await.unwrap_or_else(|e| panic!("resume {round}: {e}"));
    }
    // A paused sandbox can be stopped.
    t.runtime.pause(&spec.key).await.expect("pause again");
    t.runtime.stop(&spec.key, Duration::from_secs(30)).await.expect("stop while paused");
    assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), Exit::Signal(libc::SIGTERM));
    t.runtime.forget(&spec.key).await.expect("forget");
    t.assert_clean();
}

async fn exit_codes_and_signals_are_reported(backend: Backend) {
    let t = TestEnv::on(backend);
    for (script, expected) in [
        ("true", Exit::Code(0)),
        ("exit 42", Exit::Code(42)),
        ("kill -USR1 $$", Exit::Signal(libc::SIGUSR1)),
        ("kill -KILL $$", Exit::Signal(libc::SIGKILL)),
    ] {
        let spec = t.sh(script);
        t.runtime.start(&spec).await.expect("start");
        assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), expected, "{script}");
        // Many waits, also after cleanup (until forget).
        assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), expected);
        t.runtime.cleanup(&spec.key).await.expect("cleanup");
        assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), expected);
        t.runtime.forget(&spec.key).await.expect("forget");
        assert!(t.runtime.wait(&spec.key).await.is_err());
    }
    t.assert_clean();
}

async fn logs_capture_stdout_and_stderr_and_are_bounded(backend: Backend) {
    let t = TestEnv::on(backend);
    let spec = t.sh("echo to-stdout; echo to-stderr >&2");
    t.runtime.start(&spec).await.expect("start");
    t.runtime.wait(&spec.key).await.expect("wait");
    let chunk = t.log_chunk(&spec.key, 0).await;
    assert_eq!(String::from_utf8_lossy(&chunk.data), "to-stdout\nto-stderr\n");
    assert_eq!((chunk.next_offset, chunk.dropped), (20, 0));
    let tail = t.runtime.read_logs(&spec.key, 10, 3).await.expect("read at offset");
    assert_eq!((tail.data.as_slice(), tail.next_offset), (&b"to-"[..], 13));
    // Cleanup keeps the log; forget removes it.
    t.runtime.cleanup(&spec.key).await.expect("cleanup");
    assert_eq!(t.log_chunk(&spec.key, 0).await.next_offset, 20);
    t.runtime.forget(&spec.key).await.expect("forget");
    assert!(t.runtime.read_logs(&spec.key, 0, 10).await.is_err());

    let total: u64 = 3_000_000;
    let spec = t.spec(&["head", "-c", "3000000", "/dev/zero"]);
    t.runtime.start(&spec).await.expect("start");
    assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), Exit::Code(0));
    let chunk = t.log_chunk(&spec.key, 0).await;
    assert_eq!(chunk.next_offset, total);
    assert!(chunk.dropped > 0, "the oldest bytes must be dropped");
    assert_eq!(chunk.dropped + chunk.data.len() as u64, total);
    assert!(chunk.data.len() <= (1 << 20) + (64 << 10), "kept {} bytes", chunk.data.len());
    t.runtime.forget(&spec.key).await.expect("forget");
    t.assert_clean();
}

async fn a_log_follower_is_woken_by_the_next_write_and_not_before(backend: Backend) {
    let t = TestEnv::on(backend);
    // One sandbox writes a line and then nothing; the other writes a line every tenth of a second.
    let quiet = t.sh("echo one; sleep 1000");
    let talker = t.sh("while :; do echo tick; sleep 0.1; done");
    for (spec, first) in [(&quiet, "one"), (&talker, "tick")] {
        t.runtime.start(spec).await.expect("start");
        t.wait_for_log(&spec.key, first).await;
    }
    let offset = t.log_chunk(&quiet.key, 0).await.next_offset;
    let runtime = t.runtime.clone();
    let key = quiet.key.clone();
    let follower = tokio::spawn(async move { runtime.log_grown(&key, offset).await });
    // Witnesses that it had every chance to wake: on this runtime, as many rounds of a polling
    // follower as `POLLS_WITNESSED` pass (one would have woken it) ...
    tokio::spawn(async {
        for _ in 0..POLLS_WITNESSED {
            tokio::time::sleep(DEFAULT_POLL).await;
        }
    })
    .await
    .expect("join the polls");
    // ... and then a follower of the talker is woken by its next write (a follower woken by any
    // sandbox's write would be woken with it).
    let end = t.log_chunk(&talker.key, 0).await.next_offset;
    tokio::time::timeout(HANG_GUARD, t.runtime.log_grown(&talker.key, end))
        .await
        .expect("the talker's write never woke its follower")
        .expect("log_grown");
    let more = t.runtime.read_logs(&talker.key, end, 1024).await.expect("read");
    assert!(more.data.starts_with(b"tick"), "woken with nothing written: {more:?}");
    if follower.is_finished() {
        panic!("the quiet sandbox's follower woke with nothing written: {:?}", follower.await);
    }
    // At the end of a log already past `offset`, it returns at once.
    tokio::time::timeout(HANG_GUARD, t.runtime.log_grown(&talker.key, end))
        .await
        .expect("hang guard")
        .expect("log_grown");
    follower.abort();
    for spec in [&quiet, &talker] {
        t.runtime.kill(&spec.key).await.expect("kill");
        t.runtime.forget(&spec.key).await.expect("forget");
    }
    t.assert_clean();
}

/// Asserts that nothing of a sandbox is left once the runtime's background work (gvisor's slow
/// deletes) is done.
async fn assert_nothing_of(t: &TestEnv, key: &sandhost_runtime::SandboxKey) {
    tokio::time::timeout(Duration::from_secs(120), t.runtime.settle()).await.expect("hang guard");
    assert!(t.cgroup_dirs(key).is_empty(), "cgroup left: {:?}", t.cgroup_dirs(key));
    let dir = t.state_dir.join("sandboxes").join(key.id.as_str());
    assert!(!dir.exists(), "state left: {}", dir.display());
}

/// A start past its timeout is undone whatever step it had reached (a timeout of zero: every start
/// gets as far as it can before the runtime looks at the clock, and is then undone). On gvisor this
/// left the foreground runsc and its sandbox running, orphaned, when a start timed out under load.
async fn a_start_that_times_out_is_undone_and_leaves_nothing(backend: Backend) {
    use sandhost_runtime::StartError;
    let t = TestEnv::with_start_timeout(backend, Duration::ZERO);
    for _ in 0..3 {
        let spec = t.spec(&["sleep", "1000"]);
        match t.runtime.start(&spec).await {
            Err(StartError::Host { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::TimedOut, "{source}");
            }
            other => panic!("expected a timed-out start, got {other:?}"),
        }
        assert_nothing_of(&t, &spec.key).await;
    }
    t.assert_clean();
}

async fn failed_starts_leave_nothing_behind(backend: Backend) {
    use sandhost_runtime::StartError;
    let t = TestEnv::on(backend);
    for argv in [&["/no/such/binary"][..], &["no-such-command-anywhere"], &["/etc/hostname"]] {
        let spec = t.spec(argv);
        match t.runtime.start(&spec).await {
            Err(StartError::Exec { command, reason, .. }) => {
                assert_eq!(command, argv[0]);
                assert!(!reason.is_empty());
            }
            other => panic!("{argv:?}: expected an exec error, got {other:?}"),
        }
        assert_nothing_of(&t, &spec.key).await;
    }
    // A missing working directory is refused, and never made on the host (runsc would make it).
    let missing = format!("/var/tmp/sandhost-no-such-{}", t.prefix);
    let in_tmpfs = format!("/tmp/sandhost-no-such-{}", t.prefix);
    std::fs::create_dir_all(&in_tmpfs).expect("a host dir the sandbox's /tmp hides");
    for cwd in [missing.as_str(), &format!("{missing}/deeper"), in_tmpfs.as_str(), "/etc/passwd"] {
        let mut spec = t.sh("pwd");
        spec.cwd = Some(cwd.into());
        let started = t.runtime.start(&spec).await;
        assert!(matches!(started, Err(StartError::Exec { .. })), "{cwd}: {started:?}");
        assert!(!std::path::Path::new(&missing).exists(), "the start made {missing} on the host");
        assert_nothing_of(&t, &spec.key).await;
    }
    std::fs::remove_dir(&in_tmpfs).expect("remove");
    let mut spec = t.sh("pwd");
    spec.cwd = Some("/tmp".into());
    t.runtime.start(&spec).await.expect("start in /tmp");
    assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), Exit::Code(0));
    assert_eq!(t.log(&spec.key).await, "/tmp\n");
    t.runtime.forget(&spec.key).await.expect("forget");

    let empty_rootfs = tempfile::tempdir_in("/var/tmp").expect("dir");
    for path in ["/no/such/rootfs".into(), empty_rootfs.path().to_path_buf(), "relative".into()] {
        let mut spec = t.spec(&["true"]);
        spec.template = sandhost_runtime::Template::Rootfs { name: "bad".into(), path };
        assert!(matches!(
            t.runtime.start(&spec).await,
            Err(StartError::InvalidSpec { field: "template", .. })
        ));
        assert_nothing_of(&t, &spec.key).await;
    }
    for limits in [
        sandhost_runtime::Limits { memory_bytes: Some(1), ..Default::default() },
        sandhost_runtime::Limits { memory_bytes: Some(u64::MAX), ..Default::default() },
        sandhost_runtime::Limits { cpu_millis: Some(0), ..Default::default() },
        sandhost_runtime::Limits { pids_max: Some(0), ..Default::default() },
    ] {
        let mut spec = t.spec(&["true"]);
        spec.limits = limits;
        assert!(matches!(t.runtime.start(&spec).await, Err(StartError::InvalidSpec { .. })), "{limits:?}");
        assert_nothing_of(&t, &spec.key).await;
    }
    let mut spec = t.restore_spec("snap");
    let restored = t.runtime.start(&spec).await;
    match backend {
        // The process backend cannot save a sandbox's memory: it says so, by name.
        Backend::Process => {
            assert!(matches!(restored, Err(StartError::NotSupported { .. })), "{restored:?}");
            assert!(matches!(
                t.runtime
                    .checkpoint(&spec.key, &sandhost_runtime::SnapshotId::parse("s").expect("id"), false)
                    .await,
                Err(sandhost_runtime::CheckpointError::NotSupported { backend: "process" })
            ));
            assert!(!t.runtime.can_checkpoint());
        }
        Backend::Gvisor => {
            assert!(matches!(restored, Err(StartError::Snapshot { .. })), "no such snapshot: {restored:?}");
            assert!(t.runtime.can_checkpoint());
            // A restore runs the snapshot's command: a command given with it is refused, not ignored.
            spec.key = t.spec(&[]).key;
            spec.argv = vec!["true".into()];
            let refused = t.runtime.start(&spec).await;
            assert!(matches!(refused, Err(StartError::InvalidSpec { field: "argv", .. })), "{refused:?}");
        }
    }
    assert_nothing_of(&t, &spec.key).await;

    // The same key twice: the second start is refused and does not disturb the first.
    let spec = t.spec(&["sleep", "1000"]);
    t.runtime.start(&spec).await.expect("start");
    assert!(matches!(t.runtime.start(&spec).await, Err(StartError::AlreadyExists(_))));
    t.runtime.kill(&spec.key).await.expect("kill");
    t.runtime.forget(&spec.key).await.expect("forget");
    assert_nothing_of(&t, &spec.key).await;
    t.assert_clean();
}

async fn many_concurrent_starts_and_stops_leak_nothing(backend: Backend) {
    let t = TestEnv::on(backend);
    // A gVisor sandbox is a user-space kernel of its own (tens of MiB, ~0.2 s of CPU to start).
    let many = match backend {
        Backend::Process => 100,
        Backend::Gvisor => 16,
    };
    let specs: Vec<_> = (0..many).map(|_| t.spec(&["sleep", "1000"])).collect();
    let mut set: tokio::task::JoinSet<Result<(), sandhost_runtime::StartError>> = tokio::task::JoinSet::new();
    for spec in specs.clone() {
        let runtime = t.runtime.clone();
        set.spawn(async move { runtime.start(&spec).await.map(|_| ()) });
    }
    while let Some(r) = set.join_next().await {
        r.expect("join").expect("start");
    }
    let mut set: tokio::task::JoinSet<Result<(), sandhost_runtime::StopError>> = tokio::task::JoinSet::new();
    for spec in specs.clone() {
        let runtime = t.runtime.clone();
        set.spawn(async move {
            runtime.stop(&spec.key, Duration::from_secs(30)).await?;
            runtime.forget(&spec.key).await.map_err(|e| sandhost_runtime::StopError::Host {
                key: spec.key.clone(),
                step: "forget",
                source: std::io::Error::other(e),
            })
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("join").expect("stop");
    }
    t.assert_clean();
    let left: Vec<_> = std::fs::read_dir(t.state_dir.join("sandboxes")).expect("state").collect();
    assert!(left.is_empty(), "state left: {left:?}");
}

async fn a_rootfs_template_is_the_whole_world_and_read_only(backend: Backend) {
    let t = TestEnv::on(backend);
    let rootfs = common::minimal_rootfs();
    let mut spec = t.spec(&[
        "/bin/sh",
        "-c",
        "echo in-rootfs; [ -e /etc/passwd ] && echo host-visible; echo home=$HOME; echo x > /bin/new || echo ro-root; \
         echo y > /tmp/t && echo tmp-ok",
    ]);
    spec.template =
        sandhost_runtime::Template::Rootfs { name: "mini".into(), path: rootfs.path().to_path_buf() };
    spec.user = sandhost_runtime::User { uid: 0, gid: 0 };
    t.runtime.start(&spec).await.expect("start");
    assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), Exit::Code(0));
    let log = t.log(&spec.key).await;
    for expected in ["in-rootfs", "home=/tmp", "ro-root", "tmp-ok"] {
        assert!(log.contains(expected), "{expected}: {log}");
    }
    assert!(!log.contains("host-visible"), "{log}");
    assert!(!rootfs.path().join("bin/new").exists());
    assert!(!rootfs.path().join("tmp/t").exists());
    t.runtime.forget(&spec.key).await.expect("forget");
    t.assert_clean();
}

async fn the_cpu_limit_is_written_to_the_cgroup(backend: Backend) {
    let t = TestEnv::on(backend);
    let mut spec = t.spec(&["sleep", "1000"]);
    spec.limits.cpu_millis = Some(250);
    t.runtime.start(&spec).await.expect("start");
    let quota: Vec<String> = t
        .cgroup_dirs(&spec.key)
        .iter()
        .filter_map(|d| {
            std::fs::read_to_string(d.join("cpu.cfs_quota_us"))
                .or_else(|_| std::fs::read_to_string(d.join("cpu.max")))
                .ok()
        })
        .collect();
    assert!(quota.iter().any(|q| q.trim() == "25000" || q.trim() == "25000 100000"), "{quota:?}");
    t.runtime.kill(&spec.key).await.expect("kill");
    t.runtime.forget(&spec.key).await.expect("forget");
    t.assert_clean();
}

async fn a_cancelled_start_leaves_nothing_behind(backend: Backend) {
    let t = TestEnv::on(backend);
    for micros in [0, 50, 200, 1000, 3000] {
        let spec = t.spec(&["sleep", "1000"]);
        match tokio::time::timeout(Duration::from_micros(micros), t.runtime.start(&spec)).await {
            Ok(started) => {
                started.expect("start");
                t.runtime.kill(&spec.key).await.expect("kill");
                t.runtime.forget(&spec.key).await.expect("forget");
            }
            Err(_elapsed) => {}
        }
        assert_nothing_of(&t, &spec.key).await;
    }
    t.assert_clean();
}

async fn operations_on_unknown_or_exited_sandboxes_answer_typed_errors(backend: Backend) {
    use sandhost_runtime::{ControlError, LogsError, WaitError};
    let t = TestEnv::on(backend);
    let unknown = t.spec(&["true"]).key;
    assert!(matches!(t.runtime.wait(&unknown).await, Err(WaitError::NotFound(_))));
    assert!(matches!(t.runtime.pause(&unknown).await, Err(ControlError::NotFound(_))));
    assert!(matches!(t.runtime.resume(&unknown).await, Err(ControlError::NotFound(_))));
    assert!(matches!(t.runtime.read_logs(&unknown, 0, 10).await, Err(LogsError::NotFound(_))));
    t.runtime.stop(&unknown, Duration::ZERO).await.expect("stop of an unknown sandbox is a no-op");
    t.runtime.kill(&unknown).await.expect("kill of an unknown sandbox is a no-op");
    t.runtime.cleanup(&unknown).await.expect("cleanup is idempotent");
    t.runtime.forget(&unknown).await.expect("forget is idempotent");

    let spec = t.spec(&["true"]);
    t.runtime.start(&spec).await.expect("start");
    t.runtime.wait(&spec.key).await.expect("wait");
    assert!(matches!(t.runtime.pause(&spec.key).await, Err(ControlError::NotRunning(_))));
    assert!(matches!(t.runtime.resume(&spec.key).await, Err(ControlError::NotRunning(_))));
    t.runtime.cleanup(&spec.key).await.expect("cleanup");
    t.runtime.cleanup(&spec.key).await.expect("cleanup again");
    t.runtime.forget(&spec.key).await.expect("forget");
    t.runtime.forget(&spec.key).await.expect("forget again");
    assert!(t.runtime.list_snapshots().await.expect("snapshots").is_empty());
    t.assert_clean();
}

async fn cleanup_of_a_running_sandbox_kills_it_and_keeps_its_log(backend: Backend) {
    let t = TestEnv::on(backend);
    let spec = t.sh("echo before-cleanup; sleep 1000");
    t.runtime.start(&spec).await.expect("start");
    t.wait_for_log(&spec.key, "before-cleanup").await;
    t.runtime.cleanup(&spec.key).await.expect("cleanup");
    assert!(t.cgroup_dirs(&spec.key).is_empty(), "cgroup left after cleanup");
    assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), Exit::Signal(libc::SIGKILL));
    assert!(t.log(&spec.key).await.contains("before-cleanup"), "cleanup must keep the log");
    t.runtime.forget(&spec.key).await.expect("forget");
    assert!(!t.state_dir.join("sandboxes").join(spec.key.id.as_str()).exists());
    t.assert_clean();
}

async fn stop_kill_and_cleanup_may_race_on_one_sandbox(backend: Backend) {
    let t = TestEnv::on(backend);
    let rounds = match backend {
        Backend::Process => 20,
        Backend::Gvisor => 4,
    };
    for _ in 0..rounds {
        let spec = t.spec(&["sleep", "1000"]);
        t.runtime.start(&spec).await.expect("start");
        let (a, b, c, d) = tokio::join!(
            t.runtime.stop(&spec.key, Duration::ZERO),
            t.runtime.cleanup(&spec.key),
            t.runtime.kill(&spec.key),
            t.runtime.stop(&spec.key, Duration::from_millis(5)),
        );
        a.expect("stop");
        b.expect("cleanup");
        c.expect("kill");
        d.expect("stop with grace");
        let (e, f) = tokio::join!(t.runtime.forget(&spec.key), t.runtime.forget(&spec.key));
        e.expect("forget");
        f.expect("forget at the same time");
    }
    t.assert_clean();
}
