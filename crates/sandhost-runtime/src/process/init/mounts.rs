//! The sandbox's filesystem, built by its init inside its own mount namespace, then `pivot_root`:
//!
//! - the root: on the `host` template a fresh tmpfs holding only the skeleton of
//!   `crate::host_paths` (the sandbox's own directories, the allow list's parents and symlinks, a
//!   mount point per entry), each allowed host path bound recursively at its place and made
//!   read-only, nosuid and nodev in one `mount_setattr`, the tmpfs itself read-only once every
//!   mount is made; on a rootfs template its directory, bound and made read-only alike;
//! - its own `/proc` (with `/proc/sys` and `/proc/sysrq-trigger` read-only), a fresh read-only
//!   `/sys` for its network namespace, a minimal `/dev` (null, zero, full, random, urandom, tty, a
//!   private devpts with `ptmx`, `shm`);
//! - private tmpfs at `/tmp`, `/home` (with the user's home) and `/run` (which hides the agent's
//!   sockets), an empty read-only tmpfs over the state dir if it is visible at all, and on the
//!   host template the host's secrets masked where the allow list shows them;
//! - then `pivot_root` and a lazy unmount of the old root: nothing else of the host is reachable.
//!
//! Every mount happens in the sandbox's mount namespace (made private first), so none reaches the
//! host and all of them go away with the namespace.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::unistd::{Gid, Uid, chdir, chown, pivot_root};

use super::{InitArgs, SetupError};
use crate::host_paths::{self, Entry, HostPaths};
use crate::process::sys;
use crate::view::{MASKED_DIRS, MASKED_FILES};
use crate::{SandboxSpec, Template};

/// The home of the sandbox's user when the root has a `/home`.
pub(crate) const HOME: &str = "/home/sandbox";

const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

fn step(what: &'static str) -> impl FnOnce(nix::Error) -> SetupError {
    move |e| SetupError::new(what, e.into())
}

fn io_step(what: &'static str) -> impl FnOnce(std::io::Error) -> SetupError {
    move |e| SetupError::new(what, e)
}

/// Builds the root of `template` at `args.new_root` (an empty directory) and pivots into it.
/// Returns the home directory of the command, as seen inside.
///
/// Nothing here depends on the request (a warm pool member runs it before any request exists):
/// the private tmpfs are mounted without a size and the home belongs to root until
/// [`apply_request`] sizes and hands them over.
pub(super) fn build_root(template: &Template, args: &InitArgs) -> Result<PathBuf, SetupError> {
    let (new_root, state_dir) = (args.new_root.as_path(), args.state_dir.as_path());
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(step("make mounts private"))?;

    match template {
        Template::Host => host_root(new_root, &args.host_paths)?,
        Template::Rootfs { path, .. } => {
            bind_read_only(path, new_root).map_err(|e| SetupError::new("bind root", e))?;
            for sub in ["proc", "sys", "dev"] {
                let _ = umount2(&new_root.join(sub), MntFlags::MNT_DETACH); // not a mount point: nothing to do
            }
        }
    }
    mount_proc(&new_root.join("proc"))?;
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let sys_dir = new_root.join("sys");
    if sys_dir.is_dir() && mount(Some("sysfs"), &sys_dir, Some("sysfs"), ro, none).is_err() {
        mount(Some("tmpfs"), &new_root.join("sys"), Some("tmpfs"), ro, Some("size=4k,mode=555"))
            .map_err(step("mount /sys"))?;
    }
    mount_dev(&new_root.join("dev"))?;

    let rw = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    tmpfs(&new_root.join("tmp"), rw, "mode=1777", "mount /tmp")?;
    let home = if new_root.join("home").is_dir() {
        tmpfs(&new_root.join("home"), rw, "mode=755", "mount /home")?;
        let home = new_root.join(HOME.trim_start_matches('/'));
        fs::DirBuilder::new().mode(0o700).create(&home).map_err(io_step("create home"))?;
        PathBuf::from(HOME)
    } else {
        PathBuf::from("/tmp")
    };
    if new_root.join("run").is_dir() {
        tmpfs(&new_root.join("run"), rw, "mode=755,size=1m", "mount /run")?;
    }
    // Hide the state dir (and the other sandboxes) wherever it is still visible.
    let hidden = new_root.join(state_dir.strip_prefix("/").unwrap_or(state_dir));
    if hidden.is_dir() {
        tmpfs(&hidden, MsFlags::MS_RDONLY | ro, "size=4k,mode=000", "hide state dir")?;
    }
    if *template == Template::Host {
        mask_host_secrets(new_root, ro)?;
        // Every mount point is made: nothing may be added to the root from here on.
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | rw;
        mount(none, new_root, none, flags, none).map_err(step("make root read-only"))?;
    }
    chdir(new_root).map_err(step("chdir to new root"))?;
    pivot_root(".", ".").map_err(step("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detach old root"))?;
    chdir("/").map_err(step("chdir /"))?;
    Ok(home)
}

