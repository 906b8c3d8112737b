//! The shutdown budget, and the supervisor that might not wait for it.
//!
//! A SIGTERM'd `serve` takes at most its **budget** to exit: the graceful phase
//! (`SHUTDOWN_DRAIN_TIMEOUT`, unbounded when unset), the forced phase (`FORCE_SHUTDOWN_TIMEOUT`),
//! then the teardown: each server gets [`SERVER_SHUTDOWN_BOUND`] to stop and the runtime's
//! background deletes get `FORCE_SHUTDOWN_TIMEOUT` again. A supervisor (systemd's
//! `TimeoutStopSec`, Kubernetes' `terminationGracePeriodSeconds`, Nomad's `kill_timeout`) kills the
//! agent once its own stop timeout has passed; the deploy files pass that timeout in
//! `SANDHOST_SUPERVISOR_STOP_TIMEOUT` so `serve` can say at startup, and in its metrics, when the
//! supervisor would kill it before the budget is spent. A killed agent loses no sandbox (they run
//! on and the next agent re-adopts them) but its drain is cut short and reports nothing.

use std::time::Duration;

use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::SERVER_SHUTDOWN_BOUND;
use crate::config::ServeConfig;

/// The two servers (gRPC, HTTP), each stopped within [`SERVER_SHUTDOWN_BOUND`].
const SERVERS: u32 = 2;

/// The longest a shutdown can take, by phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShutdownBudget {
    /// The graceful phase; `None`: it waits for the sandboxes however long they run.
    pub(crate) drain: Option<Duration>,
    /// The forced phase's bound.
    pub(crate) force: Duration,
}

impl ShutdownBudget {
    /// The budget of a `serve` with this configuration (`FORCE_STOP` skips the graceful phase).
    pub(crate) fn of(config: &ServeConfig) -> Self {
        let drain = if config.force_stop { Some(Duration::ZERO) } else { config.shutdown_drain_timeout };
        Self { drain, force: config.force_shutdown_timeout }
    }

    /// After DRAINED: the servers, then the runtime's background deletes.
    pub(crate) fn teardown(&self) -> Duration {
        SERVER_SHUTDOWN_BOUND * SERVERS + self.force
    }

    /// From the signal to the exit; `None` when the graceful phase is unbounded.
    pub(crate) fn total(&self) -> Option<Duration> {
        self.drain.map(|drain| drain + self.force + self.teardown())
    }

    /// How it compares with the supervisor's stop timeout.
    pub(crate) fn check(&self, supervisor: Option<Duration>) -> BudgetCheck {
        match (supervisor, self.total()) {
            (None, _) => BudgetCheck::SupervisorUnknown,
            (Some(supervisor), None) => BudgetCheck::WaitsForever { supervisor },
            (Some(supervisor), Some(budget)) if budget > supervisor => {
                BudgetCheck::Exceeds { budget, supervisor }
            }
            (Some(_), Some(_)) => BudgetCheck::Fits,
        }
    }
}

/// The budget against the supervisor's stop timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BudgetCheck {
    /// No supervisor stop timeout was given.
    SupervisorUnknown,
    /// The supervisor waits at least as long as the budget.
    Fits,
    /// The supervisor kills the agent before the budget is spent.
    Exceeds {
        /// The budget.
        budget: Duration,
        /// The supervisor's stop timeout.
        supervisor: Duration,
    },
    /// The drain waits forever (no `SHUTDOWN_DRAIN_TIMEOUT`) under a supervisor that does not.
    WaitsForever {
        /// The supervisor's stop timeout.
        supervisor: Duration,
    },
}

impl BudgetCheck {
    /// The startup warning, if the supervisor would kill the agent first.
    pub(crate) fn warning(&self, budget: &ShutdownBudget) -> Option<String> {
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        match *self {
            Self::SupervisorUnknown | Self::Fits => None,
            Self::Exceeds { budget: total, supervisor } => Some(format!(
                "the shutdown budget is {} (SHUTDOWN_DRAIN_TIMEOUT {} + FORCE_SHUTDOWN_TIMEOUT {} + teardown {}) \
                 but the supervisor kills the agent {} after its SIGTERM \
                 (SANDHOST_SUPERVISOR_STOP_TIMEOUT): a long drain will be cut short; raise the supervisor's \
                 stop timeout or lower SHUTDOWN_DRAIN_TIMEOUT",
                fmt(total),
                fmt(budget.drain.unwrap_or_default()),
                fmt(budget.force),
                fmt(budget.teardown()),
                fmt(supervisor),
            )),
            Self::WaitsForever { supervisor } => {
                let after_drain = budget.force + budget.teardown();
                let advice = if supervisor > after_drain {
                    format!("set SHUTDOWN_DRAIN_TIMEOUT to at most {}", fmt(supervisor - after_drain))
                } else {
                    format!(
                        "raise the supervisor's stop timeout above {} (FORCE_SHUTDOWN_TIMEOUT and the teardown) \
                         plus the drain you want, and set SHUTDOWN_DRAIN_TIMEOUT to that drain",
                        fmt(after_drain)
                    )
                };
                Some(format!(
                    "SHUTDOWN_DRAIN_TIMEOUT is unset, so a shutdown drain waits forever for the sandboxes, \
                     but the supervisor kills the agent {} after its SIGTERM (SANDHOST_SUPERVISOR_STOP_TIMEOUT): \
                     {advice}",
                    fmt(supervisor),
                ))
            }
        }
    }

