//! The sandbox subcommands but `create` and `logs`: list, get, kill, pause, resume, update, wait,
//! checkpoint, snapshots, snapshot-rm.

use std::time::SystemTime;

use sandhost_proto::v1 as pb;

use super::client::{Client, ClientError};
use super::exit::{self, Outcome};
use super::json::Reply;
use super::output::{self, Table, print_reply, println, sandbox_of};
use super::{Target, parse};

/// A reply that carries one sandbox.
pub(crate) trait SandboxReply: Reply {
    /// The sandbox, which the node always sends.
    fn into_sandbox(self) -> Option<pb::Sandbox>;
}

macro_rules! sandbox_replies {
    ($($message:ident),+ $(,)?) => {
        $(impl SandboxReply for pb::$message {
            fn into_sandbox(self) -> Option<pb::Sandbox> {
                self.sandbox
            }
        })+
    };
}

sandbox_replies!(CreateResponse, GetResponse, DeleteResponse, PauseResponse, ResumeResponse, UpdateResponse);

/// Prints a reply that carries a sandbox: the whole reply as JSON, else what `show` makes of the
/// sandbox.
pub(crate) fn print_sandbox<M: SandboxReply>(
    reply: M,
    as_json: bool,
    show: impl FnOnce(&pb::Sandbox) -> Result<Outcome, ClientError>,
) -> Result<Outcome, ClientError> {
    if as_json {
        return print_reply(&reply);
    }
    show(&sandbox_of(reply.into_sandbox())?)
}

/// `ID STATE`, the line pause and resume print.
fn state_line(sandbox: &pb::Sandbox) -> Result<Outcome, ClientError> {
    println(&format!("{} {}", sandbox.id, output::state_name(sandbox.state())))
}

/// The key/value view of a sandbox, printed.
fn print_described(sandbox: &pb::Sandbox) -> Result<Outcome, ClientError> {
    describe(sandbox).print()?;
    Ok(Outcome::Done)
}

/// `list --state`: the sandbox states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StateArg {
    /// Admitted, being started.
    Starting,
    /// Running.
    Running,
    /// Frozen.
    Paused,
    /// Being stopped.
    Stopping,
    /// Ended (kept for the node's retention period).
    Exited,
}

impl From<StateArg> for pb::SandboxState {
    fn from(state: StateArg) -> Self {
        match state {
            StateArg::Starting => Self::Starting,
            StateArg::Running => Self::Running,
            StateArg::Paused => Self::Paused,
            StateArg::Stopping => Self::Stopping,
            StateArg::Exited => Self::Exited,
        }
    }
}

/// The flags of `sandhost list`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Only sandboxes in this state.
    #[arg(long, value_enum, value_name = "STATE")]
    state: Option<StateArg>,
    /// Only sandboxes with this label (repeatable: all must match).
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Print only the ids, one per line.
    #[arg(short, long, conflicts_with = "json")]
    quiet: bool,
    /// Print the reply as JSON.
    #[arg(long)]
    json: bool,
}

/// How `list` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListFormat {
    Table,
    Ids,
    Json,
}

impl ListArgs {
    /// The request these flags describe.
    pub(crate) fn request(&self) -> Result<pb::ListRequest, ClientError> {
        let state = self.state.map_or(pb::SandboxState::Unspecified, pb::SandboxState::from);
        Ok(pb::ListRequest {
            state: state.into(),
            labels: parse::labels(&self.labels)?,
            ..Default::default()
        })
    }

    pub(crate) fn format(&self) -> ListFormat {
        match (self.quiet, self.json) {
            (_, true) => ListFormat::Json,
            (true, false) => ListFormat::Ids,
            (false, false) => ListFormat::Table,
        }
    }
}

/// The flags of `sandhost update`.
#[derive(Debug, Clone, clap::Args)]
#[command(group = clap::ArgGroup::new("change").required(true).multiple(true).args(["timeout", "labels", "clear_labels"]))]
pub struct UpdateArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// The sandbox.
    id: String,
    /// Its end time becomes now plus this (90s, 5m, 1h30m).
    #[arg(long, value_name = "DUR")]
    timeout: Option<String>,
    /// Its labels become these (repeatable; they replace all of its labels).
    #[arg(long = "label", value_name = "K=V", conflicts_with = "clear_labels")]
    labels: Vec<String>,
    /// Remove all of its labels.
    #[arg(long)]
    clear_labels: bool,
    /// Print the reply as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

impl UpdateArgs {
    /// The request these flags describe: what is not given is left as it is.
    pub(crate) fn request(&self) -> Result<pb::UpdateRequest, ClientError> {
        let end = parse::optional_duration("--timeout", self.timeout.as_deref())?
            .map(pb::update_request::End::Timeout);
        let labels = (self.clear_labels || !self.labels.is_empty())
            .then(|| parse::labels(&self.labels).map(|labels| pb::Labels { labels }))
            .transpose()?;
        Ok(pb::UpdateRequest { id: self.id.clone(), end, labels })
    }
}

