//! The gate across threads and executors: permits released on other threads, admission racing a
//! drain, waiters through a reopen, and `wait_idle` on `futures`' executor and on tokio.
//!
//! Timeouts here are hang guards only; no test asserts how long anything took, and none sleeps
//! hoping a race went one way: barriers line the threads up, and the invariants are checked on
//! every outcome.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::Duration;

use draingate::{Draining, Gate, Permit};

/// Bound on every wait that must succeed; reaching it means a hang, not a slow machine.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// Origin `TestConcurrentStress`: 100 threads race `enter`, all resolve before the drain; every
/// admitted permit is released on its own thread; the wait completes and a later enter is rejected.
#[test]
fn concurrent_stress() {
    let gate = Gate::new();
    let admitted: Vec<Permit> = thread::scope(|scope| {
        let handles: Vec<_> = (0..100).map(|_| scope.spawn(|| gate.enter())).collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("enter does not panic"))
            .map(|result| result.expect("nothing drains yet"))
            .collect()
    });
    assert_eq!(gate.in_flight(), 100);
    assert!(gate.start_draining());
    thread::scope(|scope| {
        for permit in admitted {
            scope.spawn(move || drop(permit));
        }
        assert!(gate.wait_idle_timeout(HANG_GUARD));
    });
    assert_eq!(gate.in_flight(), 0);
    assert_eq!(gate.enter().map(drop), Err(Draining));
}

/// Permits dropped (and explicitly released) on other threads count down the same gate, and the
/// last of them wakes a thread blocked in `wait_idle_timeout`.
#[test]
fn permits_released_on_other_threads() {
    let gate = Gate::new();
    let (senders, workers): (Vec<_>, Vec<_>) = (0..8)
        .map(|i| {
            let (send, receive) = mpsc::channel::<Permit>();
            let worker = thread::spawn(move || {
                for permit in receive {
                    if i % 2 == 0 {
                        permit.release();
                    } else {
                        drop(permit);
                    }
                }
            });
            (send, worker)
        })
        .unzip();
    for round in 0..800 {
        let permit = gate.enter().expect("open");
        senders[round % senders.len()].send(permit).expect("the worker runs");
    }
    assert!(gate.start_draining());
    drop(senders);
    assert!(gate.wait_idle_timeout(HANG_GUARD));
    assert_eq!(gate.in_flight(), 0);
    for worker in workers {
        worker.join().expect("the worker does not panic");
    }
}

/// 100 threads enter while another thread drains, lined up by a barrier so the drain lands in the
/// middle of the stream. On every round: each enter is either admitted and counted, or rejected;
/// an enter that starts after the entering thread saw the drain is rejected; and `wait_idle`
/// completes only after every admitted permit is gone.
#[test]
fn hundred_threads_enter_while_another_drains() {
    const THREADS: usize = 100;
    for _round in 0..40 {
        let gate = Gate::new();
        // The barriers count the entering threads plus the drainer.
        let start = Barrier::new(THREADS + 1);
        let resolved = Barrier::new(THREADS + 1);
        let counted = Barrier::new(THREADS + 1);
        let admitted = AtomicUsize::new(0);
        let rejected = AtomicUsize::new(0);
        // Admitted work that has not yet dropped its permit.
        let live = AtomicUsize::new(0);
        // Threads that have begun their enter.
        let attempts = AtomicUsize::new(0);

        thread::scope(|scope| {
            for _ in 0..THREADS {
                scope.spawn(|| {
                    start.wait();
                    attempts.fetch_add(1, Ordering::SeqCst);
                    let saw_draining = gate.is_draining();
                    let permit = match gate.enter() {
                        Ok(permit) => {
                            assert!(!saw_draining, "admitted after this thread saw the drain");
                            // SeqCst: test bookkeeping, compared across threads below.
                            live.fetch_add(1, Ordering::SeqCst);
                            admitted.fetch_add(1, Ordering::SeqCst);
                            Some(permit)
                        }
                        Err(Draining) => {
                            rejected.fetch_add(1, Ordering::SeqCst);
                            None
                        }
                    };
                    resolved.wait();
                    counted.wait();
                    if let Some(permit) = permit {
                        // The work ends before the permit goes: the drain must wait for it.
                        live.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    }
                });
            }
            scope.spawn(|| {
                start.wait();
                // Let a tenth of the stream begin first, so the drain lands in the middle of it rather
                // than before the first thread has woken from the barrier. Progress, not time.
                while attempts.load(Ordering::SeqCst) < THREADS / 10 {
                    thread::yield_now();
                }
                assert!(gate.start_draining(), "the only drainer makes the transition");
                assert!(gate.enter().is_err(), "the drainer itself sees the gate closed");
                resolved.wait();
                // Every enter has resolved and no permit has been dropped yet: the count is
                // exactly the admissions.
                assert_eq!(gate.in_flight(), admitted.load(Ordering::SeqCst));
                assert!(!gate.is_idle() || admitted.load(Ordering::SeqCst) == 0);
                counted.wait();
                assert!(gate.wait_idle_timeout(HANG_GUARD), "the drain finishes");
                assert_eq!(live.load(Ordering::SeqCst), 0, "idle while admitted work was live");
                assert_eq!(gate.in_flight(), 0);
            });
        });
        assert_eq!(admitted.load(Ordering::SeqCst) + rejected.load(Ordering::SeqCst), THREADS);
        assert!(gate.is_idle());
    }
}

