//! The client subcommands of the `sandhost` binary (all of docs/design.md's pinned CLI but `serve`).
//!
//! Each talks to a node over gRPC: the address from `--addr` (before or after the subcommand; the one
//! after wins), else `SANDHOST_ADDR`, else `http://127.0.0.1:5008`, written `HOST:PORT` with or
//! without `http://`; the bearer token from `SANDHOST_TOKEN`. People get readable tables; `--json`
//! prints the reply of the RPC the subcommand makes, in the proto3 JSON mapping (as grpcurl prints
//! it; `json.rs`). `completion` and `man` describe the CLI itself and call nothing.
//!
//! Exit codes (`exit.rs`, the one table): 0 done; 1 any other error; 2 a command line clap cannot
//! parse; 3 and 4 a drain that had to force, or failed to stop, sandboxes; 5, 6, 7 `wait` on a
//! sandbox that did not exit 0; 75 a node that answered `UNAVAILABLE` or could not be reached.

mod client;
mod create;
mod docs;
mod drain;
pub mod exit;
mod json;
mod logs;
mod node;
mod output;
pub(crate) mod parse;
mod sandbox;

use std::process::ExitCode;

use client::{Client, ClientError};
use exit::Outcome;

/// The default node address.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:5008";

/// Which node to talk to, given after the subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The node's gRPC address, HOST:PORT (default: the --addr before the subcommand, else
    /// SANDHOST_ADDR, else 127.0.0.1:5008). A node with a token needs it in SANDHOST_TOKEN.
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
}

impl Target {
    /// This address, or `global` (the `--addr` before the subcommand, or its environment or default).
    fn or<'a>(&'a self, global: &'a str) -> &'a str {
        self.addr.as_deref().unwrap_or(global)
    }
}

