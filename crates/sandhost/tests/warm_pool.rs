//! The process runtime's warm pool, for real (as root): a start of a pooled template is served by
//! a member and runs its command exactly as a cold start would; members are single use, never
//! a sandbox, destroyed when the pool is turned off and refilled when it is on again; a start
//! that finds none ready starts cold; a restarted runtime destroys what an earlier one left.
//!
//! The pool fills in counted background work: `Runtime::settle` returning means every build has
//! ended (no polling of the pool).

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use common::{Backend, Options, TestEnv, hierarchies};
use sandhost_runtime::process::WarmTemplate;
use sandhost_runtime::{Exit, Limits, Runtime, SandboxSpec, Template, User, WarmPoolStats};

fn pooled(size: usize) -> TestEnv {
    let warm_pool = vec![WarmTemplate { name: "host".into(), template: Template::Host, size }];
    TestEnv::with(Backend::Process, Options { warm_pool, ..Options::default() })
}

/// The pool filled: on, then every build awaited.
async fn filled(t: &TestEnv) -> WarmPoolStats {
    t.runtime.set_warm_pool_active(true);
    t.runtime.settle().await;
    stats(&t.runtime)
}

fn stats(runtime: &Arc<dyn Runtime>) -> WarmPoolStats {
    runtime.warm_pool().into_iter().next().expect("one pooled template")
}

/// The member cgroups (`warm-*`) under the test's parent, in every hierarchy.
fn member_cgroups(t: &TestEnv) -> Vec<PathBuf> {
    hierarchies()
        .into_iter()
        .filter_map(|h| std::fs::read_dir(h.join(&t.prefix)).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .filter(|d| d.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("warm-")))
        .collect()
}

