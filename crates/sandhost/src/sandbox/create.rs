//! Creating a sandbox: validate and prepare the request, admit it, wait for its turn, start it.
//!
//! # Invariants
//!
//! - A Create enters the gate and is inserted as `Starting` under one table lock: no drain pass
//!   that follows the gate's closing can miss an admitted start.
//! - A start holds its admission [`Permit`] from admission until the sandbox is `Running` in the
//!   table (with its supervisor) or has failed; nothing downstream re-checks "is draining". The
//!   start runs in a task of its own, so a Create whose caller goes away is never aborted half way.
//! - At most `start_parallelism` starts are in the runtime at once; the other admitted ones wait
//!   for their turn in admission order, holding their permit. Only a kill, or the forced phase,
//!   skips a waiting start.
//! - A refused Create leaves nothing behind: everything that can fail is checked before the entry
//!   is inserted, and the record written just before admission is removed again.
//! - A sandbox is durable before it can be listed: its record is written before the entry is
//!   inserted, so an agent killed after a List showed it leaves the next agent its record.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use draingate::Permit;
use sandhost_runtime::{LifecycleId, SandboxId, SandboxKey, SandboxSpec, Template, User};
use tokio::sync::OwnedSemaphorePermit;

use super::manager::{Manager, run_to_end};
use super::stop::StopMode;
use super::store::SandboxMeta;
use super::table::Entry;
use super::{
    CreateError, CreateRequest, ExitInfo, ExitReason, InvalidArgument, SandboxInfo, SandboxState, validate,
};
use crate::metrics::{CreateResult, Rejection};

/// The limit a Create meets when too many admitted starts have not finished.
const LIMIT_ADMITTED_STARTS: &str = "admitted starts";
/// The limit a Create meets when the node has its maximum of live sandboxes.
const LIMIT_LIVE_SANDBOXES: &str = "live sandboxes";
/// The limit a Create meets when its memory would take the allocation past the allocatable.
const LIMIT_ALLOCATABLE_MEMORY: &str = "allocatable memory";

impl Manager {
    /// Creates a sandbox: validation, admission, its turn, the start. Returns once it runs.
    pub(crate) async fn create(self: &Arc<Self>, request: CreateRequest) -> Result<SandboxInfo, CreateError> {
        let result = self.admit_and_start(request).await;
        let outcome = match &result {
            Ok(_) => CreateResult::Started,
            Err(CreateError::Start(_)) => CreateResult::Failed,
            Err(CreateError::Invalid(_)) => CreateResult::Rejected(Rejection::InvalidArgument),
            Err(CreateError::NotAdmitting { .. }) => CreateResult::Rejected(Rejection::NotAdmitting),
            Err(CreateError::AlreadyExists(_)) => CreateResult::Rejected(Rejection::AlreadyExists),
            Err(CreateError::ResourceExhausted { limit, .. }) if *limit == LIMIT_ADMITTED_STARTS => {
                CreateResult::Rejected(Rejection::AdmittedStartsLimit)
            }
            Err(CreateError::ResourceExhausted { limit, .. }) if *limit == LIMIT_ALLOCATABLE_MEMORY => {
                CreateResult::Rejected(Rejection::AllocatableMemory)
            }
            Err(CreateError::ResourceExhausted { .. }) => {
                CreateResult::Rejected(Rejection::LiveSandboxesLimit)
            }
            Err(CreateError::TemplateNotFound(_)) => CreateResult::Rejected(Rejection::TemplateNotFound),
            Err(CreateError::NotSupported { .. }) => CreateResult::Rejected(Rejection::NotSupported),
            Err(CreateError::StoppedBeforeStart { .. }) => {
                CreateResult::Rejected(Rejection::StoppedBeforeStart)
            }
            Err(CreateError::Interrupted(_)) => CreateResult::Rejected(Rejection::Interrupted),
        };
        self.metrics.count_create(outcome);
        result
    }

    async fn admit_and_start(self: &Arc<Self>, request: CreateRequest) -> Result<SandboxInfo, CreateError> {
        let admitted_at = Instant::now();
        let prepared = self.prepare(request)?;
        // A draining node refuses before the checks below touch the file system.
        self.admission
            .check_open()
            .map_err(|refused| CreateError::NotAdmitting { status: refused.status })?;
        // What the runtime can tell before anything is made (the command, the working directory,
        // the snapshot): a Create that could never start is refused and leaves nothing behind.
        self.runtime.check(&prepared.spec).map_err(|error| match error {
            sandhost_runtime::StartError::InvalidSpec { field, reason, .. } => {
                CreateError::Invalid(InvalidArgument::new(field, reason))
            }
            other => CreateError::Start(other),
        })?;
        let key = prepared.spec.key.clone();
        // The record is durable before the sandbox can be listed: an agent killed at any moment
        // after a List showed it `Starting` leaves the next one its record (which says it never
        // ran, if it did not). A Create refused below removes it again.
        let meta = SandboxMeta::from_entry(&prepared.info);
        if let Err(error) = self.store.save(&meta) {
            tracing::warn!(sandbox.id = %key.id, error = %error, "cannot persist sandbox metadata");
        }
        let admitted = self.admit(prepared);
        if admitted.is_err()
            && let Err(error) = self.store.remove(&key)
        {
            tracing::warn!(sandbox.id = %key.id, error = %error, "cannot remove the record of a refused Create");
        }
        let (permit, slot, spec) = admitted?;
        // The start runs in its own task: an admitted start finishes even if the caller goes away.
        let this = Arc::clone(self);
        run_to_end(async move { this.run_start(spec, permit, slot, admitted_at).await }).await?
    }

