//! The warm pool end to end (process backend, as root): the real binary with `--warm-pool`, driven
//! by the CLI, read through `/metrics` and the state dir. Members serve Creates, are never listed
//! or counted, never hold a drain (destroyed at once, refilled by undrain), and a killed agent's
//! members are destroyed by the next one. Each test runs under a cgroup parent of its own and
//! checks that nothing of it is left.

mod common;
mod e2e;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use e2e::{Serve, ServeOptions, ok, stderr};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One serve with a warm pool of `host=2`, under a cgroup parent of its own, purged when dropped.
struct Node {
    serve: Serve,
    prefix: String,
    state_dir: PathBuf,
}

impl Node {
    fn start(state_dir: Option<PathBuf>, prefix: Option<String>) -> Self {
        common::require_root();
        let prefix = prefix.unwrap_or_else(|| {
            format!("e2e-warm-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
        });
        let mut options = ServeOptions { state_dir, ..ServeOptions::on("process") };
        options.env.push(("SANDHOST_CGROUP_PARENT".into(), prefix.clone()));
        options.env.push(("SANDHOST_WARM_POOL".into(), "host=2".into()));
        let serve = Serve::start_with(options);
        let state_dir = serve.state_dir.clone();
        Self { serve, prefix, state_dir }
    }

    /// The value of `sandhost_warm_pool_<name>{template="host"}` on `/metrics`.
    fn pool_metric(&self, name: &str) -> Option<u64> {
        let (_, body) = self.serve.http_get("/metrics")?;
        let prefix = format!("sandhost_warm_pool_{name}{{template=\"host\"}} ");
        body.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.trim().parse().ok())
    }

    /// Waits until `ready` members are ready (polling `/metrics`: the test is a client).
    fn wait_ready(&self, ready: u64) {
        let what = format!("{ready} ready warm pool members");
        common::poll_until(&what, e2e::HANG_GUARD, || self.pool_metric("ready"), |n| *n == Some(ready));
    }

    /// The members' directories in the runtime's state dir.
    fn member_dirs(&self) -> HashSet<String> {
        std::fs::read_dir(self.state_dir.join("runtime").join("warm"))
            .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    /// The members' cgroups, in every hierarchy.
    fn member_cgroups(&self) -> Vec<PathBuf> {
        common::leftover_cgroups(&self.prefix)
            .into_iter()
            .filter(|d| d.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("warm-")))
            .collect()
    }

    fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&ok(&self.serve.cli(&["status", "--json"]))).expect("status JSON")
    }

    /// Stops the serve (SIGTERM, FORCE_STOP) and checks that it left nothing.
    fn stop_and_assert_clean(mut self) {
        assert_eq!(self.serve.stop(), Some(0), "{}", self.serve.log());
        let cgroups = common::leftover_cgroups(&self.prefix);
        assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
        assert!(self.member_dirs().is_empty(), "member dirs left: {:?}", self.member_dirs());
        let processes: Vec<_> = common::processes_naming(&self.state_dir.to_string_lossy())
            .into_iter()
            .filter(|(_, cmdline)| !cmdline.contains(" serve "))
            .collect();
        assert!(processes.is_empty(), "processes left behind: {processes:?}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.serve.kill();
        common::purge(&self.prefix, &self.state_dir);
    }
}

#[test]
fn a_create_is_served_by_a_member_and_members_are_not_sandboxes() {
    let node = Node::start(None, None);
    node.wait_ready(2);
    assert_eq!(node.pool_metric("target"), Some(2));
    // Two members, no sandbox: none listed, none counted live.
    let list: serde_json::Value =
        serde_json::from_str(&ok(&node.serve.cli(&["list", "--json"]))).expect("list JSON");
    assert!(list.get("sandboxes").is_none_or(|s| s.as_array().is_some_and(Vec::is_empty)), "{list}");
    assert_eq!(node.status_json()["drain"].get("live"), None, "0 live: {}", node.status_json());

    ok(&node.serve.cli(&[
        "create",
        "--id",
        "warm",
        "--env",
        "WHO=pool",
        "--",
        "sh",
        "-c",
        "echo $WHO; id -u",
    ]));
    assert_eq!(node.serve.cli(&["wait", "warm", "--exit-code"]).status.code(), Some(0));
    assert_eq!(node.pool_metric("claims_total"), Some(1), "served by a member");
    let log = ok(&node.serve.cli(&["logs", "warm"]));
    assert_eq!(log.trim_end(), "pool\n65534");
    node.wait_ready(2); // refilled in the background
    node.stop_and_assert_clean();
}

#[test]
fn a_drain_destroys_the_members_at_once_and_undrain_refills() {
    let node = Node::start(None, None);
    node.wait_ready(2);
    assert_eq!(node.member_dirs().len(), 2);
    let drained = node.serve.cli(&["drain"]);
    assert!(drained.status.success(), "members never hold a drain: {}", stderr(&drained));
    assert_eq!(node.status_json()["status"], "NODE_STATUS_DRAINED");
    node.wait_ready(0);
    let gone = common::try_poll_until(
        e2e::HANG_GUARD,
        || (node.member_dirs(), node.member_cgroups()),
        |(dirs, cgroups)| dirs.is_empty() && cgroups.is_empty(),
    );
    assert!(gone.is_ok(), "members destroyed by the drain: {gone:?}");
    // Undrain refills the pool.
    ok(&node.serve.cli(&["undrain"]));
    node.wait_ready(2);
    node.stop_and_assert_clean();
}

#[test]
fn a_killed_agents_members_are_destroyed_by_the_next_one() {
    let mut first = Node::start(None, None);
    first.wait_ready(2);
    ok(&first.serve.cli(&["create", "--id", "kept", "--", "sleep", "1000"]));
    assert_eq!(first.pool_metric("claims_total"), Some(1));
    first.wait_ready(2);
    let old_members = first.member_dirs();
    assert_eq!(old_members.len(), 2);
    first.serve.kill();

    let next = Node::start(Some(first.state_dir.clone()), Some(first.prefix.clone()));
    next.wait_ready(2);
    // The sandbox in its claimed member's cgroup is re-adopted; the unclaimed members are gone.
    let got: serde_json::Value =
        serde_json::from_str(&ok(&next.serve.cli(&["get", "kept", "--json"]))).expect("get JSON");
    assert_eq!(got["sandbox"]["state"], "SANDBOX_STATE_RUNNING", "{got}");
    let now = next.member_dirs();
    assert!(now.is_disjoint(&old_members), "old members destroyed: {old_members:?} {now:?}");
    let cgroups: HashSet<String> = next
        .member_cgroups()
        .iter()
        .filter_map(|d| d.file_name().and_then(|n| n.to_str()).map(str::to_owned))
        .collect();
    assert!(cgroups.iter().all(|n| !old_members.contains(n)), "old member cgroups: {cgroups:?}");
    ok(&next.serve.cli(&["kill", "kept"]));
    next.stop_and_assert_clean();
    drop(first); // its serve is gone already; its temporary state dir goes last
}
