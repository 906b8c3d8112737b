//! Prometheus metrics, registered on a registry passed in (never a global). The HTTP adapter encodes
//! the registry on `GET /metrics`. Components update them at their own transitions; nothing here
//! polls.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::admission::NodeStatus;
use crate::drain::DrainProgress;
use crate::sandbox::{ConditionKind, ExitReason, SandboxState};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabel {
    condition: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// How a Create ended, for `sandhost_sandbox_creates_total`.
#[derive(Debug, Clone, Copy)]
pub enum CreateResult {
    /// The sandbox runs.
    Started,
    /// The runtime failed to start it.
    Failed,
    /// Refused before starting (draining, limits, invalid).
    Rejected,
}

/// Every metric of sandhost. Cheap to clone (the metrics are shared handles).
#[derive(Debug, Clone)]
pub struct Metrics {
    sandboxes: Family<StateLabel, Gauge>,
    creates: Family<ResultLabel, Counter>,
    exits: Family<ReasonLabel, Counter>,
    start_seconds: Histogram,
    starts_waiting: Gauge,
    node_status: Family<StatusLabel, Gauge>,
    status_changed: Gauge<f64, AtomicU64>,
    drain_deadline: Gauge<f64, AtomicU64>,
    drain_in_flight_starts: Gauge,
    drain_live: Gauge,
    drain_force_stopped: Gauge,
    drain_policy_stopped: Gauge,
    drain_checkpointed: Gauge,
    interrupted_shutdown: Gauge,
    degraded: Family<ConditionLabel, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            sandboxes: Family::default(),
            creates: Family::default(),
            exits: Family::default(),
            start_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            starts_waiting: Gauge::default(),
            node_status: Family::default(),
            status_changed: Gauge::default(),
            drain_deadline: Gauge::default(),
            drain_in_flight_starts: Gauge::default(),
            drain_live: Gauge::default(),
            drain_force_stopped: Gauge::default(),
            drain_policy_stopped: Gauge::default(),
            drain_checkpointed: Gauge::default(),
            interrupted_shutdown: Gauge::default(),
            degraded: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("sandhost");
        r.register("sandboxes", "Sandboxes by state", metrics.sandboxes.clone());
        r.register("sandbox_creates", "Creates by result", metrics.creates.clone());
        r.register("sandbox_exits", "Sandbox exits by reason", metrics.exits.clone());
        r.register(
            "sandbox_start_seconds",
            "Time from admission to a running sandbox",
            metrics.start_seconds.clone(),
        );
        r.register(
            "starts_waiting",
            "Admitted starts waiting for their turn (beyond the start parallelism)",
            metrics.starts_waiting.clone(),
        );
        r.register("node_status", "1 for the node's current status", metrics.node_status.clone());
        r.register(
            "node_status_changed_seconds",
            "When the node status last changed (unix time)",
            metrics.status_changed.clone(),
        );
        r.register(
            "drain_deadline_seconds",
            "End of the current drain phase (unix time; 0: none)",
            metrics.drain_deadline.clone(),
        );
        r.register(
            "drain_in_flight_starts",
            "Admitted starts not yet finished",
            metrics.drain_in_flight_starts.clone(),
        );
        r.register("drain_live_sandboxes", "Live sandboxes the drain waits for", metrics.drain_live.clone());
        r.register(
            "drain_force_stopped",
            "Sandboxes the current drain's forced phase stopped",
            metrics.drain_force_stopped.clone(),
        );
        r.register(
            "drain_policy_stopped",
            "Sandboxes the current drain stopped because their drain policy is STOP",
            metrics.drain_policy_stopped.clone(),
        );
        r.register(
            "drain_checkpointed",
            "Sandboxes the current drain checkpointed",
            metrics.drain_checkpointed.clone(),
        );
        r.register(
            "previous_shutdown_interrupted",
            "1 when the previous agent's shutdown was cut short before its drain ended",
            metrics.interrupted_shutdown.clone(),
        );
        r.register(
            "degraded_sandboxes",
            "Sandboxes held (live, or exited within the retention) that were recovered with something lost, by condition",
            metrics.degraded.clone(),
        );
        for condition in ConditionKind::ALL {
            metrics.set_degraded(condition, 0);
        }
        for state in SandboxState::ALL {
            metrics.sandboxes.get_or_create(&StateLabel { state: state.as_str().into() }).set(0);
        }
        metrics
    }

    /// Sets the number of sandboxes in `state`.
    pub fn set_sandboxes(&self, state: SandboxState, count: u64) {
        self.sandboxes.get_or_create(&StateLabel { state: state.as_str().into() }).set(gauge_value(count));
    }

    /// Sets the number of sandboxes held with `condition`.
    pub fn set_degraded(&self, condition: ConditionKind, count: u64) {
        let label = ConditionLabel { condition: condition.as_str().into() };
        self.degraded.get_or_create(&label).set(gauge_value(count));
    }

    /// Counts one Create by its result.
    pub fn count_create(&self, result: CreateResult) {
        let result = match result {
            CreateResult::Started => "started",
            CreateResult::Failed => "failed",
            CreateResult::Rejected => "rejected",
        };
        self.creates.get_or_create(&ResultLabel { result: result.into() }).inc();
    }

    /// Counts one exit by its reason.
    pub fn count_exit(&self, reason: ExitReason) {
        self.exits.get_or_create(&ReasonLabel { reason: reason.as_str().into() }).inc();
    }

    /// Records one start's latency.
    pub fn observe_start(&self, elapsed: Duration) {
        self.start_seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts starts beginning (+1) or ending (-1) their wait for a turn.
    pub fn add_start_waiting(&self, delta: i64) {
        self.starts_waiting.inc_by(delta);
    }

    /// Publishes the node status.
    fn set_status(&self, status: NodeStatus, changed_at: SystemTime) {
        for each in NodeStatus::ALL {
            self.node_status
                .get_or_create(&StatusLabel { status: each.as_str().into() })
                .set(i64::from(each == status));
        }
        self.status_changed.set(unix_seconds(Some(changed_at)));
    }

    /// Says whether the previous agent's shutdown was cut short before its drain ended.
    pub fn set_interrupted_shutdown(&self, interrupted: bool) {
        self.interrupted_shutdown.set(i64::from(interrupted));
    }

    /// Publishes the drain's status, counts and deadline.
    pub fn set_drain(&self, progress: &DrainProgress) {
        self.set_status(progress.status, progress.status_changed_at);
        self.drain_in_flight_starts.set(gauge_value(progress.in_flight_starts));
        self.drain_live.set(gauge_value(progress.live));
        self.drain_force_stopped.set(gauge_value(progress.force_stopped));
        self.drain_policy_stopped.set(gauge_value(progress.policy_stopped));
        self.drain_checkpointed.set(gauge_value(progress.checkpointed));
        self.drain_deadline.set(unix_seconds(progress.deadline));
    }
}

fn gauge_value(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn unix_seconds(time: Option<SystemTime>) -> f64 {
    time.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0.0, |d| d.as_secs_f64())
}