/// What the request decides of the filesystem, once the root is built (inside it): the private
/// `/tmp` and `/home` bounded by the memory limit (as the cold start always did), and the home
/// handed to the command's user.
pub(super) fn apply_request(spec: &SandboxSpec, home: &Path) -> Result<(), SetupError> {
    let none: Option<&str> = None;
    if let Some(bytes) = spec.limits.memory_bytes {
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        let data = format!("size={bytes}");
        let homes = if home == Path::new(HOME) { &["/tmp", "/home"][..] } else { &["/tmp"][..] };
        for at in homes {
            mount(none, *at, none, flags, Some(data.as_str())).map_err(step("size private tmpfs"))?;
        }
    }
    if home == Path::new(HOME) {
        let (uid, gid) = (Uid::from_raw(spec.user.uid), Gid::from_raw(spec.user.gid));
        chown(home, Some(uid), Some(gid)).map_err(step("chown home"))?;
    }
    Ok(())
}

/// The host template's root at `new_root`: a tmpfs with the skeleton of `host_paths`, each allowed
/// directory or file bound read-only at its place.
fn host_root(new_root: &Path, host_paths: &HostPaths) -> Result<(), SetupError> {
    tmpfs(new_root, MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=755,size=1m", "mount root")?;
    let entries = host_paths.entries();
    host_paths::make_skeleton(new_root, &entries).map_err(io_step("make root"))?;
    for entry in &entries {
        if let Entry::Bind { path, .. } = entry {
            let at = new_root.join(path.strip_prefix("/").unwrap_or(path));
            bind_read_only(path, &at).map_err(|e| SetupError {
                step: "bind host path",
                message: format!("{}: {e}", path.display()),
            })?;
        }
    }
    Ok(())
}

/// Binds `source` (recursively) at `at`, read-only, nosuid and nodev, submounts included.
fn bind_read_only(source: &Path, at: &Path) -> std::io::Result<()> {
    let none: Option<&str> = None;
    mount(Some(source), at, none, MsFlags::MS_BIND | MsFlags::MS_REC, none)?;
    let at_c = CString::new(at.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let attrs = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    sys::mount_setattr_recursive(&at_c, attrs)
}

/// Masks the host files that even a capability-less root inside the sandbox could read (it owns
/// them), `crate::view`'s list: the password hashes and root's home, with `/dev/null` and an empty
/// read-only tmpfs.
fn mask_host_secrets(new_root: &Path, ro: MsFlags) -> Result<(), SetupError> {
    let none: Option<&str> = None;
    for file in MASKED_FILES {
        let path = new_root.join(file.trim_start_matches('/'));
        if path.is_file() {
            mount(Some("/dev/null"), &path, none, MsFlags::MS_BIND, none)
                .map_err(step("mask host secrets"))?;
        }
    }
    for dir in MASKED_DIRS {
        let path = new_root.join(dir.trim_start_matches('/'));
        if path.is_dir() {
            tmpfs(&path, ro, "size=4k,mode=755", "mask host secrets")?;
        }
    }
    Ok(())
}

fn tmpfs(at: &Path, flags: MsFlags, data: &str, what: &'static str) -> Result<(), SetupError> {
    mount(Some("tmpfs"), at, Some("tmpfs"), flags, Some(data)).map_err(step(what))
}

fn mount_proc(at: &Path) -> Result<(), SetupError> {
    let none: Option<&str> = None;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), at, Some("proc"), flags, none).map_err(step("mount /proc"))?;
    for sub in ["sys", "sysrq-trigger"] {
        let path = at.join(sub);
        if !path.exists() {
            continue; // e.g. no sysrq-trigger without CONFIG_MAGIC_SYSRQ
        }
        mount(Some(&path), &path, none, MsFlags::MS_BIND | MsFlags::MS_REC, none)
            .map_err(step("protect /proc/sys"))?;
        mount(none, &path, none, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags, none)
            .map_err(step("protect /proc/sys"))?;
    }
    Ok(())
}

fn mount_dev(dev: &Path) -> Result<(), SetupError> {
    let none: Option<&str> = None;
    tmpfs(dev, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, "mode=755,size=64k", "mount /dev")?;
    for name in DEVICES {
        let target = dev.join(name);
        fs::File::create(&target).map_err(io_step("create device node"))?;
        let host = Path::new("/dev").join(name);
        mount(Some(&host), &target, none, MsFlags::MS_BIND, none).map_err(step("bind device node"))?;
    }
    for dir in ["pts", "shm"] {
        fs::DirBuilder::new().mode(0o755).create(dev.join(dir)).map_err(io_step("create /dev dirs"))?;
    }
    mount(
        Some("devpts"),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(step("mount /dev/pts"))?;
    tmpfs(&dev.join("shm"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=1777,size=64m", "mount /dev/shm")?;
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, to) in links {
        symlink(to, dev.join(name)).map_err(io_step("create /dev links"))?;
    }
    Ok(())
}
