//! The sandbox manager: the live table and the lifecycle of each sandbox in it.
//!
//! # Invariants
//!
//! - Every state change goes through [`Table::transition`], which checks
//!   [`SandboxState::can_become`], publishes the new counts and counts the exit. Nothing else writes a
//!   state.
//! - A Create enters the gate and is inserted as `Starting` under one table lock: no drain pass
//!   that follows the gate's closing can miss an admitted start.
//! - A start holds its admission [`Permit`] from admission until the sandbox is `Running` in the table
//!   (with its supervisor) or has failed; nothing downstream re-checks "is draining". The start runs
//!   in a task of its own, so a Create whose caller goes away is never aborted half way.
//! - At most `start_parallelism` starts are in the runtime at once; the other admitted ones wait
//!   for their turn in admission order, holding their permit. Only a kill skips a waiting start.
//! - Each live lifecycle has exactly one supervisor task, the only code that moves it to `Exited`:
//!   after its command has exited and its cleanup has run. So "live = 0" means nothing of ours is
//!   left on the host.
//! - The table lock is a std mutex held only for in-memory work, never across an await.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use draingate::{Gate, Permit};
use sandhost_runtime::{LifecycleId, Runtime, SandboxId, SandboxKey, SandboxSpec, Template, User};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use super::store::{MetaStore, SandboxMeta};
use super::{
    CreateError, DrainPolicy, ExitInfo, ExitReason, SandboxError, SandboxInfo, SandboxState, validate,
};
use crate::config::SandboxConfig;
use crate::drain::NodeStatus;
use crate::metrics::{CreateResult, Metrics};
use crate::node::Resources;

/// Sandboxes per state, and exits so far: published on every transition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Per state, in [`SandboxState::ALL`] order.
    pub by_state: [u64; 5],
    /// Exits since the agent started.
    pub exits: u64,
}

impl Counts {
    /// Sandboxes holding host resources.
    #[must_use]
    pub fn live(&self) -> u64 {
        self.by_state[..4].iter().sum()
    }

    /// Sandboxes in `state`.
    #[must_use]
    pub fn get(&self, state: SandboxState) -> u64 {
        self.by_state[state_index(state)]
    }
}

fn state_index(state: SandboxState) -> usize {
    SandboxState::ALL.iter().position(|s| *s == state).unwrap_or(0)
}

/// How a stop ends the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGTERM, then the sandbox's grace, then kill.
    Graceful,
    /// SIGTERM, then the sandbox's grace or this bound, whichever is shorter, then kill.
    Within(Duration),
    /// Kill at once.
    Now,
}

/// One live or recently exited sandbox.
pub(super) struct Entry {
    pub(super) info: SandboxInfo,
    pub(super) spec: SandboxSpec,
    /// Set by the first stop; the reason its exit will carry.
    pub(super) stop_reason: Option<ExitReason>,
    /// A stop asked for while it was still starting.
    pub(super) pending_stop: Option<StopMode>,
    pub(super) state_tx: watch::Sender<SandboxState>,
    pub(super) end_changed: Arc<Notify>,
}

pub(super) struct Table {
    pub(super) sandboxes: HashMap<SandboxId, Entry>,
    counts: Counts,
}

