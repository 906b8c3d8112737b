//! The sandbox's view of its root at the moment its command starts, as both backends build it: the
//! template's root, read-only; private, empty tmpfs mounts at `/tmp`, and at `/home` and `/run`
//! where the root has them; on the host template the host's secret directories masked and the
//! state dir hidden. [`View::check`] answers, before anything is made, whether the command and the
//! working directory of a spec exist in that view, so that a Create that could never start is
//! refused and leaves nothing behind.
//!
//! # Invariants
//!
//! - Paths are resolved *inside* the root (`openat2` with `RESOLVE_IN_ROOT`): a symlink in a
//!   rootfs template resolves against the template, never against the host, and `..` cannot leave
//!   it.
//! - Under a private mount or a mask only its (empty) top exists, plus the directories the backend
//!   makes there at start (the process backend's home).
//! - The check only refuses what cannot work; a backend still reports what fails at its start.

use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};

use crate::{SandboxSpec, StartError, Template, User};

/// Directories that a private, empty tmpfs covers at start (where the root has them; `/tmp` always).
pub(crate) const PRIVATE: [&str; 3] = ["/tmp", "/home", "/run"];
/// Host directories masked on the host template: even a capability-less root inside could read them.
pub(crate) const MASKED_DIRS: [&str; 3] = ["/root", "/etc/sudoers.d", "/etc/ssh"];
/// Host files masked on the host template.
pub(crate) const MASKED_FILES: [&str; 5] =
    ["/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers"];
/// Where a command is looked for when its environment has no `PATH`.
pub(crate) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One sandbox's view of its root.
#[derive(Debug)]
pub(crate) struct View {
    root: PathBuf,
    /// Tops (inside paths) whose content the command does not see.
    hidden: Vec<PathBuf>,
    /// Directories the backend makes under a hidden top before the command starts.
    made: Vec<PathBuf>,
    /// Whom the command runs as.
    user: User,
}

impl View {
    /// The view of `spec`'s template, with the backend's `state_dir` hidden and `made` (inside
    /// paths) made at start.
    pub(crate) fn of(spec: &SandboxSpec, state_dir: &Path, made: &[&str]) -> Self {
        let root = match &spec.template {
            Template::Host => PathBuf::from("/"),
            Template::Rootfs { path, .. } => path.clone(),
        };
        let root = std::fs::canonicalize(&root).unwrap_or(root);
        let mut hidden: Vec<PathBuf> = PRIVATE
            .iter()
            .filter(|dir| **dir == "/tmp" || root.join(dir.trim_start_matches('/')).is_dir())
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

    /// What `inside` (absolute, in the sandbox) is in the view, if anything.
    fn kind_of(&self, inside: &Path) -> Option<Kind> {
        if !inside.is_absolute() {
            return None;
        }
        // With `..` in it, only where it resolves says whether it is hidden (below).
        let lexical = !inside.components().any(|c| matches!(c, Component::ParentDir));
        if let Some(top) = self.hidden.iter().find(|top| lexical && inside.starts_with(top)) {
            let exists = inside == top.as_path() || self.made.iter().any(|made| made == inside);
            return exists.then_some(Kind::Dir);
        }
        let fd = self.open(inside)?;
        // Where it resolved to, inside: a symlink may lead under a hidden top.
        let resolved = std::fs::read_link(format!("/proc/self/fd/{}", fd_number(&fd))).ok()?;
        let resolved_inside = Path::new("/").join(resolved.strip_prefix(&self.root).ok()?);
        if resolved_inside != inside && self.hidden.iter().any(|top| resolved_inside.starts_with(top)) {
            return self.kind_of(&resolved_inside);
        }
        let metadata = std::fs::metadata(format!("/proc/self/fd/{}", fd_number(&fd))).ok()?;
        let mode = metadata.permissions().mode();
        // The mode bits that apply to the sandbox's user, as execve checks them.
        let exec_bit = if metadata.uid() == self.user.uid {
            0o100
        } else if metadata.gid() == self.user.gid {
            0o010
        } else {
            0o001
        };
        Some(if metadata.is_dir() {
            Kind::Dir
        } else if metadata.is_file() && mode & exec_bit != 0 {
            Kind::Executable
        } else {
            Kind::File
        })
    }

    /// Opens `inside` for its metadata only, resolving every component inside the root.
    fn open(&self, inside: &Path) -> Option<OwnedFd> {
        let root = std::fs::File::open(&self.root).ok()?;
        let relative = inside.strip_prefix("/").unwrap_or(inside);
        let relative = if relative.as_os_str().is_empty() { Path::new(".") } else { relative };
        let how =
            OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC).resolve(ResolveFlag::RESOLVE_IN_ROOT);
        openat2(root.as_fd(), relative, how).ok()
    }
}

/// What a path is, from least to most usable as a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Dir,
    File,
    Executable,
}

fn fd_number(fd: &OwnedFd) -> i32 {
    std::os::fd::AsRawFd::as_raw_fd(fd)
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
            field(View::of(&spec, state, &[]).check(&spec))
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
            field(View::of(&spec, state, &["/tmp/made"]).check(&spec))
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
        assert_eq!(field(View::of(&spec, state, &[]).check(&spec)), None);
    }

    #[test]
    fn on_the_host_the_secrets_the_private_mounts_and_the_state_dir_are_not_seen() {
        let state = tempfile::tempdir().expect("temp dir");
        std::fs::write(state.path().join("tool"), b"").expect("write");
        std::fs::set_permissions(state.path().join("tool"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let check = |argv: &[&str]| {
            let spec = spec(argv, Template::Host);
            field(View::of(&spec, state.path(), &[]).check(&spec))
        };
        assert_eq!(check(&["sh"]), None);
        assert_eq!(check(&["/bin/sh"]), None);
        let hidden = state.path().join("tool");
        assert_eq!(check(&[hidden.to_str().expect("utf-8")]), Some("argv"), "the state dir is hidden");
        assert_eq!(check(&["/etc/ssh/anything"]), Some("argv"), "masked");
        // A PATH with a relative entry is left to the start.
        let mut spec = spec(&["nothing-like-this"], Template::Host);
        spec.env.push(("PATH".into(), "bin:/usr/bin".into()));
        assert_eq!(field(View::of(&spec, state.path(), &[]).check(&spec)), None);
    }
}
