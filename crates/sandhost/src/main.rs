//! The `sandhost` binary: the node agent (`serve`) and its client subcommands.
#![forbid(unsafe_code)]

use clap::Parser;

/// sandhost: a node agent that runs isolated sandboxes and drains without losing any.
#[derive(Debug, Parser)]
#[command(name = "sandhost", version)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
