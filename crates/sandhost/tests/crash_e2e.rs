//! End to end, the agent killed (SIGKILL) and its state damaged: the real `sandhost serve` restarted
//! on the same state dir never leaves a sandbox unmanaged. What it cannot read it adopts as a
//! degraded sandbox (listed with a condition, counted by the drain, stoppable, with an end time);
//! what it cannot identify at all it kills and records; exited sandboxes come back with their logs
//! until their retention ends; a damaged node id stops it. Every test leaves nothing on the host.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;
mod e2e;

use std::path::{Path, PathBuf};

use common::{Backend, HANG_GUARD, poll_until};
use e2e::{Serve, ServeOptions, ok, stderr};

on_both_backends!(sync:
    unreadable_runtime_state_is_adopted_degraded_and_drained_and_the_unidentified_is_killed,
    exited_sandboxes_and_their_logs_survive_a_crash_until_their_retention_ends,
);

/// The sandbox of `get --json` (the Get reply, in the proto3 JSON mapping).
fn sandbox_json(serve: &Serve, id: &str) -> serde_json::Value {
    let reply: serde_json::Value =
        serde_json::from_str(&ok(&serve.cli(&["get", id, "--json"]))).expect("get --json is JSON");
    reply["sandbox"].clone()
}

fn status_json(serve: &Serve) -> serde_json::Value {
    serde_json::from_str(&ok(&serve.cli(&["status", "--json"]))).expect("status --json is JSON")
}

/// The lifecycle directories of sandbox `id` in the backend's state (`runtime/` or
/// `runtime-gvisor/`).
fn lifecycle_dirs(state: &Path, id: &str) -> Vec<PathBuf> {
    ["runtime", "runtime-gvisor"]
        .iter()
        .filter_map(|backend| std::fs::read_dir(state.join(backend).join("sandboxes").join(id)).ok())
        .flat_map(|dirs| dirs.flatten().map(|d| d.path()).collect::<Vec<_>>())
        .collect()
}

/// The one lifecycle directory of sandbox `id`.
fn lifecycle_dir(state: &Path, id: &str) -> PathBuf {
    let mut dirs = lifecycle_dirs(state, id);
    assert_eq!(dirs.len(), 1, "one lifecycle of {id}: {dirs:?}");
    dirs.remove(0)
}

