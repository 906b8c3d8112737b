//! The exit codes of the client subcommands, in one table: `sandhost --help`, the man page and the
//! README list these, and every code a client subcommand returns is one of them.
//!
//! No code means two things: the CLI's own codes (1, 2, 75) never stand for a sandbox's, so `wait`
//! maps the sandbox's exit onto codes of its own (`wait --exit-code` gives the sandbox's exactly, for
//! those who want it and accept the overlap).

use sandhost_proto::v1 as pb;

/// Done.
pub const EXIT_OK: u8 = 0;
/// Any other error: the gRPC code and message (or the flag at fault) on stderr.
pub const EXIT_ERROR: u8 = 1;
/// clap could not parse the command line; nothing was called.
pub const EXIT_USAGE: u8 = 2;
/// `drain`: the node is drained, but not every sandbox left on its own: some were force-stopped or
/// checkpointed.
pub const EXIT_DRAIN_FORCED: u8 = 3;
/// `drain`: the node is drained with failures: a sandbox could not be stopped or checkpointed (each
/// named on stderr).
pub const EXIT_DRAIN_FAILED: u8 = 4;
/// `wait`: the sandbox exited with a non-zero code.
pub const EXIT_SANDBOX_FAILED: u8 = 5;
/// `wait`: a signal ended the sandbox (a kill, its timeout, a forced drain).
pub const EXIT_SANDBOX_SIGNALED: u8 = 6;
/// `wait`: the sandbox has no exit status: it never ran (its start failed, or it was stopped before).
pub const EXIT_SANDBOX_NEVER_RAN: u8 = 7;
/// The node answered `UNAVAILABLE` (it drains or shuts down), could not be reached at all, or went
/// away during the call (it is down or restarting): retry later or elsewhere (`EX_TEMPFAIL`).
pub const EXIT_UNAVAILABLE: u8 = 75;

/// Every client exit code with its meaning, in order, for the help text, the man page and the
/// README.
pub const EXIT_CODES: [(u8, &str); 9] = [
    (EXIT_OK, "done (also when the reader of the output went away, as with `| head`)"),
    (EXIT_ERROR, "any other error: the gRPC code and message, or the flag at fault, on stderr"),
    (EXIT_USAGE, "the command line cannot be parsed; nothing was called"),
    (EXIT_DRAIN_FORCED, "drain: drained, but sandboxes were force-stopped or checkpointed"),
    (EXIT_DRAIN_FAILED, "drain: drained with failures: a sandbox could not be stopped or checkpointed"),
    (EXIT_SANDBOX_FAILED, "wait: the sandbox exited with a non-zero code (--exit-code: that code)"),
    (EXIT_SANDBOX_SIGNALED, "wait: a signal ended the sandbox (--exit-code: 128 + the signal)"),
    (EXIT_SANDBOX_NEVER_RAN, "wait: the sandbox never ran: no exit status (--exit-code: 1)"),
    (EXIT_UNAVAILABLE, "the node is unreachable, went away mid-call or answered UNAVAILABLE: retry"),
];

/// The exit codes as the end of `sandhost --help` shows them.
#[must_use]
pub fn help_text() -> String {
    let mut text = String::from("Exit codes of the client subcommands:\n");
    for (code, meaning) in EXIT_CODES {
        text.push_str(&format!("  {code:>3}  {meaning}\n"));
    }
    text.push_str("`sandhost serve` exits with codes of its own: see the README.");
    text
}

/// How a subcommand ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Exit 0.
    Done,
    /// Exit with this code (`wait`, `drain`).
    Code(u8),
}

/// `wait`'s exit code: 0 when the sandbox exited 0, else a code of `wait`'s own that says how it
/// ended (the sandbox's own code is on stderr, and `--exit-code` returns it).
pub(crate) fn of_wait(exit: Option<&pb::SandboxExit>) -> u8 {
    match exit.and_then(|e| e.status) {
        Some(pb::sandbox_exit::Status::Code(0)) => EXIT_OK,
        Some(pb::sandbox_exit::Status::Code(_)) => EXIT_SANDBOX_FAILED,
        Some(pb::sandbox_exit::Status::Signal(_)) => EXIT_SANDBOX_SIGNALED,
        None => EXIT_SANDBOX_NEVER_RAN,
    }
}

