//! Admission and the node status, with one owner.
//!
//! [`channel`] makes the pair. [`AdmissionControl`] is held by the drain coordinator alone: the one
//! that can drain is the one that owns the gate and the status. [`Admission`] is the narrow handle
//! the sandbox manager holds: enter, and ask whether the forced phase has begun. This module
//! depends on neither `sandbox` nor `drain`, so neither depends on the other through it.
//!
//! # Invariants
//!
//! - **Close admission before publishing.** [`AdmissionControl::set_status`] is the one place the
//!   status changes. Into any status but READY it closes the gate *before* the new status becomes
//!   visible, so whoever sees DRAINING (GetInfo, gRPC health, `/health/ready`) can rely on every new
//!   Create being refused. Into READY it reopens the gate, then publishes.
//! - **Transitions are checked.** [`NodeStatus::can_become`] is the state machine; a transition it
//!   does not allow changes nothing.
//! - A refusal names the status: in the instant between the gate closing and DRAINING being
//!   published, a refused Create reads DRAINING, never READY.

use std::fmt;

use draingate::{Gate, Permit};
use tokio::sync::watch;

/// The node's status: whether it admits new sandboxes and where its drain is.
///
/// ```text
/// READY --drain / SIGTERM--> DRAINING --live = 0--> DRAINED --(shutdown)--> exit
///                               |  ^                   |
///    deadline, 2nd signal,      |  +----- undrain -----+   (not while shutting down)
///    ForceStop API              v
///                           FORCING --all stopped or force deadline--> DRAINED
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeStatus {
    /// Admitting new sandboxes.
    Ready,
    /// Not admitting; waiting for live sandboxes to leave.
    Draining,
    /// Not admitting; nothing live is left.
    Drained,
    /// Not admitting; stopping every live sandbox.
    Forcing,
    /// The agent cannot serve (its runtime failed); not admitting.
    Unhealthy,
}

impl NodeStatus {
    /// Every status, for metrics.
    pub const ALL: [Self; 5] = [Self::Ready, Self::Draining, Self::Drained, Self::Forcing, Self::Unhealthy];

    /// The uppercase name used in the API, health bodies and logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "READY",
            Self::Draining => "DRAINING",
            Self::Drained => "DRAINED",
            Self::Forcing => "FORCING",
            Self::Unhealthy => "UNHEALTHY",
        }
    }

    /// The lowercase name used as a metric label value (every label value of sandhost's metrics is
    /// lowercase).
    #[must_use]
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Draining => "draining",
            Self::Drained => "drained",
            Self::Forcing => "forcing",
            Self::Unhealthy => "unhealthy",
        }
    }

    /// Whether a node in this status admits new sandboxes.
    #[must_use]
    pub fn admits(self) -> bool {
        self == Self::Ready
    }

    /// Whether the node may move from this status to `next` (the diagram above).
    #[must_use]
    pub fn can_become(self, next: Self) -> bool {
        use NodeStatus::{Drained, Draining, Forcing, Ready, Unhealthy};
        matches!(
            (self, next),
            (Ready | Unhealthy, Draining)
                | (Draining, Forcing | Drained | Ready)
                | (Forcing, Drained | Ready)
                | (Drained, Ready | Forcing)
                | (_, Unhealthy)
        )
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A start was refused: the node is not admitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("node is {status}: not admitting")]
pub struct NotAdmitting {
    /// The node's status when the start was refused.
    pub status: NodeStatus,
}

/// A new pair over an open gate and a READY status.
#[must_use]
pub fn channel() -> (AdmissionControl, Admission) {
    let gate = Gate::new();
    let (status, receiver) = watch::channel(NodeStatus::Ready);
    let admission = Admission { gate: gate.clone(), status: receiver };
    (AdmissionControl { gate, status }, admission)
}

/// The owner's side: sets the status, and with it opens or closes the gate. Not `Clone`: one owner.
#[derive(Debug)]
pub struct AdmissionControl {
    gate: Gate,
    status: watch::Sender<NodeStatus>,
}

impl AdmissionControl {
    /// The status now.
    #[must_use]
    pub fn status(&self) -> NodeStatus {
        *self.status.borrow()
    }

    /// Moves the node to `next` if the state machine allows it: closes (or, into READY, reopens) the
    /// gate first, then publishes. Returns whether the status changed.
    pub fn set_status(&self, next: NodeStatus) -> bool {
        self.status.send_if_modified(|current| {
            if !current.can_become(next) {
                return false;
            }
            // Receivers cannot read the value while this closure runs: the gate changes first.
            if next.admits() {
                self.gate.reopen();
            } else {
                self.gate.start_draining();
            }
            tracing::info!(from = current.as_str(), to = next.as_str(), "node status");
            *current = next;
            true
        })
    }

