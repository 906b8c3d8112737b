//! What a restarted agent finds, on both backends: a new runtime over the same state dir re-adopts
//! the sandboxes its predecessor left (running, paused, or ended while no agent ran), also after a
//! SIGKILL of the agent and under another cgroup parent. Every test ends by checking that nothing of
//! it is left on the host.

#[macro_use]
mod common;

use std::time::Duration;

use common::{Backend, TestEnv};
use sandhost_runtime::Exit;

on_both_backends!(async:
    a_new_runtime_re_adopts_running_sandboxes_and_reaps_exited_ones,
    sandboxes_survive_sigkill_of_the_agent_and_are_re_adopted,
    an_agent_with_another_cgroup_parent_still_finds_the_sandboxes,
    sandboxes_whose_state_is_damaged_are_adopted_and_an_unidentified_cgroup_is_killed,
    a_lifecycle_of_which_only_the_log_is_left_is_reported_so_that_it_can_be_forgotten,
);

async fn a_new_runtime_re_adopts_running_sandboxes_and_reaps_exited_ones(backend: Backend) {
    use sandhost_runtime::RecoveredState;
    let t = TestEnv::on(backend);
    let running = [t.spec(&["sleep", "1000"]), t.spec(&["sleep", "1000"])];
    let old = t.reopen();
    for spec in &running {
        old.start(spec).await.expect("start");
    }
    let exited = t.sh("exit 5");
    old.start(&exited).await.expect("start");
    assert_eq!(old.wait(&exited.key).await.expect("wait"), Exit::Code(5));
    old.pause(&running[1].key).await.expect("pause");
    // The agent "dies": its runtime is dropped without stopping anything.
    drop(old);

    let runtime = t.reopen();
    let mut found = runtime.recover().await.expect("recover");
    found.sort_by(|a, b| a.spec.key.id.cmp(&b.spec.key.id));
    assert_eq!(found.len(), 3, "{found:?}");
    for r in &found {
        let expected = if r.spec.key == exited.key {
            RecoveredState::Exited(Some(Exit::Code(5)))
        } else if r.spec.key == running[1].key {
            RecoveredState::Running { paused: true }
        } else {
            RecoveredState::Running { paused: false }
        };
        assert_eq!(r.state, expected, "{:?}", r.spec.key);
    }
    assert!(t.cgroup_dirs(&exited.key).is_empty(), "the exited sandbox's cgroup must be cleaned up");
    assert_eq!(runtime.wait(&exited.key).await.expect("wait"), Exit::Code(5));
    for spec in &running {
        runtime.stop(&spec.key, Duration::from_secs(30)).await.expect("stop");
        assert_eq!(runtime.wait(&spec.key).await.expect("wait"), Exit::Signal(libc::SIGTERM));
        runtime.forget(&spec.key).await.expect("forget");
    }
    runtime.forget(&exited.key).await.expect("forget");
    t.assert_clean();
}

const HELPER_STATE: &str = "SANDHOST_TEST_AGENT_STATE";
const HELPER_PREFIX: &str = "SANDHOST_TEST_AGENT_PREFIX";
const HELPER_SPECS: &str = "SANDHOST_TEST_AGENT_SPECS";
const HELPER_BACKEND: &str = "SANDHOST_TEST_AGENT_BACKEND";

/// Not a test: the "agent" process that `sandboxes_survive_sigkill_of_the_agent` starts (this test
/// binary, re-executed) and then kills. Ignored so that it only runs when asked for by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of sandboxes_survive_sigkill_of_the_agent"]
async fn agent_helper_process() {
    let (Ok(state), Ok(prefix), Ok(specs)) =
        (std::env::var(HELPER_STATE), std::env::var(HELPER_PREFIX), std::env::var(HELPER_SPECS))
    else {
        return;
    };
    let specs: Vec<sandhost_runtime::SandboxSpec> = serde_json::from_str(&specs).expect("specs");
    let backend = Backend::parse(&std::env::var(HELPER_BACKEND).expect("backend"));
    let runtime = backend.open(std::path::Path::new(&state), &prefix);
    for spec in &specs {
        runtime.start(spec).await.expect("start in helper");
    }
    println!("HELPER-READY");
    std::future::pending::<()>().await;
}

