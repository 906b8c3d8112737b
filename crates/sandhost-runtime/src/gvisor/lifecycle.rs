//! A lifecycle's container: bringing one to life (a new lifecycle, or a restore into a checkpointed
//! one), deleting it, and the end of a lifecycle (cleanup, forget), which removes this backend's
//! files (`paths`) by name.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::SystemTime;

use super::bundle::{self, BundleContext};
use super::inner::Inner;
use super::paths::{self, BUNDLE, CONTAINER, LEGACY_LOG, LOG, LOG_TIMES, read_container};
use super::recorder;
use super::runsc::Ready;
use super::sandbox::{ExitSource, Sandbox};
use crate::{CleanupError, Exit, SandboxKey, SandboxSpec, SnapshotId, StartError, Started};
use crate::{state, state_file};

/// How a container comes to life.
#[derive(Debug, Clone, Copy)]
pub(super) enum Launch<'a> {
    /// `runsc create` + `runsc start`.
    Create,
    /// `runsc restore --detach` from a snapshot's image.
    Restore { snapshot: &'a SnapshotId, image: &'a Path },
}

/// A container that came to life.
#[derive(Debug)]
pub(super) struct Launched {
    /// The host pid runsc reports (its sandbox process), or the foreground runsc's.
    pub(super) pid: i32,
    /// Where its exit comes from.
    pub(super) source: ExitSource,
    /// Set when the command already ended before it was seen running.
    pub(super) exited: Option<Exit>,
}

