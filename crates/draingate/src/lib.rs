//! An admission gate for graceful drains.
//!
//! A service that drains (stops taking new work, lets admitted work finish, then exits) needs one
//! place that answers "admit or reject" and counts what it admitted. If the answer and the count are
//! two steps, a request can read "open", lose the CPU while the drain starts and the drain sees a zero
//! count, then be counted: work that the drain never waits for. [`Gate`] makes them one step: an
//! atomic word holds a draining bit and a number of admitted entries, so every [`Gate::enter`] is
//! ordered either before [`Gate::start_draining`] closes that word (admitted and counted) or after
//! it (rejected). There is one such word per *shard* (each on cache lines of its own, a thread always
//! entering on its own shard), so that threads entering at once do not all write one cache line; the
//! drain closes every shard, and a separate word says when the last of them is empty ([`Gate`],
//! "How the drain counts").
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
//! - **Admission is one atomic step.** `enter` admits only by a compare-and-swap of its shard's
//!   word while the word's draining bit is clear; `start_draining` sets that bit in every shard's
//!   word before it returns. Once `start_draining` has returned, or any thread has seen
//!   `is_draining() == true`, no later `enter` is admitted (until [`Gate::reopen`]). While a
//!   `start_draining` call is still running, an enter may already be rejected on a closed shard.
//! - **A permit releases exactly once**, on drop or on [`Permit::release`], on whatever thread holds it.
//! - **`wait_idle` completes only when the gate is draining and nothing is in flight**, on any
//!   shard, and it is woken by the transition into that state (the last release, whichever shard
//!   it is on, or a drain of an already empty gate): no polling.
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

mod shards;
mod sync;
mod waiters;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use shards::{COUNT_MASK, Common, DRAINING, SLOTS, Shard};
use sync::{Arc, AtomicUsize, Mutex, Ordering};
use waiters::{WaiterKey, Waiters};

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
///
/// # How the drain counts
///
/// The count of admitted entries is sharded: each shard has its own word (draining bit and count)
/// on cache lines of its own, and a thread enters on its own shard, so threads that enter and
/// release at once do not all write one cache line. Admission on a shard is still one
/// compare-and-swap that fails once the shard's draining bit is set.
///
/// `start_draining` sets the bit of every shard, in order; `is_draining` reads the last shard's bit,
/// so it turns true only once every shard rejects. Who then says "idle" is `pending`, a word that is
/// zero exactly when the gate is draining and every shard is empty:
///
/// - while the gate is open, `pending` holds 1 (the *open bias*);
/// - a drain first adds one per shard, then closes the shards; each shard then owes exactly one
///   decrement, paid by whoever sees it closed and empty first: the drain itself (the shard was
///   already empty when its bit was set), or the release that takes the closed shard from 1 to 0, or
///   a reopen that finds it still busy. A closed, empty shard stays empty (no enter is admitted
///   there, and `split` needs a permit held on it), so a paid shard stays idle;
/// - the drain removes the open bias after closing every shard (before that, the debts of the
///   shards not yet closed keep `pending` above zero anyway); `reopen` puts it back first, before it
///   opens any shard, so an open or reopening gate never reads idle. A release's payment can land
///   after a reopen or even after the next drain began: `pending` is only ever added to and
///   subtracted from, never reset, so a late payment still settles the debt it belongs to.
///
/// Whoever takes `pending` to zero wakes the waiters. `start_draining` and `reopen` are serialized
/// by a mutex (they are rare); `enter` and the release take no lock.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    /// `shard_count()` shards; the length is a power of two, at most `SLOTS`.
    shards: Box<[Arc<Shard>]>,
    /// `slots[i]` is `shards[i % shards.len()]`: where `enter` finds the thread's shard, by a mask
    /// of a constant (no load of the length, no bounds check on the hot path).
    slots: [Arc<Shard>; SLOTS],
    /// The same `Common` that every shard holds.
    common: Arc<Common>,
    /// Whether the gate is draining, as far as the transitions are concerned: held while a
    /// transition sets or clears the shards' bits, so transitions never interleave.
    transition: Mutex<bool>,
}

