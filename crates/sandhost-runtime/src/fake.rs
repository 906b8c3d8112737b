//! A recording, scriptable [`Runtime`] that keeps its sandboxes in memory, for the tests of the layers
//! above (the sandbox manager, the drain coordinator). Compiled only with the `test-util` feature.
//!
//! What it does:
//! - **Runs nothing.** `start` records the sandbox as running (a fake, increasing pid); it "exits" when
//!   the test says so ([`FakeRuntime::exit`]), or on `stop` (`Signal(15)` by default, see
//!   [`StopBehaviour`]), `kill` (`Signal(9)`) or a checkpoint with `stop`.
//! - **Records every call**, in order, at the moment it is made (before any scripted hang or failure):
//!   [`FakeRuntime::calls`].
//! - **Can be scripted** per operation kind ([`Op`]) to fail or to hang ([`FakeRuntime::script`]);
//!   hung calls stay in flight until [`FakeRuntime::release`] or [`FakeRuntime::fail_hung`]. Starts can
//!   also be held at a gate ([`FakeRuntime::hold_starts`]) so a test can have a start in flight.
//! - **Never polls and never sleeps on its own.** `wait` and every "until" helper are woken by the
//!   change they wait for (`tokio::sync::watch`, `oneshot`), so tests run under tokio's paused clock
//!   (`#[tokio::test(start_paused = true)]`). The only timer is a stop of a sandbox scripted with
//!   [`StopBehaviour::IgnoresTerm`], which takes its grace, as the real backend would.
//!
//! Invariants it keeps, as the real backends do: a failed start leaves nothing behind; `stop`, `kill`,
//! `cleanup` and `forget` are idempotent (and succeed for keys they do not know: nothing is left); `wait`
//! is cancel-safe and any number of waits may run at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::sync::{oneshot, watch};

#[cfg(doc)]
use crate::Runtime;
use crate::{
    CheckpointError, ControlError, Exit, Recovered, SandboxKey, SandboxSpec, SnapshotInfo, StartError,
    Started,
};

/// The backend name the fake reports (and puts in its `NotSupported` errors).
pub const FAKE_BACKEND: &str = "fake";

/// The first pid the fake hands out; each start gets the next one.
const FIRST_PID: i32 = 10_000;

/// The recording fake runtime. Cheap to clone: clones share the same sandboxes and script, so a
/// test can keep one and hand the other to the code under test (as `Arc<dyn Runtime>`).
#[derive(Debug, Clone)]
pub struct FakeRuntime {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Bumped on every change a test may wait for (a call, a hung call, a held start, an exit).
    changed: watch::Sender<u64>,
    /// Whether checkpoints (and restores) work.
    can_checkpoint: bool,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    sandboxes: HashMap<SandboxKey, Sandbox>,
    next_pid: i32,
    behaviours: HashMap<Op, Behaviour>,
    hung: HashMap<Op, Vec<oneshot::Sender<Resolution>>>,
    stop_behaviours: HashMap<SandboxKey, StopBehaviour>,
    /// While `Some`, starts wait for it to turn `true` (or for its sender to go).
    start_gate: Option<watch::Receiver<bool>>,
    held_starts: usize,
    recoverable: Vec<Recovered>,
    snapshots: Vec<SnapshotInfo>,
    oom_kills: HashMap<SandboxKey, u64>,
}

#[derive(Debug)]
struct Sandbox {
    spec: SandboxSpec,
    pid: i32,
    paused: bool,
    cleaned_up: bool,
    /// `None` while it runs; set once, when it exits.
    exit: watch::Sender<Option<Exit>>,
    log: Vec<u8>,
    /// Each write to the log: the log's length after it, and when it was made.
    log_writes: Vec<(u64, SystemTime)>,
}

impl Sandbox {
    fn new(spec: SandboxSpec, pid: i32) -> Self {
        Self {
            spec,
            pid,
            paused: false,
            cleaned_up: false,
            exit: watch::Sender::new(None),
            log: Vec::new(),
            log_writes: Vec::new(),
        }
    }

    fn is_running(&self) -> bool {
        self.exit.borrow().is_none()
    }

    /// Makes a running sandbox exit; returns whether it was running.
    fn exit_with(&mut self, exit: Exit) -> bool {
        self.paused = false;
        self.exit.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(exit);
            true
        })
    }
}