async fn sandboxes_survive_sigkill_of_the_agent_and_are_re_adopted(backend: Backend) {
    use std::io::BufRead;
    let t = TestEnv::on(backend);
    let graceful = t.sh("trap 'exit 9' TERM; echo ready; while :; do sleep 0.05; done");
    let sleeper = t.spec(&["sleep", "1000"]);
    // Ends a while after the agent is gone: its exit must still be known to the next agent.
    let ending = t.sh("sleep 8; exit 7");
    let specs = vec![graceful.clone(), sleeper.clone(), ending.clone()];
    let mut agent = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "agent_helper_process", "--nocapture", "--test-threads", "1"])
        .env(HELPER_STATE, &t.state_dir)
        .env(HELPER_PREFIX, &t.prefix)
        .env(HELPER_SPECS, serde_json::to_string(&specs).expect("json"))
        .env(HELPER_BACKEND, backend.name())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the agent");
    let stdout = agent.stdout.take().expect("stdout");
    let ready = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout).lines().map_while(Result::ok).any(|l| l.contains("HELPER-READY"))
    });
    let ready =
        tokio::time::timeout(Duration::from_secs(120), ready).await.expect("hang guard").expect("join");
    assert!(ready, "the agent helper did not start its sandboxes");
    t.wait_for_log(&graceful.key, "ready").await;
    agent.kill().expect("SIGKILL the agent");
    agent.wait().expect("reap the agent");

    // The sandboxes outlive their agent.
    for spec in &specs {
        assert!(!t.cgroup_pids(&spec.key).is_empty(), "{} died with its agent", spec.key);
    }
    // One ends while no agent runs: wait until nothing of it runs any more.
    let lifecycle_dir = t.state_dir.join("sandboxes").join(ending.key.id.as_str());
    common::poll_until_async(
        "the sandbox to end (its pids, its processes)",
        Duration::from_secs(120),
        || {
            let processes = common::processes_naming(&lifecycle_dir.to_string_lossy());
            std::future::ready((t.cgroup_pids(&ending.key), processes))
        },
        |(pids, processes)| pids.is_empty() && processes.is_empty(),
    )
    .await;
    let runtime = t.reopen();
    let found = runtime.recover().await.expect("recover");
    assert_eq!(found.len(), 3, "{found:?}");
    for r in &found {
        let expected = if r.spec.key == ending.key {
            sandhost_runtime::RecoveredState::Exited(Some(Exit::Code(7)))
        } else {
            sandhost_runtime::RecoveredState::Running { paused: false }
        };
        assert_eq!(r.state, expected, "{}", r.spec.key);
    }
    assert_eq!(runtime.wait(&ending.key).await.expect("wait"), Exit::Code(7));
    runtime.stop(&graceful.key, Duration::from_secs(60)).await.expect("stop");
    assert_eq!(runtime.wait(&graceful.key).await.expect("wait"), Exit::Code(9));
    runtime.kill(&sleeper.key).await.expect("kill");
    assert_eq!(runtime.wait(&sleeper.key).await.expect("wait"), Exit::Signal(libc::SIGKILL));
    for spec in &specs {
        runtime.forget(&spec.key).await.expect("forget");
    }
    t.assert_clean();
}

async fn an_agent_with_another_cgroup_parent_still_finds_the_sandboxes(backend: Backend) {
    let t = TestEnv::on(backend);
    let spec = t.sh("trap '' TERM; echo ready; sleep 1000");
    t.runtime.start(&spec).await.expect("start");
    t.wait_for_log(&spec.key, "ready").await;
    let other_prefix = format!("{}-other", t.prefix);
    let _purge_other = common::PurgeOnDrop { prefix: other_prefix.clone(), state_dir: t.state_dir.clone() };
    let other = backend.open(&t.state_dir, &other_prefix);
    let found = other.recover().await.expect("recover");
    assert_eq!(found.len(), 1);
    // Its cgroup is found under the first parent (process: its init record; gvisor: its bundle).
    other.pause(&spec.key).await.expect("pause");
    assert!(t.is_frozen(&spec.key), "frozen through its cgroup under the first parent");
    other.resume(&spec.key).await.expect("resume");
    assert!(!t.is_frozen(&spec.key));
    // It ignores SIGTERM: only a kill of its cgroup (under the first parent) can stop it.
    other.stop(&spec.key, Duration::from_millis(100)).await.expect("stop");
    assert!(t.cgroup_pids(&spec.key).is_empty());
    assert_eq!(other.wait(&spec.key).await.expect("wait"), Exit::Signal(libc::SIGKILL));
    other.forget(&spec.key).await.expect("forget");
    common::purge(&other_prefix, &t.state_dir);
    t.assert_clean();
}

