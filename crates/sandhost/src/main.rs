//! The `sandhost` binary: the node agent (`serve`) and its client subcommands.
#![forbid(unsafe_code)]

use clap::Parser;

/// sandhost: a node agent that runs isolated sandboxes and drains without losing any.
#[derive(Debug, Parser)]
#[command(name = "sandhost", version)]
struct Cli {}

fn main() {
    // A sandbox's pid 1 is this binary re-executed with a hidden subcommand: dispatch before the CLI.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == sandhost_runtime::process::INIT_SUBCOMMAND) {
        sandhost_runtime::process::init_main(args.collect());
    }
    let _cli = Cli::parse();
}
