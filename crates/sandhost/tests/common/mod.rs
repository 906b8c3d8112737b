//! Shared helpers of the runtime and end-to-end tests: the two backends, a private state dir and
//! cgroup parent per test, and a guard that kills and removes everything of the test even when it
//! panics.
#![allow(dead_code, unreachable_pub, unused_macros)]

mod poll;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sandhost_runtime::gvisor::{GvisorConfig, GvisorRuntime};
use sandhost_runtime::process::{ProcessConfig, ProcessRuntime};
use sandhost_runtime::{HostPaths, LifecycleId, LogChunk, Runtime, SandboxId, SandboxKey, SandboxSpec};

// Each test binary uses its own share of these.
#[allow(unused_imports)]
pub use self::poll::{HANG_GUARD, poll_until, poll_until_async, try_poll_until};

/// The runtime backends every suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// sandhost's own namespaces, cgroups and init.
    Process,
    /// gVisor's runsc (`apt-get install runsc`).
    Gvisor,
}

impl Backend {
    /// The name `serve --runtime` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Gvisor => "gvisor",
        }
    }

    /// The backend named `name`.
    pub fn parse(name: &str) -> Self {
        match name {
            "process" => Self::Process,
            "gvisor" => Self::Gvisor,
            other => panic!("no backend {other:?}"),
        }
    }

    /// Opens this backend's runtime over `state_dir` under the cgroup parent `prefix`.
    pub fn open(self, state_dir: &Path, prefix: &str) -> Arc<dyn Runtime> {
        self.open_with(state_dir, prefix, &Options::default())
    }

    /// As [`Backend::open`], with these options.
    pub fn open_with(self, state_dir: &Path, prefix: &str, options: &Options) -> Arc<dyn Runtime> {
        match self {
            Self::Process => Arc::new(open_process_runtime(state_dir, prefix, options)),
            Self::Gvisor => {
                let mut config = GvisorConfig::new(state_dir);
                config.cgroup_parent = prefix.into();
                config.start_timeout = options.start_timeout;
                config.host_paths = options.host_paths.clone();
                config.exit_recorder = Some(env!("CARGO_BIN_EXE_sandhost").into());
                Arc::new(
                    GvisorRuntime::open(config)
                        .expect("open the gvisor runtime: is runsc installed (apt-get install runsc)?"),
                )
            }
        }
    }
}

/// What a test's runtime is opened with, besides its state dir and cgroup parent.
#[derive(Debug, Clone)]
pub struct Options {
    /// The start hang guard.
    pub start_timeout: Duration,
    /// What the `host` template shows of the host.
    pub host_paths: HostPaths,
    /// The process runtime's warm pool (none by default).
    pub warm_pool: Vec<sandhost_runtime::process::WarmTemplate>,
    /// How long its members stay ready.
    pub warm_pool_max_age: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            start_timeout: sandhost_runtime::DEFAULT_START_TIMEOUT,
            host_paths: HostPaths::defaults(),
            warm_pool: Vec::new(),
            warm_pool_max_age: sandhost_runtime::process::DEFAULT_WARM_POOL_MAX_AGE,
        }
    }
}

/// Runs each named function (`async fn name(backend: Backend)`, or with `sync`, a plain `fn`) as two
/// tests, `name::process` and `name::gvisor`: one suite, both backends, nothing copied.
macro_rules! on_both_backends {
    (async: $($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn process() {
                    super::$name(crate::common::Backend::Process).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn gvisor() {
                    super::$name(crate::common::Backend::Gvisor).await;
                }
            }
        )+
    };
    (sync: $($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn process() {
                    super::$name(crate::common::Backend::Process);
                }
                #[test]
                fn gvisor() {
                    super::$name(crate::common::Backend::Gvisor);
                }
            }
        )+
    };
}

