//! Unit tests of the gate: the behaviours of the origin's gate tests (E2B `gate_test.go`) restated for
//! this API, plus what only this API has (reopen, split, the async waiter's registration).
//!
//! Nothing here asserts timing. Futures are polled by hand with a counting waker, so "still waiting"
//! is a `Poll::Pending` and "was woken" is a counter, never a sleep.

use std::pin::Pin;
use std::sync::Arc as StdArc;
use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use super::*;

/// A hang guard for the blocking waits that must succeed; never a measurement.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// A waker that counts its wake-ups; its `Arc`'s strong count shows who still holds it.
#[derive(Debug, Default)]
struct CountingWaker {
    wakes: StdAtomicUsize,
}

impl CountingWaker {
    fn new() -> StdArc<Self> {
        StdArc::new(Self::default())
    }

    fn wakes(&self) -> usize {
        // SeqCst: test code, clarity over speed.
        self.wakes.load(StdOrdering::SeqCst)
    }
}

impl Wake for CountingWaker {
    fn wake(self: StdArc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &StdArc<Self>) {
        // SeqCst: test code, clarity over speed.
        self.wakes.fetch_add(1, StdOrdering::SeqCst);
    }
}

fn poll_with(future: &mut WaitIdle, waker: &StdArc<CountingWaker>) -> Poll<()> {
    let waker = Waker::from(waker.clone());
    Pin::new(future).poll(&mut Context::from_waker(&waker))
}

/// Origin `TestEnterReleaseAndWait`: with one entry held the wait stays blocked; the release happens
/// exactly once; after it (and the drain) the wait completes.
#[test]
fn enter_release_and_wait() {
    let gate = Gate::new();
    let permit = gate.enter().expect("an open gate admits");
    assert_eq!(gate.in_flight(), 1);

    let waker = CountingWaker::new();
    let mut wait = gate.wait_idle();
    assert_eq!(poll_with(&mut wait, &waker), Poll::Pending);
    assert!(!gate.wait_idle_timeout(Duration::ZERO));

    // `release` consumes the permit, so a second release cannot be written; the drop that follows
    // it inside `release` must not count again.
    permit.release();
    assert_eq!(gate.in_flight(), 0);
    assert_eq!(poll_with(&mut wait, &waker), Poll::Pending, "not draining yet");

    assert!(gate.start_draining());
    assert_eq!(waker.wakes(), 1, "the drain of an empty gate wakes the waiter");
    assert_eq!(poll_with(&mut wait, &waker), Poll::Ready(()));
    assert_eq!(gate.in_flight(), 0);
}

/// Origin `TestRejectAfterDrain`.
#[test]
fn reject_after_drain() {
    let gate = Gate::new();
    assert!(!gate.is_draining());
    assert!(gate.start_draining(), "the first call makes the transition");
    assert!(!gate.start_draining(), "later calls do not");
    assert!(gate.is_draining());
    assert_eq!(gate.enter().map(drop), Err(Draining));
    assert_eq!(gate.in_flight(), 0, "a rejected enter is not counted");
    assert!(gate.is_idle());
    assert_eq!(Draining.to_string(), "the gate is draining and admits no new work");
}

/// Origin `TestWaitBlocksUntilAllReleases`, with the wake-up itself checked.
#[test]
fn wait_blocks_until_all_releases() {
    let gate = Gate::new();
    let first = gate.enter().expect("open");
    let second = gate.enter().expect("open");
    assert!(gate.start_draining());

    let waker = CountingWaker::new();
    let mut wait = gate.wait_idle();
    assert_eq!(poll_with(&mut wait, &waker), Poll::Pending);

    drop(first);
    assert_eq!(waker.wakes(), 0, "one permit is still held");
    assert_eq!(poll_with(&mut wait, &waker), Poll::Pending);
    assert!(!gate.wait_idle_timeout(Duration::ZERO));

    second.release();
    assert_eq!(waker.wakes(), 1, "the last release wakes the waiter");
    assert_eq!(poll_with(&mut wait, &waker), Poll::Ready(()));
    assert!(gate.wait_idle_timeout(Duration::ZERO));
}

