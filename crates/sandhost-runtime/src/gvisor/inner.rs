//! What every part of the gvisor backend shares: the configuration, how to call runsc, the host's
//! cgroup hierarchies (where runsc makes each container's cgroup), the table of sandboxes and the
//! counted background work. [`GvisorRuntime`](super::GvisorRuntime) is a handle
//! on one [`Inner`]; the modules that do the work (`lifecycle`, `snapshot`, `recover`) get it
//! passed in.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::sync::{Arc, Mutex, PoisonError};

use super::config::{GvisorConfig, GvisorOpenError};
use super::paths;
use super::runsc::Runsc;
use super::sandbox::Sandbox;
use crate::SandboxKey;
use crate::background::Background;
use crate::cgroup::{Cgroup, Layout, Placement};

/// The state of one gvisor runtime.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: GvisorConfig,
    pub(crate) runsc: Runsc,
    /// The hierarchies, under the parent chosen at open (prepared then; runsc creates each
    /// container's cgroup under it, and `close` removes it).
    pub(crate) cgroups: Layout,
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
            cgroups,
            sandboxes: Mutex::new(HashMap::new()),
            background: Background::new(),
        })
    }

    /// The cgroup runsc made for container `cid` (from the bundle's `cgroupsPath`).
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
