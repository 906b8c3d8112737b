//! The node subcommands: status, drain (with a live progress bar fed by `WatchDrain`), undrain,
//! force-stop.

use std::io::{self, Write as _};
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};
use sandhost_proto::v1 as pb;

use super::client::{Client, ClientError};
use super::output::{self, Table};
use super::{Outcome, Target, parse};

/// The flags of `sandhost drain`.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Bound of the graceful phase (90s, 5m, 1h30m); then the rest is stopped. Absent: wait.
    #[arg(long, value_name = "DUR")]
    timeout: Option<String>,
    /// Skip the graceful phase: stop every live sandbox now.
    #[arg(long)]
    force: bool,
    /// Start the drain and return at once instead of following it.
    #[arg(long)]
    pub(crate) detach: bool,
}

impl DrainArgs {
    /// The request these flags describe.
    pub(crate) fn request(&self) -> Result<pb::DrainRequest, ClientError> {
        let timeout = self
            .timeout
            .as_deref()
            .map(parse::duration)
            .transpose()
            .map_err(|e| ClientError::usage("--timeout", e))?;
        Ok(pb::DrainRequest { timeout, force: self.force })
    }
}

fn progress_of(progress: Option<pb::DrainProgress>) -> Result<pb::DrainProgress, ClientError> {
    progress.ok_or_else(|| ClientError::Ended("the node sent no drain progress in its reply".into()))
}

/// `deadline 2026-...Z (in 45s)` or `no deadline`.
fn deadline_text(progress: &pb::DrainProgress, now: SystemTime) -> String {
    match (output::rfc3339(progress.deadline.as_ref()), output::system_time(progress.deadline.as_ref())) {
        (Some(text), Some(at)) => format!("{text} ({})", output::relative(at, now)),
        _ => "none".to_owned(),
    }
}

/// One line for people: `DRAINING: 3 live, 0 starting, 1 exited, 0 force-stopped`.
fn summary(progress: &pb::DrainProgress) -> String {
    format!(
        "{}: {} live, {} starting, {} exited, {} policy-stopped, {} force-stopped, {} checkpointed",
        output::status_name(progress.status()),
        progress.live,
        progress.in_flight_starts,
        progress.exited,
        progress.policy_stopped,
        progress.force_stopped,
        progress.checkpointed,
    )
}

fn resources_text(resources: Option<&pb::NodeResources>) -> String {
    let resources = resources.copied().unwrap_or_default();
    format!(
        "{} sandboxes, {} memory, {}m cpu",
        resources.sandboxes,
        output::bytes(resources.memory_bytes),
        resources.cpu_millis
    )
}

/// The `status` table.
fn status_table(info: &pb::GetInfoResponse, now: SystemTime) -> Table {
    let progress = info.drain.clone().unwrap_or_default();
    let mut table = Table::plain();
    let mut row = |key: &str, value: String| table.row(vec![format!("{key}:"), value]);
    let since = output::system_time(info.status_changed_at.as_ref()).map(|t| output::relative(t, now));
    row(
        "status",
        format!(
            "{}{}{}",
            output::status_name(info.status()),
            since.map(|s| format!(" (since {s})")).unwrap_or_default(),
            if progress.shutting_down { ", shutting down" } else { "" }
        ),
    );
    row("deadline", deadline_text(&progress, now));
    row("node", info.node_id.clone());
    row("version", info.version.clone());
    row("runtime", info.runtime.clone());
    row(
        "up since",
        output::system_time(info.started_at.as_ref())
            .map_or_else(|| "-".into(), |t| output::relative(t, now)),
    );
    row("in-flight starts", progress.in_flight_starts.to_string());
    row("live", progress.live.to_string());
    row("exited since drain", progress.exited.to_string());
    row("policy-stopped", progress.policy_stopped.to_string());
    row("force-stopped", progress.force_stopped.to_string());
    row("checkpointed", progress.checkpointed.to_string());
    for evacuation in &progress.evacuated {
        row("evacuated", format!("{} -> snapshot {}", evacuation.sandbox_id, evacuation.snapshot_id));
    }
    let counts = info
        .counts
        .iter()
        .map(|c| format!("{} {}", output::state_name(c.state()), c.count))
        .collect::<Vec<_>>()
        .join(", ");
    row("sandboxes", if counts.is_empty() { "none".into() } else { counts });
    row("allocated", resources_text(info.allocated.as_ref()));
    row("capacity", resources_text(info.capacity.as_ref()));
    for failure in &progress.failures {
        row("failure", format!("{}: {}", failure.subject, failure.message));
    }
    if let Some(interrupted) = &info.interrupted_shutdown {
        let began = output::system_time(interrupted.began_at.as_ref())
            .map_or_else(|| "-".into(), |t| output::relative(t, now));
        row(
            "last shutdown",
            format!(
                "cut short before its drain ended (began {began}); {} sandbox(es) re-adopted",
                interrupted.live_at_restart
            ),
        );
    }
    table
}

