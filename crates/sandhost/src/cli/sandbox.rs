//! The sandbox subcommands: create, list, get, logs, kill, pause, resume, wait, checkpoint,
//! snapshots, snapshot-rm.

use std::io::{self, Write as _};
use std::time::SystemTime;

use sandhost_proto::v1 as pb;
use serde_json::Value;

use super::client::{Client, ClientError};
use super::output::{self, Table};
use super::{Outcome, Target, parse};

/// `--drain-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DrainPolicyArg {
    /// Run until it exits or its timeout (the default).
    Wait,
    /// SIGTERM when the drain begins.
    Stop,
    /// Checkpoint and stop when the node must empty.
    Checkpoint,
}

/// The flags of `sandhost create`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// The sandbox's id ([a-z0-9][a-z0-9-]{0,62}); generated when absent.
    #[arg(long)]
    id: Option<String>,
    /// The template: `host` (default) or a rootfs registered on the node.
    #[arg(long)]
    template: Option<String>,
    /// How long it may run (90s, 5m, 1h30m); the node's default when absent.
    #[arg(long, value_name = "DUR")]
    timeout: Option<String>,
    /// Memory limit (bytes, or 512m, 2g).
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// CPU limit in cores (2, 0.5).
    #[arg(long, value_name = "N")]
    cpus: Option<String>,
    /// Maximum number of processes and threads.
    #[arg(long, value_name = "N")]
    pids: Option<u32>,
    /// An environment variable of the command (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// A label (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// What the node's drain does with it.
    #[arg(long, value_enum, value_name = "POLICY")]
    drain_policy: Option<DrainPolicyArg>,
    /// Start from this snapshot (gvisor): it runs the snapshot's command, so give none.
    #[arg(long, value_name = "SNAPSHOT", conflicts_with_all = ["command", "env", "template"])]
    restore_from: Option<String>,
    /// Print the sandbox as JSON instead of its id.
    #[arg(long)]
    pub(crate) json: bool,
    /// The command and its arguments, after `--` (none with `--restore-from`).
    #[arg(last = true, required_unless_present = "restore_from", value_name = "CMD")]
    command: Vec<String>,
}

impl CreateArgs {
    /// The request these flags describe.
    pub(crate) fn request(&self) -> Result<pb::CreateRequest, ClientError> {
        let env = self
            .env
            .iter()
            .map(|text| parse::key_value(text).map(|(name, value)| pb::EnvVar { name, value }))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::usage("--env", e))?;
        let labels = self
            .labels
            .iter()
            .map(|text| parse::key_value(text))
            .collect::<Result<_, _>>()
            .map_err(|e| ClientError::usage("--label", e))?;
        let timeout = self
            .timeout
            .as_deref()
            .map(parse::duration)
            .transpose()
            .map_err(|e| ClientError::usage("--timeout", e))?;
        let memory_bytes = self
            .memory
            .as_deref()
            .map(parse::size)
            .transpose()
            .map_err(|e| ClientError::usage("--memory", e))?;
        let cpu_millis =
            self.cpus.as_deref().map(parse::cpus).transpose().map_err(|e| ClientError::usage("--cpus", e))?;
        let drain_policy = match self.drain_policy {
            None => pb::DrainPolicy::Unspecified,
            Some(DrainPolicyArg::Wait) => pb::DrainPolicy::Wait,
            Some(DrainPolicyArg::Stop) => pb::DrainPolicy::Stop,
            Some(DrainPolicyArg::Checkpoint) => pb::DrainPolicy::Checkpoint,
        };
        Ok(pb::CreateRequest {
            id: self.id.clone().unwrap_or_default(),
            template: self.template.clone().unwrap_or_default(),
            argv: self.command.clone(),
            env,
            cwd: String::new(),
            timeout,
            resources: Some(pb::Resources { cpu_millis, memory_bytes, pids_max: self.pids }),
            labels,
            drain_policy: drain_policy.into(),
            restore_from: self.restore_from.clone().unwrap_or_default(),
            stop_grace: None,
        })
    }
}

fn sandbox_of(sandbox: Option<pb::Sandbox>) -> Result<pb::Sandbox, ClientError> {
    sandbox.ok_or_else(|| ClientError::Ended("the node sent no sandbox in its reply".into()))
}

fn println(line: &str) -> Result<Outcome, ClientError> {
    writeln!(io::stdout().lock(), "{line}")?;
    Ok(Outcome::Done)
}

fn json(value: &Value) -> Result<Outcome, ClientError> {
    output::print_json(value)?;
    Ok(Outcome::Done)
}

pub(crate) async fn create(
    client: &mut Client,
    request: pb::CreateRequest,
    as_json: bool,
) -> Result<Outcome, ClientError> {
    let sandbox = sandbox_of(client.sandboxes.create(request).await?.into_inner().sandbox)?;
    if as_json { json(&output::sandbox_json(&sandbox)) } else { println(&sandbox.id) }
}

