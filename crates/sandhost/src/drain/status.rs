//! The coordinator's state and its publishing: the status machine (through the admission control,
//! which closes the gate before a status is seen), the current run, and the progress that every
//! observer reads (`WatchDrain`, `GetInfo`, health, metrics), recomputed on each change.

use std::sync::{MutexGuard, PoisonError, Weak};
use std::time::SystemTime;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::coordinator::Inner;
use super::intent::{DrainIntent, DrainOrigin, at_ms_precision};
use super::{DrainProgress, DrainReport, InterruptedShutdown, NodeStatus};
use crate::sandbox::{Counts, SandboxState};

/// What the coordinator's lock guards.
#[derive(Debug)]
pub(super) struct State {
    pub(super) changed_at: SystemTime,
    pub(super) shutting_down: bool,
    pub(super) run: Option<Run>,
    pub(super) exits_at_start: u64,
    pub(super) report: DrainReport,
    /// The previous agent's shutdown, if it was cut short.
    pub(super) interrupted_shutdown: Option<InterruptedShutdown>,
}

impl State {
    pub(super) fn new(now: SystemTime) -> Self {
        Self {
            changed_at: now,
            shutting_down: false,
            run: None,
            exits_at_start: 0,
            report: DrainReport::default(),
            interrupted_shutdown: None,
        }
    }
}

/// The drain in progress.
#[derive(Debug)]
pub(super) struct Run {
    pub(super) cancel: CancellationToken,
    pub(super) force: watch::Sender<bool>,
    pub(super) graceful_deadline: watch::Sender<Option<SystemTime>>,
    pub(super) force_deadline: Option<SystemTime>,
    pub(super) started_at: SystemTime,
    pub(super) origin: DrainOrigin,
}

impl Run {
    /// How long this drain has run (from its persisted start, for a drain an earlier agent began).
    pub(super) fn elapsed(&self) -> std::time::Duration {
        SystemTime::now().duration_since(self.started_at).unwrap_or_default()
    }
}

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // State changes are single assignments; a panic cannot leave them half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The one place the coordinator changes the status (under its lock, so `changed_at` follows).
    /// Returns whether it changed.
    pub(super) fn set_status(&self, state: &mut State, next: NodeStatus) -> bool {
        let changed = self.admission.set_status(next);
        if changed {
            state.changed_at = SystemTime::now();
        }
        changed
    }

    /// Recomputes the progress from the state and the manager's counts, and publishes it.
    pub(super) fn publish(&self, state: &State) {
        let counts = *self.manager.watch_counts().borrow();
        let status = self.admission.status();
        let deadline = state.run.as_ref().and_then(|run| match status {
            NodeStatus::Forcing => run.force_deadline,
            NodeStatus::Draining => *run.graceful_deadline.borrow(),
            _ => None,
        });
        let draining = status != NodeStatus::Ready;
        let progress = DrainProgress {
            status,
            status_changed_at: state.changed_at,
            shutting_down: state.shutting_down,
            in_flight_starts: counts.get(SandboxState::Starting),
            live: counts.live(),
            exited: if draining { counts.exits.saturating_sub(state.exits_at_start) } else { 0 },
            force_stopped: state.report.force_stopped,
            policy_stopped: state.report.policy_stopped,
            checkpointed: state.report.checkpointed,
            deadline,
            failures: state.report.failures.clone(),
            evacuated: state.report.evacuated.clone(),
        };
        self.metrics.set_drain(&progress);
        self.progress_tx.send_if_modified(|current| {
            let changed = *current != progress;
            *current = progress;
            changed
        });
    }

    /// Moves a running drain to FORCING (once): fixes the forced phase's deadline, publishes the
    /// status, and wakes the run. A drain that has already finished has nothing to force.
    pub(super) fn enter_forcing(&self, state: &mut State) {
        if self.admission.status() == NodeStatus::Drained {
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
        self.set_status(state, NodeStatus::Forcing);
    }

    /// Writes the running drain's intent (deadlines included) for a restarted agent.
    pub(super) fn persist(&self, state: &State) {
        if let Some(run) = &state.run {
            self.intent.save(&DrainIntent::new(
                run.started_at,
                *run.graceful_deadline.borrow(),
                *run.force.borrow(),
                run.force_deadline,
                run.origin,
            ));
        }
    }
}

/// Keeps the published progress in step with the manager's counts, for as long as the
/// coordinator lives.
pub(super) async fn republish_on_count_changes(inner: Weak<Inner>, mut counts: watch::Receiver<Counts>) {
    while counts.changed().await.is_ok() {
        let Some(inner) = inner.upgrade() else { return };
        let state = inner.lock();
        inner.publish(&state);
    }
}