impl Table {
    /// The one place a sandbox changes state.
    pub(super) fn transition(
        &mut self,
        key: &SandboxKey,
        next: SandboxState,
        counts: &watch::Sender<Counts>,
        metrics: &Metrics,
    ) -> Result<SandboxState, SandboxState> {
        let entry = match self.sandboxes.get_mut(&key.id) {
            Some(entry) if entry.info.lifecycle == key.lifecycle => entry,
            _ => return Err(SandboxState::Exited),
        };
        let previous = entry.info.state;
        if !previous.can_become(next) {
            return Err(previous);
        }
        tracing::info!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, from = previous.as_str(), to = next.as_str(), "sandbox state");
        entry.info.state = next;
        entry.state_tx.send_replace(next);
        self.counts.by_state[state_index(previous)] -= 1;
        self.counts.by_state[state_index(next)] += 1;
        if next == SandboxState::Exited {
            self.counts.exits += 1;
        }
        for state in [previous, next] {
            metrics.set_sandboxes(state, self.counts.get(state));
        }
        counts.send_replace(self.counts);
        Ok(previous)
    }

    pub(super) fn insert(&mut self, entry: Entry, counts: &watch::Sender<Counts>, metrics: &Metrics) {
        let state = entry.info.state;
        if let Some(old) = self.sandboxes.insert(entry.info.id.clone(), entry) {
            self.counts.by_state[state_index(old.info.state)] -= 1;
            metrics.set_sandboxes(old.info.state, self.counts.get(old.info.state));
        }
        self.counts.by_state[state_index(state)] += 1;
        metrics.set_sandboxes(state, self.counts.get(state));
        counts.send_replace(self.counts);
    }

    fn remove_exited(&mut self, key: &SandboxKey, counts: &watch::Sender<Counts>, metrics: &Metrics) -> bool {
        let matches = self
            .sandboxes
            .get(&key.id)
            .is_some_and(|e| e.info.lifecycle == key.lifecycle && e.info.state == SandboxState::Exited);
        if matches {
            self.sandboxes.remove(&key.id);
            self.counts.by_state[state_index(SandboxState::Exited)] -= 1;
            metrics.set_sandboxes(SandboxState::Exited, self.counts.get(SandboxState::Exited));
            counts.send_replace(self.counts);
        }
        matches
    }

    pub(super) fn find(&self, id: &str) -> Result<&Entry, SandboxError> {
        let id = validate::sandbox_id("id", id)?;
        self.sandboxes.get(&id).ok_or_else(|| SandboxError::NotFound(id.to_string()))
    }
}

/// The sandbox manager. Shared as `Arc<Manager>`.
pub struct Manager {
    pub(super) runtime: Arc<dyn Runtime>,
    pub(super) config: SandboxConfig,
    templates: HashMap<String, PathBuf>,
    pub(super) gate: Gate,
    /// Admitted starts not yet finished, running or waiting for their turn.
    starts: Arc<Semaphore>,
    /// Turns to run a start: the start parallelism.
    turns: Semaphore,
    table: Mutex<Table>,
    pub(super) counts: watch::Sender<Counts>,
    status: watch::Receiver<NodeStatus>,
    pub(super) metrics: Metrics,
    pub(super) store: MetaStore,
    capacity: Resources,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("runtime", &self.runtime.name())
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
}

/// What [`Manager::new`] needs.
#[derive(Debug)]
pub struct ManagerParts {
    /// The runtime backend.
    pub runtime: Arc<dyn Runtime>,
    /// Limits and defaults.
    pub config: SandboxConfig,
    /// Registered rootfs templates.
    pub templates: Vec<(String, PathBuf)>,
    /// The admission gate, shared with the drain coordinator.
    pub gate: Gate,
    /// The node status (for the message of a refused Create).
    pub status: watch::Receiver<NodeStatus>,
    /// Metrics.
    pub metrics: Metrics,
    /// Where the manager keeps each sandbox's metadata (labels, end time, drain policy).
    pub meta_dir: PathBuf,
}

