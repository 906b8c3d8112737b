//! An admission gate for graceful drains.
//!
//! A service that drains (stops taking new work, lets admitted work finish, then exits) needs one
//! place that answers "admit or reject" and counts what it admitted. If the answer and the count are
//! two steps, a request can read "open", lose the CPU while the drain starts and the drain sees a zero
//! count, then be counted: work that the drain never waits for. [`Gate`] makes them one step: a single
//! atomic word holds the draining bit and the number of admitted entries, so every [`Gate::enter`] is
//! ordered either before [`Gate::start_draining`] (admitted and counted) or after it (rejected).
//!
//! ```
//! use draingate::Gate;
//!
//! let gate = Gate::new();
//! let permit = gate.enter().expect("the gate is open");
//! // Move the permit into the work it admits; it is released when dropped.
//! let worker = std::thread::spawn(move || {
//!     let _permit = permit;
//!     // ... start the thing ...
//! });
//!
//! assert!(gate.start_draining()); // from now on, enter() returns Err(Draining)
//! assert!(gate.enter().is_err());
//! worker.join().unwrap();
//! assert!(gate.wait_idle_timeout(std::time::Duration::from_secs(5)));
//! ```
//!
//! # Invariants
//!
//! - **Admission is linearizable.** `enter` admits only by a compare-and-swap of a word whose
//!   draining bit is clear; `start_draining` sets that bit in the same word. Once any thread has
//!   seen `is_draining() == true`, no later `enter` is admitted (until [`Gate::reopen`]).
//! - **A permit releases exactly once**, on drop or on [`Permit::release`], on whatever thread holds it.
//! - **`wait_idle` completes only when the gate is draining and nothing is in flight**, and it is
//!   woken by the transition into that state (the last release, or a drain of an already empty gate):
//!   no polling.
//!
//! # Nested work: carry the permit, never re-enter
//!
//! A drain must never reject work that was already admitted. The classic mistake is an operation
//! that was admitted through one gate and, half way through, starts nested work through a second
//! gate that the drain has already closed (a checkpoint that stops a sandbox and restarts it: the
//! restart is rejected and the sandbox is lost). The rule this crate offers instead: admitted work
//! carries its [`Permit`]; nested work that needs its own share of admission calls
//! [`Permit::split`], which always succeeds, because the gate cannot become idle while the original
//! permit is held. Code that starts something should take a `Permit` (or `&Permit`) as an argument,
//! so that "start without admission" cannot be written.
#![cfg_attr(not(loom), forbid(unsafe_code))]
#![warn(missing_docs)]

mod sync;
mod waiters;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use sync::{Arc, AtomicUsize, Ordering};
use waiters::{WaiterKey, Waiters};

/// The draining bit; the bits below it count admitted entries.
const DRAINING: usize = 1 << (usize::BITS - 1);
const COUNT_MASK: usize = DRAINING - 1;

/// The gate is draining: new work is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draining;

impl fmt::Display for Draining {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the gate is draining and admits no new work")
    }
}

impl std::error::Error for Draining {}

/// An admission gate. Cheap to clone: clones share one gate.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    /// `DRAINING | count`.
    state: AtomicUsize,
    waiters: Waiters,
}

impl Gate {
    /// A new, open gate with nothing in flight.
    #[must_use]
    pub fn new() -> Self {
        Self { inner: Arc::new(Inner { state: AtomicUsize::new(0), waiters: Waiters::new() }) }
    }

