//! `sandhost drain`: starts a drain and follows it (`WatchDrain`) with a progress display that fits
//! 80 columns and names the first sandboxes still holding the drain, until the node is drained.
//!
//! The display is two lines: a bar with the count done, the phase, the starts in flight and the time
//! to the deadline; then `held by:` and the first live sandboxes by id. Those names come from List
//! (one call per live state: the node has no "live" filter), made when a progress update arrives and
//! at most once a second, never in a loop of its own: a drain that makes no progress costs no calls.
//! Without a terminal the bar is hidden and each change of phase, count or names is a line on stderr.
//!
//! The exit code says how the drain ended: 0 when every sandbox left on its own (or by its `stop`
//! policy), 3 when some were force-stopped or checkpointed, 4 when some could not be stopped
//! (`exit.rs`); `--detach` exits 0 once the drain has begun.

use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};
use sandhost_proto::v1 as pb;
use tokio::time::Instant;

use super::client::{Client, ClientError};
use super::exit::{self, Outcome};
use super::node::{print_failures, print_result, progress_of, summary};
use super::output::{self, print_reply};
use super::{Target, parse};

/// The width the display fits.
const WIDTH: usize = 80;
/// The bar's first line; `{prefix}` is the second (`held by: ...`).
const TEMPLATE: &str = "{spinner} [{bar:20}] {msg}\n{prefix}";
/// The columns of the first line before `{msg}`: spinner, space, `[`, 20, `]`, space.
const BAR_COLUMNS: usize = 25;
/// How often, at most, the names of the live sandboxes are fetched.
const HOLDERS_EVERY: Duration = Duration::from_secs(1);
/// How many names are kept; more would not fit in 80 columns anyway.
const HOLDERS_KEPT: usize = 16;
/// The live states, in the order their sandboxes are listed.
const LIVE_STATES: [pb::SandboxState; 4] = [
    pb::SandboxState::Starting,
    pb::SandboxState::Running,
    pb::SandboxState::Paused,
    pb::SandboxState::Stopping,
];

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
    /// Start the drain and return at once (exit 0) instead of following it.
    #[arg(long)]
    detach: bool,
    /// Print the last progress reply as JSON (the bar, if any, stays on stderr).
    #[arg(long)]
    json: bool,
}