    fn exceeds(&self) -> bool {
        matches!(self, Self::Exceeds { .. } | Self::WaitsForever { .. })
    }
}

/// Registers `sandhost_drain_budget_seconds` (`+Inf` when the drain waits forever),
/// `sandhost_supervisor_stop_timeout_seconds` (when known) and
/// `sandhost_drain_budget_exceeds_supervisor` (1 when the supervisor would kill the agent first).
pub(crate) fn register_metrics(
    registry: &mut Registry,
    budget: &ShutdownBudget,
    supervisor: Option<Duration>,
) {
    let r = registry.sub_registry_with_prefix("sandhost");
    let total = budget.total().map_or(f64::INFINITY, |d| d.as_secs_f64());
    r.register(
        "drain_budget_seconds",
        "The longest a shutdown takes from SIGTERM to exit: drain timeout, forced bound, teardown (+Inf: the drain waits forever)",
        ConstGauge::new(total),
    );
    if let Some(supervisor) = supervisor {
        r.register(
            "supervisor_stop_timeout_seconds",
            "How long the supervisor waits after its SIGTERM before it kills the agent (SANDHOST_SUPERVISOR_STOP_TIMEOUT)",
            ConstGauge::new(supervisor.as_secs_f64()),
        );
    }
    r.register(
        "drain_budget_exceeds_supervisor",
        "1 when the supervisor would kill the agent before its shutdown budget is spent",
        ConstGauge::new(i64::from(budget.check(supervisor).exceeds())),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn budget(drain: Option<Duration>) -> ShutdownBudget {
        ShutdownBudget { drain, force: Duration::from_secs(30) }
    }

    #[test]
    fn the_budget_is_both_phases_and_the_teardown() {
        let b = budget(Some(10 * MIN));
        assert_eq!(b.teardown(), Duration::from_secs(40));
        assert_eq!(b.total(), Some(Duration::from_secs(600 + 30 + 40)));
        assert_eq!(budget(None).total(), None);
    }

    #[test]
    fn a_supervisor_that_kills_first_is_named_and_wait_forever_is_called_so() {
        assert_eq!(budget(Some(MIN)).check(None), BudgetCheck::SupervisorUnknown);
        assert_eq!(budget(Some(10 * MIN)).check(Some(12 * MIN)), BudgetCheck::Fits);
        let exceeds = budget(Some(10 * MIN)).check(Some(5 * MIN));
        assert!(matches!(exceeds, BudgetCheck::Exceeds { .. }), "{exceeds:?}");
        let warning = exceeds.warning(&budget(Some(10 * MIN))).expect("a warning");
        assert!(warning.contains("11m 10s") && warning.contains("5m"), "{warning}");
        let forever = budget(None).check(Some(5 * MIN));
        assert_eq!(forever, BudgetCheck::WaitsForever { supervisor: 5 * MIN });
        let warning = forever.warning(&budget(None)).expect("a warning");
        assert!(warning.contains("waits forever") && warning.contains("at most 3m 50s"), "{warning}");
        assert_eq!(BudgetCheck::Fits.warning(&budget(None)), None);
        let too_short = budget(None).check(Some(MIN)).warning(&budget(None)).expect("a warning");
        assert!(too_short.contains("raise the supervisor's stop timeout above 1m 10s"), "{too_short}");
    }

    #[test]
    fn the_metrics_say_when_the_supervisor_kills_first() {
        let mut registry = Registry::default();
        register_metrics(&mut registry, &budget(None), Some(5 * MIN));
        let text =
            crate::metrics::exposition::encode(&registry, crate::metrics::exposition::Format::Prometheus)
                .expect("encodes");
        assert!(text.contains("sandhost_drain_budget_seconds +Inf"), "{text}");
        assert!(text.contains("sandhost_supervisor_stop_timeout_seconds 300"), "{text}");
        assert!(text.contains("sandhost_drain_budget_exceeds_supervisor 1"), "{text}");
    }
}