pub(crate) async fn list(client: &mut Client, as_json: bool) -> Result<Outcome, ClientError> {
    let sandboxes = client.sandboxes.list(pb::ListRequest::default()).await?.into_inner().sandboxes;
    if as_json {
        return json(&Value::Array(sandboxes.iter().map(output::sandbox_json).collect()));
    }
    let now = SystemTime::now();
    let mut table = Table::new(&["ID", "STATE", "CREATED", "ENDS", "EXIT", "LABELS", "COMMAND"]);
    for sandbox in &sandboxes {
        let created = output::system_time(sandbox.created_at.as_ref()).map(|t| output::relative(t, now));
        let ends = if sandbox.state() == pb::SandboxState::Exited {
            None
        } else {
            output::system_time(sandbox.end_time.as_ref()).map(|t| output::relative(t, now))
        };
        table.row(vec![
            sandbox.id.clone(),
            output::state_name(sandbox.state()),
            created.unwrap_or_else(|| "-".into()),
            ends.unwrap_or_else(|| "-".into()),
            sandbox.exit.as_ref().map_or_else(|| "-".into(), output::exit_summary),
            Some(output::labels_text(&sandbox.labels))
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| "-".into()),
            command_text(sandbox),
        ]);
    }
    table.print()?;
    Ok(Outcome::Done)
}

/// The command a sandbox runs, as people read it: a restored one runs its snapshot's.
fn command_text(sandbox: &pb::Sandbox) -> String {
    if sandbox.argv.is_empty() && !sandbox.restored_from.is_empty() {
        format!("(the command of snapshot {})", sandbox.restored_from)
    } else {
        sandbox.argv.join(" ")
    }
}

