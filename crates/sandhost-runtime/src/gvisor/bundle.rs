//! The OCI bundle of one runsc container: `config.json` generated with `oci-spec` from the
//! [`SandboxSpec`], and on the `host` template the sandbox's root directory ([`HOST_ROOT`]).
//!
//! The root is read-only: a rootfs template's directory (a host path, never copied), or on the
//! `host` template an empty directory of ours holding only the skeleton of `crate::host_paths`
//! (mount points, the allow list's symlinks), with each allowed host path bound read-only, nosuid
//! and nodev at its place. That directory is in the lifecycle's bundle, under the state dir, which
//! no sandbox sees (the allow list may not show it, and where a rootfs does, a tmpfs hides it). Then
//! private tmpfs at `/tmp`, and at `/home` and `/run` where the root has them (the home is `/home`,
//! else `/tmp`), and a tmpfs over the agent's state dir so no sandbox sees another's logs or
//! snapshots. The `host` template also masks the host's secrets, as the process backend does (root
//! inside the sandbox owns them). The command has no capability.
//! Limits become `linux.resources` (which size the sandbox's kernel) and are written by sandhost
//! into the cgroup `<parent>/<container id>` it makes before runsc starts (see
//! `lifecycle::run_container`); the backend reaches it through `crate::cgroup::Layout::find`.
//! The `cgroupsPath` is absolute (`/<parent>/<container id>`): runsc joins it under the root of
//! each hierarchy, on v1 as on v2, so it is the same path the layout finds (a relative one would
//! be taken from runsc's own cgroup on v1, and differently by runsc versions on v2).

use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::host_paths::{self, Entry, HostPaths};
use crate::view::{MASKED_DIRS, MASKED_FILES, PRIVATE};
use crate::{Limits, SandboxSpec, Template};

/// The sandbox's root directory on the `host` template, in the bundle.
pub(crate) const HOST_ROOT: &str = "root";

/// The sandbox user's home (a tmpfs) where the root has it; else `/tmp`.
const HOME: &str = "/home";
/// The CFS period the CPU quota is expressed in.
const CPU_PERIOD_US: u64 = 100_000;

/// What a bundle needs besides the spec.
#[derive(Debug)]
pub(crate) struct BundleContext<'a> {
    /// The runsc container id (also the cgroup's name).
    pub(crate) cid: &'a str,
    /// The parent cgroup, relative to each hierarchy's root.
    pub(crate) cgroup_parent: &'a str,
    /// The agent's state dir, hidden inside the sandbox.
    pub(crate) state_dir: &'a Path,
    /// What the `host` template shows of the host.
    pub(crate) host_paths: &'a HostPaths,
}

/// A sandbox's root on the host.
#[derive(Debug)]
enum Root {
    /// A rootfs template's directory.
    Rootfs(PathBuf),
    /// The `host` template: our directory (the skeleton), and the host paths bound into it.
    Host { dir: PathBuf, entries: Vec<Entry> },
}

impl Root {
    fn dir(&self) -> &Path {
        match self {
            Self::Rootfs(dir) | Self::Host { dir, .. } => dir,
        }
    }