/// Overwrites `file` with the start of a JSON document, as a torn write or a damaged disk leaves.
fn damage(file: &Path) {
    assert!(file.exists(), "{} to damage", file.display());
    std::fs::write(file, br#"{"garbage"#).expect("damage the file");
}

/// A `sleep` of the test's own, moved into a cgroup `name` under `parent` that no sandbox names.
struct Stranger {
    child: std::process::Child,
    cgroup: PathBuf,
}

impl Stranger {
    fn start(parent: &str, name: &str) -> Self {
        let hierarchy = common::hierarchies()
            .into_iter()
            .find(|h| h.join(parent).is_dir())
            .unwrap_or_else(|| panic!("no hierarchy holds the parent {parent}"));
        let cgroup = hierarchy.join(parent).join(name);
        std::fs::create_dir(&cgroup).expect("make the stranger's cgroup");
        let child = std::process::Command::new("sleep").arg("1000").spawn().expect("spawn sleep");
        std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string()).expect("move it in");
        Self { child, cgroup }
    }

    fn is_alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

fn unreadable_runtime_state_is_adopted_degraded_and_drained_and_the_unidentified_is_killed(backend: Backend) {
    let state = tempfile::tempdir().expect("state dir");
    let options =
        ServeOptions { state_dir: Some(state.path().to_path_buf()), ..ServeOptions::on(backend.name()) };
    let mut first = Serve::start_with(options.clone());
    // cor2 loses its spec; cor3 everything that names its process (process: the init record;
    // gvisor: the container's name); meta1 the node's metadata (end time, labels, drain policy).
    ok(&first.cli(&["create", "--id", "cor2", "--timeout", "200s", "--", "sleep", "191"]));
    ok(&first.cli(&["create", "--id", "cor3", "--timeout", "200s", "--", "sleep", "192"]));
    ok(&first.cli(&["create", "--id", "meta1", "--label", "team=a", "--", "sleep", "193"]));
    let parent = e2e::cgroup_parent_for(state.path());
    let mut stranger = Stranger::start(&parent, "not-a-sandbox");
    first.kill();

    damage(&lifecycle_dir(state.path(), "cor2").join("spec.json"));
    let cor3 = lifecycle_dir(state.path(), "cor3");
    damage(&cor3.join("spec.json"));
    damage(&cor3.join(if backend == Backend::Process { "init.json" } else { "container.json" }));
    let meta1 = lifecycle_dir(state.path(), "meta1");
    let meta_file = state
        .path()
        .join("meta")
        .join(format!("meta1.{}.json", meta1.file_name().unwrap().to_string_lossy()));
    damage(&meta_file);

    let mut second = Serve::start_with(options);
    for id in ["cor2", "cor3"] {
        let sandbox = sandbox_json(&second, id);
        assert_eq!(sandbox["state"], "SANDBOX_STATE_RUNNING", "{sandbox}");
        assert!(sandbox["endTime"].is_string(), "an adopted sandbox has an end: {sandbox}");
        let conditions = sandbox["conditions"].as_array().cloned().unwrap_or_default();
        assert!(
            conditions.iter().any(|c| c["type"] == "SANDBOX_CONDITION_TYPE_RUNTIME_STATE_LOST"),
            "the condition says what was lost: {sandbox}"
        );
    }
    let meta1 = sandbox_json(&second, "meta1");
    assert_eq!(meta1["state"], "SANDBOX_STATE_RUNNING", "{meta1}");
    assert!(meta1["endTime"].is_string(), "the node's default timeout ends it: {meta1}");
    let conditions = meta1["conditions"].as_array().cloned().unwrap_or_default();
    assert!(conditions.iter().any(|c| c["type"] == "SANDBOX_CONDITION_TYPE_METADATA_LOST"), "{meta1}");

    // What no sandbox names was killed, and its record says so.
    assert!(!stranger.is_alive(), "the process in a cgroup no sandbox names was left running");
    let list: serde_json::Value =
        serde_json::from_str(&ok(&second.cli(&["list", "--json"]))).expect("list --json is JSON");
    let unidentified: Vec<&serde_json::Value> = list["sandboxes"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|s| {
            s["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "SANDBOX_CONDITION_TYPE_UNIDENTIFIED"))
        })
        .collect();
    assert_eq!(unidentified.len(), 1, "{list}");
    assert_eq!(unidentified[0]["state"], "SANDBOX_STATE_EXITED", "{list}");
    assert!(
        unidentified[0]["exit"]["message"].as_str().is_some_and(|m| m.contains("not-a-sandbox")),
        "{list}"
    );

    // The drain counts them: it does not end while they run.
    ok(&second.cli(&["drain", "--detach"]));
    let status = status_json(&second);
    assert_eq!(status["status"], "NODE_STATUS_DRAINING", "{status}");
    assert_eq!(status["drain"]["live"], "3", "{status}");
    for id in ["cor2", "cor3", "meta1"] {
        ok(&second.cli(&["kill", id, "--now"]));
        assert_eq!(sandbox_json(&second, id)["state"], "SANDBOX_STATE_EXITED");
    }
    poll_until(
        "the drain to end",
        HANG_GUARD,
        || status_json(&second)["status"].clone(),
        |s| s == "NODE_STATUS_DRAINED",
    );
    let code = second.stop();
    assert_eq!(code, Some(0), "the shutdown after the drain is clean:\n{}", second.log());
    assert_eq!(second.leftover_processes(), Vec::<String>::new());
    assert_eq!(e2e::leftover_cgroups(&parent), Vec::<PathBuf>::new());
}

fn exited_sandboxes_and_their_logs_survive_a_crash_until_their_retention_ends(backend: Backend) {
    let state = tempfile::tempdir().expect("state dir");
    let with_retention = |retention: &str| {
        let mut options =
            ServeOptions { state_dir: Some(state.path().to_path_buf()), ..ServeOptions::on(backend.name()) };
        options.env.push(("SANDHOST_RETENTION".into(), retention.into()));
        options
    };
    let mut first = Serve::start_with(with_retention("1h"));
    ok(&first.cli(&["create", "--id", "leak1", "--", "echo", "hello"]));
    let wait = first.cli(&["wait", "leak1"]);
    assert_eq!(wait.status.code(), Some(0), "{}", stderr(&wait));
    first.kill();

    // Within its retention, the record and the log come back, as many restarts as it takes.
    for _ in 0..2 {
        let mut again = Serve::start_with(with_retention("1h"));
        let leak1 = sandbox_json(&again, "leak1");
        assert_eq!(leak1["state"], "SANDBOX_STATE_EXITED", "{leak1}");
        assert_eq!(leak1["exit"]["code"], 0, "{leak1}");
        assert_eq!(leak1["exit"]["reason"], "EXIT_REASON_EXITED", "{leak1}");
        assert!(leak1["exitedAt"].is_string(), "{leak1}");
        assert_eq!(ok(&again.cli(&["logs", "leak1"])), "hello");
        again.kill();
    }

    // Past its retention (counted from the exit), a restarted agent removes the record and the log.
    let last = Serve::start_with(with_retention("1s"));
    poll_until(
        "leak1 and its files to go",
        HANG_GUARD,
        || (last.cli(&["get", "leak1"]).status.code(), lifecycle_dirs(state.path(), "leak1")),
        |(code, dirs)| *code == Some(1) && dirs.is_empty(),
    );
    let get = last.cli(&["get", "leak1"]);
    assert!(stderr(&get).contains("NOT_FOUND"), "{}", stderr(&get));
    let meta: Vec<PathBuf> = std::fs::read_dir(state.path().join("meta"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(meta, Vec::<PathBuf>::new(), "its record is removed with it");
}

#[test]
fn a_damaged_node_id_stops_serve_naming_the_file() {
    let state = tempfile::tempdir().expect("state dir");
    let options = ServeOptions { state_dir: Some(state.path().to_path_buf()), ..ServeOptions::on("process") };
    let mut first = Serve::start_with(options.clone());
    assert_eq!(first.stop(), Some(0));
    let node_id = state.path().join("node-id");
    let id = std::fs::read(&node_id).expect("node-id");
    std::fs::write(&node_id, &id[..id.len() / 2]).expect("tear it");

    let mut second = Serve::spawn(options);
    assert_eq!(second.wait_exit(), Some(1), "a damaged node id is a startup error");
    assert!(
        second.log().contains(&node_id.display().to_string()),
        "the error names the file:\n{}",
        second.log()
    );
}
