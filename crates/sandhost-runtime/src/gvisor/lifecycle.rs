//! Start (create or restore) and the end of a lifecycle (cleanup, forget), plus the state-dir paths.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::bundle::{self, BundleContext};
use super::runsc::Runsc;
use super::sandbox::{ExitSource, Sandbox};
use super::{Inner, recorder, snapshot};
use crate::process::state;
use crate::{CleanupError, Exit, SandboxKey, SandboxSpec, SnapshotId, StartError, Started};

/// The file naming the runsc container that currently carries a lifecycle.
const CONTAINER: &str = "container.json";
/// The OCI bundle directory of a lifecycle.
const BUNDLE: &str = "bundle";
/// The one log file, named like the process backend's first segment so that its state-dir removal
/// (`process::state::remove_dir`) takes it too.
const LOG: &str = "log.0000000000000000";

pub(super) fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG)
}

pub(super) fn runsc_root(state_dir: &Path) -> PathBuf {
    state_dir.join("runsc")
}

pub(super) fn sandboxes_dir(state_dir: &Path) -> PathBuf {
    state::sandboxes_dir(state_dir)
}

pub(super) fn sandbox_dir(state_dir: &Path, key: &SandboxKey) -> PathBuf {
    state::sandbox_dir(state_dir, key)
}

/// The runsc container id of generation `generation` of a lifecycle.
pub(super) fn container_id(key: &SandboxKey, generation: u32) -> String {
    format!("{}.{}.{generation}", key.id, key.lifecycle)
}

/// The generation of a container id made by [`container_id`].
pub(super) fn generation_of(cid: &str) -> u32 {
    cid.rsplit_once('.').and_then(|(_, g)| g.parse().ok()).unwrap_or(0)
}

pub(super) fn read_container(dir: &Path) -> io::Result<Option<String>> {
    state::read_json(dir, CONTAINER)
}

/// How a container comes to life.
#[derive(Debug, Clone, Copy)]
pub(super) enum Launch<'a> {
    /// `runsc create` + `runsc start`.
    Create,
    /// `runsc restore --detach` from a snapshot's image.
    Restore { snapshot: &'a SnapshotId, image: &'a Path },
}

