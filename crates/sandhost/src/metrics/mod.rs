//! Prometheus metrics, registered on a registry passed in (never a global). The HTTP adapter encodes
//! the registry on `GET /metrics` in the format the scraper asks for ([`exposition`]). Components
//! update them at their own transitions; nothing here polls (the process metrics are read from
//! `/proc/self` by a collector at each scrape: the kernel keeps those numbers).
//!
//! Conventions, so that stock tools (promtool, dashboards, `increase()`) work:
//! - counters end in `_total` in the exposition; every label value a counter can take is pre-set
//!   to 0 at registration, so the first event of a kind is an increase, not a new series;
//! - Unix times end in `_timestamp_seconds` (except the standard `process_start_time_seconds`);
//! - label values sandhost writes are lowercase (`running`, `force_stopped`, `unavailable`); gRPC
//!   service and method names keep their proto spelling (`grpc.rs`). One exception is left:
//!   `sandhost_node_status{status}` keeps the API's uppercase names (`READY`), which a test of the
//!   manager (tests/manager.rs) pins; lowercase them together.

pub mod exposition;
pub mod grpc;
mod process;
mod warm_pool;

pub use warm_pool::register_warm_pool;

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::admission::NodeStatus;
use crate::drain::DrainProgress;
use crate::sandbox::{ConditionKind, ExitReason, Resources, SandboxState};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabel {
    condition: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// How a Create ended, for `sandhost_sandbox_creates_total`.
#[derive(Debug, Clone, Copy)]
pub enum CreateResult {
    /// The sandbox runs.
    Started,
    /// The runtime failed to start it.
    Failed,
    /// Refused before starting; the reason is counted in `sandhost_sandbox_create_rejections_total`.
    Rejected(Rejection),
}

impl CreateResult {
    const ALL: [&'static str; 3] = ["started", "failed", "rejected"];

    fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Failed => "failed",
            Self::Rejected(_) => "rejected",
        }
    }
}

/// Why a Create was refused before its start began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A field of the request is invalid.
    InvalidArgument,
    /// The node does not admit (it drains).
    NotAdmitting,
    /// A live sandbox has the id.
    AlreadyExists,
    /// The node's limit of live sandboxes.
    LiveSandboxesLimit,
    /// The node's limit of admitted, unfinished starts.
    AdmittedStartsLimit,
    /// The node's allocatable memory.
    AllocatableMemory,
    /// No such template.
    TemplateNotFound,
    /// The backend cannot do what the request asks.
    NotSupported,
    /// A kill came while the start waited for its turn.
    StoppedBeforeStart,
    /// The agent is going away.
    Interrupted,
}

impl Rejection {
    const ALL: [Self; 10] = [
        Self::InvalidArgument,
        Self::NotAdmitting,
        Self::AlreadyExists,
        Self::LiveSandboxesLimit,
        Self::AdmittedStartsLimit,
        Self::TemplateNotFound,
        Self::NotSupported,
        Self::StoppedBeforeStart,
        Self::Interrupted,
        Self::AllocatableMemory,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::NotAdmitting => "not_admitting",
            Self::AlreadyExists => "already_exists",
            Self::LiveSandboxesLimit => "live_sandboxes_limit",
            Self::AdmittedStartsLimit => "admitted_starts_limit",
            Self::AllocatableMemory => "allocatable_memory",
            Self::TemplateNotFound => "template_not_found",
            Self::NotSupported => "not_supported",
            Self::StoppedBeforeStart => "stopped_before_start",
            Self::Interrupted => "interrupted",
        }
    }
}

/// How a drain ended, for `sandhost_drains_total` and `sandhost_drain_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// DRAINED without a forced phase: every sandbox left on its own or by its drain policy.
    Clean,
    /// DRAINED after a forced phase that stopped every sandbox it had to.
    Forced,
    /// DRAINED with sandboxes the forced phase could not stop.
    Failed,
    /// Undrained before it ended.
    Undrained,
}

