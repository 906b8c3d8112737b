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
use crate::cgroup::{Cgroup, CgroupError, Layout};

/// The state of one gvisor runtime.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: GvisorConfig,
    pub(crate) runsc: Runsc,
    /// The hierarchies, under the configured parent; runsc creates and removes the parent.
    pub(crate) cgroups: Layout,
    sandboxes: Mutex<HashMap<SandboxKey, Arc<Sandbox>>>,
    pub(crate) background: Background,
}

impl Inner {
    /// Checks the configuration and that runsc runs, and creates the state dir (0700).
    pub(crate) fn open(config: GvisorConfig) -> Result<Self, GvisorOpenError> {
        let parent = &config.cgroup_parent;
        if crate::SandboxId::parse(parent.as_str()).is_err() {
            return Err(GvisorOpenError::CgroupParent(parent.clone()));
        }
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
        let mut cgroups = Layout::detect(parent).map_err(GvisorOpenError::Cgroup)?;
        cgroups.create_parents().map_err(GvisorOpenError::Cgroup)?;
        let version = String::from_utf8_lossy(&version);
        tracing::info!(runsc = %version.lines().next().unwrap_or_default(), platform = %config.platform, state_dir = %config.state_dir.display(), "gvisor runtime opened");
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

    /// The cgroup of container `cid` under this agent's parent (sandhost made it and set its
    /// limits; runsc joined it and made the directories of the other controllers).
    pub(crate) fn container_cgroup(&self, cid: &str) -> Cgroup {
        self.cgroups.find(cid)
    }

    /// Removes the cgroup of container `cid`, which runsc leaves: under this agent's parent, and
    /// under the one its bundle names when an agent with another cgroup parent started it.
    pub(crate) async fn remove_container_cgroup(&self, cid: &str) -> Result<(), CgroupError> {
        let started_under = paths::key_of_container(cid)
            .map(|key| crate::state::sandbox_dir(&self.config.state_dir, &key))
            .and_then(|dir| paths::bundle_cgroup_parent(&dir, cid))
            .filter(|parent| parent != self.cgroups.parent());
        if let Some(parent) = started_under {
            self.cgroups.with_parent(&parent).find(cid).remove().await?;
        }
        self.container_cgroup(cid).remove().await
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
