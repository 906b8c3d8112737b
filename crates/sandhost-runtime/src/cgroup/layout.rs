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
//! The parent is created in the hierarchies sandhost uses ([`Layout::create_parents`]) and removed
//! from every hierarchy ([`Layout::remove_parents`]). Names are joined only after validation
//! (`[a-z0-9][a-z0-9-]*` parents; sandbox and container names built from validated ids).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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
    /// The parent cgroup name under each hierarchy root.
    parent: String,
}

impl Layout {
    /// Reads `/proc/self/mountinfo` and the v2 root's controllers. Creates nothing.
    pub(crate) fn detect(parent: &str) -> io::Result<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        Self::parse(&mountinfo, |root| fs::read_to_string(root.join("cgroup.controllers")), parent)
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
        let v2_controllers = match &v2_root {
            Some(root) => controllers(root)?.split_whitespace().map(str::to_owned).collect(),
            None => BTreeSet::new(),
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
            parent: parent.to_owned(),
        })
    }

    /// Creates the parent cgroup in every hierarchy [`Layout::cgroup`] uses, enabling the v2
    /// controllers it limits, and learns whether v2 can freeze and kill.
    pub(crate) fn create_parents(&mut self) -> io::Result<()> {
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

    /// Removes the parent cgroup from every hierarchy where it is (only an empty one can go).
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

    /// The parent cgroup name.
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

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_limits_go_to_v1_and_freeze_and_kill_to_v2() {
        let mut layout = Layout::parse(HYBRID, |_| Ok("hugetlb\n".into()), "sh").expect("parse");
        layout.v2_freeze = true;
        layout.v2_kill = true;
        let cg = layout.cgroup("box.ab");
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
        let cg = layout.cgroup("box.ab");
        assert!(cg.dirs.contains(&PathBuf::from("/sys/fs/cgroup/freezer/sh/box.ab")));
        assert!(matches!(&cg.freezer, Some(Freezer::V1(_))));
        assert_eq!(cg.kill_file, None);
        // Every hierarchy counts once, v2 first, the named ones (systemd) too.
        assert_eq!(layout.hierarchies.len(), 7);
        assert_eq!(layout.hierarchies[0], PathBuf::from("/sys/fs/cgroup/unified"));
        assert!(layout.hierarchies.contains(&PathBuf::from("/sys/fs/cgroup/systemd")));
    }

    #[test]
    fn pure_v2_puts_everything_in_one_directory() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                         31 23 0:26 / /mnt/again rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let mut layout =
            Layout::parse(mountinfo, |_| Ok("cpuset cpu io memory hugetlb pids rdma misc\n".into()), "sh")
                .expect("parse");
        layout.v2_freeze = true;
        layout.v2_kill = true;
        let cg = layout.cgroup("box.ab");
        let dir = PathBuf::from("/sys/fs/cgroup/sh/box.ab");
        assert_eq!(cg.dirs, vec![dir.clone()]);
        for limit in [&cg.memory, &cg.cpu, &cg.pids] {
            assert_eq!(limit, &Some((dir.clone(), true)));
        }
        assert!(layout.describe().contains("memory=v2"));
        assert_eq!(
            layout.hierarchies,
            vec![PathBuf::from("/sys/fs/cgroup")],
            "a second mount is no hierarchy"
        );
    }

    #[test]
    fn a_container_s_limits_only_cgroup_holds_the_limited_controllers_and_nothing_else() {
        let mut layout = Layout::parse(HYBRID, |_| Ok("hugetlb\n".into()), "sh").expect("parse");
        layout.v2_freeze = true;
        layout.v2_kill = true;
        let cg = layout.limits_only("box.ab.0");
        let dirs: Vec<String> = cg.dirs.iter().map(|d| d.display().to_string()).collect();
        // No controller-less v2 directory and no freezer: runsc never puts its processes there.
        assert_eq!(
            dirs,
            [
                "/sys/fs/cgroup/memory/sh/box.ab.0",
                "/sys/fs/cgroup/cpu/sh/box.ab.0",
                "/sys/fs/cgroup/pids/sh/box.ab.0"
            ]
        );
        assert!(!cg.has_v2);
        assert!(cg.freezer.is_none() && cg.kill_file.is_none());
        assert_eq!(cg.memory, Some((PathBuf::from("/sys/fs/cgroup/memory/sh/box.ab.0"), false)));

        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let layout = Layout::parse(mountinfo, |_| Ok("cpu memory pids\n".into()), "sh").expect("parse");
        let cg = layout.limits_only("box.ab.0");
        let dir = PathBuf::from("/sys/fs/cgroup/sh/box.ab.0");
        assert_eq!(cg.dirs, vec![dir.clone()], "one directory on v2");
        assert!(cg.has_v2);
        assert_eq!(cg.pids, Some((dir, true)));
    }

    /// A hybrid host under `root`, with the hierarchies as plain directories.
    fn fake_hybrid(root: &Path) -> Layout {
        let mountinfo: String = ["cpu", "freezer", "systemd", "unified"]
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let (fstype, opts) = match *h {
                    "unified" => ("cgroup2", "rw"),
                    "systemd" => ("cgroup", "rw,name=systemd"),
                    other => ("cgroup", other),
                };
                format!("{i} 1 0:{i} / {} rw - {fstype} cgroup {opts}\n", root.join(h).display())
            })
            .collect();
        Layout::parse(&mountinfo, |_| Ok(String::new()), "sh").expect("parse")
    }

    #[test]
    fn a_found_cgroup_is_where_its_maker_put_it_and_frozen_through_v1_first() {
        let tmp = tempfile::tempdir().expect("tmp");
        let layout = fake_hybrid(tmp.path());
        for h in ["cpu", "freezer", "systemd"] {
            fs::create_dir_all(tmp.path().join(h).join("sh/box.ab.0")).expect("mkdir");
        }
        let cg = layout.find("box.ab.0");
        assert_eq!(cg.dirs.len(), 3, "{:?}", cg.dirs);
        assert!(!cg.has_v2);
        assert!(matches!(&cg.freezer, Some(Freezer::V1(d)) if d.starts_with(tmp.path().join("freezer"))));
        assert_eq!(cg.kill_file, None);
        assert!(layout.find("box.ab.1").dirs.is_empty(), "a cgroup nobody made has no directory");
        assert_eq!(layout.children(), ["box.ab.0"], "each name once, whatever the hierarchies");

        // Only on v2, with the kernel's freeze and kill files.
        let v2 = tmp.path().join("unified/sh/box.cd.0");
        fs::create_dir_all(&v2).expect("mkdir");
        fs::write(v2.join("cgroup.freeze"), "0").expect("write");
        fs::write(v2.join("cgroup.kill"), "").expect("write");
        let cg = layout.find("box.cd.0");
        assert!(cg.has_v2);
        assert!(matches!(&cg.freezer, Some(Freezer::V2(d)) if *d == v2));
        assert_eq!(cg.kill_file, Some(v2.join("cgroup.kill")));
    }

    #[test]
    fn removing_the_parents_tries_every_hierarchy_and_names_the_first_that_stayed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let layout = fake_hybrid(tmp.path());
        fs::create_dir_all(tmp.path().join("cpu/sh")).expect("mkdir");
        fs::create_dir_all(tmp.path().join("freezer/sh/still-here")).expect("mkdir");
        fs::create_dir_all(tmp.path().join("unified/sh")).expect("mkdir");
        match layout.remove_parents() {
            Err(CloseError::CgroupParent { path, .. }) => assert_eq!(path, tmp.path().join("freezer/sh")),
            other => panic!("expected the freezer's parent to stay, got {other:?}"),
        }
        assert!(!tmp.path().join("cpu/sh").exists() && !tmp.path().join("unified/sh").exists());
        fs::remove_dir(tmp.path().join("freezer/sh/still-here")).expect("rmdir");
        layout.remove_parents().expect("all empty now");
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/sys/fs/cgroup/a\040b"), PathBuf::from("/sys/fs/cgroup/a b"));
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
    }
}
