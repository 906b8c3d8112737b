//! The drain coordinator: the one owner of the node status (through its [`AdmissionControl`]) and
//! of the drain phases. Its state and publishing are in `status.rs`, the forced phase in
//! `force.rs`, what a drain did in `report.rs`.
//!
//! # Invariants
//!
//! - **Close admission before publishing.** The status changes only through
//!   [`AdmissionControl::set_status`], which closes the gate before the new status is visible, so
//!   whoever sees DRAINING (GetInfo, gRPC health, `/health/ready`) can rely on every new Create
//!   being refused.
//! - **Admitted starts are never aborted.** The drain only waits for the gate to be idle; the
//!   starts themselves hold their permits until the sandbox runs or has failed.
//! - **Event-driven.** The graceful phase ends on the manager's count change that makes the live
//!   count zero; nothing polls.
//! - **Bounded force.** See `force.rs`.
//! - **One drain at a time.** A drain run is cancelled by undrain; status changes happen under one
//!   lock.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sandhost_runtime::SandboxKey;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::intent::{DrainIntent, DrainOrigin, IntentStore, at_ms_precision};
use super::status::{Run, State, republish_on_count_changes};
use super::{DrainError, DrainProgress, DrainReport, DrainRequest, InterruptedShutdown, NodeStatus};
use crate::admission::AdmissionControl;
use crate::metrics::{DrainOutcome, Metrics};
use crate::sandbox::{DrainPolicy, ExitReason, Manager, SandboxState, StopMode};

/// What [`DrainCoordinator::resume_persisted`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// No persisted drain.
    Nothing,
    /// An operator's drain, continued with its deadlines.
    Drain,
    /// A shutdown's drain that the previous process did not finish: not continued.
    InterruptedShutdown(InterruptedShutdown),
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
pub(super) struct Inner {
    pub(super) manager: Arc<Manager>,
    pub(super) admission: AdmissionControl,
    pub(super) progress_tx: watch::Sender<DrainProgress>,
    pub(super) state: Mutex<State>,
    pub(super) settings: DrainSettings,
    pub(super) intent: IntentStore,
    pub(super) metrics: Metrics,
}

