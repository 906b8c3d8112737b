//! The sandbox's view of its root at the moment its command starts, as both backends build it: the
//! template's root, read-only (on the `host` template an empty root with the host paths of its
//! allow list at their places, `crate::host_paths`); private, empty tmpfs mounts at `/tmp`, and at
//! `/home` and `/run` where the root has them (the host template's always has them); on the host
//! template the host's secret directories masked and the state dir hidden. [`View::check`]
//! answers, before anything is made, whether the command and the working directory of a spec exist
//! in that view, so that a Create that could never start is refused and leaves nothing behind.
//!
//! # Invariants
//!
//! - Paths are resolved *inside* the view, a component at a time as the kernel does: a symlink
//!   resolves against the sandbox's root, never against the host's, and `..` cannot leave it.
//! - On the host template only the allow list's entries, their parents and the sandbox's own
//!   directories exist; `/proc`, `/sys` and `/dev` are looked up on the host (the sandbox's own are
//!   alike).
//! - Under a private mount or a mask only its (empty) top exists, plus the directories the backend
//!   makes there at start (the process backend's home).
//! - The check only refuses what cannot work; a backend still reports what fails at its start.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use crate::host_paths::{Entry, HostPaths, OWN};
use crate::{SandboxSpec, StartError, Template, User};

/// Directories that a private, empty tmpfs covers at start (where the root has them; `/tmp` always).
pub(crate) const PRIVATE: [&str; 3] = ["/tmp", "/home", "/run"];
/// Host directories masked on the host template (where its allow list shows them): even a
/// capability-less root inside could read them.
pub(crate) const MASKED_DIRS: [&str; 3] = ["/root", "/etc/sudoers.d", "/etc/ssh"];
/// Host files masked on the host template (where its allow list shows them).
pub(crate) const MASKED_FILES: [&str; 5] =
    ["/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers"];
/// Where a command is looked for when its environment has no `PATH`.
pub(crate) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The sandbox's own directories whose content is looked up on the host.
const SYSTEM: [&str; 3] = ["/proc", "/sys", "/dev"];
/// As many symlinks as the kernel follows in one path.
const MAX_SYMLINKS: u32 = 40;

/// One sandbox's view of its root.
#[derive(Debug)]
pub(crate) struct View {
    root: Root,
    /// Tops (inside paths) whose content the command does not see.
    hidden: Vec<PathBuf>,
    /// Directories the backend makes under a hidden top before the command starts.
    made: Vec<PathBuf>,
    /// Whom the command runs as.
    user: User,
}

/// The root a template gives.
#[derive(Debug)]
enum Root {
    /// A rootfs template's directory, the whole of it.
    Dir(PathBuf),
    /// The host template: an empty root holding the allow list's entries.
    Host(Vec<Entry>),
}

/// What an inside path is, before a symlink is followed.
#[derive(Debug)]
enum Node {
    Dir,
    Symlink(PathBuf),
    /// Anything but a directory: a file, executable by the user or not.
    Leaf(Kind),
}

