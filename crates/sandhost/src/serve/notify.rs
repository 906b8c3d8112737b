//! sd_notify: what `serve` tells systemd (a `Type=notify` unit; see `deploy/systemd/`). Nothing is
//! sent when `NOTIFY_SOCKET` is not set.
//!
//! - `READY=1` once the servers serve (after re-adoption and the listeners' binding).
//! - `STATUS=` with the node status and counts, on every change of the drain's progress watch
//!   (event-driven, and only when the text changes).
//! - `STOPPING=1` once a shutdown drain begins (a drain through the API keeps the service running).
//! - `EXTEND_TIMEOUT_USEC=` during a shutdown, so systemd never kills a drain it was configured to
//!   wait for: within a bounded phase, the time left to its deadline plus what follows it (the
//!   forced phase, the teardown), sent on each change and refreshed every [`REFRESH`]; in an
//!   unbounded graceful phase ("wait forever"), [`PROGRESS_WINDOW`] plus what follows, sent only
//!   when a sandbox has left, so systemd waits as long as the drain makes progress and no longer.
//! - `WATCHDOG=1` every half `WATCHDOG_USEC` when systemd set a watchdog for this process.
//!
//! A failed send is logged once at debug: systemd going away must not disturb the agent.

use std::time::{Duration, SystemTime};

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::budget::ShutdownBudget;
use crate::drain::{DrainProgress, NodeStatus};

/// How long an unbounded graceful phase may go without a sandbox leaving before systemd's own
/// timeout applies again.
pub(crate) const PROGRESS_WINDOW: Duration = Duration::from_secs(600);
/// How often a bounded shutdown re-sends its extension (an extension is at most `u32::MAX` µs,
/// about 71 minutes, and systemd counts it from its receipt).
pub(crate) const REFRESH: Duration = Duration::from_secs(60);

/// Whether systemd listens (`NOTIFY_SOCKET` is set).
pub(crate) fn is_enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::debug!(error = %error, "sd_notify failed");
    }
}

/// Sends `READY=1` and keeps systemd informed until the process exits: the task that follows
/// `progress`, and the watchdog's, if systemd set one. `None` when systemd does not listen.
pub(crate) fn spawn(
    progress: watch::Receiver<DrainProgress>,
    budget: ShutdownBudget,
) -> Option<JoinHandle<()>> {
    if !is_enabled() {
        return None;
    }
    let mut watchdog_usec = 0;
    if sd_notify::watchdog_enabled(false, &mut watchdog_usec) {
        let period = Duration::from_micros(watchdog_usec / 2).max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            loop {
                ticks.tick().await;
                send(&[NotifyState::Watchdog]);
            }
        });
    }
    let status = status_line(&progress.borrow());
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    Some(tokio::spawn(follow(progress, budget, status)))
}

/// Follows the drain's progress: STATUS on change, STOPPING and the extensions during a shutdown.
async fn follow(
    mut progress: watch::Receiver<DrainProgress>,
    budget: ShutdownBudget,
    mut last_status: String,
) {
    let mut stopping = false;
    let mut last_live = None;
    loop {
        let now = progress.borrow_and_update().clone();
        let status = status_line(&now);
        if status != last_status {
            send(&[NotifyState::Status(&status)]);
            last_status = status;
        }
        if now.shutting_down {
            if !stopping {
                send(&[NotifyState::Stopping]);
                stopping = true;
            }
            let progressed = last_live.is_none_or(|live| now.live < live);
            last_live = Some(now.live);
            if let Some(extension) = extension(&now, &budget, progressed, SystemTime::now()) {
                send(&[NotifyState::ExtendTimeoutUsec(usec(extension))]);
            }
        }
        let refresh = if stopping { Some(REFRESH) } else { None };
        tokio::select! {
            changed = progress.changed() => if changed.is_err() { return },
            () = crate::sleep_or_forever(refresh) => {
                // A refresh is not progress: an unbounded phase is not extended by it.
                last_live = Some(progress.borrow().live);
            }
        }
    }
}

