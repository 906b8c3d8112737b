//! What the CLI prints: aligned tables for people, the replies as JSON for scripts (`json.rs`), and
//! the names and times the tables use.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::time::{Duration, SystemTime};

use sandhost_proto::v1 as pb;

use super::client::ClientError;
use super::exit::Outcome;
use super::json::{JsonPrinter, Reply};

/// Columns padded to their widest cell; the last column is not padded.
#[derive(Debug, Default)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with this header row.
    pub(crate) fn new(header: &[&str]) -> Self {
        Self { rows: vec![header.iter().map(|h| (*h).to_owned()).collect()] }
    }

    /// A table without a header (key/value listings).
    pub(crate) fn plain() -> Self {
        Self::default()
    }

    /// Adds a row. Its cells are shown with their control characters escaped (see [`escape`]).
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.into_iter().map(|cell| escape(&cell)).collect());
    }

    /// The rendered text, one line per row.
    pub(crate) fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints it on stdout.
    pub(crate) fn print(&self) -> io::Result<()> {
        io::stdout().lock().write_all(self.render().as_bytes())
    }
}

/// Prints `reply` on stdout as one JSON document, in the proto3 JSON mapping.
pub(crate) fn print_reply<M: Reply>(reply: &M) -> Result<Outcome, ClientError> {
    let text = JsonPrinter::new()?.pretty(reply)?;
    println(&text)
}

/// Prints one line on stdout.
/// `text` for a terminal: every control character (an escape sequence's ESC, a newline that would
/// forge a row, a carriage return, C1 controls) written as its Rust escape, `\u{1b}`, `\n`. What a
/// sandbox chose (its argv, its exit message) never reaches the operator's terminal raw. JSON
/// output is exact and is not passed through here.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn println(line: &str) -> Result<Outcome, ClientError> {
    writeln!(io::stdout().lock(), "{line}")?;
    Ok(Outcome::Done)
}

/// The sandbox of a reply, which the node always sends.
pub(crate) fn sandbox_of(sandbox: Option<pb::Sandbox>) -> Result<pb::Sandbox, ClientError> {
    sandbox.ok_or_else(|| ClientError::Ended("the node sent no sandbox in its reply".into()))
}

/// The enum's proto name without its prefix, lowercase: `SANDBOX_STATE_RUNNING` -> `running`.
fn short_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix).unwrap_or(full).to_ascii_lowercase()
}

pub(crate) fn state_name(state: pb::SandboxState) -> String {
    short_name(state.as_str_name(), "SANDBOX_STATE_")
}

pub(crate) fn policy_name(policy: pb::DrainPolicy) -> String {
    match policy {
        pb::DrainPolicy::Unspecified => "wait".to_owned(),
        other => short_name(other.as_str_name(), "DRAIN_POLICY_"),
    }
}

pub(crate) fn reason_name(reason: pb::ExitReason) -> String {
    short_name(reason.as_str_name(), "EXIT_REASON_")
}

/// `READY`, `DRAINING`, ...
pub(crate) fn status_name(status: pb::NodeStatus) -> String {
    status.as_str_name().strip_prefix("NODE_STATUS_").unwrap_or("UNSPECIFIED").to_owned()
}

pub(crate) fn system_time(timestamp: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    timestamp.and_then(|t| SystemTime::try_from(*t).ok())
}

/// RFC 3339, to the second.
pub(crate) fn rfc3339(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    system_time(timestamp).map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

/// A short duration for people: `45s`, `3m05s`, `2h10m`, `3d4h`.
pub(crate) fn short_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{}h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

/// `5s ago` / `in 5s`, relative to `now`.
pub(crate) fn relative(time: SystemTime, now: SystemTime) -> String {
    match time.duration_since(now) {
        Ok(ahead) => format!("in {}", short_duration(ahead)),
        Err(behind) => format!("{} ago", short_duration(behind.duration())),
    }
}

/// A byte count for people: `512.0 MiB`.
pub(crate) fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count;
    let mut unit = 0;
    while value >= 1024 && unit + 1 < UNITS.len() {
        value /= 1024;
        unit += 1;
    }
    if unit == 0 {
        format!("{count} B")
    } else {
        #[allow(clippy::cast_precision_loss)] // display only
        let exact = count as f64 / (1u64 << (10 * unit)) as f64;
        format!("{exact:.1} {}", UNITS[unit])
    }
}

/// How a sandbox ended, in a few words: `exited 0`, `killed (signal 9)`, `start_failed`.
pub(crate) fn exit_summary(exit: &pb::SandboxExit) -> String {
    let reason = reason_name(exit.reason());
    let oom_killed = exit.oom_killed == Some(true);
    let oom = if oom_killed { ", OOM-killed" } else { "" };
    match exit.status {
        Some(pb::sandbox_exit::Status::Code(code)) => format!("{reason} (code {code}{oom})"),
        Some(pb::sandbox_exit::Status::Signal(signal)) => format!("{reason} (signal {signal}{oom})"),
        None if oom_killed => format!("{reason} (OOM-killed)"),
        None => reason,
    }
}

pub(crate) fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// `runtime_state_lost`, `metadata_lost`, `unidentified`; and for people, one `type: message` each.
pub(crate) fn condition_name(kind: pb::SandboxConditionType) -> String {
    short_name(kind.as_str_name(), "SANDBOX_CONDITION_TYPE_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_a_sandbox_chose_reaches_the_terminal_raw() {
        let hostile = "sh \u{1b}[2J\nsbx-forged  running\r\u{9b}31m";
        let mut table = Table::new(&["ID", "COMMAND"]);
        table.row(vec!["a".into(), hostile.into()]);
        let text = table.render();
        assert_eq!(text.lines().count(), 2, "no forged row: {text:?}");
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(text.contains("\\u{1b}[2J\\nsbx-forged"), "{text:?}");
        assert_eq!(escape("plain text, ünïcode"), "plain text, ünïcode");
        assert_eq!(escape("tab\there"), "tab\\there");
    }

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["ID", "STATE", "COMMAND"]);
        table.row(vec!["a".into(), "running".into(), "sleep 5".into()]);
        table.row(vec!["long-id".into(), "exited".into(), "true".into()]);
        assert_eq!(
            table.render(),
            "ID       STATE    COMMAND\na        running  sleep 5\nlong-id  exited   true\n"
        );
    }

    #[test]
    fn names_drop_their_prefix() {
        assert_eq!(state_name(pb::SandboxState::Running), "running");
        assert_eq!(policy_name(pb::DrainPolicy::Unspecified), "wait");
        assert_eq!(reason_name(pb::ExitReason::ForceStopped), "force_stopped");
        assert_eq!(status_name(pb::NodeStatus::Draining), "DRAINING");
    }

    #[test]
    fn durations_and_sizes_read_well() {
        assert_eq!(short_duration(Duration::from_secs(45)), "45s");
        assert_eq!(short_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(short_duration(Duration::from_secs(7800)), "2h10m");
        assert_eq!(short_duration(Duration::from_secs(2 * 86_400 + 3600)), "2d1h");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(512 << 20), "512.0 MiB");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(relative(now + Duration::from_secs(5), now), "in 5s");
        assert_eq!(relative(now - Duration::from_secs(5), now), "5s ago");
    }
}