/// Writes the bundle of container `cid` and brings it to life with its stdio on the log.
pub(super) async fn run_container(
    inner: &Inner,
    spec: &SandboxSpec,
    dir: &Path,
    cid: &str,
    launch: Launch<'_>,
) -> io::Result<Launched> {
    let ctx = BundleContext {
        cid,
        cgroup_parent: inner.cgroups.parent(),
        state_dir: &inner.config.state_dir,
        host_paths: &inner.config.host_paths,
    };
    let bundle_dir = dir.join(BUNDLE);
    bundle::write(&bundle_dir, spec, &ctx)?;
    state_file::write(dir, CONTAINER, &cid)?;
    let log_path = paths::log_path(dir);
    let log: File = OpenOptions::new().create(true).append(true).open(&log_path)?;
    // sandhost makes the container's cgroup and sets its limits, as for the process backend, and
    // runsc joins it: runsc neither configures nor removes a cgroup that exists before it starts.
    // So the limits are enforced by the same code on both backends, and the cgroup, with the OOM
    // kills it counted, outlives the container until the cleanup has read and removed it.
    let cgroup = inner.cgroups.layout().limits_only(cid);
    cgroup.create().map_err(|e| io::Error::new(e.source.kind(), e))?;
    cgroup.set_limits(&bundle::host_limits(&spec.limits)).map_err(|e| io::Error::new(e.source.kind(), e))?;
    let runsc = &inner.runsc;
    let mut child = match launch {
        Launch::Create => {
            let args: [&OsStr; 4] = ["run".as_ref(), "--bundle".as_ref(), bundle_dir.as_ref(), cid.as_ref()];
            runsc.spawn_foreground(&args, &log, &recorder::exit_file(dir, cid))?
        }
        Launch::Restore { image, .. } => {
            let args: [&OsStr; 6] = [
                "restore".as_ref(),
                "--image-path".as_ref(),
                image.as_ref(),
                "--bundle".as_ref(),
                bundle_dir.as_ref(),
                cid.as_ref(),
            ];
            runsc.spawn_foreground(&args, &log, &recorder::exit_file(dir, cid))?
        }
    };
    let child_pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    let ready = match runsc.until_running(cid, &mut child, &log_path, inner.config.start_timeout).await {
        Ok(ready) => ready,
        Err(e) => {
            // The whole foreground group: the recorder, runsc and its gofer. Killing the recorder
            // alone orphaned a live runsc, whose sandbox `runsc delete` then could not stop. The
            // sandbox process is `--attached`: it dies with its runsc.
            if child_pid > 0 {
                let group = nix::unistd::Pid::from_raw(child_pid);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(e);
        }
    };
    // The pid the last `runsc state` gave: no second call to learn it again.
    let (pid, exited) = match ready {
        Ready::Running { pid } if pid > 0 => (pid, None),
        Ready::Running { .. } => (child_pid, None),
        Ready::Exited(exit) => (child_pid, Some(exit)),
    };
    Ok(Launched { pid, source: ExitSource::Child(child), exited })
}

/// A new lifecycle from `spec`: nothing is left behind if it fails.
pub(super) async fn launch(
    inner: &Inner,
    spec: &SandboxSpec,
    launch: Launch<'_>,
) -> Result<Started, StartError> {
    let key = &spec.key;
    let dir = state::sandbox_dir(&inner.config.state_dir, key);
    if inner.get(key).is_some() || dir.exists() {
        return Err(StartError::AlreadyExists(key.clone()));
    }
    let cid = paths::container_id(key, 0);
    let result = async {
        std::fs::create_dir_all(&dir)?;
        state_file::write(&dir, state::SPEC, spec)?;
        run_container(inner, spec, &dir, &cid, launch).await
    }
    .await;
    match result {
        Ok(launched) => {
            let sandbox = match launched.exited {
                None => Sandbox::running(key.clone(), dir, cid, launched.source, false),
                Some(exit) => {
                    if let Err(e) = state_file::write(&dir, state::EXIT, &exit) {
                        tracing::warn!(sandbox.id = %key.id, error = %e, "recording the exit failed");
                    }
                    Sandbox::exited(key.clone(), dir, cid, exit)
                }
            };
            sandbox.watch_log(inner.config.log_limit_bytes);
            inner.insert(sandbox);
            Ok(Started { pid: launched.pid, started_at: SystemTime::now(), warm: false })
        }
        Err(source) => {
            discard(inner, &cid, &dir).await;
            Err(match launch {
                // runsc's only word that the command cannot be run ("creating process: failed to
                // load /no/such: no such file or directory").
                Launch::Create if is_exec_failure(&source) => StartError::Exec {
                    key: key.clone(),
                    command: spec.argv[0].clone(),
                    reason: source.to_string(),
                },
                Launch::Create => StartError::Host { key: key.clone(), step: "runsc run", source },
                Launch::Restore { snapshot, .. } => StartError::Snapshot {
                    key: key.clone(),
                    snapshot: snapshot.clone(),
                    reason: source.to_string(),
                },
            })
        }
    }
}

/// runsc's only word that the command cannot be run: "creating process: failed to load /no/such: no
/// such file or directory", or "error finding executable \"x\" in PATH".
fn is_exec_failure(error: &io::Error) -> bool {
    let text = error.to_string();
    text.contains("failed to load") || text.contains("error finding executable")
}

/// Removes everything of a failed start: the container, its cgroups, the lifecycle's files.
pub(super) async fn discard(inner: &Inner, cid: &str, dir: &Path) {
    if let Err(e) = inner.runsc.delete(cid).await {
        tracing::warn!(container = %cid, error = %e, "deleting the container of a failed start failed");
    }
    if let Err(e) = inner.container_cgroup(cid).remove().await {
        tracing::warn!(container = %cid, step = e.step, error = %e.source, "the cgroup of a failed start was left");
    }
    if let Err((what, e)) = remove_state_files(dir).and_then(|()| remove_log_and_dir(dir)) {
        tracing::warn!(dir = %dir.display(), what, error = %e, "removing the files of a failed start failed");
    }
}

/// Deletes container `cid` (slow), then its cgroup, which sandhost made and runsc leaves.
pub(super) async fn delete_container(inner: &Inner, cid: &str) -> io::Result<()> {
    inner.runsc.delete(cid).await?;
    inner.container_cgroup(cid).remove().await.map_err(|e| io::Error::new(e.source.kind(), e))
}

/// Deletes the container (waiting for the deletes of earlier generations) and the state files; keeps
/// the log.
pub(super) async fn cleanup(inner: &Inner, key: &SandboxKey) -> Result<(), CleanupError> {
    let dir = state::sandbox_dir(&inner.config.state_dir, key);
    let cid = match inner.get(key) {
        Some(sandbox) => {
            // `runsc delete --force` cannot stop a running sandbox in time: kill it first.
            sandbox.stop(&inner.runsc, &inner.cgroups, None).await.map_err(|e| CleanupError::Host {
                key: key.clone(),
                what: "container",
                source: io::Error::other(e),
            })?;
            sandbox.join_background().await;
            sandbox.cid()
        }
        None => match read_container(&dir) {
            Ok(Some(cid)) => cid,
            // No container is named (none was made, or its name was lost): only the files.
            _ => {
                return remove_state_files(&dir).map_err(|(what, source)| CleanupError::Host {
                    key: key.clone(),
                    what,
                    source,
                });
            }
        },
    };
    let host = |what, source| CleanupError::Host { key: key.clone(), what, source };
    delete_container(inner, &cid).await.map_err(|e| host("container", e))?;
    remove_state_files(&dir).map_err(|(what, e)| host(what, e))
}

/// Cleans up, then removes the log and the directory, and forgets the sandbox.
pub(super) async fn forget(inner: &Inner, key: &SandboxKey) -> Result<(), CleanupError> {
    cleanup(inner, key).await?;
    let dir = state::sandbox_dir(&inner.config.state_dir, key);
    remove_log_and_dir(&dir).map_err(|(what, source)| CleanupError::Host {
        key: key.clone(),
        what,
        source,
    })?;
    inner.remove(key);
    Ok(())
}

/// Removes this backend's files of a lifecycle but its log: the spec, the container's name, the
/// exits and the bundle. On failure, what was left ("state", "bundle") and why.
fn remove_state_files(dir: &Path) -> Result<(), (&'static str, io::Error)> {
    state::remove_files(dir, &[state::SPEC, CONTAINER, state::EXIT]).map_err(|e| ("state", e))?;
    // The recorders' exit files, one per container generation.
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_str().is_some_and(recorder::is_exit_file) {
            state::remove_file_if_exists(&entry.path()).map_err(|e| ("state", e))?;
        }
    }
    match std::fs::remove_dir_all(dir.join(BUNDLE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(("bundle", e)),
        _ => Ok(()),
    }
}

/// Removes the log (under its name and under the one an earlier agent gave it), its time index and
/// the lifecycle's directory, once [`remove_state_files`] has emptied it.
fn remove_log_and_dir(dir: &Path) -> Result<(), (&'static str, io::Error)> {
    state::remove_files(dir, &[LOG, LEGACY_LOG, LOG_TIMES])
        .and_then(|()| state::remove_lifecycle_dir(dir))
        .map_err(|e| ("state dir", e))
}
