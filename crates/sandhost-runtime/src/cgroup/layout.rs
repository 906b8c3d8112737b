//! Which cgroup hierarchies this host has, read once at startup from `/proc/self/mountinfo`, and
//! where a cgroup's directories are in them: pure v2, pure v1, or the hybrid of v1 resource
//! controllers plus an otherwise empty v2 hierarchy at `/sys/fs/cgroup/unified`.
//!
//! Two ways to a [`Cgroup`] named `<parent>/<name>`:
//! - [`Layout::cgroup`] plans one that sandhost creates (the process backend): a directory in each
//!   hierarchy it uses, v2 first; limits on whichever version holds the controller, freeze and kill
//!   on v2 wherever the kernel has `cgroup.freeze` and `cgroup.kill` there (even in the hybrid's
//!   controller-less v2), the v1 freezer otherwise;
//! - [`Layout::find`] takes one as another program made it (runsc, from the OCI `cgroupsPath`):
//!   every hierarchy in which its directory exists; frozen through the v1 freezer when it has one
//!   (where runsc's own pause acts), else through v2.
//!
//! The parent (a path, the same in every hierarchy: see `parent`) is created in the hierarchies
//! sandhost uses ([`Layout::create_parents`]) and its last component removed from every hierarchy
//! ([`Layout::remove_parents`]). Names are joined only after validation (parents component by
//! component; sandbox and container names built from validated ids).
//!
//! # Inside a systemd service's delegated subtree
//!
//! When the parent lies in the agent's own service (`<service>/sandboxes`), sandhost changes
//! nothing above the service's cgroup: the controllers it limits are those the service's
//! `cgroup.controllers` offers, and they are enabled from the service's cgroup down. On cgroup v2 a
//! cgroup with processes cannot enable controllers for its children ("no internal processes"), and
//! the service's cgroup holds the agent: so the agent first moves itself (the whole process, every
//! thread) into the leaf `<service>/supervisor`, then enables them in the service's and the
//! parent's `cgroup.subtree_control`. Not on v1 (no such rule), nor on a v2 hierarchy with none of
//! the controllers (the hybrid's). The steps are planned ([`Layout::plan`]) before they are done.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::parent::{Placement, SUPERVISOR};
use super::{Cgroup, Freezer, write};
use crate::CloseError;

/// A resource controller the process backend limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Controller {
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

/// The v1 controllers a planned cgroup may use.
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "freezer"];

/// What was found on this host, once at startup.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The cgroup2 mount, if any.
    v2_root: Option<PathBuf>,
    /// Controllers available on v2.
    v2_controllers: BTreeSet<String>,
    /// v1 mounts by controller name (memory, cpu, pids, freezer).
    v1: Vec<(&'static str, PathBuf)>,
    /// Every hierarchy's mount, each once, v2 first.
    hierarchies: Vec<PathBuf>,
    /// Whether v2 cgroups have `cgroup.freeze` (5.2) and `cgroup.kill` (5.14); known once the
    /// parents are created.
    v2_freeze: bool,
    v2_kill: bool,
    /// The parent cgroup, relative to each hierarchy's root (valid).
    parent: String,
    /// The systemd service's cgroup the parent lies in (relative, valid): the top of what sandhost
    /// changes, and on v2 the cgroup the agent leaves for its `supervisor` leaf.
    service: Option<String>,
}

/// One step of preparing the parent, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Create the directory if it is missing.
    Mkdir(PathBuf),
    /// Move this process (every thread) into a cgroup: its pid into that `cgroup.procs`.
    MoveSelf(PathBuf),
    /// Enable the controller for the cgroup's children: `+name` into its `cgroup.subtree_control`.
    Enable(PathBuf, &'static str),
}

/// Why the parent cgroup could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum CgroupSetupError {
    /// The host's cgroup hierarchies could not be read.
    #[error("reading the cgroup hierarchies")]
    Detect(#[source] io::Error),
    /// A step failed.
    #[error("{step} {path}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The service's cgroup still holds processes after the agent left it for its `supervisor`
    /// leaf, so that on cgroup v2 it cannot enable controllers for its children.
    #[error(
        "the service's cgroup {path} still holds processes {pids:?} (the agent moved to {SUPERVISOR}/): \
         cgroup v2 enables controllers for a cgroup's children only while it holds no process"
    )]
    ServiceNotEmpty {
        /// The service's cgroup.
        path: PathBuf,
        /// The processes still in it.
        pids: Vec<i32>,
    },
}