impl DrainArgs {
    /// The request these flags describe.
    pub(crate) fn request(&self) -> Result<pb::DrainRequest, ClientError> {
        let timeout = parse::optional_duration("--timeout", self.timeout.as_deref())?;
        Ok(pb::DrainRequest { timeout, force: self.force })
    }
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

/// The bar's length (the most sandboxes seen left), whether the drain was ever seen, and the last
/// line logged when there is no terminal.
#[derive(Debug, Default)]
struct Follower {
    total: u64,
    seen_draining: bool,
    logged: Option<String>,
}

impl Follower {
    fn step(&mut self, progress: &pb::DrainProgress) -> Step {
        self.total = self.total.max(left(progress));
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

    /// Shows `progress`: on the bar, or (hidden) as a line on stderr when it says something new and
    /// the names are as fresh as the count (else the next refresh, within a second, logs it).
    fn show(&mut self, bar: &ProgressBar, progress: &pb::DrainProgress, holders: &Holders, now: SystemTime) {
        let done = self.total.saturating_sub(left(progress));
        bar.set_length(self.total);
        bar.set_position(done);
        bar.set_message(bar_text(progress, done, self.total, now));
        bar.set_prefix(holders_line(&holders.names, left(progress)));
        if bar.is_hidden() && !holders.stale {
            let line = log_line(progress, &holders.names);
            if self.logged.as_ref() != Some(&line) {
                eprintln!("sandhost: {line}");
                self.logged = Some(line);
            }
        }
    }
}

/// The sandboxes still holding the drain: live ones and starts in flight.
fn left(progress: &pb::DrainProgress) -> u64 {
    progress.live + progress.in_flight_starts
}

/// `deadline in 1m30s`, `deadline passed`, `no deadline`.
fn deadline_left(progress: &pb::DrainProgress, now: SystemTime) -> String {
    match output::system_time(progress.deadline.as_ref()) {
        Some(at) => match at.duration_since(now) {
            Ok(left) => format!("deadline in {}", output::short_duration(left)),
            Err(_) => "deadline passed".to_owned(),
        },
        None => "no deadline".to_owned(),
    }
}

/// The bar's message: `3/10 · DRAINING · 2 starting · deadline in 1m30s`, within what the bar leaves
/// of 80 columns.
fn bar_text(progress: &pb::DrainProgress, done: u64, total: u64, now: SystemTime) -> String {
    let mut parts = vec![format!("{done}/{total}"), output::status_name(progress.status())];
    if progress.in_flight_starts > 0 {
        parts.push(format!("{} starting", progress.in_flight_starts));
    }
    parts.push(deadline_left(progress, now));
    fit(&parts.join(" · "), WIDTH - BAR_COLUMNS)
}

/// `  held by: a, b, c and 7 more`, as many names as fit in 80 columns; empty when none is left.
/// `names` may be older than `left`: no more of them than are left are shown.
fn holders_line(names: &[String], left: u64) -> String {
    if left == 0 {
        return String::new();
    }
    let head = "  held by: ";
    let mut line = head.to_owned();
    let mut shown: u64 = 0;
    for name in names.iter().take(usize::try_from(left).unwrap_or(usize::MAX)) {
        let rest = left - shown - 1;
        let more = if rest > 0 { format!(" and {rest} more") } else { String::new() };
        let separator = if shown == 0 { "" } else { ", " };
        if line.chars().count() + separator.len() + name.chars().count() + more.len() > WIDTH {
            break;
        }
        line.push_str(separator);
        line.push_str(name);
        shown += 1;
    }
    let rest = left - shown;
    if shown == 0 {
        line.push_str(&format!("{left} sandbox{}", if left == 1 { "" } else { "es" }));
    } else if rest > 0 {
        line.push_str(&format!(" and {rest} more"));
    }
    fit(&line, WIDTH)
}

/// The line logged without a terminal: phase, count, deadline (as a time: a countdown would change
/// every second), holders.
fn log_line(progress: &pb::DrainProgress, holders: &[String]) -> String {
    let mut line = format!(
        "{} · {} left ({} starting) · {}",
        output::status_name(progress.status()),
        left(progress),
        progress.in_flight_starts,
        output::rfc3339(progress.deadline.as_ref())
            .map_or_else(|| "no deadline".to_owned(), |at| format!("deadline {at}")),
    );
    let held = holders_line(holders, left(progress));
    if !held.is_empty() {
        line.push_str(" · ");
        line.push_str(held.trim_start());
    }
    line
}

/// `text` cut to `width` columns (characters), with `…` where it was cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The names of the live sandboxes, first by id, fetched when a progress update asks for it and at
/// most every [`HOLDERS_EVERY`].
#[derive(Debug, Default)]
struct Holders {
    names: Vec<String>,
    fetched: Option<Instant>,
    stale: bool,
}

impl Holders {
    /// A progress update came: the names may have changed.
    fn mark_stale(&mut self, progress: &pb::DrainProgress) {
        self.stale = left(progress) > 0;
        if !self.stale {
            self.names.clear();
        }
    }

