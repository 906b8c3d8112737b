//! The `sandhost` binary: the node agent (`serve`) and its client subcommands.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sandhost::{cli, config};

/// sandhost: a node agent that runs isolated sandboxes and drains without losing any.
#[derive(Debug, Parser)]
#[command(name = "sandhost", version, propagate_version = true)]
struct Cli {
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
            sandhost_runtime::process::init_main(args.collect());
        }
        Some(a) if a == sandhost_runtime::gvisor::EXIT_RECORDER_SUBCOMMAND => {
            sandhost_runtime::gvisor::exit_recorder_main(args.collect());
        }
        _ => {}
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => sandhost::serve::run(&args),
        Command::Client(command) => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("sandhost: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(cli::run(command))
        }
    }
}
