//! The gate's counters: one per shard, each on cache lines of its own, and the shard a thread uses.
//!
//! A shard's word holds the draining bit and the number of permits admitted on that shard, so
//! admission on a shard stays one compare-and-swap. A thread always enters on the same shard (picked
//! round-robin the first time it enters any gate), so two threads contend on one line only when they
//! share a shard, and a permit releases on the shard it was admitted on, so no shard's count ever
//! goes below zero.

use crate::sync::{Arc, AtomicUsize};
use crate::waiters::Waiters;

/// The draining bit of a shard's word; the bits below it count the permits held on that shard.
pub(crate) const DRAINING: usize = 1 << (usize::BITS - 1);
pub(crate) const COUNT_MASK: usize = DRAINING - 1;

/// One shard: aligned (and so padded) to 128 bytes, so that neither its word nor the reference
/// count of the `Arc` around it (which sits just before it in the same allocation) shares a cache
/// line, or the pair of lines that x86 prefetches together, with another shard.
#[repr(align(128))]
pub(crate) struct Shard {
    /// `DRAINING | count`.
    pub(crate) state: AtomicUsize,
    /// What a shard's last release while draining reports to.
    pub(crate) common: Arc<Common>,
}

/// The part of the gate that the last release of a shard needs: held by every shard, so that a
/// permit (which holds only its shard) can report and wake without holding the whole gate.
pub(crate) struct Common {
    /// Zero exactly when the gate is draining and idle; see `Gate`'s "How the drain counts".
    pub(crate) pending: AtomicUsize,
    pub(crate) waiters: Waiters,
}

impl Common {
    pub(crate) fn is_idle(&self) -> bool {
        // Acquire: every change of `pending` is a read-modify-write, each AcqRel, so a waiter that
        // reads zero synchronizes with every release that discharged a shard, and through them with
        // everything the released permits' holders did.
        self.pending.load(crate::sync::Ordering::Acquire) == 0
    }
}

/// The most shards a gate has, and the number of slots a thread's index is masked into.
#[cfg(not(loom))]
pub(crate) const SLOTS: usize = 64;
#[cfg(loom)]
pub(crate) const SLOTS: usize = 2;

/// How many shards a new gate gets: four per CPU (threads outnumber CPUs, and a thread keeps its
/// shard), a power of two (so that it divides `SLOTS`), at most `SLOTS`.
#[cfg(not(loom))]
pub(crate) fn shard_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        cpus.saturating_mul(4).next_power_of_two().min(SLOTS)
    })
}

/// Under loom, two shards: enough for every race between shards, few enough to explore.
#[cfg(loom)]
pub(crate) fn shard_count() -> usize {
    2
}

/// The calling thread's shard index (to be reduced modulo `SLOTS`), assigned
/// round-robin on the thread's first enter.
#[cfg(not(loom))]
#[inline]
pub(crate) fn thread_index() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};

    static NEXT: StdAtomicUsize = StdAtomicUsize::new(0);
    std::thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        let mut own = index.get();
        if own == usize::MAX {
            // Relaxed: only spreads threads over shards; nothing is read on its strength.
            own = NEXT.fetch_add(1, StdOrdering::Relaxed) & (usize::MAX >> 1);
            index.set(own);
        }
        own
    })
}

/// Under loom, the same round-robin with loom's thread locals and a per-execution counter, so every
/// execution assigns shards the same way for the same schedule (and loom explores the orders).
#[cfg(loom)]
pub(crate) fn thread_index() -> usize {
    use std::cell::Cell;

    loom::lazy_static! {
        static ref NEXT: AtomicUsize = AtomicUsize::new(0);
    }
    loom::thread_local! {
        static INDEX: Cell<usize> = Cell::new(usize::MAX);
    }
    INDEX.with(|index| {
        let mut own = index.get();
        if own == usize::MAX {
            own = NEXT.fetch_add(1, crate::sync::Ordering::Relaxed);
            index.set(own);
        }
        own
    })
}
