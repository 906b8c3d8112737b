//! The OCI bundle of one runsc container: `config.json` generated with `oci-spec` from the
//! [`SandboxSpec`], next to nothing else (the root is a host path, never copied).
//!
//! The root is read-only with private tmpfs at `/tmp`, and at `/home` and `/run` where the root has
//! them (the home is `/home`, else `/tmp`), and a tmpfs over the agent's state dir so no sandbox
//! sees another's logs or snapshots. The `host` template also masks the host's secrets, as the
//! process backend does (root inside the sandbox owns them). The command has no capability.
//! Limits become `linux.resources` under the cgroup `<parent>/<container id>`, which runsc creates
//! and (on a clean delete) removes; the backend reaches it through `crate::cgroup::Layout::find`.
//! The `cgroupsPath` is absolute (`/<parent>/<container id>`): runsc joins it under the root of
//! each hierarchy, on v1 as on v2, so it is the same path the layout finds (a relative one would
//! be taken from runsc's own cgroup on v1, and differently by runsc versions on v2).

use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::view::{MASKED_DIRS, MASKED_FILES, PRIVATE};
use crate::{SandboxSpec, Template};

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

/// The root directory of a spec on the host.
fn root_of(spec: &SandboxSpec) -> PathBuf {
    match &spec.template {
        Template::Host => PathBuf::from("/"),
        Template::Rootfs { path, .. } => path.clone(),
    }
}

/// Whether `dir` (absolute, inside the sandbox) is a directory of the sandbox's root.
fn root_has_dir(root: &Path, dir: &str) -> bool {
    root.join(dir.trim_start_matches('/')).is_dir()
}

fn mounts(spec: &SandboxSpec, ctx: &BundleContext<'_>) -> io::Result<Vec<Mount>> {
    let root = root_of(spec);
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
    let private: Vec<&str> =
        PRIVATE.into_iter().filter(|dir| *dir == "/tmp" || root_has_dir(&root, dir)).collect();
    for dir in &private {
        mounts.push(tmpfs(dir)?);
    }
    // Hide the state dir, unless one of the tmpfs above already does.
    let state = ctx.state_dir.to_str().ok_or_else(|| other("state dir is not UTF-8"))?;
    if !private.iter().any(|dir| ctx.state_dir.starts_with(dir)) && root_has_dir(&root, state) {
        mounts.push(tmpfs(state)?);
    }
    if spec.template == Template::Host {
        for file in MASKED_FILES.into_iter().filter(|f| root.join(f.trim_start_matches('/')).is_file()) {
            let mask = MountBuilder::default()
                .destination(file)
                .typ("bind")
                .source("/dev/null")
                .options(vec!["bind".to_owned(), "ro".to_owned()])
                .build()
                .map_err(other)?;
            mounts.push(mask);
        }
        for dir in MASKED_DIRS.into_iter().filter(|d| root_has_dir(&root, d)) {
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

/// The OCI spec of a sandbox.
pub(crate) fn oci_spec(spec: &SandboxSpec, ctx: &BundleContext<'_>) -> io::Result<Spec> {
    let root_path = root_of(spec);
    let home = if root_has_dir(&root_path, HOME) { HOME } else { "/tmp" };
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
    let root = RootBuilder::default().path(root_path).readonly(true).build().map_err(other)?;
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(bytes) = spec.limits.memory_bytes {
        let limit = i64::try_from(bytes).map_err(other)?;
        resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).build().map_err(other)?);
    }
    if let Some(millis) = spec.limits.cpu_millis {
        let quota = i64::from(millis) * i64::try_from(CPU_PERIOD_US).map_err(other)? / 1000;
        resources = resources
            .cpu(LinuxCpuBuilder::default().quota(quota).period(CPU_PERIOD_US).build().map_err(other)?);
    }
    if let Some(max) = spec.limits.pids_max {
        let limit = i64::from(max) + gvisor_own_tasks();
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
        .root(root)
        .mounts(mounts(spec, ctx)?)
        .linux(linux)
        .build()
        .map_err(other)
}

/// The host tasks gVisor's own kernel and gofer use (Go runtime threads, which grow with the CPUs),
/// added to a sandbox's `pids_max` in its host cgroup: the limit is meant for the command's
/// processes, and a sandbox whose kernel cannot make its own threads does not even start (below
/// about 40 tasks on a 2-CPU host, measured with runsc 20221219).
fn gvisor_own_tasks() -> i64 {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    48 + 4 * i64::try_from(cpus).unwrap_or(64)
}

/// Writes `<bundle>/config.json` (creating `bundle`).
pub(crate) fn write(bundle: &Path, spec: &SandboxSpec, ctx: &BundleContext<'_>) -> io::Result<()> {
    std::fs::create_dir_all(bundle)?;
    let config = oci_spec(spec, ctx)?;
    let bytes = serde_json::to_vec_pretty(&config).map_err(other)?;
    std::fs::write(bundle.join("config.json"), bytes)
}
