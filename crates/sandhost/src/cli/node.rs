//! The node subcommands but `drain`: status, undrain, force-stop; and the one-line summary of a
//! drain's progress they share with `drain`.

use std::io::{self, Write as _};
use std::time::SystemTime;

use sandhost_proto::v1 as pb;

use super::client::{Client, ClientError};
use super::exit::Outcome;
use super::output::{self, Table, print_reply};

pub(crate) fn progress_of(progress: Option<pb::DrainProgress>) -> Result<pb::DrainProgress, ClientError> {
    progress.ok_or_else(|| ClientError::Ended("the node sent no drain progress in its reply".into()))
}

/// `deadline 2026-...Z (in 45s)` or `no deadline`.
fn deadline_text(progress: &pb::DrainProgress, now: SystemTime) -> String {
    match (output::rfc3339(progress.deadline.as_ref()), output::system_time(progress.deadline.as_ref())) {
        (Some(text), Some(at)) => format!("{text} ({})", output::relative(at, now)),
        _ => "none".to_owned(),
    }
}

/// One line for people: `DRAINED: 0 live, 4 exited, 3 force-stopped` (the live
/// count always, the others when not zero).
pub(crate) fn summary(progress: &pb::DrainProgress) -> String {
    let mut parts = vec![format!("{} live", progress.live)];
    for (count, what) in [
        (progress.in_flight_starts, "starting"),
        (progress.exited, "exited"),
        (progress.policy_stopped, "policy-stopped"),
        (progress.force_stopped, "force-stopped"),
        (progress.checkpointed, "checkpointed"),
    ] {
        if count > 0 {
            parts.push(format!("{count} {what}"));
        }
    }
    format!("{}: {}", output::status_name(progress.status()), parts.join(", "))
}

/// The summary on stdout, each failure on stderr.
pub(crate) fn print_result(progress: &pb::DrainProgress) -> Result<(), ClientError> {
    writeln!(io::stdout().lock(), "{}", summary(progress))?;
    print_failures(progress);
    Ok(())
}

pub(crate) fn print_failures(progress: &pb::DrainProgress) {
    for failure in &progress.failures {
        eprintln!("sandhost: failure: {}: {}", failure.subject, output::escape(&failure.message));
    }
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
        return print_reply(&info);
    }
    status_table(&info, SystemTime::now()).print()?;
    Ok(Outcome::Done)
}

pub(crate) async fn undrain(client: &mut Client, as_json: bool) -> Result<Outcome, ClientError> {
    let reply = client.nodes.undrain(pb::UndrainRequest {}).await?.into_inner();
    if as_json {
        return print_reply(&reply);
    }
    print_result(&progress_of(reply.progress)?)?;
    Ok(Outcome::Done)
}

pub(crate) async fn force_stop(client: &mut Client, as_json: bool) -> Result<Outcome, ClientError> {
    let reply = client.nodes.force_stop(pb::ForceStopRequest {}).await?.into_inner();
    if as_json {
        return print_reply(&reply);
    }
    print_result(&progress_of(reply.progress)?)?;
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_status_table_shows_status_deadline_and_counts() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let drain = pb::DrainProgress {
            status: pb::NodeStatus::Forcing.into(),
            live: 2,
            deadline: Some(prost_types::Timestamp::from(now + Duration::from_secs(30))),
            failures: vec![pb::DrainFailure { subject: "sb-1".into(), message: "stuck".into() }],
            ..Default::default()
        };
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

    #[test]
    fn the_summary_names_the_counts_that_are_not_zero() {
        let progress = pb::DrainProgress {
            status: pb::NodeStatus::Drained.into(),
            exited: 4,
            force_stopped: 3,
            ..Default::default()
        };
        assert_eq!(summary(&progress), "DRAINED: 0 live, 4 exited, 3 force-stopped");
        let undrained =
            pb::DrainProgress { status: pb::NodeStatus::Ready.into(), live: 2, ..Default::default() };
        assert_eq!(summary(&undrained), "READY: 2 live");
    }
}