/// Starts `spec` (from scratch, or from `spec.restore_from`).
pub(super) async fn start(inner: &Inner, spec: &SandboxSpec) -> Result<Started, StartError> {
    if !bundle::cwd_exists(spec, &inner.config.state_dir) {
        return Err(StartError::Exec {
            key: spec.key.clone(),
            command: spec.argv.first().cloned().unwrap_or_default(),
            reason: "the working directory does not exist in the sandbox".to_owned(),
        });
    }
    match &spec.restore_from {
        Some(snapshot) => snapshot::restore(inner, spec, snapshot).await,
        None => launch(inner, spec, Launch::Create).await,
    }
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
    let ctx =
        BundleContext { cid, cgroup_parent: &inner.config.cgroup_parent, state_dir: &inner.config.state_dir };
    let bundle_dir = dir.join(BUNDLE);
    bundle::write(&bundle_dir, spec, &ctx)?;
    state::write_json(dir, CONTAINER, &cid)?;
    let log_path = dir.join(LOG);
    let log: File = OpenOptions::new().create(true).append(true).open(&log_path)?;
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
    let exited = match runsc.until_running(cid, &mut child, &log_path, inner.config.start_timeout).await {
        Ok(exited) => exited,
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
    let pid = match exited {
        Some(_) => child_pid,
        None => runsc.state(cid).await.ok().flatten().map_or(child_pid, |s| s.pid),
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
    let dir = sandbox_dir(&inner.config.state_dir, key);
    if inner.get(key).is_some() || dir.exists() {
        return Err(StartError::AlreadyExists(key.clone()));
    }
    let cid = container_id(key, 0);
    let result = async {
        std::fs::create_dir_all(&dir)?;
        state::write_json(&dir, state::SPEC, spec)?;
        run_container(inner, spec, &dir, &cid, launch).await
    }
    .await;
    match result {
        Ok(launched) => {
            let sandbox = match launched.exited {
                None => Sandbox::running(key.clone(), dir, cid, launched.source, false),
                Some(exit) => {
                    if let Err(e) = state::write_json(&dir, state::EXIT, &exit) {
                        tracing::warn!(sandbox.id = %key.id, error = %e, "recording the exit failed");
                    }
                    Sandbox::exited(key.clone(), dir, cid, exit)
                }
            };
            sandbox.keep_log_bounded(inner.config.log_limit_bytes);
            inner.insert(sandbox);
            Ok(Started { pid: launched.pid, started_at: SystemTime::now() })
        }
        Err(source) => {
            discard(&inner.runsc, &inner.config.cgroup_parent, &cid, &dir).await;
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

/// Removes everything of a failed start: the container, its cgroups, the lifecycle's directory.
async fn discard(runsc: &Runsc, cgroup_parent: &str, cid: &str, dir: &Path) {
    if let Err(e) = runsc.delete(cid).await {
        tracing::warn!(container = %cid, error = %e, "deleting the container of a failed start failed");
    }
    let _ = bundle::remove_cgroups(cgroup_parent, cid);
    let _ = std::fs::remove_dir_all(dir);
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}

/// Deletes container `cid` (slow) and its cgroups.
pub(super) async fn delete_container(inner: &Inner, cid: &str) -> io::Result<()> {
    inner.runsc.delete(cid).await?;
    bundle::remove_cgroups(&inner.config.cgroup_parent, cid)
}

/// Deletes the container (waiting for the deletes of earlier generations) and the state files; keeps
/// the log.
pub(super) async fn cleanup(inner: &Inner, key: &SandboxKey) -> Result<(), CleanupError> {
    let dir = sandbox_dir(&inner.config.state_dir, key);
    let cid = match inner.get(key) {
        Some(sandbox) => {
            // `runsc delete --force` cannot stop a running sandbox in time: kill it first.
            sandbox.stop(&inner.runsc, &inner.config.cgroup_parent, None).await.map_err(|e| {
                CleanupError::Host { key: key.clone(), what: "container", source: io::Error::other(e) }
            })?;
            sandbox.join_background().await;
            sandbox.cid()
        }
        None => match read_container(&dir) {
            Ok(Some(cid)) => cid,
            _ => return Ok(()),
        },
    };
    let host = |what, source| CleanupError::Host { key: key.clone(), what, source };
    delete_container(inner, &cid).await.map_err(|e| host("container", e))?;
    for name in [state::SPEC, CONTAINER, state::EXIT, "container.json.tmp", "spec.json.tmp", "exit.json.tmp"]
    {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(host("state", e)),
            _ => {}
        }
    }
    // The recorders' exit files, one per container generation.
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if entry.file_name().to_str().is_some_and(recorder::is_exit_file) {
            match std::fs::remove_file(entry.path()) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(host("state", e)),
                _ => {}
            }
        }
    }
    match std::fs::remove_dir_all(dir.join(BUNDLE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(host("bundle", e)),
        _ => Ok(()),
    }
}

/// Cleans up, then removes the log and the directory, and forgets the sandbox.
pub(super) async fn forget(inner: &Inner, key: &SandboxKey) -> Result<(), CleanupError> {
    cleanup(inner, key).await?;
    let dir = sandbox_dir(&inner.config.state_dir, key);
    state::remove_dir(&dir).map_err(|source| CleanupError::Host {
        key: key.clone(),
        what: "state dir",
        source,
    })?;
    inner.remove(key);
    Ok(())
}

/// Removes `<hierarchy>/<parent>` everywhere it is empty.
pub(super) fn remove_cgroup_parents(parent: &str) -> io::Result<()> {
    let mut first_error = None;
    for entry in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        match std::fs::remove_dir(entry.path().join(parent)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound && e.raw_os_error() != Some(libc::ENOTDIR) => {
                first_error.get_or_insert(e);
            }
            _ => {}
        }
    }
    first_error.map_or(Ok(()), Err)
}