    /// Admits one entry, or refuses it because the gate is draining.
    ///
    /// Admission and counting are one atomic step.
    ///
    /// # Errors
    ///
    /// [`Draining`] when [`Gate::start_draining`] was called and the gate was not reopened since.
    ///
    /// # Panics
    ///
    /// If more than `usize::MAX / 2` permits are held at once.
    #[inline]
    pub fn enter(&self) -> Result<Permit, Draining> {
        // Relaxed: the CAS below re-reads the word and carries the ordering.
        let mut state = self.inner.state.load(Ordering::Relaxed);
        loop {
            if state & DRAINING != 0 {
                return Err(Draining);
            }
            assert!(state & COUNT_MASK < COUNT_MASK, "draingate: permit count overflow");
            // Acquire on success: work done under the permit happens after admission; the failure
            // path only retries with the fresh value.
            let admission = self.inner.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            );
            match admission {
                Ok(_) => return Ok(Permit { inner: Some(self.inner.clone()) }),
                Err(actual) => state = actual,
            }
        }
    }

    /// Closes admission. Returns `true` only for the call that made the transition; later calls (and
    /// calls on an already draining gate) return `false`.
    pub fn start_draining(&self) -> bool {
        // AcqRel: the drain is ordered after every admission it observes (their count) and before any
        // enter that observes the bit.
        let previous = self.inner.state.fetch_or(DRAINING, Ordering::AcqRel);
        if previous & DRAINING != 0 {
            return false;
        }
        if previous & COUNT_MASK == 0 {
            self.inner.waiters.wake_all();
        }
        true
    }

    /// Reopens admission after a drain. Returns `true` only for the call that made the transition.
    ///
    /// Waiters in [`Gate::wait_idle`] that have not yet seen the gate idle keep waiting for the next
    /// drain to empty the gate.
    pub fn reopen(&self) -> bool {
        // AcqRel: pairs with start_draining's fetch_or; enters that see the cleared bit are admitted.
        let previous = self.inner.state.fetch_and(!DRAINING, Ordering::AcqRel);
        previous & DRAINING != 0
    }

    /// Whether admission is closed.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        // Acquire: a caller that sees the bit also sees what the drainer did before setting it.
        self.inner.state.load(Ordering::Acquire) & DRAINING != 0
    }

    /// How many permits are held now (a snapshot, for reporting).
    #[must_use]
    pub fn in_flight(&self) -> usize {
        // Relaxed: a reporting snapshot; no other memory is read on its strength.
        self.inner.state.load(Ordering::Relaxed) & COUNT_MASK
    }

    /// Whether the gate is draining with nothing in flight.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.inner.is_idle()
    }

    /// A future that completes once the gate is draining and nothing is in flight.
    ///
    /// It does not start draining itself. It is woken by the transition to idle (the last release,
    /// or the drain of an empty gate), never by a timer, and works on any executor.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future removes its waker from the gate.
    pub fn wait_idle(&self) -> WaitIdle {
        WaitIdle { inner: self.inner.clone(), key: None }
    }

    /// Blocks the calling thread until the gate is draining and idle, or `timeout` passes. Returns
    /// whether it became idle. For callers outside async code.
    #[must_use]
    pub fn wait_idle_timeout(&self, timeout: Duration) -> bool {
        self.inner.waiters.block_until(timeout, || self.inner.is_idle())
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.load(Ordering::Relaxed);
        f.debug_struct("Gate")
            .field("draining", &(state & DRAINING != 0))
            .field("in_flight", &(state & COUNT_MASK))
            .finish()
    }
}

impl Inner {
    fn is_idle(&self) -> bool {
        // Acquire: a waiter that sees idle also sees everything the released permits' holders did.
        self.state.load(Ordering::Acquire) == DRAINING
    }

    #[inline]
    fn release_one(&self) {
        // AcqRel: the release publishes the holder's work to whoever observes the lower count.
        let previous = self.state.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(previous & COUNT_MASK > 0, "draingate: release without a permit");
        if previous == DRAINING | 1 {
            self.became_idle();
        }
    }

    /// The slow path of the last release while draining, kept out of the inlined fast path.
    #[cold]
    #[inline(never)]
    fn became_idle(&self) {
        self.waiters.wake_all();
    }
}

/// Proof of admission through a [`Gate`]. Releases its entry exactly once: on drop, or on
/// [`Permit::release`]. `Send`, so it can be moved into the task that does the admitted work.
#[must_use = "dropping a permit releases the admission at once"]
pub struct Permit {
    inner: Option<Arc<Inner>>,
}

impl Permit {
    /// Releases the admission now (the same as dropping the permit).
    pub fn release(mut self) {
        if let Some(inner) = self.inner.take() {
            inner.release_one();
        }
    }

    /// Admits nested work under this permit: a second permit of the same gate, granted even while
    /// the gate is draining, because the gate cannot be idle while `self` is held.
    ///
    /// # Panics
    ///
    /// If more than `usize::MAX / 2` permits are held at once.
    pub fn split(&self) -> Permit {
        let inner = self.inner.as_ref().expect("a live permit always holds its gate");
        // Relaxed: the count is already > 0 (we hold a permit), so this cannot race a transition
        // to idle; the later release carries the ordering.
        let previous = inner.state.fetch_add(1, Ordering::Relaxed);
        assert!(previous & COUNT_MASK < COUNT_MASK - 1, "draingate: permit count overflow");
        Permit { inner: Some(inner.clone()) }
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.release_one();
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

/// The future of [`Gate::wait_idle`].
#[must_use = "futures do nothing unless awaited"]
pub struct WaitIdle {
    inner: Arc<Inner>,
    key: Option<WaiterKey>,
}

impl Future for WaitIdle {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let inner = &this.inner;
        if inner.is_idle() {
            if let Some(key) = this.key.take() {
                inner.waiters.remove(key);
            }
            return Poll::Ready(());
        }
        match inner.waiters.register(&mut this.key, cx.waker(), || inner.is_idle()) {
            true => {
                this.key = None;
                Poll::Ready(())
            }
            false => Poll::Pending,
        }
    }
}

impl Drop for WaitIdle {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.inner.waiters.remove(key);
        }
    }
}

impl fmt::Debug for WaitIdle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitIdle").field("registered", &self.key.is_some()).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