    /// Whether `inside` (absolute) is a directory of the root (`is_file`: a file), before any
    /// tmpfs: in the skeleton or, on the host template, under a bound entry.
    fn has(&self, inside: &str, is_file: bool) -> bool {
        let relative = inside.trim_start_matches('/');
        let is = |path: &Path| if is_file { path.is_file() } else { path.is_dir() };
        match self {
            Self::Rootfs(dir) => is(&dir.join(relative)),
            Self::Host { dir, entries } => {
                let bound = entries.iter().any(|e| {
                    matches!(e, Entry::Bind { dir: true, .. }) && Path::new(inside).starts_with(e.path())
                });
                is(&dir.join(relative)) || (bound && is(Path::new(inside)))
            }
        }
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn tmpfs(destination: &str) -> io::Result<Mount> {
    MountBuilder::default()
        .destination(destination)
        .typ("tmpfs")
        .source("tmpfs")
        .options(vec!["nosuid".to_owned(), "nodev".to_owned(), "mode=1777".to_owned()])
        .build()
        .map_err(other)
}

fn bind_read_only(path: &Path) -> io::Result<Mount> {
    MountBuilder::default()
        .destination(path)
        .typ("bind")
        .source(path)
        .options(["rbind", "ro", "nosuid", "nodev"].map(str::to_owned).to_vec())
        .build()
        .map_err(other)
}

fn mounts(spec: &SandboxSpec, ctx: &BundleContext<'_>, root: &Root) -> io::Result<Vec<Mount>> {
    let mut mounts = vec![
        MountBuilder::default().destination("/proc").typ("proc").source("proc").build().map_err(other)?,
        MountBuilder::default()
            .destination("/sys")
            .typ("sysfs")
            .source("sysfs")
            .options(vec!["ro".to_owned(), "nosuid".to_owned(), "noexec".to_owned(), "nodev".to_owned()])
            .build()
            .map_err(other)?,
        MountBuilder::default()
            .destination("/dev")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec!["nosuid".to_owned(), "mode=755".to_owned()])
            .build()
            .map_err(other)?,
    ];
    if let Root::Host { entries, .. } = root {
        for entry in entries {
            if let Entry::Bind { path, .. } = entry {
                mounts.push(bind_read_only(path)?);
            }
        }
    }
    let private: Vec<&str> =
        PRIVATE.into_iter().filter(|dir| *dir == "/tmp" || root.has(dir, false)).collect();
    for dir in &private {
        mounts.push(tmpfs(dir)?);
    }
    // Hide the state dir, unless one of the tmpfs above already does.
    let state = ctx.state_dir.to_str().ok_or_else(|| other("state dir is not UTF-8"))?;
    if !private.iter().any(|dir| ctx.state_dir.starts_with(dir)) && root.has(state, false) {
        mounts.push(tmpfs(state)?);
    }
    if spec.template == Template::Host {
        for file in MASKED_FILES.into_iter().filter(|f| root.has(f, true)) {
            let mask = MountBuilder::default()
                .destination(file)
                .typ("bind")
                .source("/dev/null")
                .options(vec!["bind".to_owned(), "ro".to_owned()])
                .build()
                .map_err(other)?;
            mounts.push(mask);
        }
        for dir in MASKED_DIRS.into_iter().filter(|d| root.has(d, false)) {
            let mask = MountBuilder::default()
                .destination(dir)
                .typ("tmpfs")
                .source("tmpfs")
                .options(vec![
                    "ro".to_owned(),
                    "nosuid".to_owned(),
                    "nodev".to_owned(),
                    "mode=755".to_owned(),
                ])
                .build()
                .map_err(other)?;
            mounts.push(mask);
        }
    }
    Ok(mounts)
}

/// The capability sets of the command: all empty, also for uid 0.
fn no_capabilities() -> io::Result<oci_spec::runtime::LinuxCapabilities> {
    let none = Capabilities::new;
    LinuxCapabilitiesBuilder::default()
        .bounding(none())
        .effective(none())
        .inheritable(none())
        .permitted(none())
        .ambient(none())
        .build()
        .map_err(other)
}

/// The OCI spec of a sandbox whose root is `root`.
fn oci_spec(spec: &SandboxSpec, ctx: &BundleContext<'_>, root: &Root) -> io::Result<Spec> {
    let home = if root.has(HOME, false) { HOME } else { "/tmp" };
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for (name, default) in [("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"), ("HOME", home)] {
        if !spec.env.iter().any(|(k, _)| k == name) {
            env.push(format!("{name}={default}"));
        }
    }
    let process = ProcessBuilder::default()
        .args(spec.argv.clone())
        .env(env)
        .cwd(spec.cwd.clone().unwrap_or_else(|| PathBuf::from(home)))
        .capabilities(no_capabilities()?)
        .user(UserBuilder::default().uid(spec.user.uid).gid(spec.user.gid).build().map_err(other)?)
        .no_new_privileges(true)
        .terminal(false)
        .build()
        .map_err(other)?;
    let oci_root = RootBuilder::default().path(root.dir()).readonly(true).build().map_err(other)?;
    let limits = host_limits(&spec.limits);
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(bytes) = limits.memory_bytes {
        let limit = i64::try_from(bytes).map_err(other)?;
        resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).build().map_err(other)?);
    }
    if let Some(millis) = limits.cpu_millis {
        let quota = i64::from(millis) * i64::try_from(CPU_PERIOD_US).map_err(other)? / 1000;
        resources = resources
            .cpu(LinuxCpuBuilder::default().quota(quota).period(CPU_PERIOD_US).build().map_err(other)?);
    }
    if let Some(max) = limits.pids_max {
        let limit = i64::from(max);
        resources = resources.pids(LinuxPidsBuilder::default().limit(limit).build().map_err(other)?);
    }
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Network,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build().map_err(other))
    .collect::<io::Result<Vec<_>>>()?;
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build().map_err(other)?)
        .cgroups_path(PathBuf::from(format!("/{}/{}", ctx.cgroup_parent, ctx.cid)))
        .build()
        .map_err(other)?;
    SpecBuilder::default()
        .version("1.0.2")
        .hostname(spec.key.id.as_str())
        .process(process)
        .root(oci_root)
        .mounts(mounts(spec, ctx, root)?)
        .linux(linux)
        .build()
        .map_err(other)
}