impl Manager {
    /// A manager with an empty table.
    #[must_use]
    pub fn new(parts: ManagerParts) -> Arc<Self> {
        let capacity = Resources {
            sandboxes: parts.config.max_sandboxes,
            memory_bytes: host_memory_bytes(),
            cpu_millis: std::thread::available_parallelism().map_or(1, |n| n.get() as u64) * 1000,
        };
        let permits = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).clamp(1, Semaphore::MAX_PERMITS);
        let starts = permits(parts.config.max_concurrent_starts);
        let turns = permits(parts.config.start_parallelism);
        Arc::new(Self {
            runtime: parts.runtime,
            config: parts.config,
            templates: parts.templates.into_iter().collect(),
            gate: parts.gate,
            starts: Arc::new(Semaphore::new(starts)),
            turns: Semaphore::new(turns),
            table: Mutex::new(Table { sandboxes: HashMap::new(), counts: Counts::default() }),
            counts: watch::Sender::new(Counts::default()),
            status: parts.status,
            metrics: parts.metrics,
            store: MetaStore::new(parts.meta_dir),
            capacity,
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Table> {
        // Every table operation completes its bookkeeping before it can panic, so a poisoned table
        // is still consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The admission gate.
    #[must_use]
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Every change of the counts, starting with the current ones.
    #[must_use]
    pub fn watch_counts(&self) -> watch::Receiver<Counts> {
        self.counts.subscribe()
    }

    pub(crate) fn runtime_name(&self) -> &'static str {
        self.runtime.name()
    }

    /// Whether the backend can checkpoint.
    #[must_use]
    pub fn can_checkpoint(&self) -> bool {
        self.runtime.can_checkpoint()
    }

    pub(crate) fn capacity(&self) -> Resources {
        self.capacity
    }

    pub(crate) fn counts_by_state(&self) -> Vec<(SandboxState, u64)> {
        let counts = *self.counts.borrow();
        SandboxState::ALL.iter().map(|s| (*s, counts.get(*s))).collect()
    }

    pub(crate) fn allocated(&self) -> Resources {
        let table = self.lock();
        let mut total = Resources::default();
        for entry in table.sandboxes.values().filter(|e| e.info.state.is_live()) {
            total.sandboxes += 1;
            total.memory_bytes += entry.info.limits.memory_bytes.unwrap_or(0);
            total.cpu_millis += u64::from(entry.info.limits.cpu_millis.unwrap_or(0));
        }
        total
    }

    /// The live sandboxes, with their drain policy, for the drain.
    #[must_use]
    pub fn live_keys(&self) -> Vec<(SandboxKey, DrainPolicy, SandboxState)> {
        let table = self.lock();
        table
            .sandboxes
            .values()
            .filter(|e| e.info.state.is_live())
            .map(|e| (e.spec.key.clone(), e.info.drain_policy, e.info.state))
            .collect()
    }

    fn refusal_status(&self) -> NodeStatus {
        // The gate closes before the status is published: a refusal in that window says DRAINING.
        match *self.status.borrow() {
            NodeStatus::Ready => NodeStatus::Draining,
            other => other,
        }
    }

    /// Creates a sandbox (see [`crate::node::Node::create`]).
    pub(crate) async fn create(
        self: &Arc<Self>,
        request: super::CreateRequest,
    ) -> Result<SandboxInfo, CreateError> {
        let result = self.admit_and_start(request).await;
        let outcome = match &result {
            Ok(_) => CreateResult::Started,
            Err(CreateError::Start(_)) => CreateResult::Failed,
            Err(_) => CreateResult::Rejected,
        };
        self.metrics.count_create(outcome);
        result
    }

    async fn admit_and_start(
        self: &Arc<Self>,
        request: super::CreateRequest,
    ) -> Result<SandboxInfo, CreateError> {
        let admitted_at = Instant::now();
        let prepared = self.prepare(request)?;
        let key = prepared.spec.key.clone();
        let (permit, slot, spec, meta) = {
            // Admission and the entry under one lock: once the gate has closed, every admitted
            // Create is in the table, where the drain's passes (`live_keys`) see it.
            let mut table = self.lock();
            let Ok(permit) = self.gate.enter() else {
                drop(table);
                return Err(CreateError::NotAdmitting { status: self.refusal_status() });
            };
            let slot =
                Arc::clone(&self.starts).try_acquire_owned().map_err(|_| CreateError::ResourceExhausted {
                    limit: "concurrent starts",
                    max: self.config.max_concurrent_starts,
                })?;
            if table.counts.live() >= self.config.max_sandboxes {
                return Err(CreateError::ResourceExhausted {
                    limit: "live sandboxes",
                    max: self.config.max_sandboxes,
                });
            }
            if table.sandboxes.get(&key.id).is_some_and(|e| e.info.state.is_live()) {
                return Err(CreateError::AlreadyExists(key.id));
            }
            let (spec, meta) = (prepared.spec.clone(), SandboxMeta::from_entry(&prepared.info));
            table.insert(prepared.into_entry(), &self.counts, &self.metrics);
            (permit, slot, spec, meta)
        };
        // The start runs in its own task: an admitted start finishes even if the caller goes away.
        let this = Arc::clone(self);
        let start = tokio::spawn(async move { this.run_start(spec, meta, permit, slot, admitted_at).await });
        match start.await {
            Ok(result) => result,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }

    async fn run_start(
        self: Arc<Self>,
        spec: SandboxSpec,
        meta: SandboxMeta,
        permit: Permit,
        slot: OwnedSemaphorePermit,
        admitted_at: Instant,
    ) -> Result<SandboxInfo, CreateError> {
        let key = spec.key.clone();
        if let Err(error) = self.store.save(&meta) {
            tracing::warn!(sandbox.id = %key.id, error = %error, "cannot persist sandbox metadata");
        }
        let started = {
            // Beyond the start parallelism, admitted starts wait here for their turn, first come
            // first served: a burst is started at the rate the host can take instead of all at
            // once, each slower, until they time out together. The semaphore is never closed.
            self.metrics.add_start_waiting(1);
            let turn = self.turns.acquire().await.ok();
            self.metrics.add_start_waiting(-1);
            if let Some(reason) = self.killed_while_waiting(&key) {
                let message = "stopped before it started (it was waiting for its turn to start)";
                tracing::info!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, reason = reason.as_str(), "{message}");
                let exit = ExitInfo { exit: None, reason, message: Some(message.to_owned()) };
                self.finish(&key, exit).await;
                drop(permit);
                return Err(CreateError::StoppedBeforeStart { id: key.id, reason });
            }
            let started = self.runtime.start(&spec).await;
            drop(turn);
            started
        };
        drop(slot);
        match started {
            Ok(started) => {
                let (info, pending_stop, end_changed) = {
                    let mut table = self.lock();
                    let _ = table.transition(&key, SandboxState::Running, &self.counts, &self.metrics);
                    let entry =
                        table.sandboxes.get_mut(&key.id).filter(|e| e.info.lifecycle == key.lifecycle);
                    let Some(entry) = entry else {
                        return Err(CreateError::AlreadyExists(key.id));
                    };
                    entry.info.started_at = Some(started.started_at);
                    (entry.info.clone(), entry.pending_stop.take(), Arc::clone(&entry.end_changed))
                };
                self.metrics.observe_start(admitted_at.elapsed());
                tokio::spawn(Arc::clone(&self).supervise(key.clone(), end_changed));
                if let Some(mode) = pending_stop {
                    let this = Arc::clone(&self);
                    tokio::spawn(async move { this.stop_lifecycle(&key, ExitReason::Killed, mode).await });
                }
                // Released only now: the sandbox is in the table as Running, with its supervisor.
                drop(permit);
                Ok(info)
            }
            Err(error) => {
                tracing::warn!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, error = %error, "sandbox start failed");
                let exit = ExitInfo {
                    exit: None,
                    reason: ExitReason::StartFailed,
                    message: Some(error.to_string()),
                };
                self.finish(&key, exit).await;
                drop(permit);
                Err(match error {
                    sandhost_runtime::StartError::NotSupported { backend, what, .. } => {
                        CreateError::NotSupported { backend, what }
                    }
                    other => CreateError::Start(other),
                })
            }
        }
    }

    /// The reason of a kill (not a graceful stop) asked for while the start waited for its turn,
    /// or of the forced phase once it has begun: such a start is not begun. A graceful stop (the
    /// drain's STOP policy) still lets it start and then stops it, as for any admitted start.
    fn killed_while_waiting(&self, key: &SandboxKey) -> Option<ExitReason> {
        let mut table = self.lock();
        let entry = table.sandboxes.get_mut(&key.id).filter(|e| e.info.lifecycle == key.lifecycle)?;
        let forcing = *self.status.borrow() == NodeStatus::Forcing;
        match entry.pending_stop {
            Some(StopMode::Now | StopMode::Within(_)) => {}
            // The forced phase's stops run in tasks: this one's may not have reached the entry yet.
            _ if forcing => {
                entry.stop_reason.get_or_insert(ExitReason::ForceStopped);
            }
            Some(StopMode::Graceful) | None => return None,
        }
        entry.pending_stop = None;
        entry.stop_reason
    }

    /// Watches one lifecycle until its command exits, stopping it at its end time; then cleans up
    /// and records the exit. The only code that moves a started sandbox to `Exited`.
    pub(super) async fn supervise(self: Arc<Self>, key: SandboxKey, end_changed: Arc<Notify>) {
        let exit = loop {
            let end_time = {
                let table = self.lock();
                table
                    .sandboxes
                    .get(&key.id)
                    .filter(|e| e.info.lifecycle == key.lifecycle && e.stop_reason.is_none())
                    .and_then(|e| e.info.end_time)
            };
            let until_end = end_time.map(|t| t.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO));
            let changed = end_changed.notified();
            tokio::select! {
                exit = self.runtime.wait(&key) => break exit,
                () = crate::sleep_or_forever(until_end) => {
                    // begin_stop records the reason at once, so the timer is not armed again.
                    if let Some(stop) = self.begin_stop(&key, ExitReason::Timeout, StopMode::Graceful) {
                        let this = Arc::clone(&self);
                        tokio::spawn(async move {
                            if let Err(error) = this.execute_stop(stop).await {
                                tracing::error!(error = %error, "stopping a sandbox at its end time failed");
                            }
                        });
                    }
                }
                () = changed => {}
            }
        };
        let exit = match exit {
            Ok(exit) => Some(exit),
            Err(error) => {
                tracing::error!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, error = %error, "waiting for the sandbox failed");
                None
            }
        };
        let mut message = None;
        if let Err(error) = self.runtime.cleanup(&key).await {
            tracing::error!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, error = %error, "sandbox cleanup failed");
            message = Some(error.to_string());
        }
        let reason = {
            let table = self.lock();
            table.sandboxes.get(&key.id).and_then(|e| e.stop_reason).unwrap_or(ExitReason::Exited)
        };
        self.finish(&key, ExitInfo { exit, reason, message }).await;
    }

    /// Records an exit, and forgets the sandbox after the retention period.
    pub(super) async fn finish(self: &Arc<Self>, key: &SandboxKey, exit: ExitInfo) {
        let reason = exit.reason;
        {
            let mut table = self.lock();
            if let Some(entry) =
                table.sandboxes.get_mut(&key.id).filter(|e| e.info.lifecycle == key.lifecycle)
            {
                entry.info.exit = Some(exit);
                entry.info.exited_at = Some(SystemTime::now());
            }
            if table.transition(key, SandboxState::Exited, &self.counts, &self.metrics).is_err() {
                return;
            }
        }
        self.metrics.count_exit(reason);
        // Off the exit's critical path: the drain already saw this sandbox leave.
        if let Err(error) = self.store.remove(key) {
            tracing::warn!(sandbox.id = %key.id, error = %error, "cannot remove sandbox metadata");
        }
        let this = Arc::clone(self);
        let key = key.clone();
        tokio::spawn(async move {
            tokio::time::sleep(this.config.retention).await;
            let removed = this.lock().remove_exited(&key, &this.counts, &this.metrics);
            if removed && let Err(error) = this.runtime.forget(&key).await {
                tracing::warn!(sandbox.id = %key.id, error = %error, "cannot remove the sandbox's last files");
            }
        });
    }

    pub(super) async fn wait_exited(&self, key: &SandboxKey) {
        let receiver = {
            let table = self.lock();
            match table.sandboxes.get(&key.id).filter(|e| e.info.lifecycle == key.lifecycle) {
                Some(entry) => entry.state_tx.subscribe(),
                None => return,
            }
        };
        let mut receiver = receiver;
        // An error means the entry is gone, which also means it exited.
        let _ = receiver.wait_for(|state| *state == SandboxState::Exited).await;
    }

    fn prepare(&self, request: super::CreateRequest) -> Result<Prepared, CreateError> {
        let id = match &request.id {
            Some(id) if !id.is_empty() => validate::sandbox_id("id", id)?,
            _ => generate_id(),
        };
        let restore_from = match request.restore_from.as_deref() {
            None | Some("") => None,
            Some(snapshot) => {
                let snapshot = validate::snapshot_id("restore_from", snapshot)?;
                if !self.runtime.can_checkpoint() {
                    return Err(CreateError::NotSupported {
                        backend: self.runtime.name(),
                        what: "restore from a snapshot",
                    });
                }
                validate::restore_only(
                    &request.argv,
                    &request.env,
                    request.cwd.as_deref(),
                    request.template.as_deref(),
                )?;
                Some(snapshot)
            }
        };
        if restore_from.is_none() {
            validate::command(&request.argv, &request.env)?;
        }
        let cwd = validate::cwd(request.cwd.as_deref())?;
        let timeout = validate::timeout("timeout", request.timeout.unwrap_or(self.config.default_timeout))?;
        let stop_grace = validate::stop_grace(request.stop_grace.unwrap_or(self.config.stop_grace))?;
        let limits = validate::limits(
            request.memory_bytes,
            request.cpu_millis,
            request.pids_max,
            self.capacity.memory_bytes,
            self.capacity.cpu_millis,
        )?;
        validate::labels(&request.labels)?;
        let (template_name, template) = match request.template.as_deref() {
            // A restored sandbox runs on its snapshot's root.
            _ if restore_from.is_some() => (String::new(), Template::Host),
            None | Some("" | "host") => ("host".to_owned(), Template::Host),
            Some(name) => {
                let path = self
                    .templates
                    .get(name)
                    .ok_or_else(|| CreateError::TemplateNotFound(name.chars().take(80).collect()))?;
                (name.to_owned(), Template::Rootfs { name: name.to_owned(), path: path.clone() })
            }
        };
        let now = SystemTime::now();
        let key = SandboxKey { id, lifecycle: new_lifecycle_id() };
        Ok(Prepared {
            spec: SandboxSpec {
                key: key.clone(),
                argv: request.argv.clone(),
                env: request.env,
                cwd,
                template,
                limits,
                user: User::UNPRIVILEGED,
                stop_grace,
                restore_from: restore_from.clone(),
            },
            info: SandboxInfo {
                id: key.id,
                lifecycle: key.lifecycle,
                state: SandboxState::Starting,
                argv: request.argv,
                template: template_name,
                limits,
                labels: request.labels,
                drain_policy: request.drain_policy,
                created_at: now,
                started_at: None,
                end_time: Some(now + timeout),
                exited_at: None,
                exit: None,
                restored_from: restore_from,
            },
        })
    }
}

struct Prepared {
    spec: SandboxSpec,
    info: SandboxInfo,
}

impl Prepared {
    fn into_entry(self) -> Entry {
        Entry {
            info: self.info,
            spec: self.spec,
            stop_reason: None,
            pending_stop: None,
            state_tx: watch::Sender::new(SandboxState::Starting),
            end_changed: Arc::new(Notify::new()),
        }
    }
}

pub(super) fn template_name(template: &Template) -> String {
    match template {
        Template::Host => "host".to_owned(),
        Template::Rootfs { name, .. } => name.clone(),
    }
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

fn generate_id() -> SandboxId {
    SandboxId::parse(format!("sbx-{}", random_hex(6)))
        .unwrap_or_else(|_| unreachable!("generated ids are valid"))
}

fn new_lifecycle_id() -> LifecycleId {
    LifecycleId::parse(random_hex(8)).unwrap_or_else(|_| unreachable!("generated lifecycle ids are valid"))
}

fn host_memory_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(u64::MAX, |kib| kib * 1024)
}