impl DrainOutcome {
    const ALL: [Self; 4] = [Self::Clean, Self::Forced, Self::Failed, Self::Undrained];

    fn as_str(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Forced => "forced",
            Self::Failed => "failed",
            Self::Undrained => "undrained",
        }
    }
}

/// How a drain takes a sandbox away, as `sandhost_drain_stopped_sandboxes_total` counts it.
const DRAIN_STOP_REASONS: [ExitReason; 3] =
    [ExitReason::ForceStopped, ExitReason::DrainStopped, ExitReason::Checkpointed];

/// Every metric of the node (sandboxes, drain, capacity). Cheap to clone (the metrics are shared
/// handles).
#[derive(Debug, Clone)]
pub struct Metrics {
    sandboxes: Family<StateLabel, Gauge>,
    creates: Family<ResultLabel, Counter>,
    rejections: Family<ReasonLabel, Counter>,
    exits: Family<ReasonLabel, Counter>,
    start_seconds: Histogram,
    warm_claim_seconds: Histogram,
    starts_waiting: Gauge,
    node_status: Family<StatusLabel, Gauge>,
    status_changed: Gauge<f64, AtomicU64>,
    drain_deadline: Gauge<f64, AtomicU64>,
    drain_in_flight_starts: Gauge,
    drain_live: Gauge,
    current_force_stopped: Gauge,
    current_policy_stopped: Gauge,
    current_checkpointed: Gauge,
    drain_stopped: Family<ReasonLabel, Counter>,
    drains: Family<OutcomeLabel, Counter>,
    drain_seconds: Histogram,
    capacity_sandboxes: Gauge,
    capacity_memory: Gauge,
    capacity_cpus: Gauge<f64, AtomicU64>,
    allocated_sandboxes: Gauge,
    allocated_memory: Gauge,
    allocated_cpus: Gauge<f64, AtomicU64>,
    interrupted_shutdown: Gauge,
    degraded: Family<ConditionLabel, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them on `registry`, every counter's label values at 0.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            sandboxes: Family::default(),
            creates: Family::default(),
            rejections: Family::default(),
            exits: Family::default(),
            start_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            // 50 us to ~1.6 s: a claim costs the API, not the kernel.
            warm_claim_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            starts_waiting: Gauge::default(),
            node_status: Family::default(),
            status_changed: Gauge::default(),
            drain_deadline: Gauge::default(),
            drain_in_flight_starts: Gauge::default(),
            drain_live: Gauge::default(),
            current_force_stopped: Gauge::default(),
            current_policy_stopped: Gauge::default(),
            current_checkpointed: Gauge::default(),
            drain_stopped: Family::default(),
            drains: Family::default(),
            // 10 ms to ~23 h: a drain lasts from nothing (an empty node) to its sandboxes' end times.
            drain_seconds: Histogram::new(exponential_buckets(0.01, 4.0, 12)),
            capacity_sandboxes: Gauge::default(),
            capacity_memory: Gauge::default(),
            capacity_cpus: Gauge::default(),
            allocated_sandboxes: Gauge::default(),
            allocated_memory: Gauge::default(),
            allocated_cpus: Gauge::default(),
            interrupted_shutdown: Gauge::default(),
            degraded: Family::default(),
        };
        metrics.register_sandbox_metrics(registry.sub_registry_with_prefix("sandhost"));
        metrics.register_drain_metrics(registry.sub_registry_with_prefix("sandhost"));
        metrics.register_node_metrics(registry.sub_registry_with_prefix("sandhost"));
        for state in SandboxState::ALL {
            metrics.sandboxes.get_or_create(&StateLabel { state: state.as_str() }).set(0);
        }
        for result in CreateResult::ALL {
            metrics.creates.get_or_create(&ResultLabel { result }).inc_by(0);
        }
        for reason in Rejection::ALL {
            metrics.rejections.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc_by(0);
        }
        for reason in ExitReason::ALL {
            metrics.exits.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc_by(0);
        }
        for outcome in DrainOutcome::ALL {
            metrics.drains.get_or_create(&OutcomeLabel { outcome: outcome.as_str() }).inc_by(0);
        }
        for reason in DRAIN_STOP_REASONS {
            metrics.drain_stopped.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc_by(0);
        }
        metrics
    }

    fn register_sandbox_metrics(&self, r: &mut Registry) {
        r.register("sandboxes", "Sandboxes by state", self.sandboxes.clone());
        r.register("sandbox_creates", "Creates by result", self.creates.clone());
        r.register(
            "sandbox_create_rejections",
            "Creates refused before their start began, by reason",
            self.rejections.clone(),
        );
        r.register("sandbox_exits", "Sandbox exits by reason", self.exits.clone());
        r.register(
            "sandbox_start_seconds",
            "Time from admission to a running sandbox",
            self.start_seconds.clone(),
        );
        r.register(
            "warm_pool_claim_seconds",
            "Time the runtime took to start a sandbox from a claimed warm pool member",
            self.warm_claim_seconds.clone(),
        );
        r.register(
            "starts_waiting",
            "Admitted starts waiting for their turn (beyond the start parallelism)",
            self.starts_waiting.clone(),
        );
    }

    fn register_drain_metrics(&self, r: &mut Registry) {
        r.register("node_status", "1 for the node's current status", self.node_status.clone());
        r.register(
            "node_status_changed_timestamp_seconds",
            "When the node status last changed (Unix time)",
            self.status_changed.clone(),
        );
        r.register(
            "drain_deadline_timestamp_seconds",
            "End of the current drain phase (Unix time; 0: none)",
            self.drain_deadline.clone(),
        );
        r.register(
            "drain_in_flight_starts",
            "Admitted starts not yet finished",
            self.drain_in_flight_starts.clone(),
        );
        r.register("drain_live_sandboxes", "Live sandboxes the drain waits for", self.drain_live.clone());
        r.register(
            "drain_force_stopped",
            "Sandboxes the current (or last) drain's forced phase stopped (back to 0 when a drain \
             begins; sandhost_drain_stopped_sandboxes_total counts over every drain)",
            self.current_force_stopped.clone(),
        );
        r.register(
            "drain_policy_stopped",
            "Sandboxes the current (or last) drain stopped for their drain policy STOP (back to 0 \
             when a drain begins)",
            self.current_policy_stopped.clone(),
        );
        r.register(
            "drain_checkpointed",
            "Sandboxes the current (or last) drain checkpointed (back to 0 when a drain begins)",
            self.current_checkpointed.clone(),
        );
        r.register(
            "drain_stopped_sandboxes",
            "Sandboxes drains stopped, over every drain, by reason (their exit reason: \
             force_stopped, drain_stopped for the STOP policy, checkpointed)",
            self.drain_stopped.clone(),
        );
        r.register("drains", "Drains ended, by outcome", self.drains.clone());
        r.register(
            "degraded_sandboxes",
            "Sandboxes held (live, or exited within the retention) that were recovered with something \
             lost, by condition",
            self.degraded.clone(),
        );
        for condition in ConditionKind::ALL {
            self.set_degraded(condition, 0);
        }
        r.register(
            "previous_shutdown_interrupted",
            "1 when the previous agent's shutdown was cut short before its drain ended",
            self.interrupted_shutdown.clone(),
        );
        r.register(
            "drain_duration_seconds",
            "From a drain's start to DRAINED (or to its undrain)",
            self.drain_seconds.clone(),
        );
    }

    fn register_node_metrics(&self, r: &mut Registry) {
        r.register(
            "capacity_sandboxes",
            "Live sandboxes the node admits at most",
            self.capacity_sandboxes.clone(),
        );
        r.register("capacity_memory_bytes", "The host's memory", self.capacity_memory.clone());
        r.register("capacity_cpus", "The CPUs the agent may use", self.capacity_cpus.clone());
        r.register("allocated_sandboxes", "Live sandboxes", self.allocated_sandboxes.clone());
        r.register(
            "allocated_memory_bytes",
            "Memory limits of the live sandboxes, summed (sandboxes without one count 0)",
            self.allocated_memory.clone(),
        );
        r.register(
            "allocated_cpus",
            "CPU limits of the live sandboxes, summed, in cores (sandboxes without one count 0)",
            self.allocated_cpus.clone(),
        );
    }

    /// Sets the number of sandboxes held with `condition`.
    pub fn set_degraded(&self, condition: ConditionKind, count: u64) {
        self.degraded
            .get_or_create(&ConditionLabel { condition: condition.as_str() })
            .set(gauge_value(count));
    }

    /// Says whether the previous agent's shutdown was cut short before its drain ended.
    pub fn set_interrupted_shutdown(&self, interrupted: bool) {
        self.interrupted_shutdown.set(i64::from(interrupted));
    }

    /// Sets the number of sandboxes in `state`.
    pub fn set_sandboxes(&self, state: SandboxState, count: u64) {
        self.sandboxes.get_or_create(&StateLabel { state: state.as_str() }).set(gauge_value(count));
    }

    /// Counts one Create by its result (and a refusal by its reason).
    pub fn count_create(&self, result: CreateResult) {
        self.creates.get_or_create(&ResultLabel { result: result.as_str() }).inc();
        if let CreateResult::Rejected(reason) = result {
            self.rejections.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc();
        }
    }

    /// Counts one exit by its reason.
    pub fn count_exit(&self, reason: ExitReason) {
        self.exits.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc();
    }

    /// Records one start's latency.
    pub fn observe_start(&self, elapsed: Duration) {
        self.start_seconds.observe(elapsed.as_secs_f64());
    }

    /// Records how long the runtime took to start a sandbox from a warm pool member.
    pub fn observe_warm_claim(&self, elapsed: Duration) {
        self.warm_claim_seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts starts beginning (+1) or ending (-1) their wait for a turn.
    pub fn add_start_waiting(&self, delta: i64) {
        self.starts_waiting.inc_by(delta);
    }

    /// Publishes what the host offers.
    pub fn set_capacity(&self, capacity: Resources) {
        self.capacity_sandboxes.set(gauge_value(capacity.sandboxes));
        self.capacity_memory.set(gauge_value(capacity.memory_bytes));
        self.capacity_cpus.set(cores(capacity.cpu_millis));
    }

    /// Publishes what the live sandboxes were given.
    pub fn set_allocated(&self, allocated: Resources) {
        self.allocated_sandboxes.set(gauge_value(allocated.sandboxes));
        self.allocated_memory.set(gauge_value(allocated.memory_bytes));
        self.allocated_cpus.set(cores(allocated.cpu_millis));
    }

    /// Publishes the node status.
    fn set_status(&self, status: NodeStatus, changed_at: SystemTime) {
        for each in NodeStatus::ALL {
            self.node_status
                .get_or_create(&StatusLabel { status: each.as_label() })
                .set(i64::from(each == status));
        }
        self.status_changed.set(unix_seconds(Some(changed_at)));
    }

    /// Publishes the drain's status, counts and deadline.
    pub fn set_drain(&self, progress: &DrainProgress) {
        self.set_status(progress.status, progress.status_changed_at);
        self.drain_in_flight_starts.set(gauge_value(progress.in_flight_starts));
        self.drain_live.set(gauge_value(progress.live));
        self.current_force_stopped.set(gauge_value(progress.force_stopped));
        self.current_policy_stopped.set(gauge_value(progress.policy_stopped));
        self.current_checkpointed.set(gauge_value(progress.checkpointed));
        self.drain_deadline.set(unix_seconds(progress.deadline));
    }

    /// Counts sandboxes a forced phase stopped and checkpointed.
    pub fn count_forced(&self, force_stopped: u64, checkpointed: u64) {
        for (reason, count) in
            [(ExitReason::ForceStopped, force_stopped), (ExitReason::Checkpointed, checkpointed)]
        {
            self.drain_stopped.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc_by(count);
        }
    }

    /// Counts one sandbox a drain stopped for its drain policy.
    pub fn count_policy_stopped(&self) {
        self.drain_stopped.get_or_create(&ReasonLabel { reason: ExitReason::DrainStopped.as_str() }).inc();
    }

    /// Counts one drain that ended, and how long it took.
    pub fn observe_drain(&self, outcome: DrainOutcome, elapsed: Duration) {
        self.drains.get_or_create(&OutcomeLabel { outcome: outcome.as_str() }).inc();
        self.drain_seconds.observe(elapsed.as_secs_f64());
    }
}

