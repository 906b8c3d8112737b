//! The `host` template's allow list: the host paths a sandbox on it sees, each bound read-only
//! (nosuid, nodev) at the same place inside a root that holds nothing else of the host. Both
//! backends build that root from this module ([`HostPaths::entries`], [`make_skeleton`]), and
//! `crate::view` models it for the checks before a start.
//!
//! By default the system directories a command needs ([`DEFAULT_HOST_PATHS`], those the host has);
//! `serve --host-paths` replaces the list ([`HostPaths::parse`]). Everything else of the host (its
//! `/home`, `/root`, `/var`, `/srv`, `/opt`, `/mnt`, source checkouts, the state dir) is absent.
//!
//! # Invariants
//!
//! - Every entry is absolute, normalised (no `.`, `..`, empty or trailing component), UTF-8, not
//!   `/`, existed when the list was made, has no symlink among its parents, lies inside no other
//!   entry, and is none of the directories the sandbox has of its own ([`OWN`]) nor inside one.
//! - A symlink entry (`/bin` -> `usr/bin` on a merged-`/usr` host) is recreated in the sandbox as
//!   the same symlink, never bound: it must lead into a bound entry (a list where it would dangle
//!   is refused), so it resolves inside the sandbox as on the host.
//! - [`HostPaths::check_state_dir`]: no entry is, holds or lies inside the state dir.
//! - What an entry is (directory, file, symlink) is read from the host at each start: an entry
//!   gone since is left out.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, symlink};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The host paths a sandbox on the `host` template sees by default, where the host has them: the
/// programs, their libraries and the system configuration (its secrets masked, `crate::view`).
pub const DEFAULT_HOST_PATHS: [&str; 8] =
    ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr", "/etc"];

/// The directories the sandbox has of its own on the `host` template (its `/proc`, `/sys`, `/dev`,
/// and private tmpfs at `/tmp`, `/home`, `/run`): never host paths.
pub(crate) const OWN: [&str; 6] = ["/proc", "/sys", "/dev", "/tmp", "/home", "/run"];

/// The validated allow list of the `host` template. (Deserializing checks nothing: it is how the
/// process backend's init receives the list its agent checked.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HostPaths {
    paths: Vec<PathBuf>,
}

/// Why a host path list cannot be used; each variant names the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum HostPathsError {
    /// The list names no path.
    #[error("the list is empty: a sandbox on the host template would have no program to run")]
    Empty,
    /// A path is not absolute.
    #[error("{0:?} is not an absolute path")]
    NotAbsolute(PathBuf),
    /// A path is not in its plain form.
    #[error("{0:?} is not normalised (no `.`, `..`, empty or trailing component)")]
    NotNormal(PathBuf),
    /// A path is not UTF-8.
    #[error("{0:?} is not UTF-8")]
    NotUtf8(PathBuf),
    /// The host's whole root.
    #[error("`/` would show the whole host; list the directories a sandbox needs")]
    Root,
    /// A directory the sandbox has of its own, or a path inside one.
    #[error("{path:?}: the sandbox has its own {own}")]
    Own {
        /// The path.
        path: PathBuf,
        /// The sandbox's own directory.
        own: &'static str,
    },
    /// A path the host does not have.
    #[error("{path:?} does not exist on the host")]
    Missing {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A path with a symlink among its parents.
    #[error("{0:?} has a symlink among its parents; list the path it leads to")]
    LinkedParent(PathBuf),
    /// A path listed twice, or inside another listed path.
    #[error("{path:?} is already shown through {within:?}")]
    Nested {
        /// The path.
        path: PathBuf,
        /// The listed path it lies in.
        within: PathBuf,
    },
    /// A symlink that would lead nowhere inside the sandbox.
    #[error("{path:?} is a symlink to {target:?}, which the list does not show")]
    Dangling {
        /// The symlink.
        path: PathBuf,
        /// Where it leads on the host.
        target: PathBuf,
    },
    /// A path that is, holds or lies inside the state dir.
    #[error("{path:?} would show the state dir {state_dir:?}, or lies inside it")]
    StateDir {
        /// The path.
        path: PathBuf,
        /// The state dir.
        state_dir: PathBuf,
    },
}

