//! End to end, where the sandboxes' cgroups go when `--cgroup-parent` is left to the agent. The real
//! `sandhost serve`, started as systemd starts a service (inside a cgroup `<name>.service` at the
//! root of every hierarchy, with `INVOCATION_ID` set), puts them under `<name>.service/sandboxes`,
//! a restarted agent re-adopts them there, and the shutdown's drain removes them and that parent.
//! Without `INVOCATION_ID`, or with a parent given, they go where they always did. Every test
//! removes its cgroups (killing what is in them) even when it fails, and checks that nothing is left.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;
mod e2e;

use std::path::{Path, PathBuf};

use common::{Backend, HANG_GUARD, try_poll_until};
use e2e::{Serve, ServeOptions, ok};

on_both_backends!(sync: a_systemd_service_keeps_its_sandboxes_in_its_own_subtree_across_a_restart);

/// An invocation id as systemd makes them (128 random bits in hex).
const INVOCATION_ID: &str = "4f0c5e1a9b7d4e2f8a6c3b1d0e9f8a7b";

/// A cgroup `sandhost-test-svc-<pid>-<tag>.service` at the root of every hierarchy (v1 and v2), as
/// systemd makes a service's. Dropped: every process in it and below is killed, and every
/// directory removed, even when the test failed.
struct FakeService {
    name: String,
    dirs: Vec<PathBuf>,
    state_dir: PathBuf,
}

impl FakeService {
    fn create(tag: &str, state_dir: &Path) -> Self {
        common::require_root();
        let name = format!("sandhost-test-svc-{}-{tag}.service", std::process::id());
        let mut service = Self { name, dirs: Vec::new(), state_dir: state_dir.to_path_buf() };
        for hierarchy in common::hierarchies() {
            let dir = hierarchy.join(&service.name);
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("make {}: {e}", dir.display()));
            service.dirs.push(dir.clone());
            // A v1 cpuset takes no process until it has CPUs and memory nodes: its parent's.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(value) = std::fs::read_to_string(hierarchy.join(file)) {
                    std::fs::write(dir.join(file), value.trim()).expect("cpuset of the service");
                }
            }
        }
        assert!(!service.dirs.is_empty(), "no cgroup hierarchy is mounted");
        service
    }

    /// Its parent of sandboxes, in the hierarchies where it exists.
    fn sandboxes(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join(sandhost_runtime::SANDBOXES)).filter(|d| d.is_dir()).collect()
    }

    /// The cgroups under its parent of sandboxes named for sandbox `id` (`<id>.<lifecycle>[...]`),
    /// sorted.
    fn cgroups_of(&self, id: &str) -> Vec<PathBuf> {
        cgroups_named(&self.sandboxes(), id)
    }

    /// Kills what is in its cgroups, removes them, and says what could not be removed.
    fn remove(&self) -> Vec<PathBuf> {
        // Everything under it (its sandboxes, the supervisor leaf on v2) and the serve's processes.
        common::purge(&self.name, &self.state_dir);
        for dir in &self.dirs {
            for pid in pids_in(dir) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        try_poll_until(
            HANG_GUARD,
            || {
                self.dirs
                    .iter()
                    .filter(|d| d.exists() && std::fs::remove_dir(d).is_err())
                    .cloned()
                    .collect::<Vec<_>>()
            },
            Vec::is_empty,
        )
        .unwrap_or_else(|left| left)
    }
}

impl Drop for FakeService {
    fn drop(&mut self) {
        let left = self.remove();
        if !left.is_empty() && !std::thread::panicking() {
            panic!("the service's cgroups could not be removed: {left:?}");
        }
    }
}

