//! Re-adoption: what an earlier agent left, found through the runtime and through the records the
//! manager persisted (`store.rs`), back in the table.
//!
//! # Invariants
//!
//! - Every sandbox the runtime finds running is adopted and supervised, whatever was lost of it:
//!   what is missing takes the node's defaults (the end time is the default timeout counted from
//!   its start) and the sandbox carries a [`Condition`] saying so, logged, counted by the
//!   `sandhost_degraded_sandboxes` metric, and persisted, so that a later restart keeps the same
//!   end time and the same conditions.
//! - Every lifecycle that ended is recorded `EXITED` with what is known of its exit, and kept until
//!   its retention ends, counted from its exit (absolute, across any number of restarts); one past
//!   it is forgotten now (the runtime's last files and the record).
//! - A record with no trace left in the runtime is not dropped: it is shown exited, with a
//!   condition, for the retention period.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sandhost_runtime::state_file::StateFileError;
use sandhost_runtime::{Lost, RecoverError, Recovered, RecoveredState, SandboxKey, SandboxSpec};

use super::create::template_name;
use super::manager::Manager;
use super::store::SandboxMeta;
use super::table::Entry;
use super::{Condition, ConditionKind, DrainPolicy, ExitInfo, ExitReason, SandboxInfo, SandboxState};

/// What the manager's store held for a lifecycle.
type Record = Option<Result<SandboxMeta, StateFileError>>;

/// What recovery does with one lifecycle once it is in the table.
enum Then {
    /// It runs: supervise it.
    Supervise,
    /// It ended while no agent ran, or its end was not recorded: record this exit now.
    Finish(ExitInfo),
    /// Its exit was recorded: keep it until its retention ends.
    Keep,
}

/// One lifecycle to put back in the table.
struct Found {
    info: SandboxInfo,
    spec: SandboxSpec,
    then: Then,
    /// Whether recovery changed its record (defaults, conditions): saved again.
    changed: bool,
}