impl Gate {
    /// A new, open gate with nothing in flight.
    #[must_use]
    pub fn new() -> Self {
        // The open bias: an open gate is never idle.
        let common = Arc::new(Common { pending: AtomicUsize::new(1), waiters: Waiters::new() });
        let shards: Box<[Arc<Shard>]> = (0..shards::shard_count())
            .map(|_| Arc::new(Shard { state: AtomicUsize::new(0), common: common.clone() }))
            .collect();
        let slots = std::array::from_fn(|i| shards[i % shards.len()].clone());
        Self { inner: Arc::new(Inner { shards, slots, common, transition: Mutex::new(false) }) }
    }

    /// Admits one entry, or refuses it because the gate is draining.
    ///
    /// Admission and counting are one atomic step on the calling thread's shard.
    ///
    /// # Errors
    ///
    /// [`Draining`] when [`Gate::start_draining`] was called and the gate was not reopened since
    /// (or, while a `start_draining` call is still running, when it already closed this thread's
    /// shard).
    ///
    /// # Panics
    ///
    /// If more than `usize::MAX / 2` permits are held at once on one shard.
    #[inline]
    pub fn enter(&self) -> Result<Permit, Draining> {
        let shard = &self.inner.slots[shards::thread_index() % SLOTS];
        // Relaxed: the CAS below re-reads the word and carries the ordering.
        let mut state = shard.state.load(Ordering::Relaxed);
        loop {
            if state & DRAINING != 0 {
                return Err(Draining);
            }
            assert!(state & COUNT_MASK < COUNT_MASK, "draingate: permit count overflow");
            // Acquire on success: work done under the permit happens after admission (and after a
            // reopen that cleared the bit); the failure path only retries with the fresh value.
            let admission =
                shard.state.compare_exchange_weak(state, state + 1, Ordering::Acquire, Ordering::Relaxed);
            match admission {
                Ok(_) => return Ok(Permit { shard: Some(shard.clone()) }),
                Err(actual) => state = actual,
            }
        }
    }

    /// Closes admission. Returns `true` only for the call that made the transition; later calls (and
    /// calls on an already draining gate) return `false`. When it returns, no enter is admitted any
    /// more.
    pub fn start_draining(&self) -> bool {
        let mut draining = self.inner.lock_transition();
        if *draining {
            return false;
        }
        let common = &self.inner.common;
        let shards = &self.inner.shards;
        // AcqRel: a release that sees a shard closed (by the Release of the fetch_or below)
        // decrements `pending` after this increment.
        common.pending.fetch_add(shards.len(), Ordering::AcqRel);
        let mut empty = 0;
        for shard in shards {
            // AcqRel: the drain is ordered after every admission and release on this shard that it
            // observes (their count), and before any enter or release that observes the bit.
            let previous = shard.state.fetch_or(DRAINING, Ordering::AcqRel);
            debug_assert!(previous & DRAINING == 0, "draingate: a shard was left closed");
            if previous & COUNT_MASK == 0 {
                empty += 1;
            }
        }
        // The empty shards' debts, and the open bias: `pending` can reach zero from here on.
        common.discharge(empty + 1);
        *draining = true;
        true
    }

    /// Reopens admission after a drain. Returns `true` only for the call that made the transition.
    ///
    /// Waiters in [`Gate::wait_idle`] that have not yet seen the gate idle keep waiting for the next
    /// drain to empty the gate.
    pub fn reopen(&self) -> bool {
        let mut draining = self.inner.lock_transition();
        if !*draining {
            return false;
        }
        let common = &self.inner.common;
        // The open bias back first, before any shard admits again. AcqRel: a waiter that sees a
        // permit admitted by this reopen also sees this increment (the fetch_and below is Release).
        common.pending.fetch_add(1, Ordering::AcqRel);
        let mut busy = 0;
        for shard in &self.inner.shards {
            // AcqRel: pairs with start_draining's fetch_or and the releases seen; enters that see the
            // cleared bit are admitted after it.
            let previous = shard.state.fetch_and(!DRAINING, Ordering::AcqRel);
            if previous & COUNT_MASK != 0 {
                // Still busy: no release will see this shard closed and empty, so pay its debt here.
                busy += 1;
            }
        }
        if busy != 0 {
            // Cannot reach zero: the open bias is back.
            common.discharge(busy);
        }
        *draining = false;
        true
    }

