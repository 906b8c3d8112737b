//! The synchronisation primitives the gate is built on: `std`'s normally, loom's under `cfg(loom)`,
//! so the loom models in `tests/loom.rs` explore the real code.

#[cfg(loom)]
pub(crate) use loom::sync::{
    Arc, Condvar, Mutex, MutexGuard,
    atomic::{AtomicUsize, Ordering},
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    Arc, Condvar, Mutex, MutexGuard,
    atomic::{AtomicUsize, Ordering},
};