/// Origin `TestWaitReturnsContextError`, restated: a bounded wait on a busy gate gives up and says
/// so, and an abandoned async wait is simply dropped.
#[test]
fn bounded_wait_reports_the_timeout() {
    let gate = Gate::new();
    let permit = gate.enter().expect("open");
    assert!(gate.start_draining());
    assert!(!gate.wait_idle_timeout(Duration::ZERO));
    assert!(!gate.wait_idle_timeout(Duration::from_millis(1)));
    drop(permit);
    assert!(gate.wait_idle_timeout(Duration::ZERO), "idle now: true at once, even with no time left");
    assert!(gate.wait_idle_timeout(HANG_GUARD));
}

/// Origin `TestEnterDuringWaitWhileNotDrainingIsNotBlocked`: waiting does not close admission.
#[test]
fn enter_during_wait_while_not_draining_is_admitted() {
    let gate = Gate::new();
    let held = gate.enter().expect("open");
    let waker = CountingWaker::new();
    let mut wait = gate.wait_idle();
    assert_eq!(poll_with(&mut wait, &waker), Poll::Pending);

    let during = gate.enter().expect("a wait does not close admission");
    assert_eq!(gate.in_flight(), 2);
    drop(held);
    drop(during);
    assert_eq!(poll_with(&mut wait, &waker), Poll::Pending, "not draining");

    assert!(gate.start_draining());
    assert_eq!(poll_with(&mut wait, &waker), Poll::Ready(()));
}

/// Origin `TestZeroValueAndNilGateAreSafe`, restated: the default gate is an open, empty gate.
/// (There is no nil gate in Rust; an `Option<Gate>` is the caller's business.)
#[test]
fn default_gate_is_open_and_empty() {
    let gate = Gate::default();
    assert!(!gate.is_draining());
    assert!(!gate.is_idle(), "idle means draining and empty");
    drop(gate.enter().expect("open"));
    assert!(gate.start_draining());
    assert!(gate.is_draining());
    assert!(gate.is_idle());
    assert_eq!(format!("{gate:?}"), "Gate { draining: true, in_flight: 0 }");
}

/// `release` and drop release exactly once each, in any mix.
#[test]
fn release_and_drop_each_release_exactly_once() {
    let gate = Gate::new();
    let permits: Vec<Permit> = (0..10).map(|_| gate.enter().expect("open")).collect();
    assert_eq!(gate.in_flight(), 10);
    for (i, permit) in permits.into_iter().enumerate() {
        if i % 2 == 0 {
            permit.release();
        } else {
            drop(permit);
        }
        assert_eq!(gate.in_flight(), 9 - i);
    }
    assert!(gate.start_draining());
    assert!(gate.is_idle());
}

/// Clones share one gate: a drain through one clone rejects through another.
#[test]
fn clones_share_one_gate() {
    let gate = Gate::new();
    let other = gate.clone();
    let permit = other.enter().expect("open");
    assert_eq!(gate.in_flight(), 1);
    assert!(gate.start_draining());
    assert!(other.enter().is_err());
    assert!(!other.start_draining());
    drop(permit);
    assert!(other.is_idle());
}

/// `Permit::split` admits nested work while draining, and the gate stays busy until both are gone.
#[test]
fn split_works_while_draining() {
    let gate = Gate::new();
    let outer = gate.enter().expect("open");
    assert!(gate.start_draining());
    assert!(gate.enter().is_err(), "a fresh enter is rejected");

    let nested = outer.split();
    assert_eq!(gate.in_flight(), 2);
    let waker = CountingWaker::new();
    let mut wait = gate.wait_idle();
    assert_eq!(poll_with(&mut wait, &waker), Poll::Pending);

    drop(outer);
    assert_eq!(waker.wakes(), 0, "the nested permit keeps the gate busy");
    assert!(!gate.is_idle());
    let nested_again = nested.split();
    nested.release();
    drop(nested_again);
    assert_eq!(waker.wakes(), 1);
    assert_eq!(poll_with(&mut wait, &waker), Poll::Ready(()));
}