/// The cgroups directly under each of `parents` whose name is sandbox `id`'s, sorted.
fn cgroups_named(parents: &[PathBuf], id: &str) -> Vec<PathBuf> {
    let prefix = format!("{id}.");
    let mut found: Vec<PathBuf> = parents
        .iter()
        .filter_map(|p| std::fs::read_dir(p).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
        .collect();
    found.sort();
    found
}

/// `<hierarchy>/<parent>` in every hierarchy where it exists.
fn at_the_roots(parent: &str) -> Vec<PathBuf> {
    common::hierarchies().into_iter().map(|h| h.join(parent)).filter(|d| d.is_dir()).collect()
}

fn pids_in(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A serve started in `service`'s cgroups with `--cgroup-parent` left to it.
fn options_in(service: &FakeService, backend: Backend, invocation_id: bool) -> ServeOptions {
    let mut options = ServeOptions::on(backend.name());
    options.state_dir = Some(service.state_dir.clone());
    options.cgroups.clone_from(&service.dirs);
    options.env_remove.push("SANDHOST_CGROUP_PARENT".into());
    // The startup log says which parent was chosen, and why.
    options.env.push(("RUST_LOG".into(), "info".into()));
    if invocation_id {
        options.env.push(("INVOCATION_ID".into(), INVOCATION_ID.into()));
    }
    options
}

/// The startup log's line that names the parent, and its reason.
fn parent_line(serve: &Serve) -> String {
    let log = serve.log();
    log.lines()
        .find(|l| l.contains("runtime opened"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no open line:\n{log}"))
}

fn a_systemd_service_keeps_its_sandboxes_in_its_own_subtree_across_a_restart(backend: Backend) {
    let state = tempfile::tempdir().expect("state dir");
    let service = FakeService::create(backend.name(), state.path());
    let options = options_in(&service, backend, true);
    let mut first = Serve::start_with(options.clone());
    let opened = parent_line(&first);
    assert!(opened.contains(&format!("cgroup_parent={}/sandboxes", service.name)), "{opened}");
    assert!(opened.contains("a systemd service"), "the reason is logged: {opened}");

    ok(&first.cli(&["create", "--id", "svc1", "--", "sleep", "1000"]));
    let cgroups = service.cgroups_of("svc1");
    assert!(!cgroups.is_empty(), "the sandbox's cgroup is under {}/sandboxes", service.name);
    let memory = cgroups.iter().find(|d| d.starts_with("/sys/fs/cgroup/memory")).or(cgroups.first());
    assert!(!pids_in(memory.unwrap()).is_empty(), "its processes are in it: {cgroups:?}");
    // Not under the default parent at the roots, nor under the harness's own.
    assert_eq!(
        cgroups_named(&at_the_roots(sandhost::config::DEFAULT_CGROUP_PARENT), "svc1"),
        Vec::<PathBuf>::new()
    );
    assert_eq!(e2e::leftover_cgroups(&e2e::cgroup_parent_for(state.path())), Vec::<PathBuf>::new());

    // A killed agent leaves it running; the next one, started alike, re-adopts it where it is.
    first.kill();
    assert_eq!(service.cgroups_of("svc1"), cgroups, "the sandbox outlives its agent");
    let mut second = Serve::start_with(options);
    let reply: serde_json::Value =
        serde_json::from_str(&ok(&second.cli(&["get", "svc1", "--json"]))).expect("get --json is JSON");
    let sandbox = &reply["sandbox"];
    assert_eq!(sandbox["state"], "SANDBOX_STATE_RUNNING", "{sandbox}");
    assert!(sandbox["conditions"].as_array().is_none_or(Vec::is_empty), "adopted whole: {sandbox}");
    assert_eq!(service.cgroups_of("svc1"), cgroups, "where it was");

    // The shutdown drain (FORCE_STOP) stops it and removes the parent it made.
    assert_eq!(second.stop(), Some(10), "one sandbox force-stopped:\n{}", second.log());
    assert_eq!(second.leftover_processes(), Vec::<String>::new());
    assert_eq!(service.sandboxes(), Vec::<PathBuf>::new(), "the parent of sandboxes is removed");
    assert_eq!(service.remove(), Vec::<PathBuf>::new(), "the service's own cgroups are removable");
}

/// The agent in the same cgroups as a service's, but not started by systemd: the default parent at
/// the root of every hierarchy, as before.
#[test]
fn without_invocation_id_the_sandboxes_go_under_the_default_parent_at_the_roots() {
    let state = tempfile::tempdir().expect("state dir");
    // The default parent is shared with any agent on this host: its recovery would adopt or kill
    // what it finds there. Refuse to run next to one.
    let before = at_the_roots(sandhost::config::DEFAULT_CGROUP_PARENT);
    assert_eq!(
        before,
        Vec::<PathBuf>::new(),
        "a parent {} exists: is an agent running here?",
        sandhost::config::DEFAULT_CGROUP_PARENT
    );
    let _default_parent = common::PurgeOnDrop {
        prefix: sandhost::config::DEFAULT_CGROUP_PARENT.to_owned(),
        state_dir: state.path().to_path_buf(),
    };
    let service = FakeService::create("noinv", state.path());
    let mut serve = Serve::start_with(options_in(&service, Backend::Process, false));
    let opened = parent_line(&serve);
    assert!(
        opened.contains(&format!("cgroup_parent={} ", sandhost::config::DEFAULT_CGROUP_PARENT)),
        "{opened}"
    );
    assert!(opened.contains("INVOCATION_ID is not set"), "the reason is logged: {opened}");

    ok(&serve.cli(&["create", "--id", "plain1", "--", "sleep", "1000"]));
    assert!(!cgroups_named(&at_the_roots(sandhost::config::DEFAULT_CGROUP_PARENT), "plain1").is_empty());
    assert_eq!(service.sandboxes(), Vec::<PathBuf>::new(), "nothing inside the service's cgroup");
    assert_eq!(serve.stop(), Some(10), "{}", serve.log());
    assert_eq!(
        at_the_roots(sandhost::config::DEFAULT_CGROUP_PARENT),
        Vec::<PathBuf>::new(),
        "the parent is removed"
    );
    assert_eq!(service.remove(), Vec::<PathBuf>::new());
}

/// A systemd service given a parent keeps it (at the root of every hierarchy).
#[test]
fn a_service_given_a_parent_keeps_it() {
    let state = tempfile::tempdir().expect("state dir");
    let service = FakeService::create("given", state.path());
    let mut options = options_in(&service, Backend::Process, true);
    options.env_remove.clear();
    let parent = e2e::cgroup_parent_for(state.path());
    let mut serve = Serve::start_with(options);
    let opened = parent_line(&serve);
    assert!(opened.contains(&format!("cgroup_parent={parent} ")), "{opened}");
    assert!(opened.contains("configured"), "the reason is logged: {opened}");

    ok(&serve.cli(&["create", "--id", "given1", "--", "sleep", "1000"]));
    assert!(!cgroups_named(&at_the_roots(&parent), "given1").is_empty());
    assert_eq!(service.sandboxes(), Vec::<PathBuf>::new(), "nothing inside the service's cgroup");
    assert_eq!(serve.stop(), Some(10), "{}", serve.log());
    assert_eq!(e2e::leftover_cgroups(&parent), Vec::<PathBuf>::new());
    assert_eq!(service.remove(), Vec::<PathBuf>::new());
}
