//! The drain coordinator: the one owner of the node status and of the drain phases.
//!
//! # Invariants
//!
//! - **Close admission before publishing.** Every path into a draining status calls
//!   [`draingate::Gate::start_draining`] first and publishes the status after it, so whoever sees
//!   DRAINING (GetInfo, gRPC health, `/health/ready`) can rely on every new Create being refused.
//! - **Admitted starts are never aborted.** The drain only waits for the gate to be idle; the
//!   starts themselves hold their permits until the sandbox runs or has failed.
//! - **Event-driven.** The graceful phase ends on the manager's count change that makes the live
//!   count zero; nothing polls.
//! - **Bounded force.** The forced phase stops every live sandbox concurrently, each once, and ends
//!   at `FORCE_SHUTDOWN_TIMEOUT` whatever the stops do; a sandbox still live then is a named failure.
//! - **One drain at a time.** A drain run is cancelled by undrain; status changes happen under one
//!   lock, in [`State::set_status`], which checks the transition.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use sandhost_runtime::SandboxKey;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::intent::{DrainIntent, IntentStore, at_ms_precision};
use super::{DrainError, DrainFailure, DrainProgress, DrainRequest, Evacuation, NodeStatus};
use crate::metrics::Metrics;
use crate::sandbox::{Counts, DrainPolicy, ExitReason, Manager, SandboxState, StopMode};

/// What a drain did, for the exit report of `serve`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Sandboxes stopped by the forced phase (deadline, second signal, ForceStop).
    pub force_stopped: u64,
    /// Sandboxes stopped because their drain policy is STOP (or CHECKPOINT where the backend
    /// cannot checkpoint).
    pub policy_stopped: u64,
    /// Sandboxes checkpointed and stopped.
    pub checkpointed: u64,
    /// Every failure, named.
    pub failures: Vec<DrainFailure>,
    /// The sandboxes checkpointed, each with its snapshot.
    pub evacuated: Vec<Evacuation>,
}

/// Settings of the coordinator.
#[derive(Debug, Clone)]
pub struct DrainSettings {
    /// Bound of the forced phase.
    pub force_timeout: Duration,
}

/// The drain coordinator. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DrainCoordinator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    manager: Arc<Manager>,
    status_tx: watch::Sender<NodeStatus>,
    progress_tx: watch::Sender<DrainProgress>,
    state: Mutex<State>,
    settings: DrainSettings,
    intent: IntentStore,
    metrics: Metrics,
}

#[derive(Debug)]
struct State {
    status: NodeStatus,
    changed_at: SystemTime,
    shutting_down: bool,
    run: Option<Run>,
    exits_at_start: u64,
    report: DrainReport,
}

/// The drain in progress.
#[derive(Debug)]
struct Run {
    cancel: CancellationToken,
    force: watch::Sender<bool>,
    graceful_deadline: watch::Sender<Option<SystemTime>>,
    force_deadline: Option<SystemTime>,
    started_at: SystemTime,
}

impl State {
    /// The one place the status changes. Returns whether it changed.
    fn set_status(&mut self, next: NodeStatus) -> bool {
        use NodeStatus::{Drained, Draining, Forcing, Ready, Unhealthy};
        let allowed = matches!(
            (self.status, next),
            (Ready | Unhealthy, Draining)
                | (Draining, Forcing | Drained | Ready)
                | (Forcing, Drained | Ready)
                | (Drained, Ready | Forcing)
                | (_, Unhealthy)
        );
        if !allowed {
            return false;
        }
        tracing::info!(from = self.status.as_str(), to = next.as_str(), "node status");
        self.status = next;
        self.changed_at = SystemTime::now();
        true
    }
}

