//! The client subcommands of the `sandhost` binary.

/// The client subcommands (being built).
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {}

/// Runs one client subcommand and returns the process exit code.
pub async fn run(command: ClientCommand) -> std::process::ExitCode {
    match command {}
}