/// Where the cgroup hierarchies are mounted on these hosts (and on pure v2 hosts).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Fails loudly unless running as root: these tests need namespaces, mounts and cgroups.
pub fn require_root() {
    // SAFETY-free: geteuid through /proc avoids unsafe in tests.
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
    let euid = uid_line.split_whitespace().nth(2).expect("euid");
    assert_eq!(
        euid, "0",
        "the process runtime tests require root (namespaces, mounts, cgroups); run them as root"
    );
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One test's world: a backend, a state dir, a cgroup parent, a runtime.
pub struct TestEnv {
    pub backend: Backend,
    pub runtime: Arc<dyn Runtime>,
    pub state_dir: PathBuf,
    pub prefix: String,
    options: Options,
    _tmp: tempfile::TempDir,
}

impl TestEnv {
    pub fn on(backend: Backend) -> Self {
        Self::with(backend, Options::default())
    }

    /// As [`TestEnv::on`], with a runtime whose starts time out after `start_timeout`.
    pub fn with_start_timeout(backend: Backend, start_timeout: Duration) -> Self {
        Self::with(backend, Options { start_timeout, ..Options::default() })
    }

    /// As [`TestEnv::on`], with a runtime opened with `options`.
    pub fn with(backend: Backend, options: Options) -> Self {
        require_root();
        // Outside /tmp, so that the sandbox's own /tmp does not hide it by accident: the runtime
        // must hide it.
        std::fs::create_dir_all("/var/tmp").expect("/var/tmp");
        let tmp = tempfile::Builder::new().prefix("sandhost-test-").tempdir_in("/var/tmp").expect("temp dir");
        let prefix =
            format!("sandhost-test-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let state_dir = tmp.path().join("state");
        let runtime = backend.open_with(&state_dir, &prefix, &options);
        Self { backend, runtime, state_dir, prefix, options, _tmp: tmp }
    }

    /// A new runtime over the same state dir and cgroup parent (as a restarted agent would open).
    pub fn reopen(&self) -> Arc<dyn Runtime> {
        self.backend.open_with(&self.state_dir, &self.prefix, &self.options)
    }

    /// A spec running `argv` with a fresh key and the defaults.
    pub fn spec(&self, argv: &[&str]) -> SandboxSpec {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        SandboxSpec {
            env: vec![("LANG".into(), "C".into())],
            stop_grace: Duration::from_secs(10),
            ..SandboxSpec::new(
                SandboxKey {
                    id: SandboxId::parse(format!("sb-{n}")).expect("id"),
                    lifecycle: LifecycleId::parse(format!("{:x}", 0xabc0_0000_u64 + u64::from(n)))
                        .expect("lifecycle"),
                },
                argv.iter().map(|s| (*s).to_owned()).collect(),
            )
        }
    }

    /// A spec that restores snapshot `snapshot` (no command, no environment: the snapshot's run).
    pub fn restore_spec(&self, snapshot: &str) -> SandboxSpec {
        SandboxSpec {
            env: Vec::new(),
            restore_from: Some(sandhost_runtime::SnapshotId::parse(snapshot).expect("snapshot id")),
            ..self.spec(&[])
        }
    }

    /// A shell command.
    pub fn sh(&self, script: &str) -> SandboxSpec {
        self.spec(&["/bin/sh", "-c", script])
    }

    /// The whole log of a sandbox.
    pub async fn log(&self, key: &SandboxKey) -> String {
        String::from_utf8_lossy(&self.log_chunk(key, 0).await.data).into_owned()
    }

    pub async fn log_chunk(&self, key: &SandboxKey, offset: u64) -> LogChunk {
        self.runtime.read_logs(key, offset, 16 << 20).await.expect("read logs")
    }

    /// Waits (within the hang guard) until the log contains `needle`.
    pub async fn wait_for_log(&self, key: &SandboxKey, needle: &str) -> String {
        self.wait_for_log_where(key, &format!("{needle:?} in the log"), |log| log.contains(needle)).await
    }

    /// Waits (within the hang guard) until the log is `done`; `what` names that for the panic.
    pub async fn wait_for_log_where(
        &self,
        key: &SandboxKey,
        what: &str,
        done: impl Fn(&str) -> bool,
    ) -> String {
        poll_until_async(what, HANG_GUARD, || self.log(key), |log| done(log)).await
    }

    /// The sandbox's cgroup directories in every hierarchy: `<id>.<lifecycle>` (process), or
    /// `<id>.<lifecycle>.<generation>` for each runsc container that carried it (gvisor).
    pub fn cgroup_dirs(&self, key: &SandboxKey) -> Vec<PathBuf> {
        let name = format!("{}.{}", key.id, key.lifecycle);
        let generation = format!("{name}.");
        hierarchies()
            .into_iter()
            .filter_map(|h| std::fs::read_dir(h.join(&self.prefix)).ok())
            .flat_map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .filter(|d| {
                d.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n == name || n.starts_with(&generation))
            })
            .collect()
    }

    /// The pids in the sandbox's cgroups.
    pub fn cgroup_pids(&self, key: &SandboxKey) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .cgroup_dirs(key)
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<_>>())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// What the freezer says of each of the sandbox's cgroups.
    pub fn freezer_states(&self, key: &SandboxKey) -> Vec<String> {
        self.cgroup_dirs(key)
            .iter()
            .filter_map(|d| {
                std::fs::read_to_string(d.join("freezer.state"))
                    .or_else(|_| std::fs::read_to_string(d.join("cgroup.events")))
                    .ok()
            })
            .collect()
    }

    /// Whether the kernel reports the sandbox's cgroup frozen (v2 `cgroup.events` or v1 freezer).
    pub fn is_frozen(&self, key: &SandboxKey) -> bool {
        self.cgroup_dirs(key).iter().any(|d| {
            std::fs::read_to_string(d.join("cgroup.events")).is_ok_and(|t| t.lines().any(|l| l == "frozen 1"))
                || std::fs::read_to_string(d.join("freezer.state")).is_ok_and(|t| t.trim() == "FROZEN")
        })
    }

    /// Asserts that nothing of this test is left on the host: no sandbox cgroup under the test's
    /// parent in any hierarchy, no mount naming the state dir, no process naming it, no runsc
    /// container.
    pub fn assert_clean(&self) {
        let containers = runsc_containers(&self.state_dir);
        assert!(containers.is_empty(), "runsc containers left: {containers:?}");
        let leftovers = leftover_cgroups(&self.prefix);
        assert!(leftovers.is_empty(), "cgroups left behind: {leftovers:?}");
        let state = self.state_dir.to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let bad: Vec<&str> = mounts.lines().filter(|l| l.contains(state.as_str())).collect();
        assert!(bad.is_empty(), "mounts left in the host namespace: {bad:?}");
        let mut procs = processes_naming(&state);
        procs.extend(processes_in_cgroups_under(&self.prefix));
        assert!(procs.is_empty(), "processes left behind: {procs:?}");
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        purge(&self.prefix, &self.state_dir);
    }
}