/// How much longer systemd should wait, from `now`, in a shutdown at `progress`; `None`: do not
/// extend (an unbounded phase that made no progress, or a deadline that has passed).
pub(crate) fn extension(
    progress: &DrainProgress,
    budget: &ShutdownBudget,
    progressed: bool,
    now: SystemTime,
) -> Option<Duration> {
    let until = |deadline: SystemTime| deadline.duration_since(now).ok();
    match progress.status {
        NodeStatus::Draining => match progress.deadline {
            Some(deadline) => until(deadline).map(|left| left + budget.force + budget.teardown()),
            None => progressed.then_some(PROGRESS_WINDOW + budget.force + budget.teardown()),
        },
        NodeStatus::Forcing => {
            let left = progress.deadline.and_then(until).unwrap_or(budget.force);
            Some(left + budget.teardown())
        }
        NodeStatus::Drained => Some(budget.teardown()),
        NodeStatus::Ready | NodeStatus::Unhealthy => None,
    }
}

fn usec(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

/// `STATUS=`: the node status, its counts, the drain's deadline.
pub(crate) fn status_line(progress: &DrainProgress) -> String {
    let mut line =
        format!("{}: {} live, {} starting", progress.status, progress.live, progress.in_flight_starts);
    if progress.status != NodeStatus::Ready {
        line.push_str(&format!(
            ", {} left, {} force-stopped, {} policy-stopped, {} checkpointed",
            progress.exited, progress.force_stopped, progress.policy_stopped, progress.checkpointed
        ));
        if !progress.failures.is_empty() {
            line.push_str(&format!(", {} not stopped", progress.failures.len()));
        }
        if let Some(left) = progress.deadline.and_then(|d| d.duration_since(SystemTime::now()).ok()) {
            let left = Duration::from_secs(left.as_secs());
            line.push_str(&format!(", deadline in {}", humantime::format_duration(left)));
        }
    }
    if progress.shutting_down {
        line.push_str(" (shutting down)");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(drain: Option<Duration>) -> ShutdownBudget {
        ShutdownBudget { drain, force: Duration::from_secs(30) }
    }

    fn at(status: NodeStatus, deadline: Option<SystemTime>) -> DrainProgress {
        DrainProgress { deadline, shutting_down: true, ..DrainProgress::idle(status, SystemTime::UNIX_EPOCH) }
    }

    #[test]
    fn a_bounded_phase_is_extended_to_its_deadline_and_what_follows() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let b = budget(Some(Duration::from_secs(600)));
        let draining = at(NodeStatus::Draining, Some(now + Duration::from_secs(100)));
        assert_eq!(extension(&draining, &b, false, now), Some(Duration::from_secs(100 + 30 + 40)));
        let passed = at(NodeStatus::Draining, Some(now - Duration::from_secs(1)));
        assert_eq!(extension(&passed, &b, true, now), None, "past its own deadline: no extension");
        let forcing = at(NodeStatus::Forcing, Some(now + Duration::from_secs(20)));
        assert_eq!(extension(&forcing, &b, false, now), Some(Duration::from_secs(20 + 40)));
        assert_eq!(extension(&at(NodeStatus::Drained, None), &b, false, now), Some(Duration::from_secs(40)));
    }

    #[test]
    fn an_unbounded_phase_is_extended_only_when_a_sandbox_left() {
        let now = SystemTime::UNIX_EPOCH;
        let draining = at(NodeStatus::Draining, None);
        assert_eq!(extension(&draining, &budget(None), false, now), None);
        assert_eq!(
            extension(&draining, &budget(None), true, now),
            Some(PROGRESS_WINDOW + Duration::from_secs(70))
        );
    }

    #[test]
    fn the_status_line_names_the_status_and_counts() {
        let ready =
            DrainProgress { live: 3, ..DrainProgress::idle(NodeStatus::Ready, SystemTime::UNIX_EPOCH) };
        assert_eq!(status_line(&ready), "READY: 3 live, 0 starting");
        let draining = DrainProgress { live: 2, exited: 1, ..at(NodeStatus::Draining, None) };
        assert_eq!(
            status_line(&draining),
            "DRAINING: 2 live, 0 starting, 1 left, 0 force-stopped, 0 policy-stopped, 0 checkpointed (shutting down)"
        );
    }
}
