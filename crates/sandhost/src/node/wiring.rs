//! The wiring of a node, written once: `serve`, the tests' support code and the benches all build a
//! node through [`Node::build`], and `serve` opens its backend through [`open_runtime`].
//!
//! The order matters and is fixed here: the metrics are registered, the admission pair is made (the
//! manager gets the narrow handle, the coordinator the control side), the capacity is probed from
//! the host, then the manager and the coordinator are built. Re-adoption ([`Node::recover`]) is a
//! separate, async step, because the tests build nodes that adopt nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use sandhost_runtime::{CgroupParent, HostPaths, RecoverError, Runtime};

use super::Node;
use crate::admission::{self, NodeStatus};
use crate::config::{RuntimeKind, SandboxConfig, WarmPoolConfig};
use crate::drain::{DrainCoordinator, DrainSettings, Resumed};
use crate::metrics::Metrics;
use crate::sandbox::{Manager, ManagerParts, Resources};

/// What a node is built from, besides its runtime, its state dir and its metrics registry.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Limits and defaults of the sandbox manager.
    pub sandbox: SandboxConfig,
    /// Registered rootfs templates.
    pub templates: Vec<(String, PathBuf)>,
    /// Bound of the drain's forced phase.
    pub force_timeout: Duration,
    /// The node's id (stable across restarts: `serve` keeps it in the state dir).
    pub node_id: String,
    /// What the host offers; [`probe_capacity`] reads it from the host.
    pub capacity: Resources,
}

impl NodeSettings {
    /// Settings with `sandbox`'s limits, no templates, the given forced bound and id, and the
    /// host's capacity.
    #[must_use]
    pub fn new(sandbox: SandboxConfig, force_timeout: Duration, node_id: impl Into<String>) -> Self {
        let capacity = probe_capacity(sandbox.max_sandboxes);
        Self { sandbox, templates: Vec::new(), force_timeout, node_id: node_id.into(), capacity }
    }
}

/// What [`Node::recover`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Running sandboxes re-adopted.
    pub adopted: usize,
    /// The persisted drain: continued, or a cut-short shutdown reported, or none.
    pub drain: Resumed,
}

impl Node {
    /// Builds a node over `runtime`: its metrics registered on `registry`, sandbox metadata under
    /// `<state_dir>/meta`, the drain intent in `<state_dir>/drain.json`. The node starts READY with
    /// an empty table. Must be called inside a tokio runtime (the coordinator spawns its publisher).
    #[must_use]
    pub fn build(
        runtime: Arc<dyn Runtime>,
        settings: NodeSettings,
        state_dir: &Path,
        registry: &mut Registry,
    ) -> Self {
        let metrics = Metrics::register(registry);
        crate::metrics::register_warm_pool(registry, Arc::clone(&runtime));
        metrics.set_capacity(settings.capacity);
        let pool_runtime = Arc::clone(&runtime);
        let (control, admission) = admission::channel();
        let manager = Manager::new(ManagerParts {
            runtime,
            config: settings.sandbox,
            templates: settings.templates,
            admission,
            capacity: settings.capacity,
            metrics: metrics.clone(),
            meta_dir: state_dir.join("meta"),
        });
        let drain = DrainCoordinator::new(
            Arc::clone(&manager),
            control,
            DrainSettings { force_timeout: settings.force_timeout },
            state_dir.join("drain.json"),
            metrics,
        );
        tokio::spawn(follow_status(pool_runtime, drain.watch_status()));
        Self { manager, drain, node_id: settings.node_id, started_at: SystemTime::now() }
    }

    /// Re-adopts the sandboxes an earlier agent left, then continues its persisted drain, if any.
    ///
    /// # Errors
    ///
    /// The runtime's error when its state cannot be read.
    pub async fn recover(&self) -> Result<Recovery, RecoverError> {
        let adopted = self.manager.recover().await?;
        let drain = self.drain.resume_persisted();
        Ok(Recovery { adopted, drain })
    }
}

/// The warm pool follows the node's status: refilled while READY; while the node drains its
/// unclaimed members are destroyed at once and none is built (members never hold a drain: they
/// are not sandboxes). Ends when the coordinator is gone.
async fn follow_status(runtime: Arc<dyn Runtime>, mut status: tokio::sync::watch::Receiver<NodeStatus>) {
    loop {
        let ready = *status.borrow_and_update() == NodeStatus::Ready;
        runtime.set_warm_pool_active(ready);
        if status.changed().await.is_err() {
            runtime.set_warm_pool_active(false);
            return;
        }
    }
}

/// Opens the backend `kind` with its state under `state_dir`, its sandboxes' cgroups under
/// `cgroup_parent` (a path, or left to the backend: see [`CgroupParent`]), `log_max_bytes` of each
/// sandbox's log kept (its newest), `host_paths` what the `host` template shows of the host, and
/// its warm pool (process only: checked by the configuration) built `start_parallelism` members at
/// a time. The one place a backend is chosen by kind.
///
/// # Errors
///
/// The backend's error when it cannot open its state dir or cgroups, or when the sandhost binary
/// (the sandboxes' init, gvisor's exit recorder) cannot be found.
pub fn open_runtime(
    kind: RuntimeKind,
    state_dir: &Path,
    cgroup_parent: &CgroupParent,
    log_max_bytes: u64,
    host_paths: &HostPaths,
    warm_pool: &WarmPoolConfig,
    start_parallelism: u64,
) -> anyhow::Result<Arc<dyn Runtime>> {
    let sandhost = std::env::current_exe().context("finding the sandhost binary for the sandboxes")?;
    Ok(match kind {
        RuntimeKind::Process => {
            let mut config =
                sandhost_runtime::process::ProcessConfig::new(state_dir.join("runtime"), sandhost);
            config.cgroup_parent = cgroup_parent.clone();
            config.log_limit_bytes = log_max_bytes;
            config.host_paths = host_paths.clone();
            config.warm_pool.clone_from(&warm_pool.templates);
            config.warm_pool_max_age = warm_pool.max_age;
            config.warm_pool_parallelism = usize::try_from(start_parallelism).unwrap_or(usize::MAX);
            Arc::new(
                sandhost_runtime::process::ProcessRuntime::open(config)
                    .context("opening the process runtime")?,
            )
        }
        RuntimeKind::Gvisor => {
            let mut config = sandhost_runtime::gvisor::GvisorConfig::new(state_dir.join("runtime-gvisor"));
            config.cgroup_parent = cgroup_parent.clone();
            config.exit_recorder = Some(sandhost);
            config.log_limit_bytes = log_max_bytes;
            config.host_paths = host_paths.clone();
            Arc::new(
                sandhost_runtime::gvisor::GvisorRuntime::open(config)
                    .context("opening the gvisor runtime")?,
            )
        }
    })
}

/// The host's capacity: `max_sandboxes`, its memory (`/proc/meminfo`) and its CPUs.
#[must_use]
pub fn probe_capacity(max_sandboxes: u64) -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    Resources { sandboxes: max_sandboxes, memory_bytes: host_memory_bytes(), cpu_millis: cpus * 1000 }
}

fn host_memory_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(u64::MAX, |kib| kib * 1024)
}
