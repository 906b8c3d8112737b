//! loom models of the gate: loom runs each model under every interleaving of its threads (within
//! the preemption bound) and every weak-memory outcome its orderings allow, so an assertion here
//! holds for all of them, not for the schedules a stress test happens to hit.
//!
//! Run with `scripts/loom.sh` (`RUSTFLAGS="--cfg loom" cargo test -p draingate --test loom --release`).
//!
//! Under loom a gate has two shards, and threads get theirs round-robin in the order in which they
//! first enter (any gate) within an execution: the first thread to enter uses shard 0, the second
//! shard 1, the third shard 0 again. The models below say which thread enters first where the shard
//! matters; `is_draining` reads shard 1, the last one a drain closes.
#![cfg(loom)]

use draingate::{Draining, Gate, Permit};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

/// Explores every interleaving up to a preemption bound of 3 (tokio's default for its own models):
/// enough for the races here, small enough to finish in seconds. `LOOM_MAX_PREEMPTIONS` overrides it.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// Two enters race a drain: the two enterers are the first threads to enter, so they use different
/// shards, and the drain closes them one after the other. Each enter is admitted and counted, or
/// rejected; once the drain returned, the
/// count is exactly the admitted permits still held, and the gate is idle once they are dropped.
#[test]
fn enter_racing_start_draining() {
    model(|| {
        let gate = Gate::new();
        let enters: Vec<_> = (0..2)
            .map(|_| {
                let gate = gate.clone();
                thread::spawn(move || {
                    let saw_draining = gate.is_draining();
                    let entered = gate.enter();
                    if saw_draining {
                        assert_eq!(entered.as_ref().err(), Some(&Draining), "admitted after the drain");
                    }
                    entered.ok()
                })
            })
            .collect();

        assert!(gate.start_draining());
        assert!(gate.enter().is_err(), "the drainer sees its own drain");

        let permits: Vec<_> =
            enters.into_iter().filter_map(|enter| enter.join().expect("no panic")).collect();
        assert_eq!(gate.in_flight(), permits.len(), "every admitted enter is counted");
        assert_eq!(gate.is_idle(), permits.is_empty());
        drop(permits);
        assert!(gate.is_idle());
    });
}

/// The last release races an async `wait_idle`: the waiter is always woken (a lost wake-up would be
/// a deadlock, which loom reports).
#[test]
fn last_release_racing_wait_idle() {
    model(|| {
        let gate = Gate::new();
        let first = gate.enter().expect("open");
        let second = gate.enter().expect("open");
        assert!(gate.start_draining());

        let releasers = [first, second].map(|permit| thread::spawn(move || drop(permit)));
        loom::future::block_on(gate.wait_idle());
        assert!(gate.is_idle());
        for releaser in releasers {
            releaser.join().expect("no panic");
        }
    });
}

/// The last release races a drain and a blocked (condvar) waiter: the thread is always woken.
#[test]
fn last_release_racing_start_draining_and_blocking_wait() {
    model(|| {
        let gate = Gate::new();
        let permit = gate.enter().expect("open");
        let releaser = thread::spawn(move || drop(permit));
        let drainer = {
            let gate = gate.clone();
            thread::spawn(move || assert!(gate.start_draining()))
        };
        // loom does not model the timeout (its wait_timeout waits like wait): a missed wake-up
        // shows as a deadlock, never as a `false` here.
        assert!(gate.wait_idle_timeout(std::time::Duration::from_secs(1)));
        releaser.join().expect("no panic");
        drainer.join().expect("no panic");
    });
}

/// A reopen races the last release, an enter and an async waiter, then admission closes again: the
/// enter is admitted or rejected, nothing stays counted, and the waiter always completes (at the
/// first idle it sees, or at the final one). The main thread is the waiter, to keep the model at
/// three threads.
#[test]
fn reopen_racing_enter_and_wait_idle() {
    model(|| {
        let gate = Gate::new();
        let held = gate.enter().expect("open");
        assert!(gate.start_draining());

        let reopener = {
            let gate = gate.clone();
            thread::spawn(move || {
                assert!(gate.reopen());
                assert!(gate.start_draining());
            })
        };
        let enterer = {
            let gate = gate.clone();
            thread::spawn(move || {
                drop(held);
                gate.enter().map(drop).is_ok()
            })
        };
        loom::future::block_on(gate.wait_idle());

        reopener.join().expect("no panic");
        let _admitted = enterer.join().expect("no panic");
        assert!(gate.is_idle());
        assert_eq!(gate.in_flight(), 0);
    });
}