pub(crate) async fn status(client: &mut Client, as_json: bool) -> Result<Outcome, ClientError> {
    let info = client.nodes.get_info(pb::GetInfoRequest {}).await?.into_inner();
    if as_json {
        output::print_json(&output::info_json(&info))?;
    } else {
        status_table(&info, SystemTime::now()).print()?;
    }
    Ok(Outcome::Done)
}

/// The bar's message: phase, what is left, time to the deadline.
fn bar_message(progress: &pb::DrainProgress, now: SystemTime) -> String {
    let deadline = match output::system_time(progress.deadline.as_ref()) {
        Some(at) => match at.duration_since(now) {
            Ok(left) => format!("deadline in {}", output::short_duration(left)),
            Err(_) => "deadline passed".to_owned(),
        },
        None => "no deadline".to_owned(),
    };
    format!(
        "{} · {} left ({} starting) · {}",
        output::status_name(progress.status()),
        progress.live + progress.in_flight_starts,
        progress.in_flight_starts,
        deadline
    )
}

/// What the drain follower does with one progress update.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Keep following.
    Continue,
    /// The node is drained.
    Drained,
    /// The node went back to READY: someone undrained it.
    Undrained,
}

/// Tracks the bar's length (the most sandboxes seen left) and whether the drain was ever seen.
#[derive(Debug, Default)]
struct Follower {
    total: u64,
    seen_draining: bool,
    /// The last status logged, when there is no terminal for the bar.
    logged: Option<pb::NodeStatus>,
}

impl Follower {
    fn step(&mut self, progress: &pb::DrainProgress, bar: &ProgressBar) -> Step {
        let left = progress.live + progress.in_flight_starts;
        self.total = self.total.max(left);
        bar.set_length(self.total);
        bar.set_position(self.total - left);
        bar.set_message(bar_message(progress, SystemTime::now()));
        // Without a terminal the bar is hidden: say each phase change on a line of its own instead.
        if bar.is_hidden() && self.logged != Some(progress.status()) {
            self.logged = Some(progress.status());
            eprintln!("sandhost: {}", bar_message(progress, SystemTime::now()));
        }
        match progress.status() {
            pb::NodeStatus::Drained => Step::Drained,
            pb::NodeStatus::Ready if self.seen_draining => Step::Undrained,
            pb::NodeStatus::Ready | pb::NodeStatus::Unspecified => Step::Continue,
            pb::NodeStatus::Draining | pb::NodeStatus::Forcing | pb::NodeStatus::Unhealthy => {
                self.seen_draining = true;
                Step::Continue
            }
        }
    }
}

fn print_result(progress: &pb::DrainProgress) -> Result<(), ClientError> {
    writeln!(io::stdout().lock(), "{}", summary(progress))?;
    for failure in &progress.failures {
        eprintln!("sandhost: failure: {}: {}", failure.subject, failure.message);
    }
    Ok(())
}