/// Purges another parent a test uses besides its own (see [`purge`]) when dropped, so that a test
/// that fails before its own cleanup leaks nothing there either.
#[derive(Debug)]
pub struct PurgeOnDrop {
    /// The parent, relative to each hierarchy's root.
    pub prefix: String,
    /// The state dir whose processes go too.
    pub state_dir: PathBuf,
}

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        purge(&self.prefix, &self.state_dir);
    }
}

/// SIGKILL to `pid`; one that has already gone (ESRCH) is what was wanted.
fn sigkill(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}

/// Kills and removes everything of one test, whatever state it left: every process in the cgroups
/// under `prefix` and every process naming `state_dir`, the cgroups themselves, and any mount under
/// the state dir in our namespace.
pub fn purge(prefix: &str, state_dir: &Path) {
    // Kill and remove everything of ours, whatever state the test left.
    for dir in all_cgroups_under(prefix) {
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|pid| pid.trim().parse::<i32>().ok()) {
                sigkill(pid);
            }
        }
        let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
        let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
    }
    let state = state_dir.to_string_lossy().into_owned();
    for (pid, _) in processes_naming(&state) {
        sigkill(pid);
    }
    // Best effort (this runs in `Drop`s): what will not go within the bound stays, and the test's
    // own checks name it.
    let _ = try_poll_until(
        Duration::from_secs(5),
        || {
            let left: Vec<PathBuf> = all_cgroups_under(prefix)
                .into_iter()
                .rev()
                .filter(|dir| std::fs::remove_dir(dir).is_err())
                .collect();
            for h in hierarchies() {
                let _ = std::fs::remove_dir(h.join(prefix));
            }
            left
        },
        Vec::is_empty,
    );
    // Never delete through a mount point: if anything is mounted under the state dir in our
    // namespace (a bug), detach it first.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines().filter(|l| l.contains(state.as_str())) {
        if let Some(point) = line.split(' ').nth(4) {
            let _ = std::process::Command::new("umount").args(["-l", point]).status();
        }
    }
}

/// A process runtime over `state_dir`, under cgroup parent `prefix`.
fn open_process_runtime(state_dir: &Path, prefix: &str, options: &Options) -> ProcessRuntime {
    let mut config = ProcessConfig::new(state_dir, env!("CARGO_BIN_EXE_sandhost"));
    config.cgroup_parent = prefix.into();
    config.start_timeout = options.start_timeout;
    config.host_paths = options.host_paths.clone();
    config.warm_pool.clone_from(&options.warm_pool);
    config.warm_pool_parallelism = 4;
    config.warm_pool_max_age = options.warm_pool_max_age;
    ProcessRuntime::open(config).expect("open the process runtime")
}

/// The containers runsc lists in the gvisor backend's root under `state_dir` (none if there is no
/// such root).
pub fn runsc_containers(state_dir: &Path) -> Vec<String> {
    let root = state_dir.join("runsc");
    if !root.is_dir() {
        return Vec::new();
    }
    let listed = std::process::Command::new("runsc")
        .arg("--root")
        .arg(&root)
        .args(["list", "-quiet"])
        .output()
        .expect("runsc list");
    String::from_utf8_lossy(&listed.stdout).split_whitespace().map(str::to_owned).collect()
}

