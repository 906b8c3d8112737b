//! What the recoveries of both backends share: the [`Recovered`] of a sandbox found with its state
//! lost, of a lifecycle of which only the log is left, and the handling of a cgroup under the parent
//! whose name is no sandbox's (killed, removed, reported). Each backend walks its own state files
//! and names its own cgroups; this is the floor under both.

use std::path::Path;
use std::time::SystemTime;

use crate::cgroup::{Cgroup, Layout};
use crate::state;
use crate::state_file::{self, StateFileError};
use crate::{LifecycleId, Lost, Recovered, RecoveredState, SandboxId, SandboxKey, SandboxSpec};

/// Why a state file could not be read, for people.
pub(crate) fn unreadable(e: &StateFileError) -> String {
    match e {
        StateFileError::Damaged { path, reason } => format!("{} is damaged ({reason})", path.display()),
        StateFileError::Read { path, source } => format!("{} could not be read ({source})", path.display()),
    }
}

/// The spec of lifecycle `key` in `dir`: `Ok(None)` if it is missing, `Err` (why, for people) if
/// it is damaged or names another sandbox.
pub(crate) fn read_spec(dir: &Path, key: &SandboxKey) -> Result<Option<SandboxSpec>, String> {
    match state_file::read::<SandboxSpec>(dir, state::SPEC) {
        Ok(Some(spec)) if spec.key == *key => Ok(Some(spec)),
        Ok(Some(_)) => Err(format!("{} names another sandbox", dir.join(state::SPEC).display())),
        Ok(None) => Ok(None),
        Err(e) => Err(unreadable(&e)),
    }
}

/// How long the processes of an unidentified cgroup may take to die.
const KILL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A spec that knows only the sandbox's key (what was lost is unknown).
fn key_only(key: SandboxKey) -> SandboxSpec {
    SandboxSpec::new(key, Vec::new())
}

/// A lifecycle of which only the log is left.
pub(crate) fn cleaned_up(key: SandboxKey) -> Recovered {
    Recovered::new(key_only(key), SystemTime::now(), RecoveredState::CleanedUp)
}

/// A running sandbox found by what was left of it (its init, or its cgroup) after its spec was
/// lost, `why` (a sentence for people): started when the oldest process in `cgroup` did.
pub(crate) fn adopted_without_spec(key: SandboxKey, cgroup: &Cgroup, paused: bool, why: String) -> Recovered {
    tracing::warn!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, lost = %why, "re-adopted a sandbox whose state was lost");
    let started_at = cgroup.started_at().unwrap_or_else(SystemTime::now);
    let mut recovered = Recovered::new(key_only(key), started_at, RecoveredState::Running { paused });
    recovered.lost.push(Lost::State(why));
    recovered
}

/// An ended sandbox whose spec was lost (the caller says why in `lost`).
pub(crate) fn ended_without_spec(key: SandboxKey, exit: Option<crate::Exit>) -> Recovered {
    Recovered::new(key_only(key), SystemTime::now(), RecoveredState::Exited(exit))
}

/// Kills and removes the cgroup `name` under the parent, which names no sandbox. Reported (with a
/// made-up key, `unidentified-<crc>`) if it held processes; an empty one is only removed.
pub(crate) async fn kill_unidentified(layout: &Layout, name: &str) -> Option<Recovered> {
    let cgroup = layout.find(name);
    let populated = cgroup.is_populated();
    if populated {
        tracing::warn!(
            cgroup = name,
            "killing the processes of a cgroup under the parent that names no sandbox"
        );
        if let Err(e) = cgroup.kill_until_empty(KILL_TIMEOUT).await {
            tracing::error!(cgroup = name, step = e.step, error = %e.source, "processes of an unidentified cgroup left behind");
        }
    }
    remove_leftover(&cgroup, name).await;
    if !populated {
        return None;
    }
    let crc = format!("{:08x}", crate::state_file::crc32c(name.as_bytes()));
    let key = SandboxKey {
        id: SandboxId::parse(format!("unidentified-{crc}")).ok()?,
        lifecycle: LifecycleId::parse(crc).ok()?,
    };
    let mut recovered = Recovered::new(key_only(key), SystemTime::now(), RecoveredState::Exited(None));
    recovered.lost.push(Lost::Unidentified { cgroup: name.to_owned() });
    Some(recovered)
}

/// Removes a cgroup under the parent that holds nothing of a sandbox any more (an agent died
/// between a sandbox's end and the removal of its cgroup), so that it does not keep the parent.
pub(crate) async fn remove_leftover(cgroup: &Cgroup, name: &str) {
    if let Err(e) = cgroup.remove().await {
        tracing::warn!(cgroup = name, step = e.step, error = %e.source, "a leftover cgroup could not be removed");
    }
}
