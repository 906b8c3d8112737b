//! The Linux `process` runtime, for real: as root, with the real `sandhost` binary as each
//! sandbox's init. Every test ends by checking that nothing of it is left on the host.

mod common;

use std::time::Duration;

use common::TestEnv;
use sandhost_runtime::{Exit, Runtime};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_runs_as_pid_2_under_our_init_and_sees_no_host_process() {
    let t = TestEnv::new();
    let spec = t.sh("echo pid=$$; cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'");
    t.runtime.start(&spec).await.expect("start");
    let exit = t.runtime.wait(&spec.key).await.expect("wait");
    let log = t.log(&spec.key).await;
    assert_eq!(exit, Exit::Code(0), "log: {log}");
    assert!(log.contains("pid=2"), "log: {log}");
    assert!(log.contains("__init"), "pid 1 must be our init: {log}");
    let count: u32 = log
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("process count");
    assert!(count < 8, "the sandbox sees {count} processes: {log}");
    t.runtime
        .stop(&spec.key, Duration::from_secs(1))
        .await
        .expect("stop");
    t.runtime.forget(&spec.key).await.expect("forget");
    t.assert_clean();
}