/// Registers what describes the agent process itself: `sandhost_build_info{version}` and the
/// standard `process_*` metrics (read from `/proc/self` at each scrape).
pub fn register_process(registry: &mut Registry) {
    registry.sub_registry_with_prefix("sandhost").register(
        "build",
        "The running sandhost's version (always 1)",
        Info::new(VersionLabel { version: env!("CARGO_PKG_VERSION") }),
    );
    registry.register_collector(Box::new(process::ProcessCollector));
}

fn gauge_value(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[allow(clippy::cast_precision_loss)] // thousandths of a core: far below 2^52
fn cores(millis: u64) -> f64 {
    millis as f64 / 1000.0
}

fn unix_seconds(time: Option<SystemTime>) -> f64 {
    time.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(registry: &Registry) -> String {
        exposition::encode(registry, exposition::Format::Prometheus).expect("encodes")
    }

    #[test]
    fn every_counter_label_value_is_there_at_zero_before_anything_happened() {
        let mut registry = Registry::default();
        let _metrics = Metrics::register(&mut registry);
        let text = scrape(&registry);
        for reason in ExitReason::ALL {
            let line = format!("sandhost_sandbox_exits_total{{reason=\"{}\"}} 0", reason.as_str());
            assert!(text.contains(&line), "{line}\n{text}");
        }
        for reason in Rejection::ALL {
            let line =
                format!("sandhost_sandbox_create_rejections_total{{reason=\"{}\"}} 0", reason.as_str());
            assert!(text.contains(&line), "{line}\n{text}");
        }
        for outcome in DrainOutcome::ALL {
            let line = format!("sandhost_drains_total{{outcome=\"{}\"}} 0", outcome.as_str());
            assert!(text.contains(&line), "{line}\n{text}");
        }
        for result in CreateResult::ALL {
            assert!(
                text.contains(&format!("sandhost_sandbox_creates_total{{result=\"{result}\"}} 0")),
                "{text}"
            );
        }
        for reason in DRAIN_STOP_REASONS {
            let line = format!("sandhost_drain_stopped_sandboxes_total{{reason=\"{}\"}} 0", reason.as_str());
            assert!(text.contains(&line), "{line}\n{text}");
        }
    }

    #[test]
    fn label_values_are_lowercase() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.set_drain(&DrainProgress::idle(NodeStatus::Ready, SystemTime::now()));
        metrics.count_create(CreateResult::Rejected(Rejection::NotAdmitting));
        register_process(&mut registry);
        let text = scrape(&registry);
        assert!(text.contains("sandhost_node_status{status=\"ready\"} 1"), "{text}");
        assert!(
            text.contains("sandhost_sandbox_create_rejections_total{reason=\"not_admitting\"} 1"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let labels = line.split_once('{').and_then(|(_, rest)| rest.split_once('}')).map(|(l, _)| l);
            let Some(labels) = labels else { continue };
            for pair in labels.split(',') {
                let value = pair.split_once('=').map_or("", |(_, v)| v);
                // Not chosen by us (a version, a bucket bound), or the one exception (see the module doc).
                let exempt = ["version=", "le=", "status="].iter().any(|p| pair.starts_with(p));
                assert!(exempt || value == value.to_lowercase(), "{line}");
            }
        }
        assert!(text.contains("sandhost_build_info{version=\""), "{text}");
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }
}