/// `wait --exit-code`: the sandbox's own exit code (its low 8 bits, as a shell keeps them), 128 + N
/// for signal N, and 1 when it never ran. These overlap the CLI's own codes, by request.
pub(crate) fn of_wait_exact(exit: Option<&pb::SandboxExit>) -> u8 {
    match exit.and_then(|e| e.status) {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        // the shell keeps the low 8 bits too
        Some(pb::sandbox_exit::Status::Code(code)) => (code & 0xff) as u8,
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(pb::sandbox_exit::Status::Signal(signal)) => ((128 + signal) & 0xff) as u8,
        None => EXIT_ERROR,
    }
}

/// `drain`'s exit code once the node is drained: failures first, then sandboxes that did not leave
/// on their own (force-stopped, checkpointed), else 0. Policy stops (`--drain-policy stop`) are the
/// sandbox's own choice, not forced.
pub(crate) fn of_drain(progress: &pb::DrainProgress) -> u8 {
    if !progress.failures.is_empty() {
        EXIT_DRAIN_FAILED
    } else if progress.force_stopped > 0 || progress.checkpointed > 0 || !progress.evacuated.is_empty() {
        EXIT_DRAIN_FORCED
    } else {
        EXIT_OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(status: pb::sandbox_exit::Status) -> pb::SandboxExit {
        pb::SandboxExit { status: Some(status), reason: 1, ..Default::default() }
    }

    #[test]
    fn no_code_means_two_things() {
        let mut codes: Vec<u8> = EXIT_CODES.iter().map(|(code, _)| *code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), EXIT_CODES.len(), "{EXIT_CODES:?}");
    }

    #[test]
    fn wait_maps_the_sandbox_exit_onto_its_own_codes() {
        use pb::sandbox_exit::Status;
        assert_eq!(of_wait(Some(&exit(Status::Code(0)))), 0);
        // A sandbox that exits 1, 2 or 75 is not mistaken for the CLI's error, usage or retry codes.
        for code in [1, 2, 3, 75, 255, 256] {
            assert_eq!(of_wait(Some(&exit(Status::Code(code)))), EXIT_SANDBOX_FAILED, "{code}");
        }
        assert_eq!(of_wait(Some(&exit(Status::Signal(9)))), EXIT_SANDBOX_SIGNALED);
        assert_eq!(of_wait(Some(&pb::SandboxExit::default())), EXIT_SANDBOX_NEVER_RAN);
        assert_eq!(of_wait(None), EXIT_SANDBOX_NEVER_RAN);
    }

    #[test]
    fn wait_exit_code_gives_the_sandbox_code_exactly() {
        use pb::sandbox_exit::Status;
        assert_eq!(of_wait_exact(Some(&exit(Status::Code(0)))), 0);
        assert_eq!(of_wait_exact(Some(&exit(Status::Code(42)))), 42);
        assert_eq!(of_wait_exact(Some(&exit(Status::Code(256 + 3)))), 3);
        assert_eq!(of_wait_exact(Some(&exit(Status::Signal(9)))), 137);
        assert_eq!(of_wait_exact(None), 1);
    }

    #[test]
    fn drain_says_whether_it_had_to_force() {
        let clean = pb::DrainProgress { exited: 3, policy_stopped: 2, ..Default::default() };
        assert_eq!(of_drain(&clean), EXIT_OK, "policy stops are not forced");
        let forced = pb::DrainProgress { force_stopped: 1, ..clean.clone() };
        assert_eq!(of_drain(&forced), EXIT_DRAIN_FORCED);
        let checkpointed = pb::DrainProgress { checkpointed: 1, ..clean };
        assert_eq!(of_drain(&checkpointed), EXIT_DRAIN_FORCED);
        let failed = pb::DrainProgress {
            failures: vec![pb::DrainFailure { subject: "sb-1".into(), message: "stuck".into() }],
            ..forced
        };
        assert_eq!(of_drain(&failed), EXIT_DRAIN_FAILED, "a failure comes first");
    }

    #[test]
    fn the_help_lists_every_code() {
        let text = help_text();
        for (code, meaning) in EXIT_CODES {
            assert!(text.contains(&format!("{code:>3}  {meaning}")), "{text}");
        }
    }
}
