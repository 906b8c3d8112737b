//! `sandhost serve --runtime gvisor` end to end (real runsc, as root): checkpoint through the CLI,
//! `create --restore-from`, and a forced drain that evacuates a CHECKPOINT sandbox. Ends by checking
//! that no runsc process or cgroup of the serve is left.

mod common;
mod e2e;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use common::poll_until;
use e2e::{HANG_GUARD, Serve, ServeOptions, ok};

static COUNTER: AtomicU32 = AtomicU32::new(0);

const COUNTER_LOOP: &str = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.2; done";

struct Node {
    serve: Serve,
    prefix: String,
    state_dir: PathBuf,
}

impl Node {
    fn start() -> Self {
        let prefix = format!("gve2e-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        Self::start_in(prefix, None)
    }

    /// A serve on `state_dir` (a fresh one if `None`) under cgroup parent `prefix`.
    fn start_in(prefix: String, state_dir: Option<PathBuf>) -> Self {
        common::require_root();
        let mut options = ServeOptions { state_dir, ..ServeOptions::default() };
        options.env.push(("SANDHOST_RUNTIME".into(), "gvisor".into()));
        options.env.push(("SANDHOST_CGROUP_PARENT".into(), prefix.clone()));
        options.env.push(("FORCE_STOP".into(), "true".into()));
        let serve = Serve::start_with(options);
        let state_dir = serve.state_dir.clone();
        Self { serve, prefix, state_dir }
    }

    fn cli(&self, args: &[&str]) -> String {
        ok(&self.serve.cli(args))
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.cli(args)).expect("JSON output")
    }

    /// The last number the sandbox printed.
    fn count(&self, id: &str) -> u64 {
        self.cli(&["logs", id]).lines().filter_map(|l| l.trim().parse().ok()).next_back().unwrap_or(0)
    }

    /// Waits (hang guard) until the sandbox has counted to at least `n`.
    fn wait_count(&self, id: &str, n: u64) {
        poll_until(&format!("{id} to count to {n}"), HANG_GUARD, || self.count(id), |&count| count >= n);
    }

    fn wait_status(&self, status: &str) {
        let what = format!("the node to be {status}");
        poll_until(
            &what,
            HANG_GUARD,
            || self.json(&["status", "--json"]),
            |json| json["status"] == format!("NODE_STATUS_{status}"),
        );
    }

    fn snapshot_ids(&self) -> Vec<String> {
        let listed = self.json(&["snapshots", "--json"]);
        let items = listed
            .as_array()
            .cloned()
            .or_else(|| listed["snapshots"].as_array().cloned())
            .unwrap_or_default();
        items.iter().filter_map(|s| s["id"].as_str().map(str::to_owned)).collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.serve.kill();
        common::purge(&self.prefix, &self.state_dir);
    }
}

#[test]
fn checkpoint_restore_and_evacuation_through_the_cli() {
    let mut node = Node::start();
    let info = node.json(&["status", "--json"]);
    assert!(info.to_string().contains("gvisor"), "the node names its runtime: {info}");

    // Checkpoint and continue: the counter carries on in the same sandbox.
    let id = node.cli(&["create", "--", "sh", "-c", COUNTER_LOOP]);
    node.wait_count(&id, 3);
    let snapshot = node.cli(&["checkpoint", &id]);
    let at = node.count(&id);
    node.wait_count(&id, at + 2);
    assert_eq!(node.json(&["get", &id, "--json"])["sandbox"]["state"], "SANDBOX_STATE_RUNNING");
    assert!(node.snapshot_ids().contains(&snapshot), "{:?}", node.snapshot_ids());

    // A new sandbox from the snapshot counts on from where the snapshot was taken.
    // A restore names no command: the snapshot's runs, and the sandbox says where it came from.
    let restored = node.cli(&["create", "--restore-from", &snapshot]);
    node.wait_count(&restored, at + 1);
    let got = node.json(&["get", &restored, "--json"]);
    assert_eq!(got["sandbox"]["restoredFrom"], snapshot.as_str(), "{got}");
    assert_eq!(got["sandbox"].get("argv"), None, "no argv: an empty list is left out: {got}");
    let first: u64 = node.cli(&["logs", &restored]).lines().find_map(|l| l.trim().parse().ok()).unwrap_or(0);
    assert!(first > 1, "the restored sandbox started over");
    node.cli(&["kill", &restored, "--now"]);
    node.cli(&["kill", &id, "--now"]);

    // A missing snapshot is a clear error.
    let refused = node.serve.cli(&["create", "--restore-from", "no-such-snapshot"]);
    assert!(!refused.status.success());
    assert!(e2e::stderr(&refused).contains("NOT_FOUND"), "{}", e2e::stderr(&refused));
    // A command given with a restore is refused (it would not run), naming the field.
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let status = runtime.block_on(async {
        let request = sandhost_proto::v1::CreateRequest {
            argv: vec!["true".into()],
            restore_from: snapshot.clone(),
            ..Default::default()
        };
        node.serve.sandboxes().await.create(request).await.expect_err("a command with a restore")
    });
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("argv"), "{status:?}");

    // A forced drain evacuates the CHECKPOINT sandbox: checkpointed, its snapshot listed.
    let evacuee = node.cli(&["create", "--drain-policy", "checkpoint", "--", "sh", "-c", COUNTER_LOOP]);
    node.wait_count(&evacuee, 2);
    let before = node.snapshot_ids();
    node.cli(&["force-stop"]);
    node.wait_status("DRAINED");
    let got = node.json(&["get", &evacuee, "--json"]);
    assert_eq!(got["sandbox"]["exit"]["reason"], "EXIT_REASON_CHECKPOINTED", "{got}");
    let after = node.snapshot_ids();
    assert_eq!(after.len(), before.len() + 1, "one new snapshot: {before:?} -> {after:?}");
    let status = node.json(&["status", "--json"]);
    let evacuated = &status["drain"]["evacuated"];
    assert_eq!(evacuated[0]["sandboxId"], evacuee.as_str(), "{status}");
    let snapshot = evacuated[0]["snapshotId"].as_str().expect("the snapshot is named").to_owned();
    assert!(after.contains(&snapshot) && !before.contains(&snapshot), "{status}");

    for snapshot in &after {
        node.cli(&["snapshot-rm", snapshot]);
    }
    assert_eq!(node.serve.stop(), Some(0), "a clean exit after the drain");
    let cgroups = common::leftover_cgroups(&node.prefix);
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
    let processes = common::processes_naming(&node.state_dir.to_string_lossy());
    assert!(processes.is_empty(), "processes left behind: {processes:?}");
}

