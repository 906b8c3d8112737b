//! `sandhost create`: its flags, the `CreateRequest` they describe, and the call.

use sandhost_proto::v1 as pb;

use super::client::{Client, ClientError};
use super::exit::Outcome;
use super::sandbox::print_sandbox;
use super::{Target, output, parse};

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
    /// The command's working directory, inside the sandbox (absolute).
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// A label (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// What the node's drain does with it.
    #[arg(long, value_enum, value_name = "POLICY")]
    drain_policy: Option<DrainPolicyArg>,
    /// How long a stop waits after SIGTERM before the kill (10s, 1m); the node's default when absent.
    #[arg(long, value_name = "DUR")]
    stop_grace: Option<String>,
    /// Start from this snapshot (gvisor): it runs the snapshot's command, so give none.
    #[arg(long, value_name = "SNAPSHOT", conflicts_with_all = ["command", "env", "template", "cwd"])]
    restore_from: Option<String>,
    /// Print the reply (the new sandbox) as JSON instead of its id.
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
        let labels = parse::labels(&self.labels)?;
        let timeout = parse::optional_duration("--timeout", self.timeout.as_deref())?;
        let stop_grace = parse::optional_duration("--stop-grace", self.stop_grace.as_deref())?;
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
            cwd: self.cwd.clone().unwrap_or_default(),
            timeout,
            resources: Some(pb::Resources { cpu_millis, memory_bytes, pids_max: self.pids }),
            labels,
            drain_policy: drain_policy.into(),
            restore_from: self.restore_from.clone().unwrap_or_default(),
            stop_grace,
        })
    }
}

pub(crate) async fn create(
    client: &mut Client,
    request: pb::CreateRequest,
    as_json: bool,
) -> Result<Outcome, ClientError> {
    let reply = client.sandboxes.create(request).await?.into_inner();
    print_sandbox(reply, as_json, |sandbox| output::println(&sandbox.id))
}