/// Reopen: a waiter that has not seen the gate idle keeps waiting, through reopen and new
/// admissions, and completes at the next drain that empties the gate.
#[test]
fn reopen_keeps_waiters_waiting_until_the_next_idle() {
    let gate = Gate::new();
    let old = gate.enter().expect("open");
    assert!(gate.start_draining());
    assert!(gate.reopen());
    assert!(!gate.is_draining());
    assert!(!gate.reopen(), "only the call that made the transition returns true");

    let waker = CountingWaker::new();
    let mut wait = gate.wait_idle();
    assert_eq!(poll_with(&mut wait, &waker), Poll::Pending);

    let new = gate.enter().expect("reopened");
    drop(old);
    assert_eq!(waker.wakes(), 0, "not draining: the count reaching 1 is nothing");
    assert!(gate.start_draining(), "the second drain makes its own transition");
    assert_eq!(poll_with(&mut wait, &waker), Poll::Pending, "the new permit is in flight");
    drop(new);
    assert_eq!(waker.wakes(), 1);
    assert_eq!(poll_with(&mut wait, &waker), Poll::Ready(()));
}

/// A waiter woken by an idle gate that was reopened before it ran re-registers and waits on.
#[test]
fn waiter_woken_then_reopened_waits_again() {
    let gate = Gate::new();
    let waker = CountingWaker::new();
    let mut wait = gate.wait_idle();
    assert_eq!(poll_with(&mut wait, &waker), Poll::Pending);
    assert!(gate.start_draining());
    assert_eq!(waker.wakes(), 1);
    assert!(gate.reopen());
    assert_eq!(poll_with(&mut wait, &waker), Poll::Pending);
    assert_eq!(gate.inner.common.waiters.registered(), 1, "registered again after the wake-up");
    assert!(gate.start_draining());
    assert_eq!(waker.wakes(), 2);
    assert_eq!(poll_with(&mut wait, &waker), Poll::Ready(()));
    assert_eq!(gate.inner.common.waiters.registered(), 0);
}

/// A `WaitIdle` dropped mid-wait takes its waker out of the gate: nothing stays registered and the
/// waker's `Arc` goes back to its owner alone.
#[test]
fn dropped_wait_idle_leaks_nothing() {
    let gate = Gate::new();
    let permit = gate.enter().expect("open");
    assert!(gate.start_draining());

    let waker = CountingWaker::new();
    let mut wait = gate.wait_idle();
    assert_eq!(poll_with(&mut wait, &waker), Poll::Pending);
    assert_eq!(gate.inner.common.waiters.registered(), 1);
    assert_eq!(StdArc::strong_count(&waker), 2, "the gate holds one clone");

    // Polled again with another waker: the registration is replaced, not added to.
    let other = CountingWaker::new();
    assert_eq!(poll_with(&mut wait, &other), Poll::Pending);
    assert_eq!(gate.inner.common.waiters.registered(), 1);
    assert_eq!(StdArc::strong_count(&waker), 1, "the replaced waker is released");
    assert_eq!(StdArc::strong_count(&other), 2);

    drop(wait);
    assert_eq!(gate.inner.common.waiters.registered(), 0);
    assert_eq!(StdArc::strong_count(&other), 1, "dropping the future released its waker");

    // Many abandoned waits leave nothing behind either.
    for _ in 0..100 {
        let mut wait = gate.wait_idle();
        assert_eq!(poll_with(&mut wait, &waker), Poll::Pending);
    }
    assert_eq!(gate.inner.common.waiters.registered(), 0);
    assert_eq!(StdArc::strong_count(&waker), 1);

    drop(permit);
    assert_eq!(waker.wakes(), 0, "no dropped waiter is woken");
    assert_eq!(other.wakes(), 0);
}

