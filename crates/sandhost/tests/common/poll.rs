//! Waiting for a condition the test cannot be told about: look, and look again until it holds.
//! The timeout only stops a hang (a test never asserts timing), so it is generous; a poll that
//! runs out of it names what it waited for and what it saw last.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// A bound that only guards against hangs; no test asserts timing.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// Looks (`look`) until what it sees is `done`, and returns that. Between looks it sleeps, a little
/// longer each time up to a tenth of a second, so that a slow condition costs the shared machine
/// little.
///
/// # Panics
///
/// Once `timeout` has passed, naming `what` the test waited for and what it saw last.
pub fn poll_until<S: Debug>(
    what: &str,
    timeout: Duration,
    look: impl FnMut() -> S,
    done: impl FnMut(&S) -> bool,
) -> S {
    try_poll_until(timeout, look, done).unwrap_or_else(|last| timed_out(what, timeout, &last))
}

/// As [`poll_until`], for a caller with something to do before it fails (kill a child, say) or
/// that must not panic (a `Drop`): `Err` holds what it saw last when `timeout` passed.
pub fn try_poll_until<S>(
    timeout: Duration,
    mut look: impl FnMut() -> S,
    mut done: impl FnMut(&S) -> bool,
) -> Result<S, S> {
    let mut pauses = Pauses::within(timeout);
    loop {
        let seen = look();
        if done(&seen) {
            return Ok(seen);
        }
        match pauses.next() {
            Some(pause) => std::thread::sleep(pause),
            None => return Err(seen),
        }
    }
}

/// As [`poll_until`], for an async test: `look` returns a future (`std::future::ready(..)` for
/// something seen at once), and the pauses leave the runtime's threads to others.
///
/// # Panics
///
/// Once `timeout` has passed, naming `what` the test waited for and what it saw last.
pub async fn poll_until_async<S: Debug, F: Future<Output = S>>(
    what: &str,
    timeout: Duration,
    mut look: impl FnMut() -> F,
    mut done: impl FnMut(&S) -> bool,
) -> S {
    let mut pauses = Pauses::within(timeout);
    loop {
        let seen = look().await;
        if done(&seen) {
            return seen;
        }
        match pauses.next() {
            Some(pause) => tokio::time::sleep(pause).await,
            None => timed_out(what, timeout, &seen),
        }
    }
}

fn timed_out(what: &str, timeout: Duration, last: &dyn Debug) -> ! {
    panic!("waited {timeout:?} for {what}; last seen: {last:?}")
}

/// The sleeps between looks: 10 ms, doubling up to 100 ms, until the timeout has passed.
struct Pauses {
    deadline: Instant,
    next: Duration,
}

impl Pauses {
    const FIRST: Duration = Duration::from_millis(10);
    const LONGEST: Duration = Duration::from_millis(100);

    fn within(timeout: Duration) -> Self {
        Self { deadline: Instant::now() + timeout, next: Self::FIRST }
    }
}

impl Iterator for Pauses {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let pause = self.next;
        self.next = (pause * 2).min(Self::LONGEST);
        Some(pause)
    }
}
