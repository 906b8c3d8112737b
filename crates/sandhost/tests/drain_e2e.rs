//! The drain end to end: the real binary, real sandboxes, real signals, real exit codes. Each test
//! runs its serve under a cgroup parent of its own and checks at the end that no sandbox process,
//! cgroup or init of it is left on the host. Run as root.

#[macro_use]
mod common;
mod e2e;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use common::Backend;
use e2e::{Serve, ServeOptions, ok, stderr, stdout};
use nix::sys::signal::Signal;

on_both_backends!(sync:
    sigterm_waits_for_live_sandboxes_and_exits_zero_with_none_killed,
    the_drain_deadline_force_stops_the_rest_with_its_own_exit_code,
    force_stop_true_stops_every_sandbox_at_once,
    an_empty_node_exits_zero_on_sigterm,
    a_second_signal_skips_to_the_forced_phase,
    stop_sandboxes_get_sigterm_at_the_drain_and_wait_ones_run_on,
    the_drain_command_shows_progress_and_exits_zero_once_drained,
    force_stop_command_empties_the_node,
    a_third_signal_exits_at_once_and_the_next_serve_re_adopts_the_survivors_and_admits,
    a_restart_mid_drain_keeps_the_deadline,
    a_ctrl_c_at_the_terminal_drains_and_reaches_no_sandbox,
);

on_both_backends!(async: creates_racing_a_drain_either_start_or_are_refused_retryably_over_grpc);

/// One serve under a cgroup parent of its own, with a guard that purges everything it started even
/// when the test fails.
struct Node {
    serve: Serve,
    prefix: String,
    state_dir: PathBuf,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Node {
    fn start(backend: Backend, env: &[(&str, &str)]) -> Self {
        Self::start_in(backend, env, None)
    }

    fn start_in(backend: Backend, env: &[(&str, &str)], state_dir: Option<PathBuf>) -> Self {
        common::require_root();
        let prefix = state_dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join("test-prefix")).ok())
            .unwrap_or_else(|| {
                format!("e2e-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
            });
        let mut options = ServeOptions { state_dir, ..ServeOptions::default() };
        options.env.push(("SANDHOST_CGROUP_PARENT".into(), prefix.clone()));
        options.env.push(("FORCE_STOP".into(), "false".into()));
        options.env.push(("SANDHOST_RUNTIME".into(), backend.name().into()));
        options.env.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let serve = Serve::start_with(options);
        let state_dir = serve.state_dir.clone();
        std::fs::write(state_dir.join("test-prefix"), &prefix).expect("remember the prefix");
        Self { serve, prefix, state_dir }
    }

    fn create(&self, args: &[&str]) -> String {
        let mut argv = vec!["create"];
        argv.extend_from_slice(args);
        ok(&self.serve.cli(&argv))
    }

    fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&ok(&self.serve.cli(&["status", "--json"]))).expect("status JSON")
    }

    /// Waits until sandbox `id`'s log holds `needle` (polling the API: the test is a client).
    fn wait_log(&self, id: &str, needle: &str) {
        let what = format!("{id} to log {needle:?}");
        common::poll_until(
            &what,
            e2e::HANG_GUARD,
            || ok(&self.serve.cli(&["logs", id])),
            |log| log.contains(needle),
        );
    }

    /// Waits until the node reports `status` (polling the API: the test is a client).
    fn wait_status(&self, status: &str) {
        let what = format!("the node to be {status}");
        common::poll_until(
            &what,
            e2e::HANG_GUARD,
            || self.status_json(),
            |json| json["status"] == format!("NODE_STATUS_{status}"),
        );
    }

    /// Asserts that a serve that exited left not even its parent cgroups.
    fn assert_parent_cgroups_removed(&self) {
        let parents: Vec<_> =
            common::hierarchies().into_iter().map(|h| h.join(&self.prefix)).filter(|p| p.exists()).collect();
        assert!(parents.is_empty(), "parent cgroups left behind: {parents:?}");
    }

    /// Asserts that nothing of this node is left on the host.
    fn assert_nothing_left(&self) {
        let containers = common::runsc_containers(&self.state_dir.join("runtime-gvisor"));
        assert!(containers.is_empty(), "runsc containers left: {containers:?}");
        let cgroups = common::leftover_cgroups(&self.prefix);
        assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
        let processes: Vec<_> = common::processes_naming(&self.state_dir.to_string_lossy())
            .into_iter()
            .filter(|(_, cmdline)| !cmdline.contains(" serve "))
            .collect();
        assert!(processes.is_empty(), "processes left behind: {processes:?}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The serve (FORCE_STOP=false) may be waiting for sandboxes: kill it, then everything it ran.
        self.serve.kill();
        common::purge(&self.prefix, &self.state_dir);
    }
}

