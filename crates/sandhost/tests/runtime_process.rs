//! What only the `process` backend has, for real (as root): sandhost's own init as pid 1 (signal
//! forwarding, reaping) and its seccomp filter. The rest of the runtime suite runs on this backend
//! too (`runtime.rs`). Every test ends by checking that nothing of it is left on the host.

mod common;

use common::{Backend, TestEnv};
use sandhost_runtime::Exit;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_syscalls_are_refused() {
    let t = TestEnv::on(Backend::Process);
    let mut spec = t.sh("unshare -U true; echo unshare=$?; mount -t tmpfs none /mnt; echo mount=$?");
    spec.user = sandhost_runtime::User { uid: 0, gid: 0 };
    t.runtime.start(&spec).await.expect("start");
    t.runtime.wait(&spec.key).await.expect("wait");
    let log = t.log(&spec.key).await;
    assert!(log.contains("Operation not permitted"), "{log}");
    assert!(!log.contains("unshare=0"), "{log}");
    assert!(!log.contains("mount=0"), "{log}");
    t.runtime.forget(&spec.key).await.expect("forget");
    t.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_init_forwards_signals_to_the_command() {
    let t = TestEnv::on(Backend::Process);
    let spec = t.sh(
        "for s in HUP INT USR1 USR2; do trap \"echo got-$s\" $s; done; trap 'echo got-TERM; exit 4' TERM; \
         echo ready; while :; do sleep 0.05; done",
    );
    let started = t.runtime.start(&spec).await.expect("start");
    t.wait_for_log(&spec.key, "ready").await;
    for sig in ["HUP", "INT", "USR1", "USR2"] {
        let sent =
            std::process::Command::new("kill").arg(format!("-{sig}")).arg(started.pid.to_string()).status();
        assert!(sent.expect("kill").success());
        t.wait_for_log(&spec.key, &format!("got-{sig}")).await;
    }
    let sent = std::process::Command::new("kill").arg("-TERM").arg(started.pid.to_string()).status();
    assert!(sent.expect("kill").success());
    assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), Exit::Code(4));
    t.runtime.forget(&spec.key).await.expect("forget");
    t.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_init_reaps_orphans_while_the_command_runs() {
    let t = TestEnv::on(Backend::Process);
    // Ten orphans (their parent subshell exits at once) end while the command still runs; the init
    // must reap them, so no zombie is left in the sandbox.
    let spec = t.sh("for i in 1 2 3 4 5 6 7 8 9 10; do (sleep 0.05 &); done; sleep 1; \
         echo zombies=$(cat /proc/[0-9]*/stat 2>/dev/null | grep -c '^[0-9]* ([^)]*) Z')");
    t.runtime.start(&spec).await.expect("start");
    assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), Exit::Code(0));
    let log = t.log(&spec.key).await;
    assert!(log.contains("zombies=0"), "{log}");
    t.runtime.forget(&spec.key).await.expect("forget");
    t.assert_clean();
}