/// Every cgroup hierarchy mount point (v1 and v2).
pub fn hierarchies() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mounts
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let point = left.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(point))
        })
        .filter(|p| p.starts_with(CGROUP_ROOT))
        .collect()
}

/// Every cgroup directory under `<hierarchy>/<prefix>` (not the parent itself), parents first.
fn all_cgroups_under(prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for h in hierarchies() {
        let mut stack = vec![h.join(prefix)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(entry.path());
                    stack.push(entry.path());
                }
            }
        }
    }
    out
}

/// Sandbox cgroups still present under the prefix.
pub fn leftover_cgroups(prefix: &str) -> Vec<PathBuf> {
    all_cgroups_under(prefix)
}

/// Processes whose command line mentions `needle`, or that hold a file under it open: runsc's
/// processes name the state dir; a process sandbox's init names no host path (its command line is
/// `sandhost-init __init`) but holds its lifecycle's directory open as long as it lives. (Where the
/// state dir is on a mount of its own, the init's fds read as paths inside that mount once it has
/// detached the host's root: [`processes_in_cgroups_under`] finds the init there.)
pub fn processes_naming(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid.cast_unsigned() == me || is_our_unexeced_child(&entry.path()) {
            continue;
        }
        if let Some(cmdline) = names_or_holds(&entry.path(), needle) {
            out.push((pid, cmdline));
        }
    }
    out
}

/// Whether the process of `proc_dir` is a child of this test process that has not exec'd yet: one
/// that another test (in this process) is spawning at this very moment. Until its exec it runs this
/// binary and holds a copy of every fd this process has, this test's open files included, and a
/// process sandbox's init joins its cgroup just before its exec: none of that is a leak.
fn is_our_unexeced_child(proc_dir: &Path) -> bool {
    let ppid = std::fs::read_to_string(proc_dir.join("stat")).ok().and_then(|stat| {
        stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
    });
    ppid == Some(std::process::id())
        && std::fs::read_link(proc_dir.join("exe")).ok() == std::fs::read_link("/proc/self/exe").ok()
}

/// The command line of the process whose `/proc` directory is `proc_dir` if it mentions `needle` or
/// the process holds a file under `needle` open.
pub fn names_or_holds(proc_dir: &Path, needle: &str) -> Option<String> {
    let cmdline = std::fs::read(proc_dir.join("cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if cmdline.contains(needle) {
        return Some(cmdline);
    }
    let fds = std::fs::read_dir(proc_dir.join("fd")).ok()?;
    let holds = fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|to| to.starts_with(needle)));
    holds.then_some(cmdline)
}

/// Processes in a cgroup under `prefix` (in any hierarchy): every process of a sandbox, its init
/// included. Zombies aside: an init whose agent was killed is reaped by whoever inherited it, maybe
/// late, and holds nothing meanwhile.
pub fn processes_in_cgroups_under(prefix: &str) -> Vec<(i32, String)> {
    let me = std::process::id();
    let marker = format!(":/{prefix}/");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cgroups) = std::fs::read_to_string(entry.path().join("cgroup")) else { continue };
        if pid.cast_unsigned() == me || !cgroups.contains(&marker) || is_our_unexeced_child(&entry.path()) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        out.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
    }
    out
}

/// The numbers a counting sandbox printed, one a line, in order.
pub fn numbers(log: &str) -> Vec<u64> {
    log.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The last number a counting sandbox printed (0 before the first).
pub fn last_number(log: &str) -> u64 {
    numbers(log).last().copied().unwrap_or(0)
}

/// Builds a minimal rootfs holding `/bin/sh` and the libraries it links.
pub fn minimal_rootfs() -> tempfile::TempDir {
    let root = tempfile::Builder::new().prefix("sandhost-rootfs-").tempdir_in("/var/tmp").expect("rootfs");
    for dir in ["bin", "proc", "dev", "tmp", "etc-not"] {
        std::fs::create_dir_all(root.path().join(dir)).expect("mkdir");
    }
    let sh = std::fs::canonicalize("/bin/sh").expect("/bin/sh");
    std::fs::copy(&sh, root.path().join("bin/sh")).expect("copy sh");
    let ldd = std::process::Command::new("ldd").arg(&sh).output().expect("ldd");
    for lib in String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|w| w.starts_with('/')) {
        let dest = root.path().join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir lib");
        std::fs::copy(lib, &dest).expect("copy lib");
    }
    root
}