impl DrainCoordinator {
    /// A coordinator for `manager`, whose admission gate it owns from now on. `status_tx` is the
    /// status channel whose receiver the manager holds. Must be called inside a tokio runtime.
    #[must_use]
    pub fn new(
        manager: Arc<Manager>,
        status_tx: watch::Sender<NodeStatus>,
        settings: DrainSettings,
        intent_path: std::path::PathBuf,
        metrics: Metrics,
    ) -> Self {
        let now = SystemTime::now();
        let status = *status_tx.borrow();
        let state = State {
            status,
            changed_at: now,
            shutting_down: false,
            run: None,
            exits_at_start: 0,
            report: DrainReport::default(),
        };
        let progress = DrainProgress::idle(status, now);
        let inner = Arc::new(Inner {
            manager,
            status_tx,
            progress_tx: watch::Sender::new(progress),
            state: Mutex::new(state),
            settings,
            intent: IntentStore::new(intent_path),
            metrics,
        });
        inner.publish(&inner.lock());
        tokio::spawn(republish_on_count_changes(Arc::downgrade(&inner), inner.manager.watch_counts()));
        Self { inner }
    }

    /// The node status now.
    #[must_use]
    pub fn status(&self) -> NodeStatus {
        self.inner.lock().status
    }

    /// The drain's progress now.
    #[must_use]
    pub fn progress(&self) -> DrainProgress {
        self.inner.progress_tx.borrow().clone()
    }

    /// Every change of the progress, starting with the current one.
    #[must_use]
    pub fn watch(&self) -> watch::Receiver<DrainProgress> {
        self.inner.progress_tx.subscribe()
    }