fn sigterm_waits_for_live_sandboxes_and_exits_zero_with_none_killed(backend: Backend) {
    let mut node = Node::start(backend, &[]);
    // They live until the checks below are done, however slow the machine; then they are deleted
    // through the API (not force-stopped by the drain).
    let ids: Vec<String> = (0..3).map(|_| node.create(&["--", "sleep", "1000"])).collect();
    node.serve.signal(Signal::SIGTERM);
    node.wait_status("DRAINING");
    // Once DRAINING is visible, a Create is refused with the retryable code.
    let refused = node.serve.cli(&["create", "--", "true"]);
    assert_eq!(refused.status.code(), Some(75), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("UNAVAILABLE") || stderr(&refused).contains("Unavailable"));
    assert_eq!(node.serve.http_get("/health/ready").map(|(code, _)| code), Some(503));
    assert_eq!(node.status_json()["drain"]["live"], "3", "the drain waits for them");

    for id in &ids {
        ok(&node.serve.cli(&["kill", id]));
    }
    assert_eq!(node.serve.wait_exit(), Some(0), "none was force-stopped: a clean exit");
    node.assert_nothing_left();
    node.assert_parent_cgroups_removed();
}

fn the_drain_deadline_force_stops_the_rest_with_its_own_exit_code(backend: Backend) {
    let mut node = Node::start(backend, &[("SHUTDOWN_DRAIN_TIMEOUT", "1s")]);
    for _ in 0..3 {
        node.create(&["--", "sleep", "1000"]);
    }
    node.serve.signal(Signal::SIGTERM);
    assert_eq!(node.serve.wait_exit(), Some(10), "the force-stopped exit code");
    node.assert_nothing_left();
    node.assert_parent_cgroups_removed();
}

fn force_stop_true_stops_every_sandbox_at_once(backend: Backend) {
    let mut node = Node::start(backend, &[("FORCE_STOP", "true"), ("SHUTDOWN_DRAIN_TIMEOUT", "1h")]);
    node.create(&["--", "sleep", "1000"]);
    node.create(&["--", "sh", "-c", "trap '' TERM; sleep 1000"]);
    node.serve.signal(Signal::SIGTERM);
    assert_eq!(node.serve.wait_exit(), Some(10));
    node.assert_nothing_left();
}

fn an_empty_node_exits_zero_on_sigterm(backend: Backend) {
    let mut node = Node::start(backend, &[]);
    node.serve.signal(Signal::SIGINT);
    assert_eq!(node.serve.wait_exit(), Some(0));
    node.assert_nothing_left();
}

fn a_second_signal_skips_to_the_forced_phase(backend: Backend) {
    let mut node = Node::start(backend, &[]);
    node.create(&["--", "sleep", "1000"]);
    node.serve.signal(Signal::SIGTERM);
    node.wait_status("DRAINING");
    node.serve.signal(Signal::SIGTERM);
    assert_eq!(node.serve.wait_exit(), Some(10));
    node.assert_nothing_left();
}

fn stop_sandboxes_get_sigterm_at_the_drain_and_wait_ones_run_on(backend: Backend) {
    let node = Node::start(backend, &[]);
    let stop = node.create(&["--drain-policy", "stop", "--", "sleep", "1000"]);
    let wait = node.create(&["--drain-policy", "wait", "--", "sleep", "1000"]);
    ok(&node.serve.cli(&["drain", "--detach"]));
    let waited = node.serve.cli(&["wait", &stop, "--exit-code"]);
    assert_eq!(waited.status.code(), Some(128 + 15), "wait exits with the sandbox's code: SIGTERM");
    let info: serde_json::Value =
        serde_json::from_str(&ok(&node.serve.cli(&["get", &stop, "--json"]))).expect("json");
    assert_eq!(info["sandbox"]["exit"]["reason"], "EXIT_REASON_DRAIN_STOPPED", "{info}");
    let info: serde_json::Value =
        serde_json::from_str(&ok(&node.serve.cli(&["get", &wait, "--json"]))).expect("json");
    assert_eq!(info["sandbox"]["state"], "SANDBOX_STATE_RUNNING", "{info}");
    assert_eq!(node.status_json()["status"], "NODE_STATUS_DRAINING");

    // Undrain: admission reopens, the WAIT sandbox keeps running.
    ok(&node.serve.cli(&["undrain"]));
    assert_eq!(node.status_json()["status"], "NODE_STATUS_READY");
    node.create(&["--", "true"]);
}