    /// Admits a prepared Create: the gate, the limits and the id checked, and the entry inserted as
    /// `Starting`, under one table lock.
    fn admit(&self, prepared: Prepared) -> Result<(Permit, OwnedSemaphorePermit, SandboxSpec), CreateError> {
        let key = prepared.spec.key.clone();
        // Admission and the entry under one lock: once the gate has closed, every admitted
        // Create is in the table, where the drain's passes (`live_keys`) see it.
        let mut table = self.lock();
        let permit =
            self.admission.enter().map_err(|refused| CreateError::NotAdmitting { status: refused.status })?;
        let slot = Arc::clone(&self.admitted_starts).try_acquire_owned().map_err(|_| {
            CreateError::ResourceExhausted {
                limit: LIMIT_ADMITTED_STARTS,
                max: self.config.max_admitted_starts,
            }
        })?;
        let allocatable = self.allocatable_memory();
        let memory = prepared.info.limits.memory_bytes.unwrap_or(0);
        if table.allocated().memory_bytes.saturating_add(memory) > allocatable {
            return Err(CreateError::ResourceExhausted { limit: LIMIT_ALLOCATABLE_MEMORY, max: allocatable });
        }
        if table.counts().live() >= self.config.max_sandboxes {
            return Err(CreateError::ResourceExhausted {
                limit: LIMIT_LIVE_SANDBOXES,
                max: self.config.max_sandboxes,
            });
        }
        if table.sandboxes.get(&key.id).is_some_and(|e| e.info.state.is_live()) {
            return Err(CreateError::AlreadyExists(key.id));
        }
        let spec = prepared.spec.clone();
        table.insert(Entry::new(prepared.info, prepared.spec));
        Ok((permit, slot, spec))
    }

    async fn run_start(
        self: Arc<Self>,
        spec: SandboxSpec,
        permit: Permit,
        slot: OwnedSemaphorePermit,
        admitted_at: Instant,
    ) -> Result<SandboxInfo, CreateError> {
        let key = spec.key.clone();
        let started = {
            // Beyond the start parallelism, admitted starts wait here for their turn, first come
            // first served: a burst is started at the rate the host can take instead of all at
            // once, each slower, until they time out together. The semaphore is never closed.
            self.metrics.add_start_waiting(1);
            let turn = self.start_turns.acquire().await.ok();
            self.metrics.add_start_waiting(-1);
            if let Some(reason) = self.killed_while_waiting(&key) {
                let message = "stopped before it started (it was waiting for its turn to start)";
                tracing::info!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, reason = reason.as_str(), "{message}");
                let exit =
                    ExitInfo { exit: None, reason, message: Some(message.to_owned()), oom_killed: None };
                self.finish(&key, exit).await;
                drop(permit);
                return Err(CreateError::StoppedBeforeStart { id: key.id, reason });
            }
            let began = Instant::now();
            let started = self.runtime.start(&spec).await;
            if started.as_ref().is_ok_and(|s| s.warm) {
                self.metrics.observe_warm_claim(began.elapsed());
            }
            drop(turn);
            started
        };
        drop(slot);
        match started {
            Ok(started) => {
                let (info, pending_stop, end_changed) = {
                    let mut table = self.lock();
                    let _ = table.transition(&key, SandboxState::Running);
                    let Some(entry) = table.entry_mut(&key) else {
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
                    oom_killed: None,
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
        let entry = table.entry_mut(key)?;
        let forcing = self.admission.is_forcing();
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

    /// Validates a request and makes its spec and its first read model; changes nothing.
    fn prepare(&self, request: CreateRequest) -> Result<Prepared, CreateError> {
        let id = match &request.id {
            Some(id) if !id.is_empty() => validate::sandbox_id("id", id)?,
            _ => generate_id(),
        };
        let restore_from = match request.restore_from.as_deref() {
            None | Some("") => None,
            Some(snapshot) => {
                let snapshot = validate::snapshot_id("restore_from", snapshot)?;
                validate::restore_only(
                    &request.argv,
                    &request.env,
                    request.cwd.as_deref(),
                    request.template.as_deref(),
                )?;
                if !self.runtime.can_checkpoint() {
                    return Err(CreateError::NotSupported {
                        backend: self.runtime.name(),
                        what: "restore from a snapshot",
                    });
                }
                Some(snapshot)
            }
        };
        if restore_from.is_none() {
            validate::command(&request.argv, &request.env)?;
        }
        let cwd = validate::cwd(request.cwd.as_deref())?;
        let timeout = validate::timeout("timeout", request.timeout.unwrap_or(self.config.default_timeout))?;
        let stop_grace = validate::stop_grace(request.stop_grace.unwrap_or(self.config.stop_grace))?;
        let defaults = self.config.default_limits;
        let limits = validate::limits(
            request.memory_bytes.or(defaults.memory_bytes),
            request.cpu_millis.or(defaults.cpu_millis),
            request.pids_max.or(defaults.pids_max),
            self.capacity.memory_bytes,
            self.capacity.cpu_millis,
        )?;
        validate::labels(&request.labels)?;
        let (template_name, template) = match request.template.as_deref() {
            // A restored sandbox runs on its snapshot's root.
            _ if restore_from.is_some() => (String::new(), Template::Host),
            None | Some("" | "host") => ("host".to_owned(), Template::Host),
            Some(name) => {
                validate::template_name(name)?;
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
                conditions: Vec::new(),
            },
        })
    }
}

struct Prepared {
    spec: SandboxSpec,
    info: SandboxInfo,
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