impl Layout {
    /// Reads `/proc/self/mountinfo` and the controllers v2 offers (at its root, or in the service's
    /// cgroup). Creates nothing.
    ///
    /// # Errors
    ///
    /// What could not be read.
    pub(crate) fn detect(placement: &Placement) -> Result<Self, CgroupSetupError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupSetupError::Detect)?;
        Self::parse(&mountinfo, |dir| fs::read_to_string(dir.join("cgroup.controllers")), placement)
            .map_err(CgroupSetupError::Detect)
    }

    /// [`Layout::detect`] with this mountinfo (the controllers read from the files).
    #[cfg(test)]
    fn detect_from(mountinfo: &str, placement: &Placement) -> io::Result<Self> {
        Self::parse(mountinfo, |dir| fs::read_to_string(dir.join("cgroup.controllers")), placement)
    }

    /// The layout described by `mountinfo`, reading a v2 cgroup's `cgroup.controllers` through
    /// `controllers`: the root's, or the service's when the parent lies in one (what the service
    /// may enable for its children).
    fn parse(
        mountinfo: &str,
        controllers: impl Fn(&Path) -> io::Result<String>,
        placement: &Placement,
    ) -> io::Result<Self> {
        let mut v2_root = None;
        let mut v1: Vec<(&'static str, PathBuf)> = Vec::new();
        // (device, mount point): a hierarchy mounted twice is the same device.
        let mut mounts: Vec<(&str, PathBuf)> = Vec::new();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = left.split(' ').collect();
            let (Some(&device), Some(mountpoint)) = (fields.get(2), fields.get(4).map(|m| unescape(m)))
            else {
                continue;
            };
            let mut right = right.split(' ');
            let (Some(fstype), Some(_source), Some(options)) = (right.next(), right.next(), right.next())
            else {
                continue;
            };
            match fstype {
                "cgroup2" if v2_root.is_none() => v2_root = Some(mountpoint.clone()),
                "cgroup" => {
                    for opt in options.split(',') {
                        for known in V1_CONTROLLERS {
                            if opt == known && !v1.iter().any(|(c, _)| *c == known) {
                                v1.push((known, mountpoint.clone()));
                            }
                        }
                    }
                }
                _ => continue,
            }
            if !mounts.iter().any(|(d, _)| *d == device) {
                mounts.push((device, mountpoint));
            }
        }
        let v2_controllers = match (&v2_root, &placement.service) {
            (Some(root), None) => controllers(root)?.split_whitespace().map(str::to_owned).collect(),
            // A hierarchy where the service has no cgroup offers it nothing.
            (Some(root), Some(service)) => match controllers(&root.join(service)) {
                Ok(offered) => offered.split_whitespace().map(str::to_owned).collect(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
                Err(e) => return Err(e),
            },
            (None, _) => BTreeSet::new(),
        };
        let mut hierarchies: Vec<PathBuf> = v2_root.iter().cloned().collect();
        hierarchies.extend(mounts.into_iter().map(|(_, m)| m).filter(|m| Some(m) != v2_root.as_ref()));
        Ok(Self {
            v2_root,
            v2_controllers,
            v1,
            hierarchies,
            v2_freeze: false,
            v2_kill: false,
            parent: placement.parent.clone(),
            service: placement.service.clone(),
        })
    }

    /// Creates the parent cgroup in every hierarchy [`Layout::cgroup`] uses, enabling the v2
    /// controllers it limits (after moving the agent out of its service's cgroup, when the parent
    /// lies in one), and learns whether v2 can freeze and kill. Done once, at open, before any
    /// sandbox is started or recovered.
    ///
    /// # Errors
    ///
    /// The step that failed, naming its file; [`CgroupSetupError::ServiceNotEmpty`] when the
    /// service's cgroup cannot enable controllers because other processes are still in it.
    pub(crate) fn create_parents(&mut self) -> Result<(), CgroupSetupError> {
        for step in self.plan() {
            self.run(&step)?;
        }
        if let Some(root) = &self.v2_root {
            let dir = root.join(&self.parent);
            self.v2_freeze = dir.join("cgroup.freeze").exists();
            self.v2_kill = dir.join("cgroup.kill").exists();
        }
        Ok(())
    }

    /// The steps of [`Layout::create_parents`], in order.
    fn plan(&self) -> Vec<Step> {
        let wanted: Vec<&'static str> = Controller::ALL
            .iter()
            .filter(|c| self.v2_controllers.contains(c.name()))
            .map(|c| c.name())
            .collect();
        self.plan_enabling(&wanted)
    }

    /// The steps that prepare the parent with the v2 controllers `wanted` enabled for its children.
    fn plan_enabling(&self, wanted: &[&'static str]) -> Vec<Step> {
        let mut steps = Vec::new();
        let components: Vec<&str> = self.parent.split('/').collect();
        if let Some(root) = &self.v2_root {
            // The top cgroup sandhost changes: the root (exempt from "no internal processes"), or
            // the service's, which the agent leaves first.
            let (mut dir, below) = match self.service_and_below(&components) {
                Some((service, below)) => {
                    // It exists under systemd; on a hybrid host whose v2 hierarchy systemd does
                    // not use, it is made (empty).
                    let mut top = root.clone();
                    for component in service.split('/') {
                        top.push(component);
                        steps.push(Step::Mkdir(top.clone()));
                    }
                    if !wanted.is_empty() {
                        let leaf = top.join(SUPERVISOR);
                        steps.push(Step::Mkdir(leaf.clone()));
                        steps.push(Step::MoveSelf(leaf.join("cgroup.procs")));
                    }
                    (top, below)
                }
                None => (root.clone(), &components[..]),
            };
            steps.extend(wanted.iter().map(|c| Step::Enable(dir.clone(), c)));
            for component in below {
                dir.push(component);
                steps.push(Step::Mkdir(dir.clone()));
                steps.extend(wanted.iter().map(|c| Step::Enable(dir.clone(), c)));
            }
        }
        let mut v1_roots: Vec<&PathBuf> = self.v1.iter().map(|(_, root)| root).collect();
        v1_roots.dedup();
        for root in v1_roots {
            let mut dir = root.clone();
            for component in &components {
                dir.push(component);
                steps.push(Step::Mkdir(dir.clone()));
            }
        }
        steps
    }

    /// The service's cgroup and the parent's components below it, when the parent lies in it.
    fn service_and_below<'a>(&'a self, components: &'a [&'a str]) -> Option<(&'a str, &'a [&'a str])> {
        let service = self.service.as_deref()?;
        let depth = service.split('/').count();
        let inside = components.len() > depth && components[..depth].iter().copied().eq(service.split('/'));
        inside.then(|| (service, &components[depth..]))
    }

    fn run(&self, step: &Step) -> Result<(), CgroupSetupError> {
        let failed = |step: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| CgroupSetupError::Step { step, path, source }
        };
        match step {
            Step::Mkdir(dir) => ensure_dir(dir).map_err(failed("creating the parent cgroup", dir)),
            Step::MoveSelf(procs) => write(procs, &std::process::id().to_string())
                .map_err(failed("moving the agent out of its service's cgroup into", procs)),
            Step::Enable(dir, controller) => {
                let file = dir.join("cgroup.subtree_control");
                match write(&file, &format!("+{controller}")) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && self.is_service_dir(dir) => {
                        Err(CgroupSetupError::ServiceNotEmpty { path: dir.clone(), pids: pids_in(dir) })
                    }
                    other => other.map_err(failed("enabling a controller in", &file)),
                }
            }
        }
    }

    fn is_service_dir(&self, dir: &Path) -> bool {
        match (&self.v2_root, &self.service) {
            (Some(root), Some(service)) => dir == root.join(service),
            _ => false,
        }
    }

    /// Removes the parent cgroup (its last component: what is above may be shared, or the
    /// service's) from every hierarchy where it is (only an empty one can go). The `supervisor`
    /// leaf stays: the agent is in it.
    ///
    /// # Errors
    ///
    /// The first parent that could not be removed; the others are removed all the same.
    pub(crate) fn remove_parents(&self) -> Result<(), CloseError> {
        let mut first_error = None;
        for root in &self.hierarchies {
            let path = root.join(&self.parent);
            match fs::remove_dir(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    first_error.get_or_insert(CloseError::CgroupParent { path, source: e });
                }
                _ => {}
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The names of the cgroups under the parent, in any hierarchy, each once, sorted: what a
    /// recovery checks against the sandboxes it found.
    pub(crate) fn children(&self) -> Vec<String> {
        let mut names = BTreeSet::new();
        for root in &self.hierarchies {
            for entry in fs::read_dir(root.join(&self.parent)).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir())
                    && let Some(name) = entry.file_name().to_str()
                {
                    names.insert(name.to_owned());
                }
            }
        }
        names.into_iter().collect()
    }

    /// One line for the startup log.
    pub(crate) fn describe(&self) -> String {
        let place = |c: Controller| match self.controller_root(c) {
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

    /// The parent cgroup, relative to each hierarchy's root.
    pub(crate) fn parent(&self) -> &str {
        &self.parent
    }

    /// The same layout under another (validated) parent: for sandboxes an agent with another
    /// configuration started.
    pub(crate) fn with_parent(&self, parent: &str) -> Self {
        Self { parent: parent.to_owned(), ..self.clone() }
    }

    fn v1_root(&self, name: &str) -> Option<&Path> {
        self.v1.iter().find(|(c, _)| *c == name).map(|(_, p)| p.as_path())
    }

    /// The hierarchy root holding `c`, and whether it is v2.
    fn controller_root(&self, c: Controller) -> Option<(&Path, bool)> {
        if let (Some(root), true) = (&self.v2_root, self.v2_controllers.contains(c.name())) {
            return Some((root.as_path(), true));
        }
        self.v1_root(c.name()).map(|p| (p, false))
    }

    /// `<root>/<parent>/<name>`.
    fn dir_of(&self, root: &Path, name: &str) -> PathBuf {
        root.join(&self.parent).join(name)
    }

    /// The (not yet created) cgroup `<parent>/<name>` that sandhost makes.
    pub(crate) fn cgroup(&self, name: &str) -> Cgroup {
        let mut roots: Vec<&Path> = self.v2_root.iter().map(PathBuf::as_path).collect();
        for c in Controller::ALL {
            if let Some((root, false)) = self.controller_root(c) {
                roots.push(root);
            }
        }
        if let (false, Some(root)) = (self.v2_freeze, self.v1_root("freezer")) {
            roots.push(root);
        }
        roots.dedup();
        let limit = |c: Controller| self.controller_root(c).map(|(root, v2)| (self.dir_of(root, name), v2));
        let freezer = if self.v2_freeze {
            self.v2_root.as_deref().map(|r| Freezer::V2(self.dir_of(r, name)))
        } else {
            self.v1_root("freezer").map(|r| Freezer::V1(self.dir_of(r, name)))
        };
        let kill_file = match (self.v2_kill, &self.v2_root) {
            (true, Some(root)) => Some(self.dir_of(root, name).join("cgroup.kill")),
            _ => None,
        };
        Cgroup {
            has_v2: self.v2_root.is_some(),
            dirs: roots.into_iter().map(|r| self.dir_of(r, name)).collect(),
            memory: limit(Controller::Memory),
            cpu: limit(Controller::Cpu),
            pids: limit(Controller::Pids),
            freezer,
            kill_file,
        }
    }

    /// The (not yet created) directories of `<parent>/<name>` that hold the limited controllers
    /// (memory, cpu, pids) and nothing else: made and limited by sandhost for a container that
    /// runsc then joins (runsc neither configures nor removes a cgroup that exists before it).
    /// No freezer and no controller-less v2 directory: runsc's processes are never put there.
    pub(crate) fn limits_only(&self, name: &str) -> Cgroup {
        let limit = |c: Controller| self.controller_root(c).map(|(root, v2)| (self.dir_of(root, name), v2));
        let (memory, cpu, pids) =
            (limit(Controller::Memory), limit(Controller::Cpu), limit(Controller::Pids));
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (dir, _) in [&memory, &cpu, &pids].into_iter().flatten() {
            if !dirs.contains(dir) {
                dirs.push(dir.clone());
            }
        }
        let has_v2 = [&memory, &cpu, &pids].into_iter().flatten().any(|(_, v2)| *v2);
        Cgroup { has_v2, dirs, memory, cpu, pids, freezer: None, kill_file: None }
    }

    /// The cgroup `<parent>/<name>` as another program made it: in every hierarchy where its
    /// directory exists now. It has no limits of sandhost's (they are its maker's); its memory
    /// controller's directory is known, to read its OOM kills.
    pub(crate) fn find(&self, name: &str) -> Cgroup {
        let dirs: Vec<PathBuf> =
            self.hierarchies.iter().map(|root| self.dir_of(root, name)).filter(|d| d.is_dir()).collect();
        let v2 = self.v2_root.as_deref().map(|r| self.dir_of(r, name)).filter(|d| dirs.contains(d));
        let v1_freezer = self.v1_root("freezer").map(|r| self.dir_of(r, name)).filter(|d| dirs.contains(d));
        let freezer = match (v1_freezer, &v2) {
            (Some(dir), _) => Some(Freezer::V1(dir)),
            (None, Some(dir)) if dir.join("cgroup.freeze").exists() => Some(Freezer::V2(dir.clone())),
            (None, _) => None,
        };
        let kill_file = v2.as_ref().map(|d| d.join("cgroup.kill")).filter(|f| f.exists());
        // Read only (its OOM kills): the limits are its maker's.
        let memory = self
            .controller_root(Controller::Memory)
            .map(|(root, v2)| (self.dir_of(root, name), v2))
            .filter(|(dir, _)| dirs.contains(dir));
        Cgroup { has_v2: v2.is_some(), dirs, memory, cpu: None, pids: None, freezer, kill_file }
    }
}

/// The processes in a cgroup (none if it cannot be read).
fn pids_in(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|pid| pid.trim().parse().ok())
        .collect()
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
#[path = "layout_tests.rs"]
mod tests;