async fn sandboxes_whose_state_is_damaged_are_adopted_and_an_unidentified_cgroup_is_killed(backend: Backend) {
    use sandhost_runtime::RecoveredState;
    let t = TestEnv::on(backend);
    // `no_spec` loses its spec; `no_trace` also what names its process (process: the init record;
    // gvisor: the container's name), so that only its cgroup is left to find it by.
    let no_spec = t.sh("trap 'exit 9' TERM; echo ready; while :; do sleep 0.05; done");
    let no_trace = t.sh("echo ready; sleep 1000");
    let old = t.reopen();
    for spec in [&no_spec, &no_trace] {
        old.start(spec).await.expect("start");
        t.wait_for_log(&spec.key, "ready").await;
    }
    drop(old);
    let dir = |key: &sandhost_runtime::SandboxKey| {
        t.state_dir.join("sandboxes").join(key.id.as_str()).join(key.lifecycle.as_str())
    };
    let garbage = br#"{"garbage"#;
    std::fs::write(dir(&no_spec.key).join("spec.json"), garbage).expect("damage");
    std::fs::write(dir(&no_trace.key).join("spec.json"), garbage).expect("damage");
    let naming = if backend == Backend::Process { "init.json" } else { "container.json" };
    std::fs::write(dir(&no_trace.key).join(naming), garbage).expect("damage");
    // A process in a cgroup under the parent whose name is no sandbox's.
    let hierarchy = common::hierarchies()
        .into_iter()
        .find(|h| h.join(&t.prefix).is_dir())
        .expect("a hierarchy with the parent");
    let stranger_cgroup = hierarchy.join(&t.prefix).join("stranger");
    std::fs::create_dir(&stranger_cgroup).expect("mkdir");
    let mut stranger = std::process::Command::new("sleep").arg("1000").spawn().expect("sleep");
    std::fs::write(stranger_cgroup.join("cgroup.procs"), stranger.id().to_string()).expect("move");

    let runtime = t.reopen();
    let found = runtime.recover().await.expect("recover");
    let stranger_gone = stranger.try_wait().expect("try_wait").is_some();
    let _ = stranger.kill();
    let _ = stranger.wait();
    for spec in [&no_spec, &no_trace] {
        let r = found
            .iter()
            .find(|r| r.spec.key == spec.key)
            .unwrap_or_else(|| panic!("{} not found: {found:?}", spec.key));
        assert_eq!(r.state, RecoveredState::Running { paused: false }, "{}", spec.key);
        assert!(
            matches!(r.lost.as_slice(), [sandhost_runtime::Lost::State(why)] if why.contains("spec.json is damaged")),
            "what was lost is said: {:?}",
            r.lost
        );
    }
    assert!(stranger_gone, "the process in the unidentified cgroup was killed");
    assert_eq!(found.len(), 3, "the two, and a record of the unidentified cgroup: {found:?}");
    let unidentified =
        found.iter().find(|r| r.spec.key.id.as_str().starts_with("unidentified-")).expect("reported");
    assert_eq!(unidentified.state, RecoveredState::Exited(None));
    assert_eq!(unidentified.lost, [sandhost_runtime::Lost::Unidentified { cgroup: "stranger".into() }]);
    // Managed like any other: stopped (gracefully where the init is known), waited for, forgotten.
    runtime.stop(&no_spec.key, Duration::from_secs(60)).await.expect("stop");
    runtime.stop(&no_trace.key, Duration::from_secs(1)).await.expect("stop");
    for spec in [&no_spec, &no_trace] {
        runtime.wait(&spec.key).await.expect("wait");
        assert!(t.cgroup_pids(&spec.key).is_empty(), "{}", spec.key);
        runtime.forget(&spec.key).await.expect("forget");
    }
    t.assert_clean();
}

async fn a_lifecycle_of_which_only_the_log_is_left_is_reported_so_that_it_can_be_forgotten(backend: Backend) {
    use sandhost_runtime::RecoveredState;
    let t = TestEnv::on(backend);
    let spec = t.sh("echo bye");
    let old = t.reopen();
    old.start(&spec).await.expect("start");
    assert_eq!(old.wait(&spec.key).await.expect("wait"), Exit::Code(0));
    // The earlier agent cleaned it up and died before its retention ended: only the log is left.
    old.cleanup(&spec.key).await.expect("cleanup");
    drop(old);
    let dir = t.state_dir.join("sandboxes").join(spec.key.id.as_str());
    assert!(dir.exists(), "its log is kept until forget");

    let runtime = t.reopen();
    let found = runtime.recover().await.expect("recover");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((&found[0].spec.key, found[0].state), (&spec.key, RecoveredState::CleanedUp));
    assert_eq!(t.log(&spec.key).await, "bye\n", "its log is still read");
    runtime.forget(&spec.key).await.expect("forget");
    assert!(!dir.exists(), "forget removes the last of it");
    t.assert_clean();
}