/// A `WaitIdle` dropped after its wake-up but before its next poll is harmless too.
#[test]
fn wait_idle_dropped_after_wake_leaks_nothing() {
    let gate = Gate::new();
    let permit = gate.enter().expect("open");
    assert!(gate.start_draining());
    let waker = CountingWaker::new();
    let mut wait = gate.wait_idle();
    assert_eq!(poll_with(&mut wait, &waker), Poll::Pending);
    drop(permit);
    assert_eq!(waker.wakes(), 1);
    drop(wait);
    assert_eq!(gate.inner.common.waiters.registered(), 0);
    assert_eq!(StdArc::strong_count(&waker), 1);
}

/// A future polled on an already idle gate completes at once and registers nothing.
#[test]
fn wait_idle_on_an_idle_gate_is_ready_at_once() {
    let gate = Gate::new();
    assert!(gate.start_draining());
    let waker = CountingWaker::new();
    let mut wait = gate.wait_idle();
    assert_eq!(poll_with(&mut wait, &waker), Poll::Ready(()));
    assert_eq!(gate.inner.common.waiters.registered(), 0);
    assert_eq!(StdArc::strong_count(&waker), 1);
}

/// The permit and the future can cross threads.
#[test]
fn permit_and_wait_idle_are_send() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Permit>();
    assert_send::<WaitIdle>();
    assert_send::<Gate>();
}

/// `pending` while nothing races: the open bias alone on an open gate, zero on a drained idle one.
fn pending(gate: &Gate) -> usize {
    // SeqCst: test code, clarity over speed.
    gate.inner.common.pending.load(StdOrdering::SeqCst)
}

/// Permits admitted on several threads (so on several shards) are all counted, a thread keeps its
/// shard, and a shard's permits release on that shard whichever thread drops them.
#[test]
fn permits_from_many_threads_are_summed_over_the_shards() {
    let gate = Gate::new();
    let permits: Vec<Permit> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let first = gate.enter().expect("open");
                    let second = gate.enter().expect("open");
                    let same_shard = Arc::ptr_eq(
                        first.shard.as_ref().expect("live"),
                        second.shard.as_ref().expect("live"),
                    );
                    assert!(same_shard, "a thread enters on one shard");
                    [first, second]
                })
            })
            .collect();
        threads.into_iter().flat_map(|thread| thread.join().expect("no panic")).collect()
    });
    assert_eq!(gate.in_flight(), 16);
    assert!(gate.inner.shards.len().is_power_of_two() && gate.inner.shards.len() <= SLOTS);
    for (i, slot) in gate.inner.slots.iter().enumerate() {
        assert!(Arc::ptr_eq(slot, &gate.inner.shards[i % gate.inner.shards.len()]));
    }
    assert!(gate.start_draining());
    drop(permits);
    assert!(gate.is_idle());
    assert_eq!(gate.in_flight(), 0);
}

/// Every closed shard's debt is paid exactly once, by the drain (empty at the drain), by the release
/// that empties it, or by the reopen that finds it busy: across drains and reopens `pending` is
/// back to the open bias whenever the gate is open and nothing is in flight, and zero when it is
/// drained and idle.
#[test]
fn each_shard_pays_its_debt_once_across_drains_and_reopens() {
    let gate = Gate::new();
    assert_eq!(pending(&gate), 1, "the open bias");
    assert!(gate.start_draining());
    assert_eq!(pending(&gate), 0, "an empty gate: the drain pays every shard");
    assert!(gate.reopen());
    assert_eq!(pending(&gate), 1);

    for round in 0..4 {
        // Permits on several shards: one per thread, each thread on its own shard (or sharing).
        let mut permits: Vec<Permit> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4).map(|_| scope.spawn(|| gate.enter().expect("open"))).collect();
            threads.into_iter().map(|thread| thread.join().expect("no panic")).collect()
        });
        assert!(gate.start_draining());
        assert!(pending(&gate) >= 1, "busy shards owe");
        assert!(!gate.is_idle());
        // Some released while closed (their shards pay), the rest held through a reopen (it pays).
        permits.truncate(round % 4);
        assert!(gate.reopen());
        assert!(!gate.is_idle());
        assert_eq!(pending(&gate), 1, "open: only the bias, whatever was held");
        drop(permits);
        assert_eq!(pending(&gate), 1, "releases on an open gate owe nothing");
    }
    assert!(gate.start_draining());
    assert_eq!(pending(&gate), 0);
    assert!(gate.is_idle());
}

