//! What the CLI prints: aligned tables for people, JSON documents for scripts, and the names and
//! times both use.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::time::{Duration, SystemTime};

use sandhost_proto::v1 as pb;
use serde_json::{Value, json};

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

    /// Adds a row.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
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

/// Prints one JSON document on stdout.
pub(crate) fn print_json(value: &Value) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value)?;
    stdout.write_all(b"\n")
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

// --- JSON documents ---

fn exit_json(exit: &pb::SandboxExit) -> Value {
    let (code, signal) = match exit.status {
        Some(pb::sandbox_exit::Status::Code(code)) => (Some(code), None),
        Some(pb::sandbox_exit::Status::Signal(signal)) => (None, Some(signal)),
        None => (None, None),
    };
    json!({
        "code": code,
        "signal": signal,
        "reason": reason_name(exit.reason()),
        "message": (!exit.message.is_empty()).then_some(&exit.message),
        "oom_killed": exit.oom_killed,
    })
}

pub(crate) fn sandbox_json(sandbox: &pb::Sandbox) -> Value {
    let resources = sandbox.resources.unwrap_or_default();
    json!({
        "id": sandbox.id,
        "lifecycle_id": sandbox.lifecycle_id,
        "state": state_name(sandbox.state()),
        "argv": sandbox.argv,
        "template": sandbox.template,
        "resources": {
            "cpu_millis": resources.cpu_millis,
            "memory_bytes": resources.memory_bytes,
            "pids_max": resources.pids_max,
        },
        "labels": sandbox.labels,
        "drain_policy": policy_name(sandbox.drain_policy()),
        "created_at": rfc3339(sandbox.created_at.as_ref()),
        "started_at": rfc3339(sandbox.started_at.as_ref()),
        "end_time": rfc3339(sandbox.end_time.as_ref()),
        "exited_at": rfc3339(sandbox.exited_at.as_ref()),
        "exit": sandbox.exit.as_ref().map(exit_json),
        "restored_from": (!sandbox.restored_from.is_empty()).then_some(&sandbox.restored_from),
        "conditions": sandbox.conditions.iter().map(|c| json!({"type": condition_name(c.r#type()), "message": c.message})).collect::<Vec<_>>(),
    })
}

/// `runtime_state_lost`, `metadata_lost`, `unidentified`; and for people, one `type: message` each.
pub(crate) fn condition_name(kind: pb::SandboxConditionType) -> String {
    short_name(kind.as_str_name(), "SANDBOX_CONDITION_TYPE_")
}

pub(crate) fn snapshot_json(snapshot: &pb::Snapshot) -> Value {
    json!({
        "id": snapshot.id,
        "source_sandbox_id": snapshot.source_sandbox_id,
        "created_at": rfc3339(snapshot.created_at.as_ref()),
        "size_bytes": snapshot.size_bytes,
    })
}

pub(crate) fn progress_json(progress: &pb::DrainProgress) -> Value {
    json!({
        "status": status_name(progress.status()),
        "status_changed_at": rfc3339(progress.status_changed_at.as_ref()),
        "shutting_down": progress.shutting_down,
        "in_flight_starts": progress.in_flight_starts,
        "live": progress.live,
        "exited": progress.exited,
        "force_stopped": progress.force_stopped,
        "policy_stopped": progress.policy_stopped,
        "checkpointed": progress.checkpointed,
        "deadline": rfc3339(progress.deadline.as_ref()),
        "failures": progress.failures.iter().map(|f| json!({"subject": f.subject, "message": f.message})).collect::<Vec<_>>(),
        "evacuated": progress.evacuated.iter().map(|e| json!({"sandbox": e.sandbox_id, "snapshot": e.snapshot_id})).collect::<Vec<_>>(),
    })
}

fn resources_json(resources: Option<&pb::NodeResources>) -> Value {
    let resources = resources.copied().unwrap_or_default();
    json!({
        "sandboxes": resources.sandboxes,
        "memory_bytes": resources.memory_bytes,
        "cpu_millis": resources.cpu_millis,
    })
}

pub(crate) fn info_json(info: &pb::GetInfoResponse) -> Value {
    let counts: serde_json::Map<String, Value> =
        info.counts.iter().map(|c| (state_name(c.state()), Value::from(c.count))).collect();
    json!({
        "node_id": info.node_id,
        "version": info.version,
        "started_at": rfc3339(info.started_at.as_ref()),
        "runtime": info.runtime,
        "status": status_name(info.status()),
        "status_changed_at": rfc3339(info.status_changed_at.as_ref()),
        "counts": counts,
        "allocated": resources_json(info.allocated.as_ref()),
        "capacity": resources_json(info.capacity.as_ref()),
        "drain": info.drain.as_ref().map(progress_json),
        "interrupted_shutdown": info.interrupted_shutdown.as_ref().map(|i| json!({
            "began_at": rfc3339(i.began_at.as_ref()),
            "live_at_restart": i.live_at_restart,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_sandbox_is_one_json_object() {
        let sandbox = pb::Sandbox {
            id: "sb-1".into(),
            state: pb::SandboxState::Exited.into(),
            exit: Some(pb::SandboxExit {
                status: Some(pb::sandbox_exit::Status::Code(3)),
                reason: pb::ExitReason::Exited.into(),
                ..Default::default()
            }),
            created_at: Some(prost_types::Timestamp { seconds: 0, nanos: 0 }),
            ..Default::default()
        };
        let value = sandbox_json(&sandbox);
        assert_eq!(value["id"], "sb-1");
        assert_eq!(value["state"], "exited");
        assert_eq!(value["exit"]["code"], 3);
        assert_eq!(value["exit"]["reason"], "exited");
        assert_eq!(value["created_at"], "1970-01-01T00:00:00Z");
        assert_eq!(value["drain_policy"], "wait");
    }
}
