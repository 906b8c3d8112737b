//! The `sandhost` binary: the node agent (`serve`) and its client subcommands.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use sandhost::{cli, config};

/// sandhost: a node agent that runs isolated sandboxes and drains without losing any.
#[derive(Debug, Parser)]
#[command(name = "sandhost", version, propagate_version = true, after_long_help = cli::exit::help_text())]
struct Cli {
    /// The node the client subcommands talk to: HOST:PORT, or http://HOST:PORT (also accepted after
    /// the subcommand, where it wins). Not for `serve`, which takes --listen.
    #[arg(long, env = "SANDHOST_ADDR", default_value = cli::DEFAULT_ADDR, value_name = "HOST:PORT")]
    addr: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node agent.
    Serve(Box<config::ServeArgs>),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn main() -> ExitCode {
    // A sandbox's pid 1 is this binary re-executed with a hidden subcommand: dispatch before the CLI.
    let mut args = std::env::args_os();
    // The gvisor backend runs each container's foreground runsc under this binary too, which
    // records the container's exit even when no agent runs.
    match args.nth(1) {
        Some(a) if a == sandhost_runtime::process::INIT_SUBCOMMAND => {
            sandhost_runtime::process::init_main(&args.collect::<Vec<_>>());
        }
        Some(a) if a == sandhost_runtime::gvisor::EXIT_RECORDER_SUBCOMMAND => {
            sandhost_runtime::gvisor::exit_recorder_main(args.collect());
        }
        _ => {}
    }
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Serve(_) if matches.value_source("addr") == Some(ValueSource::CommandLine) => Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--addr is for the client subcommands; serve takes --listen",
            )
            .exit(),
        Command::Serve(args) => sandhost::serve::run(&args),
        Command::Client(command) => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("sandhost: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(cli::run(command, &cli.addr, Cli::command))
        }
    }
}