pub(crate) async fn drain(
    client: &mut Client,
    request: pb::DrainRequest,
    detach: bool,
) -> Result<Outcome, ClientError> {
    let started = progress_of(client.nodes.drain(request).await?.into_inner().progress)?;
    if detach {
        print_result(&started)?;
        return Ok(Outcome::Done);
    }
    let mut stream = client.nodes.watch_drain(pb::WatchDrainRequest {}).await?.into_inner();
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} done · {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut follower = Follower::default();
    let mut last = started;
    let _ = follower.step(&last, &bar);
    // Redraw every second so the time to the deadline counts down between updates.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let end = loop {
        tokio::select! {
            message = stream.message() => match message {
                Err(status) => {
                    bar.abandon();
                    return Err(status.into());
                }
                Ok(None) => break None,
                Ok(Some(update)) => {
                    last = progress_of(update.progress)?;
                    match follower.step(&last, &bar) {
                        Step::Continue => {}
                        step => break Some(step),
                    }
                }
            },
            _ = tick.tick() => bar.set_message(bar_message(&last, SystemTime::now())),
        }
    };
    match end {
        Some(Step::Drained) => {
            bar.finish();
            print_result(&last)?;
            Ok(Outcome::Done)
        }
        Some(Step::Undrained) => {
            bar.abandon();
            Err(ClientError::Ended("the node was undrained before it was drained".into()))
        }
        Some(Step::Continue) | None => {
            bar.abandon();
            Err(ClientError::Ended(format!(
                "the node closed the progress stream before it was drained ({})",
                summary(&last)
            )))
        }
    }
}

pub(crate) async fn undrain(client: &mut Client) -> Result<Outcome, ClientError> {
    let progress = progress_of(client.nodes.undrain(pb::UndrainRequest {}).await?.into_inner().progress)?;
    print_result(&progress)?;
    Ok(Outcome::Done)
}

pub(crate) async fn force_stop(client: &mut Client) -> Result<Outcome, ClientError> {
    let progress =
        progress_of(client.nodes.force_stop(pb::ForceStopRequest {}).await?.into_inner().progress)?;
    print_result(&progress)?;
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(status: pb::NodeStatus, live: u64, starting: u64) -> pb::DrainProgress {
        pb::DrainProgress { status: status.into(), live, in_flight_starts: starting, ..Default::default() }
    }

    #[test]
    fn the_follower_counts_down_and_stops_when_drained() {
        let bar = ProgressBar::hidden();
        let mut follower = Follower::default();
        assert_eq!(follower.step(&progress(pb::NodeStatus::Draining, 3, 1), &bar), Step::Continue);
        assert_eq!((bar.length(), bar.position()), (Some(4), 0));
        assert_eq!(follower.step(&progress(pb::NodeStatus::Draining, 1, 0), &bar), Step::Continue);
        assert_eq!(bar.position(), 3);
        assert_eq!(follower.step(&progress(pb::NodeStatus::Drained, 0, 0), &bar), Step::Drained);
        assert_eq!(bar.position(), 4);
    }

    #[test]
    fn ready_after_draining_means_undrained() {
        let bar = ProgressBar::hidden();
        let mut follower = Follower::default();
        assert_eq!(follower.step(&progress(pb::NodeStatus::Ready, 0, 0), &bar), Step::Continue);
        assert_eq!(follower.step(&progress(pb::NodeStatus::Draining, 2, 0), &bar), Step::Continue);
        assert_eq!(follower.step(&progress(pb::NodeStatus::Ready, 2, 0), &bar), Step::Undrained);
    }

    #[test]
    fn the_bar_shows_the_time_to_the_deadline() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut p = progress(pb::NodeStatus::Draining, 2, 1);
        assert_eq!(bar_message(&p, now), "DRAINING · 3 left (1 starting) · no deadline");
        p.deadline = Some(prost_types::Timestamp::from(now + Duration::from_secs(90)));
        assert_eq!(bar_message(&p, now), "DRAINING · 3 left (1 starting) · deadline in 1m30s");
    }

    #[test]
    fn the_status_table_shows_status_deadline_and_counts() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut drain = progress(pb::NodeStatus::Forcing, 2, 0);
        drain.deadline = Some(prost_types::Timestamp::from(now + Duration::from_secs(30)));
        drain.failures.push(pb::DrainFailure { subject: "sb-1".into(), message: "stuck".into() });
        let info = pb::GetInfoResponse {
            node_id: "node-a".into(),
            status: pb::NodeStatus::Forcing.into(),
            counts: vec![pb::StateCount { state: pb::SandboxState::Running.into(), count: 2 }],
            drain: Some(drain),
            ..Default::default()
        };
        let text = status_table(&info, now).render();
        assert!(text.contains("FORCING"), "{text}");
        assert!(text.contains("in 30s"), "{text}");
        assert!(text.contains("running 2"), "{text}");
        assert!(text.contains("sb-1: stuck"), "{text}");
    }
}