impl Manager {
    /// Adopts what an earlier agent left (see [`Runtime::recover`] and the module's invariants).
    /// Returns how many running sandboxes were adopted.
    ///
    /// # Errors
    ///
    /// The runtime's error when the state dir cannot be read.
    ///
    /// [`Runtime::recover`]: sandhost_runtime::Runtime::recover
    pub async fn recover(self: &Arc<Self>) -> Result<usize, RecoverError> {
        let recovered = self.runtime.recover().await?;
        let mut records: HashMap<SandboxKey, Result<SandboxMeta, StateFileError>> =
            self.store.list().into_iter().collect();
        let mut found: Vec<Found> = Vec::new();
        for sandbox in recovered {
            let record = records.remove(&sandbox.spec.key);
            found.push(self.found_by_runtime(sandbox, record));
        }
        found.extend(records.into_iter().map(|(key, record)| self.found_by_record_alone(key, record)));
        // One entry per id in the table: the exited lifecycles first, oldest first, then those to
        // record exited now (each recorded at once), the running one last, so that it is the one
        // kept. The replaced ones are still forgotten when their retention ends.
        let rank = |state: SandboxState| match state {
            SandboxState::Exited => 0,
            SandboxState::Stopping => 1,
            _ => 2,
        };
        found.sort_by_key(|f| (rank(f.info.state), f.info.exited_at.or(f.info.started_at)));
        let mut adopted = 0;
        for Found { info, spec, then, changed } in found {
            let key = spec.key.clone();
            if let (Then::Keep, Some(exited_at)) = (&then, info.exited_at)
                && self.retention_left(exited_at).is_zero()
            {
                self.forget(&key).await;
                continue;
            }
            for condition in &info.conditions {
                tracing::warn!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, condition = condition.kind.as_str(), message = %condition.message, "a sandbox was recovered degraded");
            }
            if changed && let Err(error) = self.store.save(&SandboxMeta::from_entry(&info)) {
                tracing::warn!(sandbox.id = %key.id, error = %error, "cannot persist sandbox metadata");
            }
            let exited_at = info.exited_at;
            let entry = Entry::new(info, spec);
            let end_changed = Arc::clone(&entry.end_changed);
            self.lock().insert(entry);
            match then {
                Then::Supervise => {
                    tracing::info!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, "re-adopted a running sandbox");
                    adopted += 1;
                    tokio::spawn(Arc::clone(self).supervise(key, end_changed));
                }
                Then::Finish(exit) => {
                    tracing::info!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, "a sandbox ended while no agent was running");
                    self.finish(&key, exit).await;
                }
                Then::Keep => self.forget_after_retention(key, exited_at.unwrap_or_else(SystemTime::now)),
            }
        }
        Ok(adopted)
    }

    /// A lifecycle the runtime found, with the record the store had of it.
    fn found_by_runtime(&self, sandbox: Recovered, record: Record) -> Found {
        let Recovered { spec, started_at, state, lost } = sandbox;
        let (meta, record_lost) = split(record);
        let unidentified = lost.iter().find_map(|l| match l {
            Lost::Unidentified { cgroup } => Some(cgroup.clone()),
            Lost::State(_) => None,
        });
        let mut conditions: Vec<Condition> = lost.iter().map(condition_of).collect();
        if unidentified.is_none()
            && let Some(reason) = record_lost
        {
            conditions.push(metadata_lost(&reason));
        }
        let ended = "it ended while no agent was running";
        // Only its log was left: the runtime knows nothing more of it than its key.
        let cleaned_up = state == RecoveredState::CleanedUp;
        let (state, then) = match state {
            RecoveredState::Running { paused } => {
                (if paused { SandboxState::Paused } else { SandboxState::Running }, Then::Supervise)
            }
            RecoveredState::Exited(exit) => {
                let (reason, message) = match &unidentified {
                    Some(cgroup) => (ExitReason::Unidentified, unidentified_message(cgroup)),
                    None => (ExitReason::Exited, ended.to_owned()),
                };
                (
                    SandboxState::Stopping,
                    Then::Finish(ExitInfo { exit, reason, message: Some(message), oom_killed: None }),
                )
            }
            RecoveredState::CleanedUp if meta.as_ref().is_some_and(|m| m.exited_at().is_some()) => {
                (SandboxState::Exited, Then::Keep)
            }
            RecoveredState::CleanedUp => {
                let message = format!("{ended}; its exit was not recorded");
                let exit = ExitInfo {
                    exit: None,
                    reason: ExitReason::Exited,
                    message: Some(message),
                    oom_killed: None,
                };
                (SandboxState::Stopping, Then::Finish(exit))
            }
        };
        let spec_lost = lost.iter().any(|l| matches!(l, Lost::State(_)));
        let changed = !conditions.is_empty();
        let mut info = match meta {
            Some(meta) => {
                let mut info = meta.to_info(state);
                if !matches!(then, Then::Keep) {
                    (info.exit, info.exited_at) = (None, None);
                }
                // What the runtime read is the truth; the record stands in for what it lost.
                if !spec_lost && !cleaned_up {
                    info.argv.clone_from(&spec.argv);
                    info.limits = spec.limits;
                    info.restored_from.clone_from(&spec.restore_from);
                }
                if !cleaned_up {
                    info.started_at = Some(started_at);
                }
                info
            }
            None => self.defaults(&spec, started_at, state),
        };
        merge(&mut info.conditions, conditions);
        Found { info, spec, then, changed }
    }

    /// A record with no lifecycle in the runtime: an exit kept for its retention, or a sandbox of
    /// which no trace is left (recorded exited now).
    fn found_by_record_alone(&self, key: SandboxKey, record: Result<SandboxMeta, StateFileError>) -> Found {
        let spec = SandboxSpec::new(key, Vec::new());
        let no_trace = Condition {
            kind: ConditionKind::RuntimeStateLost,
            message:
                "no trace of it was left in the runtime at recovery (it ended, or its start was undone, \
                      while no agent was running): its exit is unknown"
                    .to_owned(),
        };
        let vanished = ExitInfo {
            exit: None,
            reason: ExitReason::Exited,
            message: Some("it ended while no agent was running; its exit is unknown".to_owned()),
            oom_killed: None,
        };
        match record {
            Ok(meta) => match meta.exited_at() {
                Some(_) => {
                    Found { info: meta.to_info(SandboxState::Exited), spec, then: Then::Keep, changed: false }
                }
                None => {
                    let mut info = meta.to_info(SandboxState::Stopping);
                    merge(&mut info.conditions, vec![no_trace]);
                    Found { info, spec, then: Then::Finish(vanished), changed: true }
                }
            },
            Err(error) => {
                let mut info = self.defaults(&spec, SystemTime::now(), SandboxState::Stopping);
                info.started_at = None;
                info.end_time = None;
                merge(&mut info.conditions, vec![metadata_lost(&error), no_trace]);
                Found { info, spec, then: Then::Finish(vanished), changed: true }
            }
        }
    }

    /// The read model of a sandbox the manager has no record of: the node's defaults (the end
    /// time is the default timeout counted from its start).
    fn defaults(&self, spec: &SandboxSpec, started_at: SystemTime, state: SandboxState) -> SandboxInfo {
        SandboxInfo {
            id: spec.key.id.clone(),
            lifecycle: spec.key.lifecycle.clone(),
            state,
            argv: spec.argv.clone(),
            template: template_name(&spec.template),
            limits: spec.limits,
            labels: std::collections::BTreeMap::new(),
            drain_policy: DrainPolicy::default(),
            created_at: started_at,
            started_at: Some(started_at),
            end_time: Some(started_at + self.config.default_timeout),
            exited_at: None,
            exit: None,
            restored_from: spec.restore_from.clone(),
            conditions: Vec::new(),
        }
    }

    /// How much of the retention of an exit at `exited_at` is left.
    pub(super) fn retention_left(&self, exited_at: SystemTime) -> Duration {
        (exited_at + self.config.retention).duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
    }
}

/// The record, and why it is not there (missing or damaged), as a reason for people.
fn split(record: Record) -> (Option<SandboxMeta>, Option<String>) {
    match record {
        Some(Ok(meta)) => (Some(meta), None),
        Some(Err(error)) => (None, Some(crate::error_chain(&error))),
        None => (None, Some("no record of it was found".to_owned())),
    }
}

fn metadata_lost(reason: &impl std::fmt::Display) -> Condition {
    Condition {
        kind: ConditionKind::MetadataLost,
        message: format!(
            "{reason}: its end time (the node's default timeout from its start), labels and drain policy \
             are the node's defaults"
        ),
    }
}

fn unidentified_message(cgroup: &str) -> String {
    format!(
        "a cgroup under the node's parent that named no sandbox ({cgroup}): its processes were killed at recovery"
    )
}

fn condition_of(lost: &Lost) -> Condition {
    match lost {
        Lost::State(message) => Condition { kind: ConditionKind::RuntimeStateLost, message: message.clone() },
        Lost::Unidentified { cgroup } => {
            Condition { kind: ConditionKind::Unidentified, message: unidentified_message(cgroup) }
        }
    }
}

/// Adds the conditions not already there.
fn merge(into: &mut Vec<Condition>, conditions: Vec<Condition>) {
    for condition in conditions {
        if !into.contains(&condition) {
            into.push(condition);
        }
    }
}