    /// Every change of the status.
    #[must_use]
    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.inner.status_tx.subscribe()
    }

    /// What the current (or last) drain did.
    #[must_use]
    pub fn report(&self) -> DrainReport {
        self.inner.lock().report.clone()
    }

    /// Starts a drain (or changes the running one: a shorter timeout tightens its deadline, `force`
    /// escalates it).
    ///
    /// # Errors
    ///
    /// None today; the signature leaves room for refusing a drain.
    pub fn drain(&self, request: DrainRequest) -> Result<DrainProgress, DrainError> {
        let deadline = request.timeout.map(|t| at_ms_precision(SystemTime::now() + t));
        self.inner.begin(deadline, request.force, None);
        Ok(self.progress())
    }

    /// Stops every live sandbox now, draining first if the node was ready.
    ///
    /// # Errors
    ///
    /// None today.
    pub fn force_stop(&self) -> Result<DrainProgress, DrainError> {
        self.drain(DrainRequest { timeout: None, force: true })
    }

    /// Reopens admission and cancels the drain and its pending escalation. Sandboxes already being
    /// stopped are not brought back; every other sandbox keeps running.
    ///
    /// # Errors
    ///
    /// [`DrainError::ShuttingDown`] while the process shuts down.
    pub fn undrain(&self) -> Result<DrainProgress, DrainError> {
        let inner = &self.inner;
        {
            let mut state = inner.lock();
            if state.shutting_down {
                return Err(DrainError::ShuttingDown);
            }
            if let Some(run) = state.run.take() {
                run.cancel.cancel();
            }
            if state.set_status(NodeStatus::Ready) {
                state.report = DrainReport::default();
                inner.manager.gate().reopen();
                inner.status_tx.send_replace(NodeStatus::Ready);
            }
            inner.publish(&state);
        }
        inner.intent.clear();
        Ok(self.progress())
    }

    /// The first shutdown signal: drain with the shutdown's settings; undrain is refused from now on.
    pub fn begin_shutdown(&self, timeout: Option<Duration>, force: bool) {
        self.inner.lock().shutting_down = true;
        let deadline = timeout.map(|t| at_ms_precision(SystemTime::now() + t));
        self.inner.begin(deadline, force, None);
    }

    /// Forgets the persisted intent of a shutdown drain that completed: the next agent starts READY.
    pub fn complete_shutdown(&self) {
        self.inner.intent.clear();
    }

    /// Skips to the forced phase (a second signal).
    pub fn escalate(&self) {
        self.inner.begin(None, true, None);
    }

    /// Continues a drain that an earlier agent persisted, with its deadlines. Returns whether there
    /// was one.
    pub fn resume_persisted(&self) -> bool {
        let Some(intent) = self.inner.intent.load() else {
            return false;
        };
        tracing::info!(?intent, "continuing the drain of the previous agent");
        self.inner.begin(intent.graceful_deadline(), intent.force, Some(&intent));
        true
    }

    /// Completes once the node is DRAINED.
    pub async fn wait_drained(&self) {
        let mut status = self.inner.status_tx.subscribe();
        // The sender lives as long as `self`.
        let _ = status.wait_for(|s| *s == NodeStatus::Drained).await;
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // State changes are single assignments; a panic cannot leave them half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Recomputes the progress from the state and the manager's counts, and publishes it.
    fn publish(&self, state: &State) {
        let counts = *self.manager.watch_counts().borrow();
        let deadline = state.run.as_ref().and_then(|run| match state.status {
            NodeStatus::Forcing => run.force_deadline,
            NodeStatus::Draining => *run.graceful_deadline.borrow(),
            _ => None,
        });
        let draining = state.status != NodeStatus::Ready;
        let progress = DrainProgress {
            status: state.status,
            status_changed_at: state.changed_at,
            shutting_down: state.shutting_down,
            in_flight_starts: counts.get(SandboxState::Starting),
            live: counts.live(),
            exited: if draining { counts.exits.saturating_sub(state.exits_at_start) } else { 0 },
            force_stopped: state.report.force_stopped,
            checkpointed: state.report.checkpointed,
            deadline,
            failures: state.report.failures.clone(),
            evacuated: state.report.evacuated.clone(),
        };
        self.metrics.set_status(progress.status, progress.status_changed_at);
        self.metrics.set_drain(
            progress.in_flight_starts,
            progress.live,
            progress.force_stopped,
            progress.checkpointed,
            deadline,
        );
        self.progress_tx.send_if_modified(|current| {
            let changed = *current != progress;
            *current = progress;
            changed
        });
    }

    /// Starts a drain, or tightens / escalates the running one.
    fn begin(self: &Arc<Self>, deadline: Option<SystemTime>, force: bool, persisted: Option<&DrainIntent>) {
        let mut state = self.lock();
        if let Some(run) = &state.run {
            run.graceful_deadline.send_if_modified(|current| match (deadline, *current) {
                (Some(new), Some(old)) if new < old => {
                    *current = Some(new);
                    true
                }
                (Some(new), None) => {
                    *current = Some(new);
                    true
                }
                _ => false,
            });
        } else {
            // Admission closes before anyone can see the new status.
            self.manager.gate().start_draining();
            let cancel = CancellationToken::new();
            let run = Run {
                cancel: cancel.clone(),
                force: watch::Sender::new(false),
                graceful_deadline: watch::Sender::new(deadline),
                force_deadline: persisted.and_then(DrainIntent::force_deadline),
                started_at: persisted.map_or_else(SystemTime::now, DrainIntent::started_at),
            };
            let force_rx = run.force.subscribe();
            let deadline_rx = run.graceful_deadline.subscribe();
            state.run = Some(run);
            state.exits_at_start = self.manager.watch_counts().borrow().exits;
            state.report = DrainReport::default();
            if state.set_status(NodeStatus::Draining) {
                self.status_tx.send_replace(NodeStatus::Draining);
            }
            let this = Arc::clone(self);
            tokio::spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = this.run(force_rx, deadline_rx) => {}
                }
            });
        }
        if force {
            self.enter_forcing(&mut state);
        }
        self.persist(&state);
        self.publish(&state);
    }

    /// Moves a running drain to FORCING (once): fixes the forced phase's deadline, publishes the
    /// status, and wakes the run. A drain that has already finished has nothing to force.
    fn enter_forcing(&self, state: &mut State) {
        if state.status == NodeStatus::Drained {
            return;
        }
        let Some(run) = state.run.as_mut() else { return };
        let now = SystemTime::now();
        let deadline = run
            .force_deadline
            .filter(|d| *d > now)
            .unwrap_or_else(|| at_ms_precision(now + self.settings.force_timeout));
        run.force_deadline = Some(deadline);
        run.force.send_replace(true);
        if state.set_status(NodeStatus::Forcing) {
            self.status_tx.send_replace(NodeStatus::Forcing);
        }
    }

    fn persist(&self, state: &State) {
        if let Some(run) = &state.run {
            self.intent.save(&DrainIntent::new(
                run.started_at,
                *run.graceful_deadline.borrow(),
                *run.force.borrow(),
                run.force_deadline,
            ));
        }
    }

    /// One drain run: policy stops, the graceful wait, then (on deadline or force) the forced phase.
    async fn run(
        self: Arc<Self>,
        mut force: watch::Receiver<bool>,
        mut deadline: watch::Receiver<Option<SystemTime>>,
    ) {
        let graceful = async {
            self.stop_by_policy();
            self.manager.gate().wait_idle().await;
            // Sandboxes admitted just before the drain closed the gate have started by now.
            self.stop_by_policy();
            let mut counts = self.manager.watch_counts();
            let _ = counts.wait_for(|c| c.live() == 0).await;
        };
        let escalation = async {
            loop {
                if *force.borrow_and_update() {
                    return "forced";
                }
                let until = (*deadline.borrow_and_update())
                    .map(|d| d.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO));
                tokio::select! {
                    () = crate::sleep_or_forever(until) => return "deadline passed",
                    _ = force.changed() => {}
                    _ = deadline.changed() => {}
                }
            }
        };
        tokio::select! {
            () = graceful => {}
            why = escalation => {
                tracing::warn!(why, "drain escalates to the forced phase");
                self.force_phase().await;
            }
        }
        let mut state = self.lock();
        if state.set_status(NodeStatus::Drained) {
            self.status_tx.send_replace(NodeStatus::Drained);
        }
        let report = &state.report;
        tracing::info!(
            force_stopped = report.force_stopped,
            policy_stopped = report.policy_stopped,
            checkpointed = report.checkpointed,
            failures = report.failures.len(),
            "node drained"
        );
        self.publish(&state);
    }

    /// Sends SIGTERM (then kill after their grace) to the sandboxes whose policy is STOP.
    fn stop_by_policy(self: &Arc<Self>) {
        for (key, policy, state) in self.manager.live_keys() {
            if policy == DrainPolicy::Stop && state != SandboxState::Stopping {
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    match this
                        .manager
                        .stop_lifecycle(&key, ExitReason::DrainStopped, StopMode::Graceful)
                        .await
                    {
                        Ok(()) => this.lock().report.policy_stopped += 1,
                        Err(error) => {
                            tracing::warn!(sandbox.id = %key.id, error = %error, "stop by drain policy failed");
                        }
                    }
                });
            }
        }
    }

    /// Stops every live sandbox, concurrently, within the forced phase's bound.
    async fn force_phase(self: &Arc<Self>) {
        let bound = self.settings.force_timeout;
        let deadline = {
            let mut state = self.lock();
            self.enter_forcing(&mut state);
            self.persist(&state);
            self.publish(&state);
            state.run.as_ref().and_then(|run| run.force_deadline).unwrap_or_else(|| SystemTime::now() + bound)
        };
        let remaining = deadline.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        let (results, mut outcomes) = mpsc::unbounded_channel();
        let stops = async {
            let mut seen = HashSet::new();
            let mut started = self.force_pass(&mut seen, &results, remaining);
            // A start still in flight is caught by a final pass once it has finished.
            self.manager.gate().wait_idle().await;
            started += self.force_pass(&mut seen, &results, remaining);
            for _ in 0..started {
                let Some((key, outcome)) = outcomes.recv().await else {
                    break;
                };
                self.record(&key, outcome);
            }
            let mut counts = self.manager.watch_counts();
            let _ = counts.wait_for(|c: &Counts| c.live() == 0).await;
        };
        if tokio::time::timeout(remaining, stops).await.is_err() {
            let mut state = self.lock();
            for (key, _, _) in self.manager.live_keys() {
                tracing::error!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, "sandbox not stopped within the forced phase's bound");
                state.report.failures.push(DrainFailure {
                    subject: key.to_string(),
                    message: format!(
                        "not stopped within FORCE_SHUTDOWN_TIMEOUT ({})",
                        humantime::format_duration(bound)
                    ),
                });
            }
            self.publish(&state);
        }
    }

    /// Starts a stop for every live sandbox not yet seen; returns how many it started.
    fn force_pass(
        self: &Arc<Self>,
        seen: &mut HashSet<SandboxKey>,
        results: &mpsc::UnboundedSender<(SandboxKey, StopOutcome)>,
        bound: Duration,
    ) -> usize {
        let mut started = 0;
        for (key, policy, _) in self.manager.live_keys() {
            if !seen.insert(key.clone()) {
                continue;
            }
            started += 1;
            let this = Arc::clone(self);
            let results = results.clone();
            tokio::spawn(async move {
                let outcome = this.force_one(&key, policy, bound).await;
                let _ = results.send((key, outcome));
            });
        }
        started
    }

    async fn force_one(&self, key: &SandboxKey, policy: DrainPolicy, bound: Duration) -> StopOutcome {
        let manager = &self.manager;
        // Half the bound for SIGTERM, so the kill and the cleanup still fit in it.
        let mode = StopMode::Within(bound / 2);
        if policy == DrainPolicy::Checkpoint {
            if manager.can_checkpoint() {
                return match manager.evacuate(key).await {
                    Ok(snapshot) => StopOutcome::Checkpointed(snapshot),
                    Err(error) => match manager.stop_lifecycle(key, ExitReason::ForceStopped, mode).await {
                        Ok(()) => StopOutcome::Stopped {
                            note: Some(format!(
                                "checkpoint failed ({}); stopped",
                                crate::error_chain(&error)
                            )),
                        },
                        Err(stop) => StopOutcome::Failed(format!(
                            "checkpoint failed ({}); stop failed ({})",
                            crate::error_chain(&error),
                            crate::error_chain(&stop)
                        )),
                    },
                };
            }
            let note = format!("the {} backend cannot checkpoint; stopped instead", manager.runtime_name());
            tracing::warn!(sandbox.id = %key.id, "{note}");
            return match manager.stop_lifecycle(key, ExitReason::DrainStopped, mode).await {
                Ok(()) => StopOutcome::Stopped { note: Some(note) },
                Err(error) => StopOutcome::Failed(crate::error_chain(&error)),
            };
        }
        match manager.stop_lifecycle(key, ExitReason::ForceStopped, mode).await {
            Ok(()) => StopOutcome::Stopped { note: None },
            Err(error) => StopOutcome::Failed(crate::error_chain(&error)),
        }
    }

    fn record(&self, key: &SandboxKey, outcome: StopOutcome) {
        let mut state = self.lock();
        match outcome {
            StopOutcome::Stopped { note } => {
                state.report.force_stopped += 1;
                tracing::warn!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, note, "sandbox force-stopped");
            }
            StopOutcome::Checkpointed(snapshot) => {
                state.report.checkpointed += 1;
                tracing::info!(sandbox.id = %key.id, snapshot = %snapshot, "sandbox evacuated to a snapshot");
                state.report.evacuated.push(Evacuation { sandbox: key.id.to_string(), snapshot });
            }
            StopOutcome::Failed(message) => {
                tracing::error!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, error = %message, "forced stop failed");
                state.report.failures.push(DrainFailure { subject: key.to_string(), message });
            }
        }
        self.publish(&state);
    }
}

/// How one sandbox left in the forced phase.
#[derive(Debug)]
enum StopOutcome {
    Stopped { note: Option<String> },
    Checkpointed(String),
    Failed(String),
}

/// Keeps the published progress in step with the manager's counts, for as long as the
/// coordinator lives.
async fn republish_on_count_changes(inner: Weak<Inner>, mut counts: watch::Receiver<Counts>) {
    while counts.changed().await.is_ok() {
        let Some(inner) = inner.upgrade() else { return };
        let state = inner.lock();
        inner.publish(&state);
    }
}
