//! The drain intent, persisted in the state dir as a state file (`sandhost_runtime::state_file`:
//! written atomically and durably, checked when read). A missing file means "no drain"; so does a
//! damaged one, which is logged as an error naming it (never half-read).
//!
//! Its [`DrainOrigin`] says whose drain it is. An operator's drain (the API) is about the node: a
//! restarted agent continues it with the same absolute deadlines, and the node stays closed until
//! undrain, like a cordon. A shutdown's drain (a signal) is about the process: if the process dies
//! before it ends, the next agent does not continue it; it re-adopts what still runs, comes up READY
//! and reports the cut-short shutdown.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sandhost_runtime::state_file;
use serde::{Deserialize, Serialize};

/// Who asked for a drain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainOrigin {
    /// The API (`Drain`, `ForceStop`): about the node; it outlives the process. An intent written
    /// before origins were recorded reads as this one, as it behaved then.
    #[default]
    Operator,
    /// A shutdown signal: about the process; it ends with it.
    Shutdown,
}

impl DrainOrigin {
    /// The origin of a drain that both asked for: the operator's outlives the process, so it wins.
    #[must_use]
    pub fn and(self, other: Self) -> Self {
        if self == Self::Operator || other == Self::Operator { Self::Operator } else { Self::Shutdown }
    }
}

/// What a drain was asked to do, in absolute times (unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DrainIntent {
    started_at_ms: u64,
    graceful_deadline_ms: Option<u64>,
    pub(crate) force: bool,
    force_deadline_ms: Option<u64>,
    #[serde(default)]
    pub(crate) origin: DrainOrigin,
}

fn to_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `time` at the millisecond precision the intent keeps, so a deadline reads the same before and
/// after a restart.
pub(crate) fn at_ms_precision(time: SystemTime) -> SystemTime {
    from_ms(to_ms(time))
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl DrainIntent {
    pub(crate) fn new(
        started_at: SystemTime,
        graceful_deadline: Option<SystemTime>,
        force: bool,
        force_deadline: Option<SystemTime>,
        origin: DrainOrigin,
    ) -> Self {
        Self {
            started_at_ms: to_ms(started_at),
            graceful_deadline_ms: graceful_deadline.map(to_ms),
            force,
            force_deadline_ms: force_deadline.map(to_ms),
            origin,
        }
    }

    pub(crate) fn started_at(&self) -> SystemTime {
        from_ms(self.started_at_ms)
    }

    pub(crate) fn graceful_deadline(&self) -> Option<SystemTime> {
        self.graceful_deadline_ms.map(from_ms)
    }

    pub(crate) fn force_deadline(&self) -> Option<SystemTime> {
        self.force_deadline_ms.map(from_ms)
    }
}

/// The file holding the intent.
#[derive(Debug)]
pub(crate) struct IntentStore {
    path: PathBuf,
}

impl IntentStore {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Saves the intent. A failure is logged: the drain goes on, only a restart would forget it.
    pub(crate) fn save(&self, intent: &DrainIntent) {
        let written = match (self.path.parent(), self.path.file_name().and_then(|n| n.to_str())) {
            (Some(dir), Some(name)) => state_file::write(dir, name, intent),
            _ => Err(std::io::ErrorKind::InvalidInput.into()),
        };
        if let Err(error) = written {
            tracing::error!(path = %self.path.display(), error = %error, "cannot persist the drain intent");
        }
    }

    pub(crate) fn load(&self) -> Option<DrainIntent> {
        state_file::read_path(&self.path).unwrap_or_else(|error| {
            tracing::error!(error = %crate::error_chain(&error), "ignoring an unreadable drain intent");
            None
        })
    }

    pub(crate) fn clear(&self) {
        match std::fs::remove_file(&self.path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                tracing::error!(path = %self.path.display(), error = %error, "cannot remove the drain intent");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intent_round_trips_with_its_deadlines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = IntentStore::new(dir.path().join("drain.json"));
        assert_eq!(store.load(), None);
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        let intent = DrainIntent::new(
            start,
            Some(start + Duration::from_secs(60)),
            false,
            None,
            DrainOrigin::Shutdown,
        );
        store.save(&intent);
        let loaded = store.load().expect("saved");
        assert_eq!(loaded.graceful_deadline(), Some(start + Duration::from_secs(60)));
        assert_eq!(loaded.started_at(), start);
        assert_eq!(loaded.origin, DrainOrigin::Shutdown);
        store.clear();
        assert_eq!(store.load(), None);
    }

    #[test]
    fn an_intent_written_before_origins_reads_as_the_operator_s() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("drain.json");
        std::fs::write(
            &path,
            br#"{"started_at_ms":1000,"graceful_deadline_ms":null,"force":true,"force_deadline_ms":null}"#,
        )
        .expect("write");
        let loaded = IntentStore::new(path).load().expect("readable");
        assert_eq!((loaded.origin, loaded.force), (DrainOrigin::Operator, true));
    }

    #[test]
    fn a_damaged_intent_is_no_drain() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = IntentStore::new(dir.path().join("drain.json"));
        store.save(&DrainIntent::new(UNIX_EPOCH, None, true, None, DrainOrigin::Operator));
        let bytes = std::fs::read(dir.path().join("drain.json")).expect("saved");
        std::fs::write(dir.path().join("drain.json"), &bytes[..bytes.len() - 4]).expect("tear");
        assert_eq!(store.load(), None);
    }

    #[test]
    fn the_operator_s_origin_wins() {
        use DrainOrigin::{Operator, Shutdown};
        assert_eq!(Shutdown.and(Shutdown), Shutdown);
        assert_eq!(Shutdown.and(Operator), Operator);
        assert_eq!(Operator.and(Shutdown), Operator);
        assert_eq!(Operator.and(Operator), Operator);
    }
}