/// The client subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Start a sandbox running CMD; prints its id.
    Create(Box<create::CreateArgs>),
    /// List the sandboxes (ordered by id).
    List(sandbox::ListArgs),
    /// Show one sandbox.
    Get {
        #[command(flatten)]
        target: Target,
        /// The sandbox.
        id: String,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a sandbox's output (stdout and stderr, as written).
    Logs(logs::LogsArgs),
    /// Stop a sandbox: SIGTERM, its grace, then kill.
    Kill {
        #[command(flatten)]
        target: Target,
        /// The sandbox.
        id: String,
        /// Kill at once, without the grace.
        #[arg(long)]
        now: bool,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Freeze a running sandbox.
    Pause {
        #[command(flatten)]
        target: Target,
        /// The sandbox.
        id: String,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Thaw a paused sandbox.
    Resume {
        #[command(flatten)]
        target: Target,
        /// The sandbox.
        id: String,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a live sandbox: move its end time, replace its labels.
    Update(sandbox::UpdateArgs),
    /// Wait until a sandbox exits; exit 0 only if it exited 0.
    ///
    /// Exits 0 if the sandbox exited 0, 5 if it exited with another code, 6 if a signal ended it, 7
    /// if it never ran (its code or signal on stderr); with --exit-code, the sandbox's own code.
    Wait {
        #[command(flatten)]
        target: Target,
        /// The sandbox.
        id: String,
        /// Exit with the sandbox's own exit code instead (128 + N for signal N, 1 if it never
        /// ran), which can look like the CLI's own codes.
        #[arg(long)]
        exit_code: bool,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Save a sandbox as a snapshot (gvisor); prints the snapshot id.
    Checkpoint {
        #[command(flatten)]
        target: Target,
        /// The sandbox.
        id: String,
        /// Stop the sandbox once it is saved.
        #[arg(long)]
        stop: bool,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the snapshots.
    Snapshots {
        #[command(flatten)]
        target: Target,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot.
    SnapshotRm {
        #[command(flatten)]
        target: Target,
        /// The snapshot.
        snapshot: String,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the node's status, drain phase, deadlines and counts.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drain the node: stop admitting, wait for the sandboxes to leave; shows progress until drained.
    ///
    /// The progress names the first sandboxes still holding the drain. Exits 0 once drained if every
    /// sandbox left on its own (or by its `stop` policy), 3 if some had to be force-stopped or
    /// checkpointed, 4 if some could not be stopped; --detach exits 0 once the drain has begun.
    Drain(Box<drain::DrainArgs>),
    /// Reopen admission after a drain.
    Undrain {
        #[command(flatten)]
        target: Target,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop every live sandbox now.
    ForceStop {
        #[command(flatten)]
        target: Target,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script.
    ///
    /// For example `sandhost completion bash > /etc/bash_completion.d/sandhost`, or
    /// `source <(sandhost completion bash)`.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, sandhost(1), as roff.
    ///
    /// Read it with `sandhost man | man -l -`; --dir writes one page per subcommand too.
    Man {
        /// Write sandhost.1 and sandhost-SUBCOMMAND.1 here instead of printing sandhost.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

/// Runs one client subcommand against the node at `addr` (the `--addr` given before the subcommand,
/// or its environment or default) and returns the process exit code. `cli` builds the whole command
/// line, for `completion` and `man`.
pub async fn run(command: ClientCommand, addr: &str, cli: fn() -> clap::Command) -> ExitCode {
    match dispatch(command, addr, cli).await {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Code(code)) => ExitCode::from(code),
        // The reader went away (`| head`): the output was not wanted any more; not an error.
        Err(ClientError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sandhost: {}", output::escape(&crate::error_chain(&error)));
            ExitCode::from(error.exit_code())
        }
    }
}

async fn dispatch(
    command: ClientCommand,
    addr: &str,
    cli: fn() -> clap::Command,
) -> Result<Outcome, ClientError> {
    match command {
        ClientCommand::Create(args) => {
            let request = args.request()?;
            create::create(&mut Client::connect(args.target.or(addr)).await?, request, args.json).await
        }
        ClientCommand::List(args) => {
            let request = args.request()?;
            sandbox::list(&mut Client::connect(args.target.or(addr)).await?, request, args.format()).await
        }
        ClientCommand::Get { target, id, json } => {
            sandbox::get(&mut Client::connect(target.or(addr)).await?, id, json).await
        }
        ClientCommand::Logs(args) => {
            logs::logs(&mut Client::connect(args.target.or(addr)).await?, &args).await
        }
        ClientCommand::Kill { target, id, now, json } => {
            sandbox::kill(&mut Client::connect(target.or(addr)).await?, id, now, json).await
        }
        ClientCommand::Pause { target, id, json } => {
            sandbox::pause(&mut Client::connect(target.or(addr)).await?, id, json).await
        }
        ClientCommand::Resume { target, id, json } => {
            sandbox::resume(&mut Client::connect(target.or(addr)).await?, id, json).await
        }
        ClientCommand::Update(args) => {
            let request = args.request()?;
            sandbox::update(&mut Client::connect(args.target.or(addr)).await?, request, args.json).await
        }
        ClientCommand::Wait { target, id, exit_code, json } => {
            sandbox::wait(&mut Client::connect(target.or(addr)).await?, id, exit_code, json).await
        }
        ClientCommand::Checkpoint { target, id, stop, json } => {
            sandbox::checkpoint(&mut Client::connect(target.or(addr)).await?, id, stop, json).await
        }
        ClientCommand::Snapshots { target, json } => {
            sandbox::snapshots(&mut Client::connect(target.or(addr)).await?, json).await
        }
        ClientCommand::SnapshotRm { target, snapshot, json } => {
            sandbox::snapshot_rm(&mut Client::connect(target.or(addr)).await?, snapshot, json).await
        }
        ClientCommand::Status { target, json } => {
            node::status(&mut Client::connect(target.or(addr)).await?, json).await
        }
        ClientCommand::Drain(args) => {
            let request = args.request()?;
            drain::drain(&mut Client::connect(args.target.or(addr)).await?, request, &args).await
        }
        ClientCommand::Undrain { target, json } => {
            node::undrain(&mut Client::connect(target.or(addr)).await?, json).await
        }
        ClientCommand::ForceStop { target, json } => {
            node::force_stop(&mut Client::connect(target.or(addr)).await?, json).await
        }
        ClientCommand::Completion { shell } => docs::completion(shell, cli()),
        ClientCommand::Man { dir } => docs::man(cli(), dir.as_deref()),
    }
}

#[cfg(test)]
mod tests;