impl View {
    /// The view of `spec`'s template (on the host template, of `host_paths`), with the backend's
    /// `state_dir` hidden and `made` (inside paths) made at start.
    pub(crate) fn of(spec: &SandboxSpec, state_dir: &Path, host_paths: &HostPaths, made: &[&str]) -> Self {
        let root = match &spec.template {
            Template::Host => Root::Host(host_paths.entries()),
            Template::Rootfs { path, .. } => {
                Root::Dir(std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()))
            }
        };
        let mut hidden: Vec<PathBuf> = PRIVATE
            .iter()
            .filter(|dir| match &root {
                Root::Host(_) => true,
                Root::Dir(root) => **dir == "/tmp" || root.join(dir.trim_start_matches('/')).is_dir(),
            })
            .map(PathBuf::from)
            .collect();
        if spec.template == Template::Host {
            hidden.extend(MASKED_DIRS.iter().chain(&MASKED_FILES).map(PathBuf::from));
            hidden.push(std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf()));
        }
        Self { root, hidden, made: made.iter().map(PathBuf::from).collect(), user: spec.user }
    }

    /// Refuses a spec whose working directory is not a directory of the view, or whose command is
    /// not an executable file of it (found through the `PATH` of its environment, or the default).
    /// A restore runs the snapshot's command and is not checked here.
    ///
    /// # Errors
    ///
    /// [`StartError::InvalidSpec`] naming `cwd` or `argv`.
    pub(crate) fn check(&self, spec: &SandboxSpec) -> Result<(), StartError> {
        let invalid = |field: &'static str, reason: String| StartError::InvalidSpec {
            key: spec.key.clone(),
            field,
            reason,
        };
        if spec.restore_from.is_some() {
            return Ok(());
        }
        if !self.has_cwd_of(spec) {
            let cwd = spec.cwd.as_deref().unwrap_or(Path::new("/"));
            return Err(invalid("cwd", format!("{} is not a directory of the sandbox", cwd.display())));
        }
        let Some(command) = spec.argv.first() else { return Ok(()) };
        let candidates: Vec<PathBuf> = if command.contains('/') {
            match (Path::new(command).is_absolute(), &spec.cwd) {
                (true, _) => vec![PathBuf::from(command)],
                (false, Some(cwd)) => vec![cwd.join(command)],
                // Relative to a working directory the backend chooses: left to the start.
                (false, None) => return Ok(()),
            }
        } else {
            let path = spec.env.iter().find(|(name, _)| name == "PATH").map_or(DEFAULT_PATH, |(_, v)| v);
            // An empty or relative entry means a working directory: left to the start.
            if path.split(':').any(|dir| !dir.starts_with('/')) {
                return Ok(());
            }
            path.split(':').map(|dir| Path::new(dir).join(command)).collect()
        };
        match candidates.iter().map(|path| self.kind_of(path)).max() {
            Some(Some(Kind::Executable)) => Ok(()),
            Some(Some(Kind::File)) => Err(invalid(
                "argv",
                format!("{command:?} is not executable by the sandbox's user (uid {})", spec.user.uid),
            )),
            _ if command.contains('/') => {
                Err(invalid("argv", format!("{command} does not exist in the sandbox")))
            }
            _ => Err(invalid("argv", format!("no {command:?} in the sandbox's PATH"))),
        }
    }

    /// Whether the spec's working directory (if it names one) is a directory of the view.
    pub(crate) fn has_cwd_of(&self, spec: &SandboxSpec) -> bool {
        spec.cwd.as_deref().is_none_or(|cwd| self.kind_of(cwd) == Some(Kind::Dir))
    }

    /// What `inside` (absolute, in the sandbox) is in the view, if anything: resolved a component
    /// at a time, following symlinks inside the view.
    fn kind_of(&self, inside: &Path) -> Option<Kind> {
        if !inside.is_absolute() {
            return None;
        }
        let mut pending: VecDeque<OsString> = components(inside);
        let mut at = PathBuf::from("/");
        let mut node = Node::Dir;
        let mut links = 0;
        while let Some(name) = pending.pop_front() {
            if !matches!(node, Node::Dir) {
                return None; // a component after a file
            }
            if name == ".." {
                // `at` has no symlink in it: its parent is the lexical one (and `/` its own).
                at.pop();
                continue;
            }
            let next = at.join(&name);
            match self.lookup(&next)? {
                Node::Symlink(target) => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return None;
                    }
                    if target.is_absolute() {
                        at = PathBuf::from("/");
                    }
                    for name in components(&target).into_iter().rev() {
                        pending.push_front(name);
                    }
                }
                found => {
                    at = next;
                    node = found;
                }
            }
        }
        match node {
            Node::Dir => Some(Kind::Dir),
            Node::Leaf(kind) => Some(kind),
            Node::Symlink(_) => None,
        }
    }

    /// What `at` (absolute, normalised, no symlink among its parents) is, its last component not
    /// followed.
    fn lookup(&self, at: &Path) -> Option<Node> {
        if let Some(top) = self.hidden.iter().find(|top| at.starts_with(top)) {
            if at != top.as_path() {
                return self.made.iter().any(|made| made == at).then_some(Node::Dir);
            }
            if PRIVATE.iter().any(|dir| Path::new(dir) == at) {
                return Some(Node::Dir);
            }
            // A mask (or the hidden state dir) covers only what is there.
            return match self.beneath(at)? {
                Node::Dir => Some(Node::Dir),
                _ => Some(Node::Leaf(Kind::File)),
            };
        }
        self.beneath(at)
    }

    /// What the template's root has at `at`, ignoring private mounts and masks.
    fn beneath(&self, at: &Path) -> Option<Node> {
        let entries = match &self.root {
            Root::Dir(root) => return self.host_node(&root.join(at.strip_prefix("/").unwrap_or(at))),
            Root::Host(entries) => entries,
        };
        let synthetic = at == Path::new("/")
            || OWN.iter().any(|own| Path::new(own) == at)
            || entries.iter().any(|e| e.path().starts_with(at) && e.path() != at);
        if synthetic {
            return Some(Node::Dir);
        }
        match entries.iter().find(|e| at.starts_with(e.path())) {
            Some(Entry::Symlink { path, target }) => (path == at).then(|| Node::Symlink(target.clone())),
            Some(Entry::Bind { .. }) => self.host_node(at),
            None if SYSTEM.iter().any(|dir| at.starts_with(dir)) => self.host_node(at),
            None => None,
        }
    }

    /// What `path` is on the host, its last component not followed.
    fn host_node(&self, path: &Path) -> Option<Node> {
        let metadata = std::fs::symlink_metadata(path).ok()?;
        if metadata.file_type().is_symlink() {
            return std::fs::read_link(path).ok().map(Node::Symlink);
        }
        if metadata.is_dir() {
            return Some(Node::Dir);
        }
        // The mode bits that apply to the sandbox's user, as execve checks them.
        let exec_bit = if metadata.uid() == self.user.uid {
            0o100
        } else if metadata.gid() == self.user.gid {
            0o010
        } else {
            0o001
        };
        let executable = metadata.is_file() && metadata.permissions().mode() & exec_bit != 0;
        Some(Node::Leaf(if executable { Kind::Executable } else { Kind::File }))
    }
}