impl DrainCoordinator {
    /// A coordinator for `manager`, owning `admission`: the control side of the admission handle
    /// the manager holds (see [`crate::admission::channel`]). Must be called inside a tokio runtime.
    #[must_use]
    pub fn new(
        manager: Arc<Manager>,
        admission: AdmissionControl,
        settings: DrainSettings,
        intent_path: std::path::PathBuf,
        metrics: Metrics,
    ) -> Self {
        let now = SystemTime::now();
        let progress = DrainProgress::idle(admission.status(), now);
        let inner = Arc::new(Inner {
            manager,
            admission,
            progress_tx: watch::Sender::new(progress),
            state: Mutex::new(State::new(now)),
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
        self.inner.admission.status()
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
        self.inner.admission.subscribe()
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
        self.inner.begin(deadline, request.force, DrainOrigin::Operator, None);
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
                if inner.admission.status() != NodeStatus::Drained {
                    inner.metrics.observe_drain(DrainOutcome::Undrained, run.elapsed());
                }
            }
            if inner.set_status(&mut state, NodeStatus::Ready) {
                state.report = DrainReport::default();
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
        self.inner.begin(deadline, force, DrainOrigin::Shutdown, None);
    }

    /// Ends a shutdown whose drain completed. A shutdown's own drain is forgotten: the next agent
    /// starts READY. An operator's drain stays persisted: the node stays closed until undrain.
    pub fn complete_shutdown(&self) {
        let state = self.inner.lock();
        if state.run.as_ref().is_none_or(|run| run.origin == DrainOrigin::Shutdown) {
            self.inner.intent.clear();
        }
    }

    /// Skips to the forced phase (a second signal).
    pub fn escalate(&self) {
        self.inner.begin(None, true, DrainOrigin::Shutdown, None);
    }

    /// Picks up the drain an earlier agent persisted. An operator's drain is continued with its
    /// deadlines. A shutdown's drain that the earlier process did not finish is not: the node stays
    /// READY, and the cut-short shutdown is reported (log, [`DrainCoordinator::interrupted_shutdown`],
    /// metric). Call it after the sandboxes were re-adopted: the report counts them.
    pub fn resume_persisted(&self) -> Resumed {
        let inner = &self.inner;
        let Some(intent) = inner.intent.load() else {
            return Resumed::Nothing;
        };
        if intent.origin == DrainOrigin::Operator {
            tracing::info!(?intent, "continuing the drain of the previous agent");
            inner.begin(intent.graceful_deadline(), intent.force, intent.origin, Some(&intent));
            return Resumed::Drain;
        }
        let interrupted = InterruptedShutdown {
            began_at: intent.started_at(),
            live_at_restart: inner.manager.watch_counts().borrow().live(),
        };
        tracing::warn!(
            began_at = %humantime::format_rfc3339_millis(interrupted.began_at),
            live = interrupted.live_at_restart,
            "the previous agent's shutdown was cut short before its drain ended; its sandboxes were re-adopted and this node admits again"
        );
        inner.intent.clear();
        inner.metrics.set_interrupted_shutdown(true);
        inner.lock().interrupted_shutdown = Some(interrupted);
        Resumed::InterruptedShutdown(interrupted)
    }

    /// The previous agent's shutdown, if it was cut short before its drain ended.
    #[must_use]
    pub fn interrupted_shutdown(&self) -> Option<InterruptedShutdown> {
        self.inner.lock().interrupted_shutdown
    }

    /// Completes once the node is DRAINED.
    pub async fn wait_drained(&self) {
        let mut status = self.inner.admission.subscribe();
        // The sender lives as long as `self`.
        let _ = status.wait_for(|s| *s == NodeStatus::Drained).await;
    }
}

impl Inner {
    /// Starts a drain, or tightens / escalates the running one (whose origin becomes the
    /// operator's if either is).
    fn begin(
        self: &Arc<Self>,
        deadline: Option<SystemTime>,
        force: bool,
        origin: DrainOrigin,
        persisted: Option<&DrainIntent>,
    ) {
        let mut state = self.lock();
        if let Some(run) = &mut state.run {
            run.origin = run.origin.and(origin);
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
            let cancel = CancellationToken::new();
            let run = Run {
                cancel: cancel.clone(),
                force: watch::Sender::new(false),
                graceful_deadline: watch::Sender::new(deadline),
                force_deadline: persisted.and_then(DrainIntent::force_deadline),
                started_at: persisted.map_or_else(SystemTime::now, DrainIntent::started_at),
                origin,
            };
            let force_rx = run.force.subscribe();
            let deadline_rx = run.graceful_deadline.subscribe();
            state.run = Some(run);
            state.exits_at_start = self.manager.watch_counts().borrow().exits;
            state.report = DrainReport::default();
            // Admission closes before anyone can see the new status.
            self.set_status(&mut state, NodeStatus::Draining);
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

    /// One drain run: policy stops, the graceful wait, then (on deadline or force) the forced phase.
    async fn run(
        self: Arc<Self>,
        mut force: watch::Receiver<bool>,
        mut deadline: watch::Receiver<Option<SystemTime>>,
    ) {
        let graceful = async {
            let mut stopped = HashSet::new();
            self.stop_by_policy(&mut stopped);
            self.admission.wait_idle().await;
            // Sandboxes admitted just before the drain closed the gate have started by now.
            self.stop_by_policy(&mut stopped);
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
        let forced = tokio::select! {
            () = graceful => false,
            why = escalation => {
                tracing::warn!(why, "drain escalates to the forced phase");
                self.force_phase().await;
                true
            }
        };
        let mut state = self.lock();
        self.set_status(&mut state, NodeStatus::Drained);
        let report = &state.report;
        let outcome = match (forced, report.failures.is_empty()) {
            (false, _) => DrainOutcome::Clean,
            (true, true) => DrainOutcome::Forced,
            (true, false) => DrainOutcome::Failed,
        };
        if let Some(run) = &state.run {
            self.metrics.observe_drain(outcome, run.elapsed());
        }
        tracing::info!(
            force_stopped = report.force_stopped,
            policy_stopped = report.policy_stopped,
            checkpointed = report.checkpointed,
            failures = report.failures.len(),
            "node drained"
        );
        self.publish(&state);
    }

    /// Sends SIGTERM (then kill after their grace) to the sandboxes whose policy is STOP, each
    /// lifecycle once (`stopped` remembers them across the passes).
    fn stop_by_policy(self: &Arc<Self>, stopped: &mut HashSet<SandboxKey>) {
        for (key, policy, state) in self.manager.live_keys() {
            if policy == DrainPolicy::Stop && state != SandboxState::Stopping && stopped.insert(key.clone()) {
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    match this
                        .manager
                        .stop_lifecycle(&key, ExitReason::DrainStopped, StopMode::Graceful)
                        .await
                    {
                        Ok(()) => {
                            let mut state = this.lock();
                            state.report.policy_stopped += 1;
                            this.metrics.count_policy_stopped();
                            this.publish(&state);
                        }
                        Err(error) => {
                            tracing::warn!(sandbox.id = %key.id, error = %error, "stop by drain policy failed");
                        }
                    }
                });
            }
        }
    }
}