    /// Fetches the names if they may have changed and the last fetch is old enough. A failed List
    /// keeps the names it had: the display is not worth failing the drain for.
    async fn refresh(&mut self, client: &mut Client) {
        let now = Instant::now();
        if !self.stale || self.fetched.is_some_and(|at| now.duration_since(at) < HOLDERS_EVERY) {
            return;
        }
        self.fetched = Some(now);
        self.stale = false;
        let mut names = Vec::new();
        for state in LIVE_STATES {
            let page_size = u32::try_from(HOLDERS_KEPT).unwrap_or(u32::MAX);
            let request = pb::ListRequest { state: state.into(), page_size, ..Default::default() };
            match client.sandboxes.list(request).await {
                Ok(reply) => names.extend(reply.into_inner().sandboxes.into_iter().map(|s| s.id)),
                Err(_) => return,
            }
        }
        names.sort_unstable();
        names.truncate(HOLDERS_KEPT);
        self.names = names;
    }
}

pub(crate) async fn drain(
    client: &mut Client,
    request: pb::DrainRequest,
    args: &DrainArgs,
) -> Result<Outcome, ClientError> {
    let reply = client.nodes.drain(request).await?.into_inner();
    if args.detach {
        if args.json {
            return print_reply(&reply);
        }
        print_result(&progress_of(reply.progress)?)?;
        return Ok(Outcome::Done);
    }
    let mut last = progress_of(reply.progress)?;
    let mut stream = client.nodes.watch_drain(pb::WatchDrainRequest {}).await?.into_inner();
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut follower = Follower::default();
    let mut holders = Holders::default();
    let mut step = follower.step(&last);
    holders.mark_stale(&last);
    if step == Step::Continue {
        holders.refresh(client).await;
    }
    follower.show(&bar, &last, &holders, SystemTime::now());
    // Redraw every second so the time to the deadline counts down between updates, and fetch the
    // names an update marked stale while the last fetch was too recent.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while step == Step::Continue {
        tokio::select! {
            message = stream.message() => match message {
                Err(status) => {
                    bar.abandon();
                    return Err(status.into());
                }
                Ok(None) => break,
                Ok(Some(update)) => {
                    last = progress_of(update.progress)?;
                    step = follower.step(&last);
                    holders.mark_stale(&last);
                }
            },
            _ = tick.tick() => {}
        }
        if step == Step::Continue {
            holders.refresh(client).await;
        }
        follower.show(&bar, &last, &holders, SystemTime::now());
    }
    match step {
        Step::Drained => {
            bar.finish();
            if args.json {
                print_reply(&pb::WatchDrainResponse { progress: Some(last.clone()) })?;
                print_failures(&last);
            } else {
                print_result(&last)?;
            }
            let code = exit::of_drain(&last);
            if code == exit::EXIT_DRAIN_FORCED {
                eprintln!(
                    "sandhost: not every sandbox left on its own: {} force-stopped, {} checkpointed",
                    last.force_stopped, last.checkpointed
                );
            }
            Ok(Outcome::Code(code))
        }
        Step::Undrained => {
            bar.abandon();
            Err(ClientError::Ended("the node was undrained before it was drained".into()))
        }
        Step::Continue => {
            bar.abandon();
            Err(ClientError::Ended(format!(
                "the node closed the progress stream before it was drained ({})",
                summary(&last)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(status: pb::NodeStatus, live: u64, starting: u64) -> pb::DrainProgress {
        pb::DrainProgress { status: status.into(), live, in_flight_starts: starting, ..Default::default() }
    }

    fn names(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    #[test]
    fn the_follower_counts_down_and_stops_when_drained() {
        let bar = ProgressBar::hidden();
        let mut follower = Follower::default();
        let holders = Holders::default();
        let now = SystemTime::UNIX_EPOCH;
        let first = progress(pb::NodeStatus::Draining, 3, 1);
        assert_eq!(follower.step(&first), Step::Continue);
        follower.show(&bar, &first, &holders, now);
        assert_eq!((bar.length(), bar.position()), (Some(4), 0));
        let second = progress(pb::NodeStatus::Draining, 1, 0);
        assert_eq!(follower.step(&second), Step::Continue);
        follower.show(&bar, &second, &holders, now);
        assert_eq!(bar.position(), 3);
        let last = progress(pb::NodeStatus::Drained, 0, 0);
        assert_eq!(follower.step(&last), Step::Drained);
        follower.show(&bar, &last, &holders, now);
        assert_eq!(bar.position(), 4);
    }

    #[test]
    fn ready_after_draining_means_undrained() {
        let mut follower = Follower::default();
        assert_eq!(follower.step(&progress(pb::NodeStatus::Ready, 0, 0)), Step::Continue);
        assert_eq!(follower.step(&progress(pb::NodeStatus::Draining, 2, 0)), Step::Continue);
        assert_eq!(follower.step(&progress(pb::NodeStatus::Ready, 2, 0)), Step::Undrained);
    }

    #[test]
    fn the_bar_shows_the_count_phase_starts_and_deadline() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut p = progress(pb::NodeStatus::Draining, 2, 1);
        assert_eq!(bar_text(&p, 1, 4, now), "1/4 · DRAINING · 1 starting · no deadline");
        p.deadline = Some(prost_types::Timestamp::from(now + Duration::from_secs(90)));
        p.in_flight_starts = 0;
        assert_eq!(bar_text(&p, 1, 4, now), "1/4 · DRAINING · deadline in 1m30s");
        p.deadline = Some(prost_types::Timestamp::from(now - Duration::from_secs(1)));
        p.status = pb::NodeStatus::Forcing.into();
        assert_eq!(bar_text(&p, 0, 2, now), "0/2 · FORCING · deadline passed");
    }

    #[test]
    fn the_display_fits_80_columns_whatever_the_counts() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut p = progress(pb::NodeStatus::Unhealthy, u64::MAX / 2, u64::MAX / 2);
        p.deadline = Some(prost_types::Timestamp::from(now + Duration::from_secs(400 * 86_400)));
        let first = bar_text(&p, u64::MAX, u64::MAX, now);
        assert!(BAR_COLUMNS + first.chars().count() <= WIDTH, "{first}");
        assert!(first.ends_with('…'), "{first}");
        let long = "x".repeat(63);
        for ids in [vec![long.clone(); 16], names(&["a"; 16]), vec![long; 1]] {
            for left in [1, 2, 17, u64::MAX] {
                let line = holders_line(&ids, left);
                assert!(line.chars().count() <= WIDTH, "{left}: {line}");
            }
        }
    }

    #[test]
    fn the_second_line_names_the_first_holders() {
        assert_eq!(holders_line(&names(&["a", "b"]), 2), "  held by: a, b");
        assert_eq!(holders_line(&names(&["a", "b"]), 5), "  held by: a, b and 3 more");
        // Names older than the count: no more than are left.
        assert_eq!(holders_line(&names(&["a", "b", "c"]), 1), "  held by: a");
        // Not fetched yet.
        assert_eq!(holders_line(&[], 3), "  held by: 3 sandboxes");
        assert_eq!(holders_line(&names(&["a"]), 0), "");
        // As many as fit, then the rest counted.
        let ids: Vec<String> = (0..16).map(|i| format!("sandbox-with-a-long-name-{i:02}")).collect();
        let line = holders_line(&ids, 40);
        assert!(
            line.starts_with("  held by: sandbox-with-a-long-name-00, sandbox-with-a-long-name-01"),
            "{line}"
        );
        assert!(line.ends_with(" and 38 more"), "{line}");
        assert!(line.chars().count() <= WIDTH, "{line}");
    }

    #[test]
    fn without_a_terminal_each_change_is_one_line() {
        let p = progress(pb::NodeStatus::Draining, 2, 0);
        assert_eq!(
            log_line(&p, &names(&["a", "b"])),
            "DRAINING · 2 left (0 starting) · no deadline · held by: a, b"
        );
        let mut done = progress(pb::NodeStatus::Drained, 0, 0);
        done.deadline = Some(prost_types::Timestamp { seconds: 60, nanos: 0 });
        assert_eq!(log_line(&done, &[]), "DRAINED · 0 left (0 starting) · deadline 1970-01-01T00:01:00Z");
    }
}