/// The host tasks gVisor's own kernel and gofer use (Go runtime threads, which grow with the CPUs),
/// added to a sandbox's `pids_max` in its host cgroup: the limit is meant for the command's
/// processes, and a sandbox whose kernel cannot make its own threads does not even start (below
/// about 40 tasks on a 2-CPU host, measured with runsc 20221219).
fn gvisor_own_tasks() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    48 + 4 * u32::try_from(cpus).unwrap_or(64)
}

/// The limits of a sandbox's host cgroup: its own, with gVisor's own tasks added to `pids_max`.
/// The same in the bundle (which sizes the sandbox's kernel) and in the cgroup sandhost makes.
pub(crate) fn host_limits(limits: &Limits) -> Limits {
    Limits { pids_max: limits.pids_max.map(|max| max.saturating_add(gvisor_own_tasks())), ..*limits }
}

/// Writes `<bundle>/config.json` (creating `bundle`), and on the host template the root's skeleton
/// in `<bundle>/root` ([`HOST_ROOT`]; kept if a generation before made it).
pub(crate) fn write(bundle: &Path, spec: &SandboxSpec, ctx: &BundleContext<'_>) -> io::Result<()> {
    std::fs::create_dir_all(bundle)?;
    let root = match &spec.template {
        Template::Rootfs { path, .. } => Root::Rootfs(path.clone()),
        Template::Host => {
            let dir = bundle.join(HOST_ROOT);
            let entries = ctx.host_paths.entries();
            // runsc (20221219) makes a missing mount point itself, as root, in the host directory
            // of the root, even a read-only one, and needs no `--overlay2` for that: every mount
            // point is made here instead, so that runsc changes nothing on the host and the root
            // holds exactly what `crate::view` models. (The process backend makes the same
            // skeleton in its tmpfs.)
            match std::fs::DirBuilder::new().mode(0o755).create(&dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            host_paths::make_skeleton(&dir, &entries)?;
            Root::Host { dir, entries }
        }
    };
    let config = oci_spec(spec, ctx, &root)?;
    let bytes = serde_json::to_vec_pretty(&config).map_err(other)?;
    std::fs::write(bundle.join("config.json"), bytes)
}