/// Holds every [`Runtime::start`] in flight until released; from [`FakeRuntime::hold_starts`].
/// Dropping it releases the held starts too, so a failing test does not hang on them.
#[derive(Debug)]
#[must_use = "dropping the hold releases the starts at once"]
pub struct StartHold {
    fake: FakeRuntime,
    release: watch::Sender<bool>,
}

impl StartHold {
    /// Lets every held start (and every later one) go on.
    pub fn release(self) {
        drop(self);
    }

    /// Waits until at least `count` starts are held at this gate.
    pub async fn wait_held(&self, count: usize) {
        self.fake.until(|state| state.held_starts >= count).await;
    }

    /// How many starts are held now.
    #[must_use]
    pub fn held(&self) -> usize {
        self.fake.lock().held_starts
    }
}

impl Drop for StartHold {
    fn drop(&mut self) {
        self.release.send_replace(true);
        self.fake.lock().start_gate = None;
    }
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRuntime {
    /// A fake that cannot checkpoint (like the `process` backend).
    #[must_use]
    pub fn new() -> Self {
        Self::build(false)
    }

    /// A fake that can checkpoint: snapshots are records kept in memory, and starts can restore from
    /// them.
    #[must_use]
    pub fn with_checkpoint() -> Self {
        Self::build(true)
    }

    fn build(can_checkpoint: bool) -> Self {
        let state = State { next_pid: FIRST_PID, ..State::default() };
        let shared = Shared { state: Mutex::new(state), changed: watch::Sender::new(0), can_checkpoint };
        Self { shared: Arc::new(shared) }
    }

    /// Every call made so far, in order.
    #[must_use]
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Scripts what later calls of `op` do. Calls already hung stay hung (see
    /// [`FakeRuntime::release`]).
    pub fn script(&self, op: Op, behaviour: Behaviour) {
        self.lock().behaviours.insert(op, behaviour);
    }

    /// Lets every call of `op` that is hung now go on normally. Returns how many there were.
    pub fn release(&self, op: Op) -> usize {
        self.resolve_hung(op, Resolution::Proceed)
    }

    /// Makes every call of `op` that is hung now fail, as [`Behaviour::Fail`] would. Returns how
    /// many there were.
    pub fn fail_hung(&self, op: Op) -> usize {
        self.resolve_hung(op, Resolution::Fail)
    }

    /// How many calls of `op` are hung now (a dropped call no longer counts).
    #[must_use]
    pub fn hung(&self, op: Op) -> usize {
        self.lock().hung_count(op)
    }

    /// Waits until at least `count` calls of `op` are hung.
    pub async fn wait_hung(&self, op: Op, count: usize) {
        self.until(|state| state.hung_count(op) >= count).await;
    }

    /// Waits until at least `count` calls satisfy `matches` (e.g. `|c| matches!(c, Call::Stop { .. })`).
    pub async fn wait_calls(&self, count: usize, matches: impl Fn(&Call) -> bool) {
        self.until(|state| state.calls.iter().filter(|call| matches(call)).count() >= count).await;
    }

    /// Holds every start (from now on, until the returned handle is released or dropped) after it is
    /// recorded and before it does anything, so a test can have starts in flight.
    ///
    /// # Panics
    ///
    /// If starts are already held (one hold at a time).
    pub fn hold_starts(&self) -> StartHold {
        let (release, gate) = watch::channel(false);
        let mut state = self.lock();
        assert!(state.start_gate.is_none(), "FakeRuntime: starts are already held");
        state.start_gate = Some(gate);
        drop(state);
        StartHold { fake: self.clone(), release }
    }

    /// Makes a running sandbox exit on its own, like this. Returns whether it was running.
    pub fn exit(&self, key: &SandboxKey, exit: Exit) -> bool {
        let exited = self.lock().sandboxes.get_mut(key).is_some_and(|sandbox| sandbox.exit_with(exit));
        self.bump();
        exited
    }

    /// Appends bytes to a sandbox's log, written now. Returns whether the sandbox is known.
    pub fn write_log(&self, key: &SandboxKey, bytes: &[u8]) -> bool {
        self.write_log_at(key, bytes, SystemTime::now())
    }

    /// Appends bytes to a sandbox's log, written at `at` (what [`Runtime::log_offset_at`] goes by:
    /// the fake dates every write exactly). Returns whether the sandbox is known.
    pub fn write_log_at(&self, key: &SandboxKey, bytes: &[u8], at: SystemTime) -> bool {
        let mut state = self.lock();
        let Some(sandbox) = state.sandboxes.get_mut(key) else {
            return false;
        };
        sandbox.log.extend_from_slice(bytes);
        sandbox.log_writes.push((sandbox.log.len() as u64, at));
        true
    }

    /// Sets how the sandbox `key` (started already or later) reacts to [`Runtime::stop`].
    pub fn on_stop(&self, key: &SandboxKey, behaviour: StopBehaviour) {
        self.lock().stop_behaviours.insert(key.clone(), behaviour);
    }

    /// Sets what [`Runtime::oom_kills`] says of `key`: the OOM killer killed `count` of its
    /// processes.
    pub fn set_oom_kills(&self, key: &SandboxKey, count: u64) {
        self.lock().oom_kills.insert(key.clone(), count);
    }

    /// Sets what [`Runtime::recover`] finds. The `Running` ones become live sandboxes of this fake
    /// when `recover` is called.
    pub fn seed_recovered(&self, recovered: Vec<Recovered>) {
        self.lock().recoverable = recovered;
    }

    /// The keys of the sandboxes that run now (paused ones included), sorted.
    #[must_use]
    pub fn running(&self) -> Vec<SandboxKey> {
        let state = self.lock();
        let mut running: Vec<_> = state
            .sandboxes
            .iter()
            .filter(|(_, sandbox)| sandbox.is_running())
            .map(|(k, _)| k.clone())
            .collect();
        running.sort_by(|a, b| (&a.id, &a.lifecycle).cmp(&(&b.id, &b.lifecycle)));
        running
    }

    /// How the sandbox exited; `None` while it runs or if unknown.
    #[must_use]
    pub fn exit_of(&self, key: &SandboxKey) -> Option<Exit> {
        self.lock().sandboxes.get(key).and_then(|sandbox| *sandbox.exit.borrow())
    }

    /// The fake pid the sandbox got, if the fake knows it.
    #[must_use]
    pub fn pid_of(&self, key: &SandboxKey) -> Option<i32> {
        self.lock().sandboxes.get(key).map(|sandbox| sandbox.pid)
    }

    /// Whether the sandbox is paused.
    #[must_use]
    pub fn is_paused(&self, key: &SandboxKey) -> bool {
        self.lock().sandboxes.get(key).is_some_and(|sandbox| sandbox.paused)
    }

    /// Whether the fake still knows the sandbox (until [`Runtime::forget`]).
    #[must_use]
    pub fn knows(&self, key: &SandboxKey) -> bool {
        self.lock().sandboxes.contains_key(key)
    }

    /// Whether [`Runtime::cleanup`] has run for the sandbox.
    #[must_use]
    pub fn is_cleaned_up(&self, key: &SandboxKey) -> bool {
        self.lock().sandboxes.get(key).is_some_and(|sandbox| sandbox.cleaned_up)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is a single step, so a panic elsewhere cannot leave it half made.
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.shared.changed.send_modify(|version| *version = version.wrapping_add(1));
    }

    fn record(&self, call: Call) {
        self.lock().calls.push(call);
        self.bump();
    }

    /// Waits, without polling, until `ready` holds for the state.
    async fn until(&self, ready: impl Fn(&State) -> bool) {
        // Subscribing first marks the current version seen, so a change between the check and the
        // wait still wakes us.
        let mut changes = self.shared.changed.subscribe();
        while !ready(&self.lock()) {
            if changes.changed().await.is_err() {
                return; // Unreachable: `self` holds the sender.
            }
        }
    }

    fn resolve_hung(&self, op: Op, resolution: Resolution) -> usize {
        let hung = self.lock().hung.remove(&op).unwrap_or_default();
        hung.into_iter().filter_map(|call| call.send(resolution).ok()).count()
    }

    /// Applies the scripted behaviour of `op`: `Ok` to go on, `Err` to fail with the op's error.
    async fn scripted(&self, op: Op) -> Result<(), ScriptedFailure> {
        let resolution = {
            let mut state = self.lock();
            match state.behaviours.get(&op).copied().unwrap_or_default() {
                Behaviour::Normal => return Ok(()),
                Behaviour::Fail => return Err(ScriptedFailure(op)),
                Behaviour::Hang => {
                    let (resolve, resolution) = oneshot::channel();
                    state.hung.entry(op).or_default().push(resolve);
                    resolution
                }
            }
        };
        self.bump();
        match resolution.await {
            // A dropped sender cannot happen while `self` lives; treat it as a release.
            Ok(Resolution::Proceed) | Err(_) => Ok(()),
            Ok(Resolution::Fail) => Err(ScriptedFailure(op)),
        }
    }

    /// Waits at the start gate, if starts are held. Cancel-safe: a dropped start stops counting as
    /// held.
    async fn start_gate(&self) {
        let Some(mut gate) = self.lock().start_gate.clone() else {
            return;
        };
        let _held = HeldStart::new(self);
        // An error means the hold was dropped, which releases too.
        let _released = gate.wait_for(|released| *released).await;
    }

    fn start_now(&self, spec: &SandboxSpec) -> Result<Started, StartError> {
        let key = &spec.key;
        let mut state = self.lock();
        if let Some(snapshot) = &spec.restore_from {
            if !self.shared.can_checkpoint {
                return Err(StartError::NotSupported {
                    key: key.clone(),
                    backend: FAKE_BACKEND,
                    what: "restoring from a snapshot",
                });
            }
            if !state.snapshots.iter().any(|info| &info.id == snapshot) {
                return Err(StartError::Snapshot {
                    key: key.clone(),
                    snapshot: snapshot.clone(),
                    reason: "no such snapshot".to_owned(),
                });
            }
        }
        if state.sandboxes.contains_key(key) {
            return Err(StartError::AlreadyExists(key.clone()));
        }
        let pid = state.next_pid;
        state.next_pid += 1;
        state.sandboxes.insert(key.clone(), Sandbox::new(spec.clone(), pid));
        Ok(Started { pid, started_at: SystemTime::now(), warm: false })
    }

    /// A subscription to the sandbox's exit, or `None` if the fake does not know it.
    fn exit_watch(&self, key: &SandboxKey) -> Option<watch::Receiver<Option<Exit>>> {
        self.lock().sandboxes.get(key).map(|sandbox| sandbox.exit.subscribe())
    }

    /// Ends a running sandbox with `exit`; nothing if it is unknown or gone already.
    fn end(&self, key: &SandboxKey, exit: Exit) {
        if let Some(sandbox) = self.lock().sandboxes.get_mut(key) {
            sandbox.exit_with(exit);
        }
        self.bump();
    }

    fn control(&self, key: &SandboxKey, paused: bool) -> Result<(), ControlError> {
        let mut state = self.lock();
        let sandbox = state.sandboxes.get_mut(key).ok_or_else(|| ControlError::NotFound(key.clone()))?;
        if !sandbox.is_running() {
            return Err(ControlError::NotRunning(key.clone()));
        }
        sandbox.paused = paused;
        Ok(())
    }

    fn snapshot_support(&self) -> Result<(), CheckpointError> {
        if self.shared.can_checkpoint {
            Ok(())
        } else {
            Err(CheckpointError::NotSupported { backend: FAKE_BACKEND })
        }
    }
}

/// Counts one start as held while it lives.
struct HeldStart<'a> {
    fake: &'a FakeRuntime,
}

impl<'a> HeldStart<'a> {
    fn new(fake: &'a FakeRuntime) -> Self {
        fake.lock().held_starts += 1;
        fake.bump();
        Self { fake }
    }
}

impl Drop for HeldStart<'_> {
    fn drop(&mut self) {
        self.fake.lock().held_starts -= 1;
        self.fake.bump();
    }
}

impl State {
    fn hung_count(&self, op: Op) -> usize {
        self.hung.get(&op).map_or(0, |hung| hung.iter().filter(|call| !call.is_closed()).count())
    }
}

mod runtime;
mod script;

pub use script::{Behaviour, Call, Op, StopBehaviour};
use script::{Resolution, ScriptedFailure};
#[cfg(test)]
mod tests;