/// One entry of the list as the host has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A directory (`dir`) or a file bound read-only at the same place.
    Bind {
        /// The path, on the host and in the sandbox.
        path: PathBuf,
        /// Whether it is a directory (else its mount point is an empty file).
        dir: bool,
    },
    /// A symlink, recreated with the same target.
    Symlink {
        /// The path, on the host and in the sandbox.
        path: PathBuf,
        /// Its target, as written.
        target: PathBuf,
    },
}

impl Entry {
    pub(crate) fn path(&self) -> &Path {
        match self {
            Self::Bind { path, .. } | Self::Symlink { path, .. } => path,
        }
    }
}

impl Default for HostPaths {
    fn default() -> Self {
        Self::defaults()
    }
}

impl HostPaths {
    /// [`DEFAULT_HOST_PATHS`], those the host has (and of its symlinks those that lead into the
    /// others).
    #[must_use]
    pub fn defaults() -> Self {
        let present: Vec<PathBuf> =
            DEFAULT_HOST_PATHS.iter().map(PathBuf::from).filter(|p| p.symlink_metadata().is_ok()).collect();
        let paths = present.iter().filter(|p| dangling(p, &present).is_none()).cloned().collect();
        Self { paths }
    }

    /// A comma-separated list, as `serve --host-paths` takes it, checked as [`HostPaths::new`].
    ///
    /// # Errors
    ///
    /// The first [`HostPathsError`] found.
    pub fn parse(list: &str) -> Result<Self, HostPathsError> {
        if list.trim().is_empty() {
            return Err(HostPathsError::Empty);
        }
        Self::new(list.split(',').map(|p| PathBuf::from(p.trim())))
    }

    /// Checks `paths` against the invariants of this module (but the state dir:
    /// [`HostPaths::check_state_dir`]), reading the host.
    ///
    /// # Errors
    ///
    /// The first [`HostPathsError`] found.
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Result<Self, HostPathsError> {
        let paths: Vec<PathBuf> = paths.into_iter().collect();
        if paths.is_empty() {
            return Err(HostPathsError::Empty);
        }
        for path in &paths {
            check_one(path)?;
        }
        for (i, path) in paths.iter().enumerate() {
            if let Some(within) =
                paths.iter().enumerate().find(|(j, other)| *j != i && path.starts_with(other))
            {
                return Err(HostPathsError::Nested { path: path.clone(), within: within.1.clone() });
            }
        }
        if let Some(e) = paths.iter().find_map(|p| dangling(p, &paths)) {
            return Err(e);
        }
        Ok(Self { paths })
    }

    /// Refuses a list with an entry that is, holds or lies inside `state_dir`.
    ///
    /// # Errors
    ///
    /// [`HostPathsError::StateDir`] naming the first such entry.
    pub fn check_state_dir(&self, state_dir: &Path) -> Result<(), HostPathsError> {
        let canonical = fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        let clash = |path: &PathBuf| {
            [state_dir, canonical.as_path()].iter().any(|dir| path.starts_with(dir) || dir.starts_with(path))
        };
        match self.paths.iter().find(|p| clash(p)) {
            Some(path) => {
                Err(HostPathsError::StateDir { path: path.clone(), state_dir: state_dir.to_path_buf() })
            }
            None => Ok(()),
        }
    }

