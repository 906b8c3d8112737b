//! The table of sandboxes, keyed by sandbox id, each entry one lifecycle; its counts per state.
//!
//! # Invariants
//!
//! - Every state change goes through [`Table::transition`], which checks
//!   [`SandboxState::can_become`], publishes the new counts and counts the exit. Nothing else writes
//!   a state.
//! - An operation on a lifecycle finds its entry through [`Table::entry`] or [`Table::entry_mut`],
//!   which match the lifecycle id too: a stale stop never touches a later sandbox with the same id.
//! - `counts` always equals the states of the entries, and `allocated` the limits of the live ones
//!   (a sandbox's limits never change while it lives).

use std::collections::HashMap;
use std::sync::Arc;

use sandhost_runtime::{Limits, SandboxId, SandboxKey, SandboxSpec};
use tokio::sync::{Notify, watch};

use super::stop::StopMode;
use super::{ConditionKind, ExitReason, Resources, SandboxError, SandboxInfo, SandboxState, validate};
use crate::metrics::Metrics;

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

    fn slot(&mut self, state: SandboxState) -> &mut u64 {
        &mut self.by_state[state_index(state)]
    }
}

fn state_index(state: SandboxState) -> usize {
    SandboxState::ALL.iter().position(|s| *s == state).unwrap_or(0)
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

impl Entry {
    /// An entry in `info.state`, with no stop asked for.
    pub(super) fn new(info: SandboxInfo, spec: SandboxSpec) -> Self {
        let state_tx = watch::Sender::new(info.state);
        Self {
            info,
            spec,
            stop_reason: None,
            pending_stop: None,
            state_tx,
            end_changed: Arc::new(Notify::new()),
        }
    }
}

/// The sandboxes, and the channel and metrics their counts are published to.
pub(super) struct Table {
    pub(super) sandboxes: HashMap<SandboxId, Entry>,
    counts: Counts,
    /// Entries per [`ConditionKind`], in [`ConditionKind::ALL`] order.
    degraded: [u64; ConditionKind::ALL.len()],
    allocated: Resources,
    publish: watch::Sender<Counts>,
    metrics: Metrics,
}

impl Table {
    pub(super) fn new(publish: watch::Sender<Counts>, metrics: Metrics) -> Self {
        Self {
            sandboxes: HashMap::new(),
            counts: Counts::default(),
            degraded: [0; ConditionKind::ALL.len()],
            allocated: Resources::default(),
            publish,
            metrics,
        }
    }

    pub(super) fn counts(&self) -> Counts {
        self.counts
    }

    /// What the live sandboxes were given.
    pub(super) fn allocated(&self) -> Resources {
        self.allocated
    }

    /// Adds (`add`) or removes a live sandbox's limits from the allocation.
    fn allocate(&mut self, limits: Limits, add: bool) {
        let memory = limits.memory_bytes.unwrap_or(0);
        let cpu = u64::from(limits.cpu_millis.unwrap_or(0));
        let total = &mut self.allocated;
        if add {
            total.sandboxes += 1;
            total.memory_bytes += memory;
            total.cpu_millis += cpu;
        } else {
            total.sandboxes = total.sandboxes.saturating_sub(1);
            total.memory_bytes = total.memory_bytes.saturating_sub(memory);
            total.cpu_millis = total.cpu_millis.saturating_sub(cpu);
        }
        self.metrics.set_allocated(self.allocated);
    }

    /// The entry of this lifecycle, if it is still the one under its id.
    pub(super) fn entry(&self, key: &SandboxKey) -> Option<&Entry> {
        self.sandboxes.get(&key.id).filter(|e| e.info.lifecycle == key.lifecycle)
    }

    /// The entry of this lifecycle, if it is still the one under its id.
    pub(super) fn entry_mut(&mut self, key: &SandboxKey) -> Option<&mut Entry> {
        self.sandboxes.get_mut(&key.id).filter(|e| e.info.lifecycle == key.lifecycle)
    }

    /// The entry under a sandbox id from a request (validated here).
    pub(super) fn find(&self, id: &str) -> Result<&Entry, SandboxError> {
        let id = validate::sandbox_id("id", id)?;
        self.sandboxes.get(&id).ok_or_else(|| SandboxError::NotFound(id.to_string()))
    }

    /// The one place a sandbox changes state. Returns the previous state, or the state that
    /// forbids the change (`Exited` for a lifecycle no longer in the table).
    pub(super) fn transition(
        &mut self,
        key: &SandboxKey,
        next: SandboxState,
    ) -> Result<SandboxState, SandboxState> {
        let Some(entry) = self.entry_mut(key) else {
            return Err(SandboxState::Exited);
        };
        let previous = entry.info.state;
        if !previous.can_become(next) {
            return Err(previous);
        }
        tracing::info!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, from = previous.as_str(), to = next.as_str(), "sandbox state");
        entry.info.state = next;
        entry.state_tx.send_replace(next);
        let limits = (next == SandboxState::Exited).then_some(entry.info.limits);
        *self.counts.slot(previous) -= 1;
        *self.counts.slot(next) += 1;
        if let Some(limits) = limits {
            self.counts.exits += 1;
            self.allocate(limits, false);
        }
        self.publish_counts(&[previous, next]);
        Ok(previous)
    }

    /// Counts the conditions of an entry coming (`held`) or going.
    fn count_conditions(&mut self, info: &SandboxInfo, held: bool) {
        for condition in &info.conditions {
            let i = ConditionKind::ALL.iter().position(|k| *k == condition.kind).unwrap_or(0);
            self.degraded[i] = if held { self.degraded[i] + 1 } else { self.degraded[i].saturating_sub(1) };
            self.metrics.set_degraded(condition.kind, self.degraded[i]);
        }
    }

    /// Inserts an entry, replacing an exited one under the same id.
    pub(super) fn insert(&mut self, entry: Entry) {
        let state = entry.info.state;
        let mut changed = vec![state];
        if state.is_live() {
            self.allocate(entry.info.limits, true);
        }
        self.count_conditions(&entry.info, true);
        if let Some(old) = self.sandboxes.insert(entry.info.id.clone(), entry) {
            *self.counts.slot(old.info.state) -= 1;
            changed.push(old.info.state);
            if old.info.state.is_live() {
                self.allocate(old.info.limits, false);
            }
            self.count_conditions(&old.info, false);
        }
        *self.counts.slot(state) += 1;
        self.publish_counts(&changed);
    }

    /// Removes this lifecycle if it has exited (retention). Returns whether it did.
    pub(super) fn remove_exited(&mut self, key: &SandboxKey) -> bool {
        let exited = self.entry(key).is_some_and(|e| e.info.state == SandboxState::Exited);
        if exited && let Some(old) = self.sandboxes.remove(&key.id) {
            self.count_conditions(&old.info, false);
            *self.counts.slot(SandboxState::Exited) -= 1;
            self.publish_counts(&[SandboxState::Exited]);
        }
        exited
    }

    fn publish_counts(&self, changed: &[SandboxState]) {
        for state in changed {
            self.metrics.set_sandboxes(*state, self.counts.get(*state));
        }
        self.publish.send_replace(self.counts);
    }
}
