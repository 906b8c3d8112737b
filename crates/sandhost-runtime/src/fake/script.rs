//! What the fake records and how a test scripts it: the calls made to it ([`Call`]), the operation
//! kinds ([`Op`]) and what their calls do ([`Behaviour`]), how a sandbox takes a stop
//! ([`StopBehaviour`]), and the failures it returns when told to.

use std::io;
use std::time::{Duration, SystemTime};

#[cfg(doc)]
use super::FakeRuntime;
#[cfg(doc)]
use crate::Runtime;
use crate::{Exit, SandboxKey, SnapshotId};

/// One call made to the fake, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// [`Runtime::start`].
    Start(SandboxKey),
    /// [`Runtime::wait`].
    Wait(SandboxKey),
    /// [`Runtime::stop`].
    Stop {
        /// The sandbox.
        key: SandboxKey,
        /// The grace it was given.
        grace: Duration,
    },
    /// [`Runtime::kill`].
    Kill(SandboxKey),
    /// [`Runtime::pause`].
    Pause(SandboxKey),
    /// [`Runtime::resume`].
    Resume(SandboxKey),
    /// [`Runtime::read_logs`].
    ReadLogs {
        /// The sandbox.
        key: SandboxKey,
        /// The offset asked for.
        offset: u64,
        /// The most bytes asked for.
        max: usize,
    },
    /// [`Runtime::log_offset_at`].
    LogOffsetAt {
        /// The sandbox.
        key: SandboxKey,
        /// The time asked for.
        since: SystemTime,
    },
    /// [`Runtime::cleanup`].
    Cleanup(SandboxKey),
    /// [`Runtime::forget`].
    Forget(SandboxKey),
    /// [`Runtime::recover`].
    Recover,
    /// [`Runtime::checkpoint`].
    Checkpoint {
        /// The sandbox.
        key: SandboxKey,
        /// The snapshot to write.
        snapshot: SnapshotId,
        /// Whether the sandbox was to be stopped afterwards.
        stop: bool,
    },
    /// [`Runtime::list_snapshots`].
    ListSnapshots,
    /// [`Runtime::delete_snapshot`].
    DeleteSnapshot(SnapshotId),
    /// [`Runtime::close`].
    Close,
}

impl Call {
    /// The scriptable operation kind of this call, if it has one.
    #[must_use]
    pub fn op(&self) -> Option<Op> {
        match self {
            Self::Start(_) => Some(Op::Start),
            Self::Wait(_) => Some(Op::Wait),
            Self::Stop { .. } => Some(Op::Stop),
            Self::Kill(_) => Some(Op::Kill),
            Self::Pause(_) => Some(Op::Pause),
            Self::Resume(_) => Some(Op::Resume),
            Self::Cleanup(_) => Some(Op::Cleanup),
            Self::Checkpoint { .. } => Some(Op::Checkpoint),
            Self::ReadLogs { .. }
            | Self::LogOffsetAt { .. }
            | Self::Forget(_)
            | Self::Recover
            | Self::ListSnapshots
            | Self::DeleteSnapshot(_)
            | Self::Close => None,
        }
    }
}

/// An operation kind that can be scripted with a [`Behaviour`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Runtime::start`].
    Start,
    /// [`Runtime::stop`].
    Stop,
    /// [`Runtime::kill`].
    Kill,
    /// [`Runtime::pause`].
    Pause,
    /// [`Runtime::resume`].
    Resume,
    /// [`Runtime::wait`].
    Wait,
    /// [`Runtime::cleanup`].
    Cleanup,
    /// [`Runtime::checkpoint`] (not listing or deleting snapshots).
    Checkpoint,
}

/// What calls of one [`Op`] do, from the moment it is scripted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Do what the operation does.
    #[default]
    Normal,
    /// Return the operation's host error at once, changing nothing.
    Fail,
    /// Stay in flight until [`FakeRuntime::release`] (then act normally) or
    /// [`FakeRuntime::fail_hung`] (then fail as with [`Behaviour::Fail`]).
    Hang,
}

/// How a sandbox reacts to [`Runtime::stop`] (see [`FakeRuntime::on_stop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopBehaviour {
    /// It exits at once on SIGTERM, like this. The default is `ExitsOnTerm(Exit::Signal(15))`.
    ExitsOnTerm(Exit),
    /// It ignores SIGTERM: the stop takes the whole grace (a `tokio::time::sleep`, so instant under a
    /// paused clock) unless the sandbox exits on its own first, then kills it (`Signal(9)`).
    IgnoresTerm,
}

impl Default for StopBehaviour {
    fn default() -> Self {
        Self::ExitsOnTerm(Exit::Signal(libc::SIGTERM))
    }
}

/// How a hung call ends.
#[derive(Debug, Clone, Copy)]
pub(super) enum Resolution {
    Proceed,
    Fail,
}

/// A failure the test scripted; converted into each operation's host error.
#[derive(Debug, Clone, Copy)]
pub(super) struct ScriptedFailure(pub(super) Op);

impl ScriptedFailure {
    pub(super) fn io(self) -> io::Error {
        io::Error::other(format!("scripted failure of {:?}", self.0))
    }
}