    /// The paths, in the order given.
    #[must_use]
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// What each entry is on the host now; one that has gone is left out.
    pub(crate) fn entries(&self) -> Vec<Entry> {
        self.paths
            .iter()
            .filter_map(|path| {
                let meta = path.symlink_metadata().ok()?;
                Some(if meta.file_type().is_symlink() {
                    Entry::Symlink { path: path.clone(), target: fs::read_link(path).ok()? }
                } else {
                    Entry::Bind { path: path.clone(), dir: meta.is_dir() }
                })
            })
            .collect()
    }
}

fn check_one(path: &Path) -> Result<(), HostPathsError> {
    let text = path.to_str().ok_or_else(|| HostPathsError::NotUtf8(path.to_path_buf()))?;
    let Some(rest) = text.strip_prefix('/') else {
        return Err(HostPathsError::NotAbsolute(path.to_path_buf()));
    };
    if rest.is_empty() {
        return Err(HostPathsError::Root);
    }
    if rest.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(HostPathsError::NotNormal(path.to_path_buf()));
    }
    if let Some(own) = OWN.into_iter().find(|own| path.starts_with(own)) {
        return Err(HostPathsError::Own { path: path.to_path_buf(), own });
    }
    path.symlink_metadata().map_err(|source| HostPathsError::Missing { path: path.to_path_buf(), source })?;
    let parent = path.parent().unwrap_or(Path::new("/"));
    match fs::canonicalize(parent) {
        Ok(canonical) if canonical == parent => Ok(()),
        Ok(_) => Err(HostPathsError::LinkedParent(path.to_path_buf())),
        Err(source) => Err(HostPathsError::Missing { path: path.to_path_buf(), source }),
    }
}

/// If `path` is a symlink, why it would dangle in a sandbox that sees `paths`: where it leads on
/// the host is inside none of the bound (not symlink) entries.
fn dangling(path: &Path, paths: &[PathBuf]) -> Option<HostPathsError> {
    if !path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        return None;
    }
    let error = |target| Some(HostPathsError::Dangling { path: path.to_path_buf(), target });
    let Ok(target) = fs::canonicalize(path) else {
        return error(fs::read_link(path).unwrap_or_default());
    };
    let bound = |p: &&PathBuf| p.symlink_metadata().is_ok_and(|m| !m.file_type().is_symlink());
    if paths.iter().filter(bound).any(|p| target.starts_with(p)) { None } else { error(target) }
}

