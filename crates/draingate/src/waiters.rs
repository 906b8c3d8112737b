//! The list of tasks and threads waiting for the gate to become idle.
//!
//! Lost wake-ups are impossible because both sides follow one protocol: the waker changes the state
//! word *first* and takes this list's lock *after*; a waiter takes the lock *first* and re-checks the
//! state *under* it before it registers. Either the waiter's check sees the new state, or its
//! registration is in the list before the waker takes the lock.

use std::task::Waker;
use std::time::{Duration, Instant};

use crate::sync::{Condvar, Mutex, MutexGuard};

/// Identifies one registered async waiter, so a dropped future can take its waker out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WaiterKey(u64);

pub(crate) struct Waiters {
    slots: Mutex<Slots>,
    /// Threads blocked in `block_until`.
    condvar: Condvar,
}

#[derive(Default)]
struct Slots {
    next_key: u64,
    wakers: Vec<(WaiterKey, Waker)>,
}

impl Waiters {
    pub(crate) fn new() -> Self {
        Self { slots: Mutex::new(Slots::default()), condvar: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        // A panic while holding this lock cannot leave the list inconsistent (each operation is one
        // Vec call), so a poisoned lock is still usable.
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers (or refreshes) the waker under `key` unless `is_ready` holds under the lock.
    /// Returns whether it was ready; then nothing stays registered.
    pub(crate) fn register(
        &self,
        key: &mut Option<WaiterKey>,
        waker: &Waker,
        is_ready: impl Fn() -> bool,
    ) -> bool {
        let mut slots = self.lock();
        if is_ready() {
            if let Some(key) = key.take() {
                slots.wakers.retain(|(k, _)| *k != key);
            }
            return true;
        }
        let own = *key.get_or_insert_with(|| {
            slots.next_key += 1;
            WaiterKey(slots.next_key)
        });
        match slots.wakers.iter_mut().find(|(k, _)| *k == own) {
            Some((_, registered)) => registered.clone_from(waker),
            None => slots.wakers.push((own, waker.clone())),
        }
        false
    }

    /// Removes a waiter's waker, if it is still registered.
    pub(crate) fn remove(&self, key: WaiterKey) {
        self.lock().wakers.retain(|(k, _)| *k != key);
    }

    /// Wakes every async waiter and every blocked thread. Wakers run outside the lock.
    pub(crate) fn wake_all(&self) {
        let wakers = {
            let mut slots = self.lock();
            self.condvar.notify_all();
            std::mem::take(&mut slots.wakers)
        };
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    /// Blocks until `is_ready` holds (checked under the lock) or `timeout` passes.
    pub(crate) fn block_until(&self, timeout: Duration, is_ready: impl Fn() -> bool) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut slots = self.lock();
        loop {
            if is_ready() {
                return true;
            }
            let remaining = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if remaining.is_zero() {
                return false;
            }
            slots = match self.condvar.wait_timeout(slots, remaining) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}