/// Work admitted on two shards races a drain that closes the shards one by one and then waits: the
/// wait ends only after every admitted enter's work is done and its permit released, whichever
/// shard the last release lands on and however it interleaves with the drain closing (and summing)
/// the shards. The work is a Relaxed store, so only the gate's own ordering makes it visible to the
/// waiter.
#[test]
fn admitted_work_on_two_shards_racing_start_draining_and_wait_idle() {
    model(|| {
        let gate = Gate::new();
        let work = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let workers: Vec<_> = (0..2)
            .map(|i| {
                let gate = gate.clone();
                let work = work.clone();
                thread::spawn(move || {
                    let Ok(permit) = gate.enter() else { return false };
                    // Relaxed: what the gate must order, not the test.
                    work[i].store(1, Ordering::Relaxed);
                    drop(permit);
                    true
                })
            })
            .collect();

        assert!(gate.start_draining());
        loom::future::block_on(gate.wait_idle());
        assert!(gate.is_idle());
        let seen = [0, 1].map(|i| work[i].load(Ordering::Relaxed));
        for (i, worker) in workers.into_iter().enumerate() {
            let admitted = worker.join().expect("no panic");
            if admitted {
                assert_eq!(seen[i], 1, "the drain's wait ended before admitted work was done");
            }
        }
        assert_eq!(gate.in_flight(), 0);
    });
}

/// A permit of another thread, admitted on the next shard in line (the thread is that shard's
/// first enterer); the thread is joined at once, so nothing races here.
fn enter_on_next_shard(gate: &Gate) -> Permit {
    let gate = gate.clone();
    thread::spawn(move || gate.enter().expect("open")).join().expect("no panic")
}

/// Permits on both shards while the gate drains; the release on one shard races a reopen and a
/// second drain, and the waiter (who released the other permit) waits through all of it. Each
/// closed shard's debt is paid exactly once (by the release that empties it, or by the reopen that
/// finds it busy), even when the release's payment lands after the reopen or the second drain:
/// the wait never ends while the permit is held, and always ends.
#[test]
fn release_racing_reopen_and_second_drain() {
    model(|| {
        let gate = Gate::new();
        let on_shard_0 = gate.enter().expect("open");
        let on_shard_1 = enter_on_next_shard(&gate);
        assert!(gate.start_draining());
        let work = Arc::new(AtomicUsize::new(0));

        let releaser = {
            let work = work.clone();
            thread::spawn(move || {
                // Relaxed: what the gate must order, not the test.
                work.store(1, Ordering::Relaxed);
                drop(on_shard_1);
            })
        };
        let reopener = {
            let gate = gate.clone();
            thread::spawn(move || {
                assert!(gate.reopen());
                assert!(gate.start_draining());
            })
        };
        drop(on_shard_0);
        loom::future::block_on(gate.wait_idle());
        assert_eq!(work.load(Ordering::Relaxed), 1, "idle while a permit was held");

        releaser.join().expect("no panic");
        reopener.join().expect("no panic");
        assert!(gate.is_idle());
        assert_eq!(gate.in_flight(), 0);
    });
}

/// A thread on shard 0 that sees the gate draining (`is_draining` reads shard 1's bit) is rejected
/// on its own shard, while a drainer closes the shards concurrently; and a permit split on a closed
/// shard keeps the gate busy until the split permit is released as well.
#[test]
fn is_draining_then_enter_on_another_shard_and_split_while_draining() {
    model(|| {
        let gate = Gate::new();
        // The main thread enters first (shard 0), the helper second (shard 1).
        let held = gate.enter().expect("open");
        let held_on_shard_1 = enter_on_next_shard(&gate);
        let observer = {
            let gate = gate.clone();
            thread::spawn(move || {
                // The third thread to enter: shard 0, the shard `is_draining` does not read.
                let saw_draining = gate.is_draining();
                let entered = gate.enter().map(drop);
                if saw_draining {
                    assert_eq!(entered, Err(Draining), "admitted after the drain was seen");
                }
            })
        };
        let drainer = {
            let gate = gate.clone();
            thread::spawn(move || assert!(gate.start_draining()))
        };
        let split = held.split();
        drop(held);
        drop(held_on_shard_1);
        drainer.join().expect("no panic");
        assert!(gate.is_draining());
        assert!(!gate.is_idle(), "the split permit is held");
        drop(split);
        loom::future::block_on(gate.wait_idle());
        observer.join().expect("no panic");
        assert_eq!(gate.in_flight(), 0);
    });
}
