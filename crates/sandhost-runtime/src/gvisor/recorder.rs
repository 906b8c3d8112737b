//! The exit recorder: `sandhost __runsc-exit <exit file> <runsc> <args>...` runs a container's
//! foreground `runsc run` (or `restore`) as its child, writes the container's exit to the exit file
//! when it ends, and exits with the same status.
//!
//! Only the parent of the foreground runsc can learn a container's exit (runsc's own `wait` cannot
//! once the sandbox is gone). The agent is that parent while it lives; the recorder is, when the
//! agent has died, so a sandbox that ends while no agent runs still has its exit code when the next
//! agent re-adopts it. One file per container (`exit.<container id>.json`): a checkpoint stops a
//! container on purpose, and only the current container's exit is the sandbox's.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;

use crate::Exit;

/// The hidden subcommand of the `sandhost` binary that runs [`exit_recorder_main`].
pub const EXIT_RECORDER_SUBCOMMAND: &str = "__runsc-exit";

/// runsc's status for its own failure (the container never ran): no exit to record.
const RUNSC_FAILED: i32 = 128;

/// The exit file of container `cid` in a lifecycle's directory.
pub(crate) fn exit_file(dir: &Path, cid: &str) -> std::path::PathBuf {
    dir.join(format!("exit.{cid}.json"))
}

/// Whether `name` is a file [`exit_file`] names (or its temporary).
pub(crate) fn is_exit_file(name: &str) -> bool {
    name.starts_with("exit.")
        && name != "exit.json"
        && (name.ends_with(".json") || name.ends_with(".json.tmp"))
}

/// Runs the recorder with the arguments after the subcommand; never returns.
pub fn exit_recorder_main(args: Vec<OsString>) -> ! {
    let mut args = args.into_iter();
    let (Some(file), Some(runsc)) = (args.next(), args.next()) else {
        eprintln!("{EXIT_RECORDER_SUBCOMMAND}: usage: <exit file> <runsc> [args...]");
        std::process::exit(2);
    };
    let status = match std::process::Command::new(&runsc).args(args).status() {
        Ok(status) => status,
        Err(e) => {
            eprintln!("{EXIT_RECORDER_SUBCOMMAND}: cannot run {}: {e}", runsc.to_string_lossy());
            std::process::exit(RUNSC_FAILED);
        }
    };
    let (exit, code) = match (status.code(), status.signal()) {
        (Some(code), _) => (Exit::from_shell_code(code), code),
        (None, Some(signal)) => (Exit::Signal(signal), 128 + signal),
        (None, None) => (Exit::Signal(libc::SIGKILL), 128 + libc::SIGKILL),
    };
    if code != RUNSC_FAILED
        && let Err(e) = record(Path::new(&file), exit)
    {
        eprintln!("{EXIT_RECORDER_SUBCOMMAND}: cannot record the exit in {}: {e}", file.to_string_lossy());
    }
    std::process::exit(code);
}

/// Writes `exit` to `file` atomically (`crate::state`), into a directory that must exist (a
/// discarded lifecycle's does not, and is not made again).
fn record(file: &Path, exit: Exit) -> std::io::Result<()> {
    match (file.parent(), file.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(name)) => crate::state_file::write(dir, name, &exit),
        _ => Err(std::io::ErrorKind::InvalidInput.into()),
    }
}