    /// Every change of the status, starting with the current one.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<NodeStatus> {
        self.status.subscribe()
    }

    /// Completes once the gate is closed and every admitted start has released its permit.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping it only stops waiting.
    pub async fn wait_idle(&self) {
        self.gate.wait_idle().await;
    }
}

/// The manager's side: admits starts while the node is READY. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    gate: Gate,
    status: watch::Receiver<NodeStatus>,
}

impl Admission {
    /// Admits one start: a [`Permit`] that holds the drain until it is dropped, or the status that
    /// refused it. Admission and counting are one atomic step (see `draingate`).
    ///
    /// # Errors
    ///
    /// [`NotAdmitting`] once the node drains.
    pub fn enter(&self) -> Result<Permit, NotAdmitting> {
        self.gate.enter().map_err(|_| {
            // The gate closes before the status is published: a refusal in that window reads
            // DRAINING.
            let status = match *self.status.borrow() {
                NodeStatus::Ready => NodeStatus::Draining,
                other => other,
            };
            NotAdmitting { status }
        })
    }

    /// A refusal now if the gate is closed: a cheap look before work that a refusal would waste.
    /// Only [`Admission::enter`] admits.
    ///
    /// # Errors
    ///
    /// [`NotAdmitting`] once the node drains.
    pub fn check_open(&self) -> Result<(), NotAdmitting> {
        if self.gate.is_draining() { self.enter().map(drop) } else { Ok(()) }
    }

    /// Whether the drain's forced phase has begun (a start whose turn comes now is not begun).
    #[must_use]
    pub fn is_forcing(&self) -> bool {
        *self.status.borrow() == NodeStatus::Forcing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_closes_before_a_draining_status_is_visible_and_reopens_with_ready() {
        let (control, admission) = channel();
        let permit = admission.enter().expect("ready admits");
        assert_eq!(admission.check_open(), Ok(()));
        assert!(control.set_status(NodeStatus::Draining));
        assert_eq!(admission.enter().map(drop), Err(NotAdmitting { status: NodeStatus::Draining }));
        assert_eq!(admission.check_open(), Err(NotAdmitting { status: NodeStatus::Draining }));
        assert!(!admission.is_forcing());
        assert!(control.set_status(NodeStatus::Forcing));
        assert!(admission.is_forcing());
        assert_eq!(admission.enter().map(drop), Err(NotAdmitting { status: NodeStatus::Forcing }));
        drop(permit);
        assert!(control.set_status(NodeStatus::Ready));
        assert!(admission.enter().is_ok(), "undrain reopens the gate");
    }

    #[test]
    fn a_transition_the_state_machine_forbids_changes_nothing() {
        let (control, admission) = channel();
        let mut status = control.subscribe();
        status.mark_unchanged();
        assert!(!control.set_status(NodeStatus::Forcing), "READY cannot go straight to FORCING");
        assert!(!control.set_status(NodeStatus::Drained));
        assert!(!control.set_status(NodeStatus::Ready), "no change is not a transition");
        assert_eq!(control.status(), NodeStatus::Ready);
        assert!(!status.has_changed().expect("sender alive"));
        assert!(admission.enter().is_ok(), "the gate stayed open");
    }

    #[test]
    fn a_refusal_before_the_status_is_published_reads_draining() {
        let (control, admission) = channel();
        // The gate alone closed (as inside set_status, before the value is written).
        control.gate.start_draining();
        assert_eq!(admission.enter().map(drop), Err(NotAdmitting { status: NodeStatus::Draining }));
    }

    #[test]
    fn the_transitions_are_the_diagrams() {
        use NodeStatus::{Drained, Draining, Forcing, Ready, Unhealthy};
        let allowed: Vec<(NodeStatus, NodeStatus)> = NodeStatus::ALL
            .iter()
            .flat_map(|a| NodeStatus::ALL.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.can_become(*b))
            .collect();
        let expected = [
            (Ready, Draining),
            (Ready, Unhealthy),
            (Draining, Ready),
            (Draining, Drained),
            (Draining, Forcing),
            (Draining, Unhealthy),
            (Drained, Ready),
            (Drained, Forcing),
            (Drained, Unhealthy),
            (Forcing, Ready),
            (Forcing, Drained),
            (Forcing, Unhealthy),
            (Unhealthy, Draining),
            (Unhealthy, Unhealthy),
        ];
        assert_eq!(allowed, expected);
    }
}
