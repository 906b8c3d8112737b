//! The client subcommands of the `sandhost` binary (all of docs/design.md's pinned CLI but `serve`).
//!
//! Each talks to a node over gRPC (`--addr` / `SANDHOST_ADDR`, default `http://127.0.0.1:5008`; the
//! bearer token from `SANDHOST_TOKEN`). People get readable tables; `--json` prints one JSON document
//! on stdout. Exit codes: 0 ok; 75 when the node answered `UNAVAILABLE` (retry later, e.g. it drains);
//! 1 for any other error, with the gRPC code and message on stderr. `wait` exits with the sandbox's
//! own exit code.

mod client;
mod node;
mod output;
pub(crate) mod parse;
mod sandbox;

use std::process::ExitCode;

use client::{Client, ClientError};

/// The default node address.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:5008";
/// The exit code when the node answered `UNAVAILABLE` (`EX_TEMPFAIL`).
pub const EXIT_UNAVAILABLE: u8 = 75;

/// Which node to talk to.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The node's gRPC address. A node with a token needs it in SANDHOST_TOKEN.
    #[arg(long, env = "SANDHOST_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,
}

/// The client subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Start a sandbox running CMD; prints its id.
    Create(Box<sandbox::CreateArgs>),
    /// List the sandboxes.
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one sandbox.
    Get {
        #[command(flatten)]
        target: Target,
        /// The sandbox.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a sandbox's output (stdout and stderr).
    Logs {
        #[command(flatten)]
        target: Target,
        /// The sandbox.
        id: String,
        /// Keep printing as it is written, until the sandbox exits.
        #[arg(short, long)]
        follow: bool,
    },
    /// Stop a sandbox: SIGTERM, its grace, then kill.
    Kill {
        #[command(flatten)]
        target: Target,
        /// The sandbox.
        id: String,
        /// Kill at once, without the grace.
        #[arg(long)]
        now: bool,
    },
    /// Freeze a running sandbox.
    Pause {
        #[command(flatten)]
        target: Target,
        /// The sandbox.
        id: String,
    },
    /// Thaw a paused sandbox.
    Resume {
        #[command(flatten)]
        target: Target,
        /// The sandbox.
        id: String,
    },
    /// Wait until a sandbox exits; exits with its exit code (128 + N for signal N).
    Wait {
        #[command(flatten)]
        target: Target,
        /// The sandbox.
        id: String,
    },
    /// Save a sandbox as a snapshot; prints the snapshot id.
    Checkpoint {
        #[command(flatten)]
        target: Target,
        /// The sandbox.
        id: String,
        /// Stop the sandbox once it is saved.
        #[arg(long)]
        stop: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the snapshots.
    Snapshots {
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot.
    SnapshotRm {
        #[command(flatten)]
        target: Target,
        /// The snapshot.
        snapshot: String,
    },
    /// Show the node's status, drain phase, deadlines and counts.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drain the node: stop admitting, wait for the sandboxes to leave; shows progress until drained.
    Drain(Box<node::DrainArgs>),
    /// Reopen admission after a drain.
    Undrain {
        #[command(flatten)]
        target: Target,
    },
    /// Stop every live sandbox now.
    ForceStop {
        #[command(flatten)]
        target: Target,
    },
}

/// How a subcommand ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Exit 0.
    Done,
    /// Exit with this code (`wait`).
    Code(u8),
}

/// Runs one client subcommand and returns the process exit code.
pub async fn run(command: ClientCommand) -> ExitCode {
    match dispatch(command).await {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Code(code)) => ExitCode::from(code),
        // The reader went away (`| head`): the output was not wanted any more; not an error.
        Err(ClientError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sandhost: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

async fn dispatch(command: ClientCommand) -> Result<Outcome, ClientError> {
    match command {
        ClientCommand::Create(args) => {
            let request = args.request()?;
            sandbox::create(&mut Client::connect(&args.target).await?, request, args.json).await
        }
        ClientCommand::List { target, json } => {
            sandbox::list(&mut Client::connect(&target).await?, json).await
        }
        ClientCommand::Get { target, id, json } => {
            sandbox::get(&mut Client::connect(&target).await?, id, json).await
        }
        ClientCommand::Logs { target, id, follow } => {
            sandbox::logs(&mut Client::connect(&target).await?, id, follow).await
        }
        ClientCommand::Kill { target, id, now } => {
            sandbox::kill(&mut Client::connect(&target).await?, id, now).await
        }
        ClientCommand::Pause { target, id } => sandbox::pause(&mut Client::connect(&target).await?, id).await,
        ClientCommand::Resume { target, id } => {
            sandbox::resume(&mut Client::connect(&target).await?, id).await
        }
        ClientCommand::Wait { target, id } => sandbox::wait(&mut Client::connect(&target).await?, id).await,
        ClientCommand::Checkpoint { target, id, stop, json } => {
            sandbox::checkpoint(&mut Client::connect(&target).await?, id, stop, json).await
        }
        ClientCommand::Snapshots { target, json } => {
            sandbox::snapshots(&mut Client::connect(&target).await?, json).await
        }
        ClientCommand::SnapshotRm { target, snapshot } => {
            sandbox::snapshot_rm(&mut Client::connect(&target).await?, snapshot).await
        }
        ClientCommand::Status { target, json } => {
            node::status(&mut Client::connect(&target).await?, json).await
        }
        ClientCommand::Drain(args) => {
            let request = args.request()?;
            node::drain(&mut Client::connect(&args.target).await?, request, args.detach).await
        }
        ClientCommand::Undrain { target } => node::undrain(&mut Client::connect(&target).await?).await,
        ClientCommand::ForceStop { target } => node::force_stop(&mut Client::connect(&target).await?).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(subcommand)]
        command: ClientCommand,
    }

    fn parse(argv: &[&str]) -> Result<ClientCommand, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("sandhost").chain(argv.iter().copied())).map(|w| w.command)
    }

    #[test]
    fn create_takes_the_pinned_flags_and_the_command_after_dashes() {
        let command = parse(&[
            "create",
            "--id",
            "sb-1",
            "--template",
            "host",
            "--timeout",
            "1m30s",
            "--memory",
            "256M",
            "--cpus",
            "0.5",
            "--pids",
            "64",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--label",
            "team=a",
            "--drain-policy",
            "checkpoint",
            "--json",
            "--",
            "sh",
            "-c",
            "echo hi",
        ])
        .expect("parses");
        let ClientCommand::Create(args) = command else { panic!("not create: {command:?}") };
        assert!(args.json);
        let request = args.request().expect("valid");
        assert_eq!(request.id, "sb-1");
        assert_eq!(request.argv, ["sh", "-c", "echo hi"]);
        assert_eq!(request.timeout, Some(prost_types::Duration { seconds: 90, nanos: 0 }));
        let resources = request.resources.expect("resources");
        assert_eq!(resources.memory_bytes, Some(256 << 20));
        assert_eq!(resources.cpu_millis, Some(500));
        assert_eq!(resources.pids_max, Some(64));
        assert_eq!(request.env[1].name, "B");
        assert_eq!(request.env[1].value, "x=y");
        assert_eq!(request.labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(request.drain_policy(), sandhost_proto::v1::DrainPolicy::Checkpoint);
        assert_eq!(request.restore_from, "");
    }

    #[test]
    fn a_restore_takes_no_command_and_refuses_one() {
        let ClientCommand::Create(args) = parse(&["create", "--restore-from", "snap-1"]).expect("parses")
        else {
            panic!("not create")
        };
        let request = args.request().expect("valid");
        assert_eq!(request.restore_from, "snap-1");
        assert!(request.argv.is_empty());
        assert!(parse(&["create", "--restore-from", "snap-1", "--", "true"]).is_err());
        assert!(parse(&["create", "--restore-from", "snap-1", "--env", "A=1"]).is_err());
    }

    #[test]
    fn create_needs_a_command() {
        assert!(parse(&["create"]).is_err());
        assert!(parse(&["create", "--id", "x"]).is_err());
    }

    #[test]
    fn every_pinned_subcommand_parses() {
        for argv in [
            &["list", "--json"][..],
            &["get", "sb-1", "--json"],
            &["logs", "sb-1", "-f"],
            &["kill", "sb-1", "--now"],
            &["pause", "sb-1"],
            &["resume", "sb-1"],
            &["wait", "sb-1"],
            &["checkpoint", "sb-1", "--stop", "--json"],
            &["snapshots", "--json"],
            &["snapshot-rm", "snap-1"],
            &["status", "--json"],
            &["drain", "--timeout", "5m", "--force", "--detach"],
            &["undrain"],
            &["force-stop"],
            &["list", "--addr", "http://127.0.0.1:1"],
        ] {
            parse(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
    }

    #[test]
    fn a_malformed_drain_timeout_is_refused() {
        let ClientCommand::Drain(args) = parse(&["drain", "--timeout", "soon"]).expect("parses") else {
            panic!("not drain")
        };
        assert!(args.request().is_err());
    }
}
