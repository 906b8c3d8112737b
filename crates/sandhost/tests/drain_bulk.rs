//! The forced drain's bulk stop on real sandboxes (process backend, in process, as root): many
//! sandboxes stopped together, some that exit on SIGTERM and some that ignore it (they get their
//! grace, then the kill), each exit recorded as it happened, the drain's report exact, and nothing
//! left on the host. The bulk path is the process backend's own (`Runtime::stop_many`); gvisor
//! keeps the trait's default (a stop each), which `drain_e2e.rs` covers on both backends.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, HANG_GUARD, TestEnv};
use prometheus_client::registry::Registry;
use sandhost::config::SandboxConfig;
use sandhost::drain::NodeStatus;
use sandhost::node::{Node, NodeSettings};
use sandhost::sandbox::{CreateRequest, DrainPolicy, ExitReason, SandboxInfo, SandboxState};
use sandhost_runtime::{Exit, SandboxKey, StopError};

/// Sandboxes that exit on SIGTERM (their init forwards it to `sleep`).
const EXIT_ON_TERM: usize = 24;
/// Sandboxes whose command ignores SIGTERM: each is killed once its grace has passed.
const IGNORE_TERM: usize = 6;
/// Sandboxes whose drain policy asks for a checkpoint, which this backend cannot make.
const CHECKPOINT: usize = 2;

fn node(env: &TestEnv, grace: Duration) -> Node {
    let config = SandboxConfig { stop_grace: grace, memory_overcommit: 100.0, ..SandboxConfig::default() };
    let settings = NodeSettings::new(config, Duration::from_secs(120), "drain-bulk");
    Node::build(Arc::clone(&env.runtime), settings, &env.state_dir.join("agent"), &mut Registry::default())
}

fn request(argv: &[&str], drain_policy: DrainPolicy) -> CreateRequest {
    CreateRequest {
        argv: argv.iter().map(|a| (*a).to_owned()).collect(),
        drain_policy,
        ..CreateRequest::default()
    }
}

fn key(info: &SandboxInfo) -> SandboxKey {
    SandboxKey { id: info.id.clone(), lifecycle: info.lifecycle.clone() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_drain_stops_many_together_with_each_exit_and_the_report_exact() {
    let env = TestEnv::on(Backend::Process);
    let node = node(&env, Duration::from_secs(1));
    let sleep = ["sleep", "1000"];
    let stubborn = ["sh", "-c", "trap '' TERM; echo ready; sleep 1000"];
    let mut exit_on_term = Vec::new();
    let mut ignore_term = Vec::new();
    let mut checkpoint = Vec::new();
    for _ in 0..EXIT_ON_TERM {
        exit_on_term.push(node.create(request(&sleep, DrainPolicy::Wait)).await.expect("create"));
    }
    for _ in 0..IGNORE_TERM {
        ignore_term.push(node.create(request(&stubborn, DrainPolicy::Wait)).await.expect("create"));
    }
    for _ in 0..CHECKPOINT {
        checkpoint.push(node.create(request(&sleep, DrainPolicy::Checkpoint)).await.expect("create"));
    }
    // A stop must not race the trap it is meant to meet.
    for info in &ignore_term {
        env.wait_for_log(&key(info), "ready").await;
    }

    node.force_stop().expect("force stop");
    tokio::time::timeout(HANG_GUARD, node.coordinator().wait_drained()).await.expect("drained in time");

    assert_eq!(*node.coordinator().watch_status().borrow(), NodeStatus::Drained);
    let report = node.coordinator().report();
    assert_eq!(report.force_stopped, (EXIT_ON_TERM + IGNORE_TERM + CHECKPOINT) as u64, "{report:?}");
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(report.checkpointed, 0, "{report:?}");
    let exited = |info: &SandboxInfo| {
        let now = node.get(info.id.as_str()).expect("still listed within its retention");
        assert_eq!(now.state, SandboxState::Exited, "{now:?}");
        now.exit.expect("an exit is recorded")
    };
    for info in &exit_on_term {
        let exit = exited(info);
        assert_eq!(exit.reason, ExitReason::ForceStopped, "{exit:?}");
        assert_eq!(exit.exit, Some(Exit::Signal(libc::SIGTERM)), "its SIGTERM ended it: {exit:?}");
    }
    for info in &ignore_term {
        let exit = exited(info);
        assert_eq!(exit.reason, ExitReason::ForceStopped, "{exit:?}");
        assert_eq!(exit.exit, Some(Exit::Signal(libc::SIGKILL)), "killed after its grace: {exit:?}");
    }
    for info in &checkpoint {
        let exit = exited(info);
        assert_eq!(exit.reason, ExitReason::DrainStopped, "no checkpoint on this backend: {exit:?}");
        assert_eq!(exit.exit, Some(Exit::Signal(libc::SIGTERM)), "{exit:?}");
    }
    env.runtime.close().await.expect("the parent cgroups are empty after the drain");
    env.assert_clean();
}

/// The runtime's bulk stop, within the hang guard; what it reported for each entry.
async fn stop_many(env: &TestEnv, stops: &[(SandboxKey, Duration)]) -> Vec<Option<Result<(), StopError>>> {
    let results = Mutex::new((0..stops.len()).map(|_| None).collect::<Vec<_>>());
    let done = |i: usize, result: Result<(), StopError>| {
        let previous = results.lock().expect("results")[i].replace(result);
        assert!(previous.is_none(), "entry {i} reported twice");
    };
    tokio::time::timeout(HANG_GUARD, env.runtime.stop_many(stops, &done)).await.expect("stopped in time");
    results.into_inner().expect("results")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_stop_of_the_runtime_gives_each_sandbox_its_own_grace_and_result() {
    let env = TestEnv::on(Backend::Process);
    let mut quick = Vec::new();
    let mut stubborn = Vec::new();
    for _ in 0..8 {
        let spec = env.spec(&["sleep", "1000"]);
        env.runtime.start(&spec).await.expect("start");
        quick.push(spec.key);
    }
    for _ in 0..4 {
        let spec = env.sh("trap '' TERM; echo ready; sleep 1000");
        env.runtime.start(&spec).await.expect("start");
        env.wait_for_log(&spec.key, "ready").await;
        stubborn.push(spec.key);
    }
    let unknown = env.spec(&["true"]).key;
    let mut stops: Vec<(SandboxKey, Duration)> =
        quick.iter().map(|k| (k.clone(), Duration::from_secs(30))).collect();
    stops.extend(stubborn.iter().map(|k| (k.clone(), Duration::from_millis(300))));
    stops.push((unknown, Duration::from_secs(1)));

    let results = stop_many(&env, &stops).await;

    assert!(results.iter().all(|r| matches!(r, Some(Ok(())))), "one Ok each: {results:?}");
    for key in &quick {
        assert_eq!(env.runtime.wait(key).await.expect("wait"), Exit::Signal(libc::SIGTERM), "{key:?}");
    }
    for key in &stubborn {
        assert_eq!(env.runtime.wait(key).await.expect("wait"), Exit::Signal(libc::SIGKILL), "{key:?}");
        assert!(env.cgroup_pids(key).is_empty(), "nothing left in {key:?}");
    }
    // Stopping them again is a no-op.
    let again = stop_many(&env, &stops).await;
    assert!(again.iter().all(|r| matches!(r, Some(Ok(())))), "{again:?}");
    for key in quick.iter().chain(&stubborn) {
        env.runtime.forget(key).await.expect("forget");
    }
    env.runtime.close().await.expect("close");
    env.assert_clean();
}