/// The key/value view of one sandbox.
fn describe(sandbox: &pb::Sandbox) -> Table {
    let now = SystemTime::now();
    let time = |t: Option<&prost_types::Timestamp>| match (output::rfc3339(t), output::system_time(t)) {
        (Some(text), Some(at)) => format!("{text} ({})", output::relative(at, now)),
        _ => "-".to_owned(),
    };
    let resources = sandbox.resources.unwrap_or_default();
    let mut table = Table::plain();
    let mut row = |key: &str, value: String| table.row(vec![format!("{key}:"), value]);
    row("id", sandbox.id.clone());
    row("lifecycle", sandbox.lifecycle_id.clone());
    row("state", output::state_name(sandbox.state()));
    row("command", command_text(sandbox));
    row("template", sandbox.template.clone());
    row("memory", resources.memory_bytes.map_or_else(|| "unlimited".into(), output::bytes));
    row("cpu", resources.cpu_millis.map_or_else(|| "unlimited".into(), |m| format!("{m}m")));
    row("pids", resources.pids_max.map_or_else(|| "unlimited".into(), |p| p.to_string()));
    row(
        "labels",
        Some(output::labels_text(&sandbox.labels)).filter(|l| !l.is_empty()).unwrap_or_else(|| "-".into()),
    );
    row("drain policy", output::policy_name(sandbox.drain_policy()));
    row("created", time(sandbox.created_at.as_ref()));
    row("started", time(sandbox.started_at.as_ref()));
    row("ends", time(sandbox.end_time.as_ref()));
    row("exited", time(sandbox.exited_at.as_ref()));
    if let Some(exit) = &sandbox.exit {
        row("exit", output::exit_summary(exit));
        if !exit.message.is_empty() {
            row("exit message", exit.message.clone());
        }
    }
    if !sandbox.restored_from.is_empty() {
        row("restored from", sandbox.restored_from.clone());
    }
    for c in &sandbox.conditions {
        row("condition", format!("{}: {}", output::condition_name(c.r#type()), c.message));
    }
    table
}

pub(crate) async fn get(client: &mut Client, id: String, as_json: bool) -> Result<Outcome, ClientError> {
    let sandbox = sandbox_of(client.sandboxes.get(pb::GetRequest { id }).await?.into_inner().sandbox)?;
    if as_json {
        return json(&output::sandbox_json(&sandbox));
    }
    describe(&sandbox).print()?;
    Ok(Outcome::Done)
}

pub(crate) async fn logs(client: &mut Client, id: String, follow: bool) -> Result<Outcome, ClientError> {
    let mut stream = client.sandboxes.logs(pb::LogsRequest { id, follow }).await?.into_inner();
    let mut stdout = io::stdout();
    while let Some(chunk) = stream.message().await? {
        let written = stdout.write_all(&chunk.data).and_then(|()| stdout.flush());
        match written {
            Ok(()) => {}
            // The reader went away (`| head`): that is the end, not an error.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(Outcome::Done),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Outcome::Done)
}

pub(crate) async fn kill(client: &mut Client, id: String, now: bool) -> Result<Outcome, ClientError> {
    let sandbox =
        sandbox_of(client.sandboxes.delete(pb::DeleteRequest { id, now }).await?.into_inner().sandbox)?;
    let exit =
        sandbox.exit.as_ref().map_or_else(|| output::state_name(sandbox.state()), output::exit_summary);
    println(&format!("{} {exit}", sandbox.id))
}

pub(crate) async fn pause(client: &mut Client, id: String) -> Result<Outcome, ClientError> {
    let sandbox = sandbox_of(client.sandboxes.pause(pb::PauseRequest { id }).await?.into_inner().sandbox)?;
    println(&format!("{} {}", sandbox.id, output::state_name(sandbox.state())))
}

pub(crate) async fn resume(client: &mut Client, id: String) -> Result<Outcome, ClientError> {
    let sandbox = sandbox_of(client.sandboxes.resume(pb::ResumeRequest { id }).await?.into_inner().sandbox)?;
    println(&format!("{} {}", sandbox.id, output::state_name(sandbox.state())))
}

/// The sandbox's exit as this process's exit code: the code itself (low 8 bits), 128 + N for signal
/// N, and 1 (with a message) when it never ran.
pub(crate) fn exit_code_of(exit: Option<&pb::SandboxExit>) -> u8 {
    match exit.and_then(|e| e.status) {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        // the shell keeps the low 8 bits too
        Some(pb::sandbox_exit::Status::Code(code)) => (code & 0xff) as u8,
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(pb::sandbox_exit::Status::Signal(signal)) => ((128 + signal) & 0xff) as u8,
        None => 1,
    }
}

pub(crate) async fn wait(client: &mut Client, id: String) -> Result<Outcome, ClientError> {
    let sandbox = sandbox_of(client.sandboxes.wait(pb::WaitRequest { id }).await?.into_inner().sandbox)?;
    let exit = sandbox.exit.as_ref();
    if let Some(exit) = exit.filter(|e| e.status.is_none()) {
        eprintln!("sandhost: sandbox {} has no exit status: {}", sandbox.id, output::exit_summary(exit));
        if !exit.message.is_empty() {
            eprintln!("sandhost: {}", exit.message);
        }
    }
    Ok(Outcome::Code(exit_code_of(exit)))
}

pub(crate) async fn checkpoint(
    client: &mut Client,
    id: String,
    stop: bool,
    as_json: bool,
) -> Result<Outcome, ClientError> {
    let snapshot = client
        .sandboxes
        .checkpoint(pb::CheckpointRequest { id, stop })
        .await?
        .into_inner()
        .snapshot
        .ok_or_else(|| ClientError::Ended("the node sent no snapshot in its reply".into()))?;
    if as_json { json(&output::snapshot_json(&snapshot)) } else { println(&snapshot.id) }
}

pub(crate) async fn snapshots(client: &mut Client, as_json: bool) -> Result<Outcome, ClientError> {
    let snapshots =
        client.sandboxes.list_snapshots(pb::ListSnapshotsRequest {}).await?.into_inner().snapshots;
    if as_json {
        return json(&Value::Array(snapshots.iter().map(output::snapshot_json).collect()));
    }
    let now = SystemTime::now();
    let mut table = Table::new(&["ID", "SOURCE", "CREATED", "SIZE"]);
    for snapshot in &snapshots {
        table.row(vec![
            snapshot.id.clone(),
            snapshot.source_sandbox_id.clone(),
            output::system_time(snapshot.created_at.as_ref())
                .map_or_else(|| "-".into(), |t| output::relative(t, now)),
            output::bytes(snapshot.size_bytes),
        ]);
    }
    table.print()?;
    Ok(Outcome::Done)
}

pub(crate) async fn snapshot_rm(client: &mut Client, snapshot: String) -> Result<Outcome, ClientError> {
    client.sandboxes.delete_snapshot(pb::DeleteSnapshotRequest { id: snapshot.clone() }).await?;
    println(&snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_exits_with_the_sandbox_code() {
        let exit = |status| pb::SandboxExit { status: Some(status), reason: 1, ..Default::default() };
        assert_eq!(exit_code_of(Some(&exit(pb::sandbox_exit::Status::Code(0)))), 0);
        assert_eq!(exit_code_of(Some(&exit(pb::sandbox_exit::Status::Code(42)))), 42);
        assert_eq!(exit_code_of(Some(&exit(pb::sandbox_exit::Status::Code(256 + 3)))), 3);
        assert_eq!(exit_code_of(Some(&exit(pb::sandbox_exit::Status::Signal(9)))), 137);
        assert_eq!(exit_code_of(None), 1);
    }

    #[test]
    fn a_restored_sandbox_shows_where_its_command_comes_from() {
        let restored = pb::Sandbox { restored_from: "snap-1".into(), ..Default::default() };
        assert_eq!(command_text(&restored), "(the command of snapshot snap-1)");
        let plain = pb::Sandbox { argv: vec!["sleep".into(), "5".into()], ..Default::default() };
        assert_eq!(command_text(&plain), "sleep 5");
    }
}
