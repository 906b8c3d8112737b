//! loom models of the gate: loom runs each model under every interleaving of its threads (within
//! the preemption bound) and every weak-memory outcome its orderings allow, so an assertion here
//! holds for all of them, not for the schedules a stress test happens to hit.
//!
//! Run with `scripts/loom.sh` (`RUSTFLAGS="--cfg loom" cargo test -p draingate --test loom --release`).
#![cfg(loom)]

use draingate::{Draining, Gate};
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

/// Two enters race a drain: each is admitted and counted, or rejected; once the drain returned, the
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