    /// Whether admission is closed: true once a `start_draining` closed every shard, until a
    /// `reopen` reopens the last one.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        let last = self.inner.shards.last().expect("a gate has at least one shard");
        // Acquire: the last shard is closed last, so a caller that sees its bit also sees every
        // other shard's bit (and what the drainer did before setting them): later enters fail.
        last.state.load(Ordering::Acquire) & DRAINING != 0
    }

    /// How many permits are held now (a snapshot, for reporting: the sum of the shards' counts).
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.inner
            .shards
            .iter()
            // Relaxed: a reporting snapshot; no other memory is read on its strength.
            .map(|shard| shard.state.load(Ordering::Relaxed) & COUNT_MASK)
            .sum()
    }

    /// Whether the gate is draining with nothing in flight.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.inner.common.is_idle()
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
        WaitIdle { common: self.inner.common.clone(), key: None }
    }

    /// Blocks the calling thread until the gate is draining and idle, or `timeout` passes. Returns
    /// whether it became idle. For callers outside async code.
    #[must_use]
    pub fn wait_idle_timeout(&self, timeout: Duration) -> bool {
        let common = &self.inner.common;
        common.waiters.block_until(timeout, || common.is_idle())
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("draining", &self.is_draining())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Inner {
    fn lock_transition(&self) -> sync::MutexGuard<'_, bool> {
        // Nothing panics while this lock is held except a debug assertion about the shards, after
        // which the flag is as trustworthy as the shards; a poisoned lock is still usable.
        self.transition.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Common {
    /// Pays `debts` shards' (or the open bias's) decrements of `pending`; the payment that reaches
    /// zero wakes the waiters.
    fn discharge(&self, debts: usize) {
        // AcqRel: publishes what the payer saw (the released permits' work) to whoever reads zero,
        // and keeps every change of `pending` one release sequence.
        let previous = self.pending.fetch_sub(debts, Ordering::AcqRel);
        debug_assert!(previous >= debts, "draingate: a shard's debt was paid twice");
        if previous == debts {
            self.became_idle();
        }
    }

    /// The slow path of the transition to idle, kept out of the inlined fast path.
    #[cold]
    #[inline(never)]
    fn became_idle(&self) {
        self.waiters.wake_all();
    }
}

impl Shard {
    #[inline]
    fn release_one(&self) {
        // AcqRel: the release publishes the holder's work to whoever observes the lower count, and
        // the release that empties a closed shard acquires the shard's earlier releases before it
        // reports them.
        let previous = self.state.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(previous & COUNT_MASK > 0, "draingate: release without a permit");
        if previous == DRAINING | 1 {
            // This closed shard is now empty, and stays so until a reopen: pay its debt.
            self.common.discharge(1);
        }
    }
}

/// Proof of admission through a [`Gate`]. Releases its entry exactly once: on drop, or on
/// [`Permit::release`]. `Send`, so it can be moved into the task that does the admitted work.
#[must_use = "dropping a permit releases the admission at once"]
pub struct Permit {
    /// The shard it was admitted on (and releases on); `None` once released.
    shard: Option<Arc<Shard>>,
}

impl Permit {
    /// Releases the admission now (the same as dropping the permit).
    pub fn release(mut self) {
        if let Some(shard) = self.shard.take() {
            shard.release_one();
        }
    }

    /// Admits nested work under this permit: a second permit of the same gate, granted even while
    /// the gate is draining, because the gate cannot be idle while `self` is held.
    ///
    /// # Panics
    ///
    /// If more than `usize::MAX / 2` permits are held at once.
    pub fn split(&self) -> Permit {
        let shard = self.shard.as_ref().expect("a live permit always holds its shard");
        // Relaxed: the shard's count is already > 0 (we hold a permit on it), so this cannot race
        // the shard's transition to empty; the later release carries the ordering.
        let previous = shard.state.fetch_add(1, Ordering::Relaxed);
        assert!(previous & COUNT_MASK < COUNT_MASK - 1, "draingate: permit count overflow");
        Permit { shard: Some(shard.clone()) }
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        if let Some(shard) = self.shard.take() {
            shard.release_one();
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
    common: Arc<Common>,
    key: Option<WaiterKey>,
}

impl Future for WaitIdle {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let common = &this.common;
        if common.is_idle() {
            if let Some(key) = this.key.take() {
                common.waiters.remove(key);
            }
            return Poll::Ready(());
        }
        match common.waiters.register(&mut this.key, cx.waker(), || common.is_idle()) {
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
            self.common.waiters.remove(key);
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