fn the_drain_command_shows_progress_and_exits_zero_once_drained(backend: Backend) {
    let node = Node::start(backend, &[]);
    node.create(&["--", "sleep", "1"]);
    node.create(&["--", "sleep", "2"]);
    let out = node.serve.cli(&["drain"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(node.status_json()["status"], "NODE_STATUS_DRAINED");
    assert_eq!(node.status_json()["drain"].get("live"), None, "0 live: a default, left out");
    let _ = stdout(&out);
}

fn force_stop_command_empties_the_node(backend: Backend) {
    let node = Node::start(backend, &[]);
    node.create(&["--", "sleep", "1000"]);
    ok(&node.serve.cli(&["force-stop"]));
    node.wait_status("DRAINED");
    let status = node.status_json();
    assert_eq!(status["drain"]["forceStopped"], "1", "{status}");
    node.assert_nothing_left();
}

fn a_third_signal_exits_at_once_and_the_next_serve_re_adopts_the_survivors_and_admits(backend: Backend) {
    // A sandbox that ignores SIGTERM, with a long grace: the forced phase is still waiting on it
    // when the third signal comes.
    let env = [("SANDHOST_STOP_GRACE", "5m"), ("FORCE_SHUTDOWN_TIMEOUT", "10m")];
    let mut first = Node::start(backend, &env);
    let id = first.create(&["--", "sh", "-c", "trap '' TERM; echo ready; sleep 1000"]);
    // Running means the shell was exec'd, not that its trap is set: a SIGTERM before it would end it.
    first.wait_log(&id, "ready");
    first.serve.signal(Signal::SIGTERM);
    first.wait_status("DRAINING");
    first.serve.signal(Signal::SIGTERM);
    first.wait_status("FORCING");
    first.serve.signal(Signal::SIGTERM);
    assert_eq!(first.serve.wait_exit(), Some(14), "the abandoned exit code");
    assert!(!common::leftover_cgroups(&first.prefix).is_empty(), "the sandbox survived the agent");

    // The next serve on the same state dir re-adopts it. That drain was the shutdown's, about the
    // process that died: the new serve does not continue it, admits again, and reports it.
    let state_dir = first.state_dir.clone();
    let mut second = Node::start_in(backend, &env, Some(state_dir));
    let info: serde_json::Value =
        serde_json::from_str(&ok(&second.serve.cli(&["get", &id, "--json"]))).expect("json");
    assert!(
        matches!(info["sandbox"]["state"].as_str(), Some("SANDBOX_STATE_RUNNING" | "SANDBOX_STATE_STOPPING")),
        "{info}"
    );
    let status = second.status_json();
    assert_eq!(
        status["status"], "NODE_STATUS_READY",
        "the cut-short shutdown's drain is not continued: {status}"
    );
    assert_eq!(status["interruptedShutdown"]["liveAtRestart"], "1", "{status}");
    let table = ok(&second.serve.cli(&["status"]));
    assert!(table.contains("last shutdown:") && table.contains("cut short"), "{table}");
    let fresh = second.create(&["--", "true"]);
    ok(&second.serve.cli(&["wait", &fresh]));
    ok(&second.serve.cli(&["kill", &id, "--now"]));
    second.serve.signal(Signal::SIGTERM);
    assert_eq!(second.serve.wait_exit(), Some(0), "nothing was left to force");
    second.assert_nothing_left();
}

fn a_ctrl_c_at_the_terminal_drains_and_reaches_no_sandbox(backend: Backend) {
    let mut node = Node::start(backend, &[]);
    let id = node.create(&[
        "--",
        "sh",
        "-c",
        "trap 'echo got-int; exit 3' INT; echo ready; while :; do sleep 0.1; done",
    ]);
    node.wait_log(&id, "ready");
    // No process of a sandbox (nor runsc) is in the serve's process group, which a terminal signals.
    let group = node.serve.pid().expect("running").to_string();
    for process in node.serve.leftover_processes() {
        let pid = process.split(':').next().expect("pid");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let pgrp = stat.rsplit(") ").next().and_then(|rest| rest.split(' ').nth(2)).unwrap_or_default();
        assert_ne!(pgrp, group, "in the serve's process group: {process}");
    }
    node.serve.signal_group(Signal::SIGINT);
    node.wait_status("DRAINING");
    let info: serde_json::Value =
        serde_json::from_str(&ok(&node.serve.cli(&["get", &id, "--json"]))).expect("json");
    assert_eq!(info["sandbox"]["state"], "SANDBOX_STATE_RUNNING", "the Ctrl-C reached the sandbox: {info}");
    ok(&node.serve.cli(&["force-stop"]));
    assert_eq!(node.serve.wait_exit(), Some(10));
    node.assert_nothing_left();
}

fn a_restart_mid_drain_keeps_the_deadline(backend: Backend) {
    let mut first = Node::start(backend, &[]);
    first.create(&["--", "sleep", "1000"]);
    ok(&first.serve.cli(&["drain", "--timeout", "1h", "--detach"]));
    let deadline = first.status_json()["drain"]["deadline"].clone();
    assert!(deadline.is_string(), "{deadline}");
    first.serve.kill();

    let second = Node::start_in(backend, &[], Some(first.state_dir.clone()));
    let status = second.status_json();
    assert_eq!(status["status"], "NODE_STATUS_DRAINING");
    assert_eq!(status["drain"]["deadline"], deadline, "the same absolute deadline");
    assert_eq!(status["drain"]["live"], "1", "the sandbox was re-adopted");
    ok(&second.serve.cli(&["force-stop"]));
    second.wait_status("DRAINED");
    second.assert_nothing_left();
}

async fn creates_racing_a_drain_either_start_or_are_refused_retryably_over_grpc(backend: Backend) {
    use sandhost_proto::v1 as pb;
    use tonic_types::StatusExt as _;

    // More than the start parallelism on either backend, so that some wait for their turn (a gVisor
    // sandbox is a kernel of its own: fewer, for the suite's time).
    let creates = match backend {
        Backend::Process => 200,
        Backend::Gvisor => 40,
    };
    // A race, not a capacity test: the memory of 200 default sandboxes is let past the host's.
    let node = Node::start(
        backend,
        &[("SANDHOST_MAX_ADMITTED_STARTS", "1000"), ("SANDHOST_MEMORY_OVERCOMMIT", "100")],
    );
    let client = node.serve.sandboxes().await;
    let mut nodes = node.serve.nodes().await;
    let (results, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..creates {
        let mut client = client.clone();
        let results = results.clone();
        tokio::spawn(async move {
            let request =
                pb::CreateRequest { argv: vec!["sleep".into(), "1000".into()], ..Default::default() };
            let _ = results.send((i, client.create(request).await));
        });
    }
    drop(results);
    // The drain begins once some creates have finished, while the rest are in flight or queued.
    let (mut started, mut refused, mut drained) = (0, 0, false);
    while let Some((i, result)) = outcomes.recv().await {
        match result {
            Ok(response) => {
                let sandbox = response.into_inner().sandbox.expect("the created sandbox");
                assert_eq!(sandbox.state(), pb::SandboxState::Running, "create {i}");
                started += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "create {i}: {status:?}");
                assert!(status.get_details_retry_info().is_some(), "create {i}: RetryInfo: {status:?}");
                refused += 1;
            }
        }
        if !drained && started == 10 {
            nodes.drain(pb::DrainRequest::default()).await.expect("drain");
            drained = true;
        }
    }
    assert!(drained, "the drain raced the creates");
    assert_eq!(started + refused, creates);
    eprintln!("{started} started, {refused} refused");
    let info = nodes.get_info(pb::GetInfoRequest::default()).await.expect("info").into_inner();
    assert_eq!(info.drain.as_ref().map(|d| d.live), Some(started as u64), "every started sandbox is live");

    nodes.force_stop(pb::ForceStopRequest::default()).await.expect("force stop");
    let mut watch = nodes.watch_drain(pb::WatchDrainRequest::default()).await.expect("watch").into_inner();
    while let Some(update) = watch.message().await.expect("stream") {
        if update.progress.as_ref().is_some_and(|p| p.status() == pb::NodeStatus::Drained) {
            break;
        }
    }
    node.assert_nothing_left();
}
