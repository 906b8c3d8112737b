//! enter + release of a [`draingate::Gate`], uncontended and with two threads contending, measured in
//! the same run as two anchors: `tokio_util::task::TaskTracker` (a token acquired and dropped) and a
//! `Mutex<usize>` plus `Condvar` gate written below.
//!
//! `cargo bench -p draingate -- --warm-up-time 1 --measurement-time 3`; the figures are in
//! BENCHMARKS.md at the repository root.

use std::hint::black_box;
use std::sync::{Barrier, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tokio_util::task::TaskTracker;

/// The anchor: a gate as one would first write it, a mutex around the count and the draining flag,
/// and a condvar that the last release notifies while draining.
#[derive(Debug, Default)]
struct MutexGate {
    state: Mutex<MutexGateState>,
    idle: Condvar,
}

#[derive(Debug, Default)]
struct MutexGateState {
    in_flight: usize,
    draining: bool,
}

impl MutexGate {
    fn enter(&self) -> Option<MutexPermit<'_>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.draining {
            return None;
        }
        state.in_flight += 1;
        Some(MutexPermit { gate: self })
    }
}

#[derive(Debug)]
struct MutexPermit<'a> {
    gate: &'a MutexGate,
}

impl Drop for MutexPermit<'_> {
    fn drop(&mut self) {
        let mut state = self.gate.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.in_flight -= 1;
        if state.draining && state.in_flight == 0 {
            self.gate.idle.notify_all();
        }
    }
}

/// Runs `round_trip` `iters` times on each of `threads` threads at once and returns the wall time
/// until all are done: the time per round trip *per thread* under that much contention.
fn contended(threads: usize, iters: u64, round_trip: &(impl Fn() + Sync)) -> Duration {
    let start = Barrier::new(threads + 1);
    thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    for _ in 0..iters {
                        round_trip();
                    }
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        for worker in workers {
            worker.join().expect("a bench thread panicked");
        }
        began.elapsed()
    })
}

fn enter_release(c: &mut Criterion) {
    let gate = draingate::Gate::new();
    let tracker = TaskTracker::new();
    let mutex_gate = MutexGate::default();

    let draingate_round_trip = || drop(black_box(gate.enter().expect("the bench never drains")));
    let tracker_round_trip = || drop(black_box(tracker.token()));
    let mutex_round_trip = || drop(black_box(mutex_gate.enter().expect("the bench never drains")));

    let mut group = c.benchmark_group("enter_release/uncontended");
    group.bench_function("draingate", |b| b.iter(draingate_round_trip));
    group.bench_function("task_tracker", |b| b.iter(tracker_round_trip));
    group.bench_function("mutex_gate", |b| b.iter(mutex_round_trip));
    group.finish();

    let mut group = c.benchmark_group("enter_release/contended_2_threads");
    group.bench_function("draingate", |b| {
        b.iter_custom(|iters| contended(2, iters, &draingate_round_trip));
    });
    group.bench_function("task_tracker", |b| {
        b.iter_custom(|iters| contended(2, iters, &tracker_round_trip));
    });
    group.bench_function("mutex_gate", |b| {
        b.iter_custom(|iters| contended(2, iters, &mutex_round_trip));
    });
    group.finish();
}

criterion_group!(benches, enter_release);
criterion_main!(benches);