#[test]
fn a_new_serve_re_adopts_a_running_gvisor_sandbox() {
    let mut first = Node::start();
    let id = first.cli(&["create", "--", "sh", "-c", COUNTER_LOOP]);
    first.wait_count(&id, 2);
    // SIGKILL: the sandbox is left running for the next serve.
    first.serve.kill();
    let mut second = Node::start_in(first.prefix.clone(), Some(first.state_dir.clone()));
    assert_eq!(second.json(&["get", &id, "--json"])["sandbox"]["state"], "SANDBOX_STATE_RUNNING");
    let at = second.count(&id);
    second.wait_count(&id, at + 2);
    second.cli(&["kill", &id, "--now"]);
    poll_until(
        "the re-adopted sandbox to exit",
        HANG_GUARD,
        || second.json(&["get", &id, "--json"]),
        |reply| reply["sandbox"]["state"] == "SANDBOX_STATE_EXITED",
    );
    assert_eq!(second.serve.stop(), Some(0), "a clean exit");
    let processes = common::processes_naming(&second.state_dir.to_string_lossy());
    assert!(processes.is_empty(), "processes left behind: {processes:?}");
    let cgroups = common::leftover_cgroups(&second.prefix);
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
}

#[test]
fn checkpoint_and_stop_then_restore_on_a_second_serve_with_its_own_state_dir() {
    let mut a = Node::start();
    let id = a.cli(&["create", "--", "sh", "-c", COUNTER_LOOP]);
    a.wait_count(&id, 3);
    let snapshot = a.cli(&["checkpoint", &id, "--stop"]);
    let got = a.json(&["get", &id, "--json"]);
    assert_eq!(
        (got["sandbox"]["state"].as_str(), got["sandbox"]["exit"]["reason"].as_str()),
        (Some("SANDBOX_STATE_EXITED"), Some("EXIT_REASON_CHECKPOINTED"))
    );
    let at = a.count(&id);

    // Another node: its own serve and state dir, the snapshot's directory copied in.
    let mut b = Node::start();
    let snapshots = |node: &Node| node.state_dir.join("runtime-gvisor").join("snapshots");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(snapshots(&a).join(&snapshot))
        .arg(snapshots(&b))
        .status()
        .expect("cp");
    assert!(copied.success());
    assert_eq!(b.snapshot_ids(), std::slice::from_ref(&snapshot));
    let restored = b.cli(&["create", "--restore-from", &snapshot]);
    b.wait_count(&restored, at + 2);
    let first: u64 = b.cli(&["logs", &restored]).lines().find_map(|l| l.trim().parse().ok()).unwrap_or(0);
    assert!(
        first > at.saturating_sub(2),
        "the restored sandbox started over: first {first}, snapshot at {at}"
    );
    b.cli(&["kill", &restored, "--now"]);

    // A corrupt copy is a clear error that leaves no sandbox behind.
    std::fs::write(snapshots(&b).join(&snapshot).join("checkpoint.img"), b"garbage").expect("corrupt it");
    let refused = b.serve.cli(&["create", "--restore-from", &snapshot]);
    assert_eq!(refused.status.code(), Some(1), "{}", e2e::stderr(&refused));
    assert!(e2e::stderr(&refused).contains(&snapshot), "{}", e2e::stderr(&refused));
    let live = b.json(&["status", "--json"])["drain"].get("live").cloned();
    assert_eq!(live, None, "a failed restore left a live sandbox (0 is left out)");

    for node in [&mut a, &mut b] {
        assert_eq!(node.serve.stop(), Some(0), "a clean exit");
        let processes = common::processes_naming(&node.state_dir.to_string_lossy());
        assert!(processes.is_empty(), "processes left behind: {processes:?}");
        let cgroups = common::leftover_cgroups(&node.prefix);
        assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
    }
}
