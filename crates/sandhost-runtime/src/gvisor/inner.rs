//! What every part of the gvisor backend shares: the configuration, how to call runsc, the host's
//! cgroup hierarchies (where runsc makes each container's cgroup: [`ContainerCgroups`]), the table
//! of sandboxes and the counted background work. [`GvisorRuntime`](super::GvisorRuntime) is a handle
//! on one [`Inner`]; the modules that do the work (`lifecycle`, `snapshot`, `recover`) get it
//! passed in.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use super::config::{GvisorConfig, GvisorOpenError};
use super::paths;
use super::runsc::Runsc;
use super::sandbox::Sandbox;
use crate::background::Background;
use crate::cgroup::{Cgroup, Layout, Placement, is_valid_cgroup_parent};
use crate::{CloseError, SandboxKey};

/// The state of one gvisor runtime.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: GvisorConfig,
    pub(crate) runsc: Runsc,
    /// The containers' cgroups, under the parent chosen at open (prepared then; runsc creates
    /// each container's cgroup under it, and `close` removes it).
    pub(crate) cgroups: ContainerCgroups,
    sandboxes: Mutex<HashMap<SandboxKey, Arc<Sandbox>>>,
    pub(crate) background: Background,
}

impl Inner {
    /// Checks the configuration and that runsc runs, creates the state dir (0700), chooses the
    /// parent cgroup and prepares it (as the process backend does: on cgroup v2 inside a systemd
    /// service, the agent moves into its service's `supervisor` leaf, where the runsc it starts
    /// run too).
    pub(crate) fn open(config: GvisorConfig) -> Result<Self, GvisorOpenError> {
        let placement = Placement::resolve(&config.cgroup_parent).map_err(GvisorOpenError::CgroupParent)?;
        let state_err = |source| GvisorOpenError::StateDir { path: config.state_dir.clone(), source };
        if !config.state_dir.is_absolute() {
            return Err(state_err(std::io::Error::other("must be absolute")));
        }
        config.host_paths.check_state_dir(&config.state_dir).map_err(GvisorOpenError::HostPaths)?;
        let version = std::process::Command::new(&config.runsc)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .output()
            .and_then(|out| {
                if out.status.success() {
                    Ok(out.stdout)
                } else {
                    Err(std::io::Error::other("runsc --version failed"))
                }
            })
            .map_err(|source| GvisorOpenError::Runsc { path: config.runsc.clone(), source })?;
        for dir in [
            paths::runsc_root(&config.state_dir),
            crate::state::sandboxes_dir(&config.state_dir),
            paths::snapshots_dir(&config.state_dir),
        ] {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(state_err)?;
        }
        std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(state_err)?;
        let mut cgroups = Layout::detect(&placement).map_err(GvisorOpenError::Cgroup)?;
        cgroups.create_parents().map_err(GvisorOpenError::Cgroup)?;
        let version = String::from_utf8_lossy(&version);
        tracing::info!(
            runsc = %version.lines().next().unwrap_or_default(),
            platform = %config.platform,
            cgroup_parent = %cgroups.parent(),
            cgroup_parent_reason = %placement.reason,
            state_dir = %config.state_dir.display(),
            "gvisor runtime opened"
        );
        let runsc = Runsc {
            bin: config.runsc.clone(),
            root: paths::runsc_root(&config.state_dir),
            platform: config.platform.clone(),
            recorder: config.exit_recorder.clone(),
        };
        Ok(Self {
            config,
            runsc,
            cgroups: ContainerCgroups { layout: cgroups, elsewhere: Arc::default() },
            sandboxes: Mutex::new(HashMap::new()),
            background: Background::new(),
        })
    }

    /// The cgroup of container `cid`: sandhost made it and set its limits, runsc joined it and made
    /// the directories of the other controllers; runsc leaves it at the container's end, so its
    /// OOM kills can be read until the cleanup removes it.
    pub(crate) fn container_cgroup(&self, cid: &str) -> Cgroup {
        self.cgroups.find(cid)
    }

    pub(crate) fn get(&self, key: &SandboxKey) -> Option<Arc<Sandbox>> {
        self.sandboxes.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
    }