/// Makes in `root` (an empty directory of ours, the sandbox's root on the host template) what it
/// holds besides mounts: the directories the sandbox has of its own ([`OWN`]), each entry's
/// parents, a mount point for each bound entry (an empty directory or file) and each symlink
/// entry. Idempotent: what is there already is kept.
///
/// # Errors
///
/// The first failed creation.
pub(crate) fn make_skeleton(root: &Path, entries: &[Entry]) -> io::Result<()> {
    let inside = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));
    let mut dirs = fs::DirBuilder::new();
    dirs.recursive(true).mode(0o755);
    for own in OWN {
        dirs.create(inside(Path::new(own)))?;
    }
    for entry in entries {
        let at = inside(entry.path());
        if let Some(parent) = at.parent() {
            dirs.create(parent)?;
        }
        let made = match entry {
            Entry::Bind { dir: true, .. } => dirs.create(&at),
            Entry::Bind { dir: false, .. } => fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(&at)
                .map(drop),
            Entry::Symlink { target, .. } => symlink(target, &at),
        };
        match made {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            other => other?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list names host paths: these use what every Linux host has (`/usr`, `/etc`) and a temp
    /// dir outside the sandbox's own directories for the rest.
    fn error(list: &str) -> String {
        match HostPaths::parse(list) {
            Ok(paths) => panic!("{list:?} accepted: {paths:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_defaults_are_the_system_directories_the_host_has() {
        let defaults = HostPaths::defaults();
        assert!(defaults.paths().contains(&PathBuf::from("/usr")), "{defaults:?}");
        assert!(defaults.paths().contains(&PathBuf::from("/etc")), "{defaults:?}");
        for path in defaults.paths() {
            assert!(DEFAULT_HOST_PATHS.contains(&path.to_str().expect("utf-8")));
            assert!(path.symlink_metadata().is_ok(), "{path:?} is not on this host");
        }
        // The defaults pass the checks a configured list gets.
        let again = HostPaths::new(defaults.paths().to_vec()).expect("the defaults are valid");
        assert_eq!(again, defaults);
    }

    #[test]
    fn a_configured_list_is_checked_path_by_path() {
        std::fs::create_dir_all("/var/tmp").expect("/var/tmp");
        let dir = tempfile::tempdir_in("/var/tmp").expect("temp dir");
        let real = dir.path().canonicalize().expect("canonical");
        std::fs::create_dir(real.join("data")).expect("mkdir");
        std::fs::write(real.join("data/x"), b"").expect("write");
        symlink("data", real.join("link")).expect("symlink");
        symlink("/nowhere", real.join("dangles")).expect("symlink");
        let real = real.to_str().expect("utf-8");
        for (list, expected) in [
            ("", "empty"),
            (" , ", "not an absolute path"),
            ("usr", "not an absolute path"),
            ("/", "whole host"),
            ("/usr/", "not normalised"),
            ("/usr//lib", "not normalised"),
            ("/usr/./lib", "not normalised"),
            ("/usr/../etc", "not normalised"),
            ("/proc", "has its own /proc"),
            ("/tmp/x", "has its own /tmp"),
            ("/home", "has its own /home"),
            ("/no/such/path", "does not exist"),
            ("/usr,/usr", "already shown"),
            ("/usr,/usr/lib", "already shown"),
            (&format!("{real}/link"), "which the list does not show"),
            (&format!("{real}/dangles"), "which the list does not show"),
            (&format!("{real}/link/x,{real}/data"), "symlink among its parents"),
        ] {
            let e = error(list);
            assert!(e.contains(expected), "{list:?}: {e}");
        }
        let ok = HostPaths::parse(&format!("/usr, {real}/link,{real}/data")).expect("valid");
        assert_eq!(ok.paths().len(), 3);
    }

    #[test]
    fn no_entry_may_show_the_state_dir_or_lie_in_it() {
        let paths = HostPaths::parse("/usr,/etc").expect("valid");
        assert!(paths.check_state_dir(Path::new("/var/lib/sandhost")).is_ok());
        for state_dir in ["/usr/local/sandhost", "/etc", "/"] {
            let e = paths.check_state_dir(Path::new(state_dir)).expect_err(state_dir);
            assert!(matches!(e, HostPathsError::StateDir { .. }), "{state_dir}: {e}");
        }
        let inside = HostPaths::parse("/etc/ssl").expect("valid");
        assert!(inside.check_state_dir(Path::new("/etc")).is_err(), "inside the state dir");
    }

    #[test]
    fn the_skeleton_holds_mount_points_and_symlinks_only() {
        let root = tempfile::tempdir().expect("temp dir");
        let entries = vec![
            Entry::Bind { path: PathBuf::from("/usr"), dir: true },
            Entry::Bind { path: PathBuf::from("/etc/resolv.conf"), dir: false },
            Entry::Symlink { path: PathBuf::from("/bin"), target: PathBuf::from("usr/bin") },
        ];
        for _ in 0..2 {
            make_skeleton(root.path(), &entries).expect("skeleton");
        }
        let r = root.path();
        assert!(r.join("usr").is_dir() && r.join("etc").is_dir());
        assert!(r.join("etc/resolv.conf").is_file());
        assert_eq!(std::fs::read_link(r.join("bin")).expect("link"), PathBuf::from("usr/bin"));
        for own in OWN {
            assert!(r.join(&own[1..]).is_dir(), "{own}");
        }
        let mut names: Vec<String> = std::fs::read_dir(r)
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["bin", "dev", "etc", "home", "proc", "run", "sys", "tmp", "usr"]);
    }
}
