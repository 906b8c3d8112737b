//! Cgroups for sandboxes, on pure cgroup v2 hosts and on hybrid ones (v1 resource controllers plus an
//! otherwise empty v2 hierarchy at `/sys/fs/cgroup/unified`).
//!
//! Hand-written rather than through a cgroups crate: we need a dozen file writes, but in exactly
//! the split the hybrid layout asks for (limits on whichever version holds the controller, freeze
//! and kill on v2 where it exists even though it has no controllers, the v1 freezer otherwise), and
//! a crate that picks one version for the whole host gets that wrong.
//!
//! Each sandbox gets `<hierarchy>/<parent>/<id>.<lifecycle>` in every hierarchy it uses ('.' cannot
//! occur in either id, so names never collide). Processes enter by writing to `cgroup.procs`
//! before the init runs (see `spawn`).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::SandboxKey;

/// A resource controller the backend limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Controller {
    Memory,
    Cpu,
    Pids,
}

impl Controller {
    const ALL: [Self; 3] = [Self::Memory, Self::Cpu, Self::Pids];

    fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Cpu => "cpu",
            Self::Pids => "pids",
        }
    }
}

/// What was found on this host, once at startup.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The cgroup2 mount, if any.
    v2_root: Option<PathBuf>,
    /// Controllers available on v2.
    v2_controllers: BTreeSet<String>,
    /// v1 mounts by controller name (memory, cpu, pids, freezer).
    v1: Vec<(&'static str, PathBuf)>,
    /// Whether v2 cgroups have `cgroup.freeze` (5.2) and `cgroup.kill` (5.14).
    v2_freeze: bool,
    v2_kill: bool,
    /// The parent cgroup name under each hierarchy root.
    parent: String,
}

