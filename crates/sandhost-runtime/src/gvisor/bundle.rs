//! The OCI bundle of one runsc container: `config.json` generated with `oci-spec` from the
//! [`SandboxSpec`], next to nothing else (the root is a host path, never copied).
//!
//! The `host` template is the host's root read-only with private tmpfs at `/tmp`, `/home` and
//! `/run`, and a tmpfs over the agent's state dir so no sandbox sees another's logs or snapshots.
//! Limits become `linux.resources` under the cgroup `<parent>/<container id>`, which runsc creates
//! and (on a clean delete) removes.

use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use crate::{SandboxSpec, Template};

/// The sandbox user's home (a tmpfs).
const HOME: &str = "/home";
/// The private writable places (tmpfs).
const PRIVATE: [&str; 3] = ["/tmp", HOME, "/run"];
/// The CFS period the CPU quota is expressed in.
const CPU_PERIOD_US: u64 = 100_000;

/// What a bundle needs besides the spec.
#[derive(Debug)]
pub(crate) struct BundleContext<'a> {
    /// The runsc container id (also the cgroup's name).
    pub(crate) cid: &'a str,
    /// The parent cgroup name.
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

fn mounts(ctx: &BundleContext<'_>) -> io::Result<Vec<Mount>> {
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
    for dir in PRIVATE {
        mounts.push(tmpfs(dir)?);
    }
    // Hide the state dir, unless one of the tmpfs above already does.
    if !PRIVATE.iter().any(|dir| ctx.state_dir.starts_with(dir)) {
        let state = ctx.state_dir.to_str().ok_or_else(|| other("state dir is not UTF-8"))?;
        mounts.push(tmpfs(state)?);
    }
    Ok(mounts)
}

/// The OCI spec of a sandbox.
pub(crate) fn oci_spec(spec: &SandboxSpec, ctx: &BundleContext<'_>) -> io::Result<Spec> {
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for (name, default) in [("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"), ("HOME", HOME)] {
        if !spec.env.iter().any(|(k, _)| k == name) {
            env.push(format!("{name}={default}"));
        }
    }
    let process = ProcessBuilder::default()
        .args(spec.argv.clone())
        .env(env)
        .cwd(spec.cwd.clone().unwrap_or_else(|| PathBuf::from(HOME)))
        .user(UserBuilder::default().uid(spec.user.uid).gid(spec.user.gid).build().map_err(other)?)
        .no_new_privileges(true)
        .terminal(false)
        .build()
        .map_err(other)?;
    let root_path = match &spec.template {
        Template::Host => PathBuf::from("/"),
        Template::Rootfs { path, .. } => path.clone(),
    };
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
        resources = resources.pids(LinuxPidsBuilder::default().limit(i64::from(max)).build().map_err(other)?);
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
        .mounts(mounts(ctx)?)
        .linux(linux)
        .build()
        .map_err(other)
}

/// Writes `<bundle>/config.json` (creating `bundle`).
pub(crate) fn write(bundle: &Path, spec: &SandboxSpec, ctx: &BundleContext<'_>) -> io::Result<()> {
    std::fs::create_dir_all(bundle)?;
    let config = oci_spec(spec, ctx)?;
    let bytes = serde_json::to_vec_pretty(&config).map_err(other)?;
    std::fs::write(bundle.join("config.json"), bytes)
}

/// Removes the cgroup `<parent>/<cid>` from every hierarchy (runsc leaves it behind when a
/// container dies abnormally). Missing directories are fine.
pub(crate) fn remove_cgroups(cgroup_parent: &str, cid: &str) -> io::Result<()> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(cgroup_parent).join(cid)];
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            dirs.push(entry.path().join(cgroup_parent).join(cid));
        }
    }
    for dir in dirs {
        match std::fs::remove_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound && e.raw_os_error() != Some(libc::ENOTDIR) => {
                return Err(e);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Freezes (or thaws) every process of container `cid` through its cgroup: the v1 freezer where
/// it is there, else v2 `cgroup.freeze`. Used for pause because `runsc pause` does not stop a
/// restored container in runsc 20221219 (it reports it paused while it runs on).
pub(crate) fn freeze(cgroup_parent: &str, cid: &str, frozen: bool) -> io::Result<()> {
    let root = Path::new("/sys/fs/cgroup");
    let v1 = root.join("freezer").join(cgroup_parent).join(cid).join("freezer.state");
    if v1.exists() {
        return std::fs::write(v1, if frozen { "FROZEN" } else { "THAWED" });
    }
    for base in [root.join("unified"), root.to_path_buf()] {
        let v2 = base.join(cgroup_parent).join(cid).join("cgroup.freeze");
        if v2.exists() {
            return std::fs::write(v2, if frozen { "1" } else { "0" });
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, format!("no freezer cgroup for container {cid}")))
}

/// Whether container `cid`'s cgroup is frozen.
pub(crate) fn is_frozen(cgroup_parent: &str, cid: &str) -> bool {
    let root = Path::new("/sys/fs/cgroup");
    let v1 = root.join("freezer").join(cgroup_parent).join(cid).join("freezer.state");
    if let Ok(state) = std::fs::read_to_string(v1) {
        return state.trim() != "THAWED";
    }
    [root.join("unified"), root.to_path_buf()].iter().any(|base| {
        std::fs::read_to_string(base.join(cgroup_parent).join(cid).join("cgroup.freeze"))
            .is_ok_and(|v| v.trim() == "1")
    })
}