/// The names of `path` to walk: its normal components and `..` (`/` and `.` say nothing).
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// What a path is, from least to most usable as a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Dir,
    File,
    Executable,
}
#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::{LifecycleId, SandboxId, SandboxKey};

    fn spec(argv: &[&str], template: Template) -> SandboxSpec {
        let key = SandboxKey {
            id: SandboxId::parse("v").expect("id"),
            lifecycle: LifecycleId::parse("ab").expect("lifecycle"),
        };
        SandboxSpec { template, ..SandboxSpec::new(key, argv.iter().map(|a| (*a).to_owned()).collect()) }
    }

    fn field(result: Result<(), StartError>) -> Option<&'static str> {
        match result {
            Ok(()) => None,
            Err(StartError::InvalidSpec { field, .. }) => Some(field),
            Err(other) => panic!("not an invalid spec: {other}"),
        }
    }

    /// A rootfs: `/bin/tool` (executable), `/bin/data` (not), `/usr/bin` -> `/bin` (absolute, so it
    /// must resolve inside), `/bin/out` -> `/../../../bin/sh` (clamped to the root), `/bin/in-tmp`
    /// -> `/tmp/x` (under a private mount), `/work` and `/tmp`.
    fn rootfs() -> (tempfile::TempDir, Template) {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        for sub in ["bin", "usr", "tmp", "work"] {
            std::fs::create_dir(root.join(sub)).expect("mkdir");
        }
        for (name, mode) in [("tool", 0o755), ("data", 0o644), ("mine", 0o700)] {
            std::fs::write(root.join("bin").join(name), b"#!/bin/sh\n").expect("write");
            std::fs::set_permissions(root.join("bin").join(name), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
        }
        std::fs::create_dir(root.join("tmp/x")).expect("mkdir");
        std::fs::write(root.join("tmp/x/run"), b"").expect("write");
        symlink("/bin", root.join("usr/bin")).expect("symlink");
        symlink("/../../../bin/sh", root.join("bin/out")).expect("symlink");
        symlink("/tmp/x/run", root.join("bin/in-tmp")).expect("symlink");
        let template = Template::Rootfs { name: "t".into(), path: root.to_path_buf() };
        (dir, template)
    }

    #[test]
    fn a_rootfs_command_is_found_through_path_and_symlinks_resolve_inside_it() {
        let (_dir, template) = rootfs();
        let state = Path::new("/nonexistent-state");
        let check = |argv: &[&str]| {
            let spec = spec(argv, template.clone());
            field(View::of(&spec, state, &HostPaths::defaults(), &[]).check(&spec))
        };
        assert_eq!(check(&["tool"]), None, "found in PATH");
        assert_eq!(check(&["/usr/bin/tool"]), None, "through an absolute symlink, inside the root");
        assert_eq!(check(&["data"]), Some("argv"), "not executable");
        assert_eq!(check(&["mine"]), Some("argv"), "executable by its owner only, not the sandbox's user");
        assert_eq!(check(&["missing"]), Some("argv"));
        assert_eq!(check(&["/bin/out"]), Some("argv"), "a symlink out of the root resolves inside it");
        assert_eq!(check(&["/bin/in-tmp"]), Some("argv"), "under /tmp, empty at start");
        assert_eq!(check(&["/tmp/x/run"]), Some("argv"));
        assert_eq!(check(&["/work"]), Some("argv"), "a directory is no command");
    }

    #[test]
    fn the_working_directory_must_be_a_directory_of_the_view() {
        let (_dir, template) = rootfs();
        let state = Path::new("/nonexistent-state");
        let check = |cwd: &str| {
            let mut spec = spec(&["tool"], template.clone());
            spec.cwd = Some(PathBuf::from(cwd));
            field(View::of(&spec, state, &HostPaths::defaults(), &["/tmp/made"]).check(&spec))
        };
        assert_eq!(check("/work"), None);
        assert_eq!(check("/tmp"), None, "the top of a private mount");
        assert_eq!(check("/tmp/made"), None, "made by the backend at start");
        assert_eq!(check("/tmp/x"), Some("cwd"), "hidden by the private mount");
        assert_eq!(check("/bin/tool"), Some("cwd"), "a file");
        assert_eq!(check("/nope"), Some("cwd"));
        // A relative command is looked for from the working directory.
        let mut spec = spec(&["../bin/tool"], template.clone());
        spec.cwd = Some(PathBuf::from("/work"));
        assert_eq!(field(View::of(&spec, state, &HostPaths::defaults(), &[]).check(&spec)), None);
    }

    #[test]
    fn on_the_host_the_secrets_the_private_mounts_and_the_state_dir_are_not_seen() {
        // A state dir the list would show (a configuration refuses it; the view hides it anyway).
        let (dir, _) = host_tool();
        let dir_path = dir.path().canonicalize().expect("canonical");
        let state = dir_path.join("state");
        std::fs::create_dir(&state).expect("mkdir");
        std::fs::write(state.join("tool"), b"").expect("write");
        std::fs::set_permissions(state.join("tool"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let listed =
            HostPaths::new(HostPaths::defaults().paths().iter().cloned().chain([dir_path])).expect("valid");
        let check = |argv: &[&str]| {
            let spec = spec(argv, Template::Host);
            field(View::of(&spec, &state, &listed, &[]).check(&spec))
        };
        assert_eq!(check(&["sh"]), None);
        assert_eq!(check(&["/bin/sh"]), None);
        let hidden = state.join("tool");
        assert_eq!(check(&[hidden.to_str().expect("utf-8")]), Some("argv"), "the state dir is hidden");
        assert_eq!(check(&["/etc/ssh/anything"]), Some("argv"), "masked");
        // A PATH with a relative entry is left to the start.
        let mut spec = spec(&["nothing-like-this"], Template::Host);
        spec.env.push(("PATH".into(), "bin:/usr/bin".into()));
        assert_eq!(field(View::of(&spec, &state, &listed, &[]).check(&spec)), None);
    }

    /// A host directory outside the allow list, with an executable in it.
    fn host_tool() -> (tempfile::TempDir, PathBuf) {
        std::fs::create_dir_all("/var/tmp").expect("/var/tmp");
        let dir = tempfile::tempdir_in("/var/tmp").expect("temp dir");
        let dir_path = dir.path().canonicalize().expect("canonical");
        let tool = dir_path.join("tool");
        std::fs::write(&tool, b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        (dir, tool)
    }

    #[test]
    fn on_the_host_only_the_allow_list_its_parents_and_the_sandboxs_own_directories_exist() {
        let (_dir, tool) = host_tool();
        let state = Path::new("/nonexistent-state");
        let defaults = HostPaths::defaults();
        let check = |argv: &[&str], cwd: Option<&str>| {
            let mut spec = spec(argv, Template::Host);
            spec.cwd = cwd.map(PathBuf::from);
            field(View::of(&spec, state, &defaults, &["/home/sandbox"]).check(&spec))
        };
        let tool = tool.to_str().expect("utf-8");
        assert_eq!(check(&["/usr/bin/env"], None), None);
        assert_eq!(check(&["env"], None), None, "through PATH");
        assert_eq!(check(&["/bin/sh"], None), None, "through /bin, a symlink on merged-/usr hosts");
        assert_eq!(check(&["/usr/bin/../bin/env"], None), None);
        assert_eq!(check(&["/tmp/../usr/bin/env"], None), None, "`..` from the sandbox's own /tmp");
        assert_eq!(check(&[tool], None), Some("argv"), "outside the allow list");
        assert_eq!(check(&["/work/anything/bin"], None), Some("argv"));
        assert_eq!(check(&["/usr/../var/tmp/x"], None), Some("argv"), "`..` out of an entry");
        for cwd in ["/", "/usr", "/etc", "/tmp", "/home", "/home/sandbox", "/run", "/proc", "/dev"] {
            assert_eq!(check(&["env"], Some(cwd)), None, "{cwd}");
        }
        for cwd in ["/var", "/var/tmp", "/root", "/srv", "/opt", "/mnt", "/work", "/etc/ssh/x", "/etc/passwd"]
        {
            assert_eq!(check(&["env"], Some(cwd)), Some("cwd"), "{cwd}");
        }
    }

    #[test]
    fn on_the_host_a_configured_list_is_what_the_sandbox_sees() {
        let (dir, tool) = host_tool();
        let dir_path = dir.path().canonicalize().expect("canonical");
        let paths = [PathBuf::from("/usr"), dir_path.clone()];
        let listed = HostPaths::new(paths).expect("valid");
        let check = |argv: &[&str]| {
            let spec = spec(argv, Template::Host);
            field(View::of(&spec, Path::new("/nonexistent-state"), &listed, &[]).check(&spec))
        };
        assert_eq!(check(&[tool.to_str().expect("utf-8")]), None, "listed");
        assert_eq!(check(&["/usr/bin/env"]), None);
        assert_eq!(check(&["/etc/hostname"]), Some("argv"), "/etc is not listed");
        // A parent of an entry is an empty directory: the tool's siblings are not there.
        let sibling = dir_path.parent().expect("parent").join("other");
        assert_eq!(check(&[sibling.to_str().expect("utf-8")]), Some("argv"));
    }
}