/// A blocked thread and an async waiter keep waiting through a reopen and finish at the next
/// drain that empties the gate.
#[test]
fn reopen_while_waiters_wait() {
    let gate = Gate::new();
    let old = gate.enter().expect("open");
    assert!(gate.start_draining());

    let ready = Arc::new(Barrier::new(3));
    let blocked = thread::spawn({
        let gate = gate.clone();
        let ready = Arc::clone(&ready);
        move || {
            ready.wait();
            gate.wait_idle_timeout(HANG_GUARD)
        }
    });
    let asynchronous = thread::spawn({
        let gate = gate.clone();
        let ready = Arc::clone(&ready);
        move || {
            let wait = gate.wait_idle();
            ready.wait();
            futures::executor::block_on(wait);
        }
    });
    ready.wait();

    assert!(gate.reopen());
    let new = gate.enter().expect("reopened");
    drop(old);
    // The gate was never idle (it stopped draining before the count reached zero), so neither
    // waiter can have returned yet (the blocked one only on its hang guard).
    assert!(!blocked.is_finished());
    assert!(!asynchronous.is_finished());

    assert!(gate.start_draining());
    drop(new);
    assert!(blocked.join().expect("no panic"), "the blocked waiter saw the second drain's idle");
    asynchronous.join().expect("no panic");
    assert!(gate.is_idle());
}

/// `wait_idle` on an executor that knows nothing of tokio.
#[test]
fn wait_idle_on_futures_executor() {
    let gate = Gate::new();
    let permits: Vec<Permit> = (0..4).map(|_| gate.enter().expect("open")).collect();
    assert!(gate.start_draining());
    let releaser = thread::spawn(move || drop(permits));
    futures::executor::block_on(gate.wait_idle());
    assert!(gate.is_idle());
    releaser.join().expect("no panic");
}

/// `wait_idle` on tokio, with permits moved into spawned tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_idle_on_tokio() {
    let gate = Gate::new();
    let (go, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let permit = gate.enter().expect("open");
        let mut go = go.subscribe();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            // Hold the permit until the test says so.
            let _ = go.recv().await;
        }));
    }
    assert!(gate.start_draining());
    let waiter = tokio::spawn({
        let gate = gate.clone();
        async move { gate.wait_idle().await }
    });
    assert_eq!(gate.in_flight(), 16);
    assert!(!waiter.is_finished(), "16 permits are held");
    go.send(()).expect("the tasks listen");
    tokio::time::timeout(HANG_GUARD, waiter).await.expect("hang guard").expect("no panic");
    assert!(gate.is_idle());
    for task in tasks {
        task.await.expect("no panic");
    }
}

/// A `wait_idle` abandoned by `select!`-style cancellation on tokio does not disturb later waits.
#[tokio::test]
async fn cancelled_wait_idle_on_tokio() {
    let gate = Gate::new();
    let permit = gate.enter().expect("open");
    assert!(gate.start_draining());
    let cancelled = tokio::time::timeout(Duration::from_millis(1), gate.wait_idle()).await;
    assert!(cancelled.is_err(), "a permit is still held");
    drop(permit);
    tokio::time::timeout(HANG_GUARD, gate.wait_idle()).await.expect("hang guard");
}
