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

impl Slots {
    /// Takes the waker registered under `key` out of the list.
    fn take(&mut self, key: WaiterKey) -> Option<Waker> {
        let index = self.wakers.iter().position(|(k, _)| *k == key)?;
        Some(self.wakers.swap_remove(index).1)
    }
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
        // A waker replaced or removed here is dropped only after the guard (see `remove`).
        let (ready, old_waker) = {
            let mut slots = self.lock();
            if is_ready() {
                (true, key.take().and_then(|key| slots.take(key)))
            } else {
                let own = *key.get_or_insert_with(|| {
                    slots.next_key += 1;
                    WaiterKey(slots.next_key)
                });
                let old_waker = match slots.wakers.iter_mut().find(|(k, _)| *k == own) {
                    Some((_, registered)) if registered.will_wake(waker) => None,
                    Some((_, registered)) => Some(std::mem::replace(registered, waker.clone())),
                    None => {
                        slots.wakers.push((own, waker.clone()));
                        None
                    }
                };
                (false, old_waker)
            }
        };
        drop(old_waker);
        ready
    }

    /// Removes a waiter's waker, if it is still registered.
    pub(crate) fn remove(&self, key: WaiterKey) {
        // Dropping a waker can run arbitrary executor code (even drop another `WaitIdle` of this
        // gate, which would take this lock again), so the removed waker is dropped after the guard.
        let removed = self.lock().take(key);
        drop(removed);
    }

    /// How many async waiters are registered now.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn registered(&self) -> usize {
        self.lock().wakers.len()
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