impl Layout {
    /// Reads `/proc/self/mountinfo` and the v2 root's controllers, and creates the parent cgroup in
    /// every hierarchy used (enabling the v2 controllers we need in it).
    pub(crate) fn detect(parent: &str) -> io::Result<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        let mut layout =
            Self::parse(&mountinfo, |root| fs::read_to_string(root.join("cgroup.controllers")), parent)?;
        layout.create_parents()?;
        Ok(layout)
    }

    /// The layout described by `mountinfo`, reading the v2 root's `cgroup.controllers` through
    /// `controllers`.
    fn parse(
        mountinfo: &str,
        controllers: impl Fn(&Path) -> io::Result<String>,
        parent: &str,
    ) -> io::Result<Self> {
        let mut v2_root = None;
        let mut v1: Vec<(&'static str, PathBuf)> = Vec::new();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mountpoint = left.split(' ').nth(4).map(unescape);
            let mut right = right.split(' ');
            let (Some(fstype), Some(_source), Some(options)) = (right.next(), right.next(), right.next())
            else {
                continue;
            };
            let Some(mountpoint) = mountpoint else { continue };
            match fstype {
                "cgroup2" if v2_root.is_none() => v2_root = Some(mountpoint),
                "cgroup" => {
                    for opt in options.split(',') {
                        for known in ["memory", "cpu", "pids", "freezer"] {
                            if opt == known && !v1.iter().any(|(c, _)| *c == known) {
                                v1.push((known, mountpoint.clone()));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let v2_controllers = match &v2_root {
            Some(root) => controllers(root)?.split_whitespace().map(str::to_owned).collect(),
            None => BTreeSet::new(),
        };
        Ok(Self { v2_root, v2_controllers, v1, v2_freeze: false, v2_kill: false, parent: parent.to_owned() })
    }

    fn create_parents(&mut self) -> io::Result<()> {
        if let Some(root) = &self.v2_root {
            let wanted: Vec<String> = Controller::ALL
                .iter()
                .filter(|c| self.v2_controllers.contains(c.name()))
                .map(|c| format!("+{}", c.name()))
                .collect();
            let dir = root.join(&self.parent);
            ensure_dir(&dir)?;
            for enable in &wanted {
                write(&root.join("cgroup.subtree_control"), enable)?;
                write(&dir.join("cgroup.subtree_control"), enable)?;
            }
            self.v2_freeze = dir.join("cgroup.freeze").exists();
            self.v2_kill = dir.join("cgroup.kill").exists();
        }
        for (_, root) in &self.v1 {
            ensure_dir(&root.join(&self.parent))?;
        }
        Ok(())
    }

    /// Removes the parent cgroup from every hierarchy (only succeeds once it is empty).
    pub(crate) fn remove_parents(&self) -> io::Result<()> {
        let roots = self.v2_root.iter().chain(self.v1.iter().map(|(_, p)| p));
        for root in roots {
            match fs::remove_dir(root.join(&self.parent)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// One line for the startup log.
    pub(crate) fn describe(&self) -> String {
        let place = |c: Controller| match self.controller_dir_root(c) {
            Some((root, true)) => format!("{}=v2:{}", c.name(), root.display()),
            Some((root, false)) => format!("{}=v1:{}", c.name(), root.display()),
            None => format!("{}=missing", c.name()),
        };
        let freeze = if self.v2_freeze {
            "v2"
        } else if self.v1_root("freezer").is_some() {
            "v1-freezer"
        } else {
            "none"
        };
        let kill = if self.v2_kill { "v2-cgroup.kill" } else { "freeze-and-signal" };
        format!(
            "{} {} {} freeze={freeze} kill={kill}",
            place(Controller::Memory),
            place(Controller::Cpu),
            place(Controller::Pids)
        )
    }

    fn v1_root(&self, name: &str) -> Option<&Path> {
        self.v1.iter().find(|(c, _)| *c == name).map(|(_, p)| p.as_path())
    }

    /// The hierarchy root holding `c`, and whether it is v2.
    fn controller_dir_root(&self, c: Controller) -> Option<(&Path, bool)> {
        if let (Some(root), true) = (&self.v2_root, self.v2_controllers.contains(c.name())) {
            return Some((root.as_path(), true));
        }
        self.v1_root(c.name()).map(|p| (p, false))
    }

    /// Every directory a sandbox's cgroup has, v2 first.
    fn dirs_for(&self, key: &SandboxKey) -> Vec<PathBuf> {
        let name = format!("{}.{}", key.id.as_str(), key.lifecycle.as_str());
        let mut roots: Vec<&Path> = Vec::new();
        if let Some(v2) = &self.v2_root {
            roots.push(v2);
        }
        for c in Controller::ALL {
            if let Some((root, false)) = self.controller_dir_root(c) {
                roots.push(root);
            }
        }
        if let (false, Some(root)) = (self.v2_freeze, self.v1_root("freezer")) {
            roots.push(root);
        }
        roots.dedup();
        roots.into_iter().map(|r| r.join(&self.parent).join(&name)).collect()
    }

    /// The parent cgroup name.
    pub(crate) fn parent(&self) -> &str {
        &self.parent
    }

    /// The same layout under another (validated) parent: for sandboxes an agent with another
    /// configuration started.
    pub(crate) fn with_parent(&self, parent: &str) -> Self {
        Self { parent: parent.to_owned(), ..self.clone() }
    }

    /// The (not yet created) cgroup of `key`.
    pub(crate) fn cgroup(&self, key: &SandboxKey) -> Cgroup {
        let dirs = self.dirs_for(key);
        let name = format!("{}.{}", key.id.as_str(), key.lifecycle.as_str());
        let dir_of = |root: &Path| root.join(&self.parent).join(&name);
        let limit = |c: Controller| self.controller_dir_root(c).map(|(root, v2)| (dir_of(root), v2));
        let freezer = if self.v2_freeze {
            self.v2_root.as_deref().map(|r| Freezer::V2(dir_of(r)))
        } else {
            self.v1_root("freezer").map(|r| Freezer::V1(dir_of(r)))
        };
        Cgroup {
            has_v2: self.v2_root.is_some(),
            procs_dir: dirs.first().cloned(),
            dirs,
            memory: limit(Controller::Memory),
            cpu: limit(Controller::Cpu),
            pids: limit(Controller::Pids),
            freezer,
            kill_file: if self.v2_kill {
                self.v2_root.as_deref().map(|r| dir_of(r).join("cgroup.kill"))
            } else {
                None
            },
        }
    }
}

#[derive(Debug, Clone)]
enum Freezer {
    V2(PathBuf),
    V1(PathBuf),
}

/// One sandbox's cgroup, across hierarchies.
#[derive(Debug, Clone)]
pub(crate) struct Cgroup {
    /// Whether `dirs[0]` is the v2 directory.
    has_v2: bool,
    dirs: Vec<PathBuf>,
    procs_dir: Option<PathBuf>,
    memory: Option<(PathBuf, bool)>,
    cpu: Option<(PathBuf, bool)>,
    pids: Option<(PathBuf, bool)>,
    freezer: Option<Freezer>,
    kill_file: Option<PathBuf>,
}

/// A cgroup operation that failed, naming the step.
#[derive(Debug)]
pub(crate) struct CgroupError {
    pub(crate) step: &'static str,
    pub(crate) source: io::Error,
}

fn step(step: &'static str) -> impl FnOnce(io::Error) -> CgroupError {
    move |source| CgroupError { step, source }
}

impl Cgroup {
    /// Creates the directories; on error, removes what it created.
    pub(crate) fn create(&self) -> Result<(), CgroupError> {
        for (i, dir) in self.dirs.iter().enumerate() {
            if let Err(e) = fs::create_dir(dir) {
                for made in &self.dirs[..i] {
                    let _ = fs::remove_dir(made);
                }
                return Err(CgroupError { step: "create cgroup", source: e });
            }
        }
        Ok(())
    }

    /// Writes the limits; `Err` names the missing controller or the refused write.
    pub(crate) fn set_limits(&self, limits: &crate::Limits) -> Result<(), CgroupError> {
        if let Some(bytes) = limits.memory_bytes {
            let (dir, v2) = self.memory.as_ref().ok_or_else(|| missing("memory limit"))?;
            let file = if *v2 { "memory.max" } else { "memory.limit_in_bytes" };
            write(&dir.join(file), &bytes.to_string()).map_err(step("set memory limit"))?;
            if *v2 {
                let _ = write(&dir.join("memory.swap.max"), "0");
            } else {
                let _ = write(&dir.join("memory.swappiness"), "0");
            }
        }
        if let Some(millis) = limits.cpu_millis {
            let (dir, v2) = self.cpu.as_ref().ok_or_else(|| missing("cpu limit"))?;
            let quota = u64::from(millis) * 100; // of a 100 ms period
            if *v2 {
                write(&dir.join("cpu.max"), &format!("{quota} 100000")).map_err(step("set cpu limit"))?;
            } else {
                write(&dir.join("cpu.cfs_period_us"), "100000").map_err(step("set cpu limit"))?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string()).map_err(step("set cpu limit"))?;
            }
        }
        if let Some(max) = limits.pids_max {
            let (dir, _) = self.pids.as_ref().ok_or_else(|| missing("pids limit"))?;
            write(&dir.join("pids.max"), &max.to_string()).map_err(step("set pids limit"))?;
        }
        Ok(())
    }

    /// The v2 directory (first of `dirs` when the host has v2), opened for `CLONE_INTO_CGROUP`.
    pub(crate) fn open_v2_dir(&self) -> Result<Option<std::os::fd::OwnedFd>, CgroupError> {
        if !self.has_v2 {
            return Ok(None);
        }
        let Some(dir) = self.dirs.first() else {
            return Ok(None);
        };
        fs::File::open(dir).map(|f| Some(f.into())).map_err(step("open cgroup dir"))
    }

    /// `cgroup.procs` of every hierarchy (v2 first), opened for writing.
    pub(crate) fn open_procs(&self) -> Result<Vec<std::os::fd::OwnedFd>, CgroupError> {
        self.dirs
            .iter()
            .map(|d| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("cgroup.procs"))
                    .map(std::os::fd::OwnedFd::from)
            })
            .collect::<io::Result<_>>()
            .map_err(step("open cgroup.procs"))
    }

    /// The pids in the cgroup (in the caller's pid namespace). A cgroup that is gone is empty.
    pub(crate) fn pids(&self) -> io::Result<Vec<i32>> {
        let Some(dir) = &self.procs_dir else {
            return Ok(Vec::new());
        };
        match fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if is_gone(&e) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Freezes every process.
    pub(crate) fn freeze(&self) -> Result<(), CgroupError> {
        match &self.freezer {
            Some(Freezer::V2(dir)) => write(&dir.join("cgroup.freeze"), "1").map_err(step("freeze")),
            Some(Freezer::V1(dir)) => {
                let state = dir.join("freezer.state");
                write(&state, "FROZEN").map_err(step("freeze"))?;
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let now = fs::read_to_string(&state).map_err(step("freeze"))?;
                    if now.trim() == "FROZEN" {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        return Err(CgroupError { step: "freeze", source: io::ErrorKind::TimedOut.into() });
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            None => Err(missing("freezer")),
        }
    }

    /// The v2 `cgroup.events` that says when the freeze is complete (`frozen 1`); `None` with the
    /// v1 freezer, which notifies nothing.
    pub(crate) fn freeze_events(&self) -> Option<PathBuf> {
        match &self.freezer {
            Some(Freezer::V2(dir)) => Some(dir.join("cgroup.events")),
            _ => None,
        }
    }

    /// The v2 `cgroup.events` that says when the cgroup is empty (`populated 0`); `None` without v2.
    pub(crate) fn populated_events(&self) -> Option<PathBuf> {
        self.has_v2.then(|| self.dirs.first().map(|d| d.join("cgroup.events"))).flatten()
    }

    /// Thaws every process.
    pub(crate) fn thaw(&self) -> Result<(), CgroupError> {
        match &self.freezer {
            Some(Freezer::V2(dir)) => write(&dir.join("cgroup.freeze"), "0").map_err(step("thaw")),
            Some(Freezer::V1(dir)) => write(&dir.join("freezer.state"), "THAWED").map_err(step("thaw")),
            None => Err(missing("freezer")),
        }
    }

    /// Whether the cgroup is frozen (the kernel's view, not just the request).
    pub(crate) fn is_frozen(&self) -> bool {
        match &self.freezer {
            Some(Freezer::V2(dir)) => fs::read_to_string(dir.join("cgroup.events"))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "frozen 1")),
            Some(Freezer::V1(dir)) => {
                fs::read_to_string(dir.join("freezer.state")).is_ok_and(|t| t.trim() == "FROZEN")
            }
            None => false,
        }
    }

    /// Sends SIGKILL to every process in the cgroup, including ones that left the init's tree:
    /// `cgroup.kill` where the kernel has it, otherwise freeze, signal each pid, thaw (so nothing
    /// can fork away between reading the list and signalling it).
    pub(crate) fn kill_all(&self) -> Result<(), CgroupError> {
        if let Some(kill) = &self.kill_file {
            return match write(kill, "1") {
                Err(e) if is_gone(&e) => Ok(()),
                other => other.map_err(step("cgroup.kill")),
            };
        }
        let frozen = self.freezer.is_some() && self.freeze().is_ok();
        for pid in self.pids().map_err(step("list cgroup"))? {
            // SAFETY: kill() with integer arguments; a pid that vanished gives ESRCH, ignored.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if frozen {
            self.thaw()?;
        }
        Ok(())
    }

    /// Removes every directory (retrying while exiting tasks still hold it). Gone is fine.
    pub(crate) fn remove(&self) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                        let _ = self.kill_all();
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => {
                        return Err(CgroupError { step: "remove cgroup", source: e });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `e` says the cgroup no longer exists: `ENOENT` once it is removed, `ENODEV` when it is
/// removed between opening one of its files and reading or writing it (a concurrent cleanup).
fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV)
}

fn missing(what: &'static str) -> CgroupError {
    CgroupError {
        step: what,
        source: io::Error::new(io::ErrorKind::Unsupported, "no such cgroup controller on this host"),
    }
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value)
}

fn ensure_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SandboxKey {
        SandboxKey {
            id: crate::SandboxId::parse("box").expect("id"),
            lifecycle: crate::LifecycleId::parse("ab").expect("lifecycle"),
        }
    }

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_limits_go_to_v1_and_freeze_and_kill_to_v2() {
        let mut layout = Layout::parse(HYBRID, |_| Ok("hugetlb\n".into()), "sh").expect("parse");
        layout.v2_freeze = true;
        layout.v2_kill = true;
        let cg = layout.cgroup(&key());
        let dirs: Vec<String> = cg.dirs.iter().map(|d| d.display().to_string()).collect();
        assert_eq!(
            dirs,
            [
                "/sys/fs/cgroup/unified/sh/box.ab",
                "/sys/fs/cgroup/memory/sh/box.ab",
                "/sys/fs/cgroup/cpu/sh/box.ab",
                "/sys/fs/cgroup/pids/sh/box.ab"
            ]
        );
        assert_eq!(cg.memory, Some((PathBuf::from("/sys/fs/cgroup/memory/sh/box.ab"), false)));
        assert!(matches!(&cg.freezer, Some(Freezer::V2(d)) if d.starts_with("/sys/fs/cgroup/unified")));
        assert_eq!(cg.kill_file, Some(PathBuf::from("/sys/fs/cgroup/unified/sh/box.ab/cgroup.kill")));
        // Without v2 freeze (old kernels), the v1 freezer joins the hierarchies.
        layout.v2_freeze = false;
        layout.v2_kill = false;
        let cg = layout.cgroup(&key());
        assert!(cg.dirs.contains(&PathBuf::from("/sys/fs/cgroup/freezer/sh/box.ab")));
        assert!(matches!(&cg.freezer, Some(Freezer::V1(_))));
        assert_eq!(cg.kill_file, None);
    }

    #[test]
    fn pure_v2_puts_everything_in_one_directory() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let mut layout =
            Layout::parse(mountinfo, |_| Ok("cpuset cpu io memory hugetlb pids rdma misc\n".into()), "sh")
                .expect("parse");
        layout.v2_freeze = true;
        layout.v2_kill = true;
        let cg = layout.cgroup(&key());
        let dir = PathBuf::from("/sys/fs/cgroup/sh/box.ab");
        assert_eq!(cg.dirs, vec![dir.clone()]);
        for limit in [&cg.memory, &cg.cpu, &cg.pids] {
            assert_eq!(limit, &Some((dir.clone(), true)));
        }
        assert!(layout.describe().contains("memory=v2"));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/sys/fs/cgroup/a\040b"), PathBuf::from("/sys/fs/cgroup/a b"));
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
    }
}