fn member_dirs(t: &TestEnv) -> Vec<PathBuf> {
    std::fs::read_dir(t.state_dir.join("warm"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Turns the pool off, waits for its destroys, and checks that nothing of the test is left.
async fn close_and_assert_clean(t: &TestEnv) {
    t.runtime.set_warm_pool_active(false);
    t.runtime.settle().await;
    assert!(member_dirs(t).is_empty(), "member dirs left: {:?}", member_dirs(t));
    t.assert_clean();
}

/// What the command reports of itself: privileges, user, directory, environment, hostname, the
/// size of its private /tmp.
const REPORT: &str = "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; \
                      id -u; id -g; pwd; echo \"greeting=$GREETING\"; cat /proc/sys/kernel/hostname; \
                      df -k /tmp | tail -n 1 | awk '{print \"tmp=\" $2}'";

fn reporting(t: &TestEnv) -> SandboxSpec {
    let mut spec = t.sh(REPORT);
    spec.env.push(("GREETING".into(), "hello".into()));
    spec.cwd = Some("/tmp".into());
    spec.user = User { uid: 1234, gid: 4321 };
    spec.limits = Limits { memory_bytes: Some(64 << 20), cpu_millis: Some(250), pids_max: Some(64) };
    spec
}

/// The memory limit the kernel holds for the cgroup of `pid` (v1 or v2).
fn memory_limit_of(pid: i32) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup of the init");
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) =
            (fields.next(), fields.next().unwrap_or_default(), fields.next().unwrap_or_default());
        if controllers.split(',').any(|c| c == "memory") {
            let dir = PathBuf::from("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
            return std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
                .expect("limit")
                .trim()
                .to_owned();
        }
    }
    let v2 = cgroups.lines().find_map(|l| l.strip_prefix("0::")).expect("a memory cgroup");
    let dir = PathBuf::from("/sys/fs/cgroup").join(v2.trim_start_matches('/'));
    std::fs::read_to_string(dir.join("memory.max")).expect("limit").trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_member_runs_the_command_exactly_as_a_cold_start() {
    let t = pooled(1);
    let before = filled(&t).await;
    assert_eq!((before.ready, before.target, before.claims, before.misses), (1, 1, 0, 0), "{before:?}");
    let ready_members = member_cgroups(&t);
    assert!(!ready_members.is_empty());

    // Warm: the member's cgroup (its name) becomes the sandbox's, with the request's limits.
    let warm = reporting(&t);
    let started = t.runtime.start(&warm).await.expect("warm start");
    assert!(started.warm, "a ready member must serve the start");
    let limit = memory_limit_of(started.pid);
    let in_member = std::fs::read_to_string(format!("/proc/{}/cgroup", started.pid)).expect("cgroup");
    assert!(in_member.contains("/warm-"), "the init stays in its member cgroup: {in_member}");
    assert_eq!(t.runtime.wait(&warm.key).await.expect("wait"), Exit::Code(0));
    let warm_log = t.log(&warm.key).await;
    let after = stats(&t.runtime);
    assert_eq!(after.claims, 1, "{after:?}");

    // Cold: the same request once the pool is off.
    t.runtime.set_warm_pool_active(false);
    t.runtime.settle().await;
    let cold = reporting(&t);
    let cold_started = t.runtime.start(&cold).await.expect("cold start");
    assert!(!cold_started.warm);
    let cold_limit = memory_limit_of(cold_started.pid);
    assert_eq!(t.runtime.wait(&cold.key).await.expect("wait"), Exit::Code(0));
    let cold_log = t.log(&cold.key).await;

    assert_eq!(limit, (64u64 << 20).to_string());
    assert_eq!(limit, cold_limit);
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(warm_log.contains(&format!("{set}:\t0000000000000000")), "{set} must be empty: {warm_log}");
    }
    assert!(warm_log.contains("NoNewPrivs:\t1") && warm_log.contains("Seccomp:\t2"), "{warm_log}");
    for expected in ["1234\n4321\n/tmp\ngreeting=hello\n", "tmp=65536"] {
        assert!(warm_log.contains(expected), "{expected:?} in {warm_log}");
    }
    assert!(warm_log.contains(&format!("\n{}\n", warm.key.id)), "hostname: {warm_log}");
    // Line by line the same, but for the hostname (the sandbox's id).
    let without =
        |log: &str, id: &str| log.lines().filter(|l| *l != id).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(without(&warm_log, warm.key.id.as_str()), without(&cold_log, cold.key.id.as_str()));

    for spec in [&warm, &cold] {
        t.runtime.forget(&spec.key).await.expect("forget");
    }
    close_and_assert_clean(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_never_share_a_member_and_a_miss_starts_cold() {
    let t = pooled(3);
    assert_eq!(filled(&t).await.ready, 3);
    let specs: Vec<SandboxSpec> = (0..8).map(|_| t.spec(&["true"])).collect();
    let starts = specs.iter().map(|spec| {
        let runtime = Arc::clone(&t.runtime);
        let spec = spec.clone();
        tokio::spawn(async move { runtime.start(&spec).await })
    });
    let started: Vec<_> = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|r| r.expect("join").expect("start"))
        .collect();
    let pids: HashSet<i32> = started.iter().map(|s| s.pid).collect();
    assert_eq!(pids.len(), specs.len(), "every start has its own init");
    let warm = started.iter().filter(|s| s.warm).count() as u64;
    let s = stats(&t.runtime);
    assert_eq!(s.claims, warm, "{s:?}");
    assert_eq!(s.claims + s.misses, 8, "every start either claimed or missed: {s:?}");
    assert!(warm >= 1 && s.misses >= 1, "3 ready members for 8 starts: {s:?}");
    for spec in &specs {
        assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), Exit::Code(0));
        t.runtime.forget(&spec.key).await.expect("forget");
    }
    close_and_assert_clean(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_is_off_starts_cold_and_turning_it_off_destroys_its_members() {
    let t = pooled(2);
    // Never turned on: every start is a miss, served cold.
    let spec = t.spec(&["true"]);
    assert!(!t.runtime.start(&spec).await.expect("start").warm);
    assert_eq!(stats(&t.runtime).misses, 1);
    assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), Exit::Code(0));
    t.runtime.forget(&spec.key).await.expect("forget");

    assert_eq!(filled(&t).await.ready, 2);
    assert_eq!(member_dirs(&t).len(), 2);
    t.runtime.set_warm_pool_active(false);
    t.runtime.settle().await;
    assert_eq!(stats(&t.runtime).ready, 0);
    assert!(member_cgroups(&t).is_empty() && member_dirs(&t).is_empty(), "members destroyed");
    // On again: refilled.
    assert_eq!(filled(&t).await.ready, 2);
    close_and_assert_clean(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runtime_destroys_the_members_it_did_not_make_and_keeps_claimed_ones() {
    let t = pooled(2);
    assert_eq!(filled(&t).await.ready, 2);
    let spec = t.spec(&["sleep", "1000"]);
    assert!(t.runtime.start(&spec).await.expect("start").warm);
    t.runtime.settle().await; // the replacement is built
    assert_eq!(member_dirs(&t).len(), 2);

    // Another agent over the same state dir (this one still holds its members' claim pipes, as a
    // killed agent's would be until the kernel closed them): it destroys the unclaimed members and
    // re-adopts the sandbox in its member cgroup.
    let second = t.reopen();
    let recovered = second.recover().await.expect("recover");
    assert_eq!(recovered.len(), 1, "only the sandbox: {recovered:?}");
    assert_eq!(recovered[0].spec.key, spec.key);
    assert!(member_dirs(&t).is_empty(), "unclaimed members destroyed: {:?}", member_dirs(&t));
    assert!(second.warm_pool().is_empty() || stats(&second).ready == 0);
    second.kill(&spec.key).await.expect("kill");
    second.forget(&spec.key).await.expect("forget");
    assert!(member_cgroups(&t).is_empty(), "{:?}", member_cgroups(&t));
    // The first runtime's members are gone under it: turning it off reaps them.
    close_and_assert_clean(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_init_died_is_never_handed_out() {
    let t = pooled(1);
    assert_eq!(filled(&t).await.ready, 1);
    let pids: Vec<i32> = member_cgroups(&t)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|procs| procs.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<i32>>())
        .collect();
    let init = *pids.first().expect("the member's init");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(init), nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    // It is this process's child: it stays a zombie until the pool reaps it.
    let stat = format!("/proc/{init}/stat");
    common::poll_until(
        "the member's init to have exited",
        common::HANG_GUARD,
        || std::fs::read_to_string(&stat).unwrap_or_default(),
        |s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
    );
    let spec = t.spec(&["true"]);
    let started = t.runtime.start(&spec).await.expect("a dead member costs a cold start, not a failure");
    assert!(!started.warm);
    assert_eq!(stats(&t.runtime).misses, 1);
    assert_eq!(t.runtime.wait(&spec.key).await.expect("wait"), Exit::Code(0));
    t.runtime.forget(&spec.key).await.expect("forget");
    close_and_assert_clean(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_past_its_age_is_replaced() {
    let warm_pool = vec![WarmTemplate { name: "host".into(), template: Template::Host, size: 1 }];
    let options =
        Options { warm_pool, warm_pool_max_age: std::time::Duration::from_millis(200), ..Options::default() };
    let t = TestEnv::with(Backend::Process, options);
    assert_eq!(filled(&t).await.ready, 1);
    let first = member_dirs(&t);
    assert_eq!(first.len(), 1);
    // Its timer destroys it and builds another (the test waits for that outcome, within the guard).
    common::poll_until(
        "the member to be replaced",
        common::HANG_GUARD,
        || member_dirs(&t),
        |now| now.len() == 1 && now != &first && stats(&t.runtime).ready == 1,
    );
    close_and_assert_clean(&t).await;
}
