//! Where the gvisor backend keeps things under its state dir, and how it names runsc containers.
//!
//! - `runsc/` ([`runsc_root`]): runsc's `--root`;
//! - `sandboxes/<id>/<lifecycle>/` (`crate::state`): `spec.json`, [`CONTAINER`] naming the runsc
//!   container that carries the lifecycle now, `exit.json`, the recorders' `exit.<container>.json`
//!   (`recorder`), the log [`LOG`], its time index [`LOG_TIMES`] and the OCI bundle [`BUNDLE`];
//! - `snapshots/<snapshot>/` ([`snapshot_dir`]): runsc's image and `snapshot.json` (`snapshot`).
//!
//! The container of a lifecycle is `<id>.<lifecycle>.<generation>` ([`container_id`]): a
//! checkpoint-and-continue moves the lifecycle into the next generation. Every path and name is
//! built from validated ids.

use std::path::{Path, PathBuf};

use crate::{LifecycleId, SandboxId, SandboxKey, SnapshotId, state_file};

/// The file naming the runsc container that currently carries a lifecycle.
pub(crate) const CONTAINER: &str = "container.json";
/// The OCI bundle directory of a lifecycle.
pub(crate) const BUNDLE: &str = "bundle";
/// The log: the sandbox's stdout and stderr, which runsc's processes write to directly.
pub(crate) const LOG: &str = "output.log";
/// The log's time index (`super::logs`).
pub(crate) const LOG_TIMES: &str = "output.times";
/// The log's name before it was [`LOG`]: a sandbox an earlier agent started still writes to it.
pub(crate) const LEGACY_LOG: &str = "log.0000000000000000";

/// runsc's `--root`.
pub(crate) fn runsc_root(state_dir: &Path) -> PathBuf {
    state_dir.join("runsc")
}

/// Where snapshots are kept.
pub(crate) fn snapshots_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("snapshots")
}

/// The directory of snapshot `id`.
pub(crate) fn snapshot_dir(state_dir: &Path, id: &SnapshotId) -> PathBuf {
    snapshots_dir(state_dir).join(id.as_str())
}

/// The log of the lifecycle whose directory is `dir`.
pub(crate) fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG)
}

/// The runsc container id of generation `generation` of a lifecycle.
pub(crate) fn container_id(key: &SandboxKey, generation: u32) -> String {
    format!("{}.{}.{generation}", key.id, key.lifecycle)
}

/// The generation of a container id made by [`container_id`].
pub(crate) fn generation_of(cid: &str) -> u32 {
    cid.rsplit_once('.').and_then(|(_, g)| g.parse().ok()).unwrap_or(0)
}

/// The sandbox a container id made by [`container_id`] (`<id>.<lifecycle>.<generation>`) stands
/// for; `None` for any other name.
pub(crate) fn key_of_container(name: &str) -> Option<SandboxKey> {
    let (rest, generation) = name.rsplit_once('.')?;
    generation.parse::<u32>().ok()?;
    let (id, lifecycle) = rest.split_once('.')?;
    Some(SandboxKey { id: SandboxId::parse(id).ok()?, lifecycle: LifecycleId::parse(lifecycle).ok()? })
}

/// The container that carries the lifecycle in `dir` now, if one was made.
pub(crate) fn read_container(dir: &Path) -> Result<Option<String>, state_file::StateFileError> {
    state_file::read(dir, CONTAINER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_carry_their_generation() {
        let key = SandboxKey {
            id: crate::SandboxId::parse("box").expect("id"),
            lifecycle: crate::LifecycleId::parse("ab").expect("lifecycle"),
        };
        assert_eq!(container_id(&key, 0), "box.ab.0");
        assert_eq!(generation_of(&container_id(&key, 7)), 7);
        assert_eq!(generation_of("no-generation"), 0);
        assert_eq!(key_of_container("box.ab.7"), Some(key));
        for other in ["box.ab", "box.ab.x", "Box.ab.0", "../x.ab.0", "not-a-sandbox"] {
            assert_eq!(key_of_container(other), None, "{other}");
        }
    }
}