/// `is_draining` turns true only once every shard is closed, and false again at a reopen; an enter
/// on any shard follows it.
#[test]
fn is_draining_follows_every_shard() {
    let gate = Gate::new();
    let closed = |gate: &Gate| {
        gate.inner
            .shards
            .iter()
            // SeqCst: test code, clarity over speed.
            .filter(|shard| shard.state.load(StdOrdering::SeqCst) & DRAINING != 0)
            .count()
    };
    assert_eq!(closed(&gate), 0);
    assert!(gate.start_draining());
    assert!(!gate.start_draining(), "only the call that made the transition returns true");
    assert_eq!(closed(&gate), gate.inner.shards.len());
    assert!(gate.is_draining());
    assert!(gate.reopen());
    assert_eq!(closed(&gate), 0);
    assert!(!gate.is_draining());
    assert!(gate.enter().is_ok());
}

/// A thread keeps its shard index; two threads get different ones (the round-robin counter hands
/// out each index once, whatever other tests run at the same time).
#[test]
fn a_thread_keeps_its_index_and_threads_get_different_ones() {
    let [first, second] = [(); 2].map(|()| {
        std::thread::spawn(|| {
            let index = shards::thread_index();
            assert_eq!(shards::thread_index(), index, "a thread keeps its index");
            index
        })
        .join()
        .expect("no panic")
    });
    assert_ne!(first, second);
}

/// Four shards per CPU, a power of two, at most `SLOTS`.
#[test]
fn shard_count_is_four_per_cpu() {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let expected = (cpus * 4).next_power_of_two().min(SLOTS);
    assert_eq!(shards::shard_count(), expected);
    assert_eq!(Gate::new().inner.shards.len(), expected);
}

/// The `Debug` output says what a reader needs: the gate's state, whether a waiter is registered.
#[test]
fn debug_output() {
    let gate = Gate::new();
    let permit = gate.enter().expect("open");
    assert_eq!(format!("{gate:?}"), "Gate { draining: false, in_flight: 1 }");
    assert_eq!(format!("{permit:?}"), "Permit { .. }");
    assert!(gate.start_draining());
    let waker = CountingWaker::new();
    let mut wait = gate.wait_idle();
    assert_eq!(format!("{wait:?}"), "WaitIdle { registered: false }");
    assert_eq!(poll_with(&mut wait, &waker), Poll::Pending);
    assert_eq!(format!("{wait:?}"), "WaitIdle { registered: true }");
    drop(permit);
    assert_eq!(format!("{gate:?}"), "Gate { draining: true, in_flight: 0 }");
}

/// Two async waiters each keep their own registration: both are woken, and dropping one leaves the
/// other registered.
#[test]
fn two_waiters_are_registered_apart_and_both_woken() {
    let gate = Gate::new();
    let permit = gate.enter().expect("open");
    assert!(gate.start_draining());
    let [first_waker, second_waker, third_waker] = [(); 3].map(|()| CountingWaker::new());
    let mut first = gate.wait_idle();
    let mut second = gate.wait_idle();
    let mut third = gate.wait_idle();
    assert_eq!(poll_with(&mut first, &first_waker), Poll::Pending);
    assert_eq!(poll_with(&mut second, &second_waker), Poll::Pending);
    assert_eq!(poll_with(&mut third, &third_waker), Poll::Pending);
    assert_eq!(gate.inner.common.waiters.registered(), 3);
    drop(third);
    assert_eq!(gate.inner.common.waiters.registered(), 2);
    drop(permit);
    assert_eq!((first_waker.wakes(), second_waker.wakes(), third_waker.wakes()), (1, 1, 0));
    assert_eq!(poll_with(&mut first, &first_waker), Poll::Ready(()));
    assert_eq!(poll_with(&mut second, &second_waker), Poll::Ready(()));
}