    pub(crate) fn insert(&self, sandbox: Arc<Sandbox>) {
        self.sandboxes.lock().unwrap_or_else(PoisonError::into_inner).insert(sandbox.key.clone(), sandbox);
    }

    pub(crate) fn remove(&self, key: &SandboxKey) {
        self.sandboxes.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }
}

/// Where the containers' cgroups are: under the parent chosen at open, or, for a container that
/// an agent with another parent started (a configuration changed, or an agent that became a
/// systemd service), under the parent its bundle names. Cheap to clone; clones share what they
/// learn.
#[derive(Debug, Clone)]
pub(crate) struct ContainerCgroups {
    layout: Layout,
    /// Container id -> its parent, for the re-adopted containers whose parent is not `layout`'s.
    elsewhere: Arc<Mutex<HashMap<String, String>>>,
}

impl ContainerCgroups {
    /// The cgroup runsc made for container `cid`.
    pub(crate) fn find(&self, cid: &str) -> Cgroup {
        let elsewhere = self.elsewhere.lock().unwrap_or_else(PoisonError::into_inner).get(cid).cloned();
        match elsewhere {
            Some(parent) => self.layout.with_parent(&parent).find(cid),
            None => self.layout.find(cid),
        }
    }

    /// The layout, under the parent chosen at open.
    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The parent chosen at open.
    pub(crate) fn parent(&self) -> &str {
        self.layout.parent()
    }

    /// The cgroups under the parent chosen at open.
    pub(crate) fn children(&self) -> Vec<String> {
        self.layout.children()
    }

    /// Removes the parent chosen at open (see `Layout::remove_parents`).
    pub(crate) fn remove_parents(&self) -> Result<(), CloseError> {
        self.layout.remove_parents()
    }

    /// Learns where the cgroup of a re-adopted container `cid` is from its bundle's `cgroupsPath`
    /// (in `bundle`), when that names another parent.
    pub(crate) fn locate(&self, cid: &str, bundle: &Path) {
        let Ok(config) = std::fs::read_to_string(bundle.join("config.json")) else { return };
        if let Some(parent) = bundle_parent(&config, cid)
            && parent != self.layout.parent()
        {
            tracing::info!(container = %cid, cgroup_parent = %parent, "a container under another cgroup parent");
            self.elsewhere.lock().unwrap_or_else(PoisonError::into_inner).insert(cid.to_owned(), parent);
        }
    }
}

/// The parent of container `cid` in an OCI `config.json` whose `linux.cgroupsPath` is
/// `/<parent>/<cid>`, as the bundles of this backend have it. The file is one an earlier agent
/// wrote, so hostile input: anything else, or a parent that is not valid, is `None`.
fn bundle_parent(config: &str, cid: &str) -> Option<String> {
    let config: serde_json::Value = serde_json::from_str(config).ok()?;
    let path = config.get("linux")?.get("cgroupsPath")?.as_str()?;
    let (parent, name) = path.strip_prefix('/')?.rsplit_once('/')?;
    (name == cid && is_valid_cgroup_parent(parent)).then(|| parent.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_names_its_containers_parent_only_when_valid() {
        let config = |path: &str| format!(r#"{{"ociVersion":"1.0.2","linux":{{"cgroupsPath":"{path}"}}}}"#);
        assert_eq!(bundle_parent(&config("/sandhost/a.1.0"), "a.1.0").as_deref(), Some("sandhost"));
        assert_eq!(
            bundle_parent(&config("/system.slice/x.service/sandboxes/a.1.0"), "a.1.0").as_deref(),
            Some("system.slice/x.service/sandboxes")
        );
        for hostile in [
            config("/sandhost/b.1.0"),
            config("sandhost/a.1.0"),
            config("/a.1.0"),
            config("/../../etc/a.1.0"),
            config("//a.1.0"),
            config("/x/../y/a.1.0"),
            r#"{"linux":{}}"#.to_owned(),
            r#"{"linux":{"cgroupsPath":7}}"#.to_owned(),
            "not json".to_owned(),
        ] {
            assert_eq!(bundle_parent(&hostile, "a.1.0"), None, "{hostile}");
        }
    }
}