pub(crate) async fn list(
    client: &mut Client,
    request: pb::ListRequest,
    format: ListFormat,
) -> Result<Outcome, ClientError> {
    // The server pages its replies; the CLI follows the pages and prints them as one.
    let mut reply = pb::ListResponse::default();
    let mut request = request;
    loop {
        let page = client.sandboxes.list(request.clone()).await?.into_inner();
        reply.sandboxes.extend(page.sandboxes);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    match format {
        ListFormat::Json => print_reply(&reply),
        ListFormat::Ids => {
            let ids: Vec<&str> = reply.sandboxes.iter().map(|s| s.id.as_str()).collect();
            if ids.is_empty() { Ok(Outcome::Done) } else { println(&ids.join("\n")) }
        }
        ListFormat::Table => {
            list_table(&reply.sandboxes, SystemTime::now()).print()?;
            Ok(Outcome::Done)
        }
    }
}

fn list_table(sandboxes: &[pb::Sandbox], now: SystemTime) -> Table {
    let mut table = Table::new(&["ID", "STATE", "CREATED", "ENDS", "EXIT", "LABELS", "COMMAND"]);
    for sandbox in sandboxes {
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
    table
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
    let reply = client.sandboxes.get(pb::GetRequest { id }).await?.into_inner();
    print_sandbox(reply, as_json, print_described)
}

pub(crate) async fn kill(
    client: &mut Client,
    id: String,
    now: bool,
    as_json: bool,
) -> Result<Outcome, ClientError> {
    let reply = client.sandboxes.delete(pb::DeleteRequest { id, now }).await?.into_inner();
    print_sandbox(reply, as_json, |sandbox| {
        let exit =
            sandbox.exit.as_ref().map_or_else(|| output::state_name(sandbox.state()), output::exit_summary);
        println(&output::escape(&format!("{} {exit}", sandbox.id)))
    })
}

pub(crate) async fn pause(client: &mut Client, id: String, as_json: bool) -> Result<Outcome, ClientError> {
    let reply = client.sandboxes.pause(pb::PauseRequest { id }).await?.into_inner();
    print_sandbox(reply, as_json, state_line)
}

pub(crate) async fn resume(client: &mut Client, id: String, as_json: bool) -> Result<Outcome, ClientError> {
    let reply = client.sandboxes.resume(pb::ResumeRequest { id }).await?.into_inner();
    print_sandbox(reply, as_json, state_line)
}

pub(crate) async fn update(
    client: &mut Client,
    request: pb::UpdateRequest,
    as_json: bool,
) -> Result<Outcome, ClientError> {
    let reply = client.sandboxes.update(request).await?.into_inner();
    print_sandbox(reply, as_json, print_described)
}

pub(crate) async fn wait(
    client: &mut Client,
    id: String,
    exact: bool,
    as_json: bool,
) -> Result<Outcome, ClientError> {
    let reply = client.sandboxes.wait(pb::WaitRequest { id }).await?.into_inner();
    let sandbox = sandbox_of(reply.sandbox.clone())?;
    let exit = sandbox.exit.as_ref();
    let code = if exact { exit::of_wait_exact(exit) } else { exit::of_wait(exit) };
    if as_json {
        print_reply(&reply)?;
    }
    // Whenever the exit code does not say it all, stderr does: the sandbox's own code or signal.
    if code != exit::EXIT_OK && !(exact && exit.is_some_and(|e| e.status.is_some())) {
        let summary = exit.map_or_else(|| "no exit recorded".to_owned(), output::exit_summary);
        eprintln!("sandhost: sandbox {}: {}", sandbox.id, output::escape(&summary));
        if let Some(message) = exit.map(|e| &e.message).filter(|m| !m.is_empty()) {
            eprintln!("sandhost: {}", output::escape(message));
        }
    }
    Ok(Outcome::Code(code))
}

pub(crate) async fn checkpoint(
    client: &mut Client,
    id: String,
    stop: bool,
    as_json: bool,
) -> Result<Outcome, ClientError> {
    let reply = client.sandboxes.checkpoint(pb::CheckpointRequest { id, stop }).await?.into_inner();
    if as_json {
        return print_reply(&reply);
    }
    let snapshot =
        reply.snapshot.ok_or_else(|| ClientError::Ended("the node sent no snapshot in its reply".into()))?;
    println(&snapshot.id)
}

pub(crate) async fn snapshots(client: &mut Client, as_json: bool) -> Result<Outcome, ClientError> {
    let reply = client.sandboxes.list_snapshots(pb::ListSnapshotsRequest {}).await?.into_inner();
    if as_json {
        return print_reply(&reply);
    }
    let now = SystemTime::now();
    let mut table = Table::new(&["ID", "SOURCE", "CREATED", "SIZE"]);
    for snapshot in &reply.snapshots {
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

pub(crate) async fn snapshot_rm(
    client: &mut Client,
    snapshot: String,
    as_json: bool,
) -> Result<Outcome, ClientError> {
    let reply = client
        .sandboxes
        .delete_snapshot(pb::DeleteSnapshotRequest { id: snapshot.clone() })
        .await?
        .into_inner();
    if as_json {
        return print_reply(&reply);
    }
    println(&snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_sandbox_shows_where_its_command_comes_from() {
        let restored = pb::Sandbox { restored_from: "snap-1".into(), ..Default::default() };
        assert_eq!(command_text(&restored), "(the command of snapshot snap-1)");
        let plain = pb::Sandbox { argv: vec!["sleep".into(), "5".into()], ..Default::default() };
        assert_eq!(command_text(&plain), "sleep 5");
    }

    #[test]
    fn the_list_table_has_a_row_per_sandbox() {
        let sandbox = |id: &str| pb::Sandbox {
            id: id.into(),
            state: pb::SandboxState::Running.into(),
            argv: vec!["sleep".into(), "9".into()],
            ..Default::default()
        };
        let text = list_table(&[sandbox("a"), sandbox("b")], SystemTime::UNIX_EPOCH).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID"), "{text}");
        assert!(lines[1].starts_with("a ") && lines[1].contains("running") && lines[1].ends_with("sleep 9"));
    }
}
