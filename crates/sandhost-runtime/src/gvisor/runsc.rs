//! The `runsc` command line, as this backend drives it: every call names the private `--root`, the
//! platform and `--network=none`. Only runsc's own client commands have their output read (state,
//! wait, errors); a container's stdio always goes to a file, never to a pipe we read (a detached
//! sandbox would hold the pipe open forever).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::{Child, Command};

use super::recorder::EXIT_RECORDER_SUBCOMMAND;
use crate::Exit;
use crate::fswatch::FsWatch;

/// How often [`Runsc::until_running`] asks runsc without an event from its root (none came, or the
/// root cannot be watched): each `runsc state` costs 20 to 25 ms of CPU.
const READY_FALLBACK: Duration = Duration::from_millis(100);

/// The bound of a runsc client call that only asks the sandbox something (state, kill).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to call runsc.
#[derive(Debug, Clone)]
pub(crate) struct Runsc {
    pub(crate) bin: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) platform: String,
    /// The `sandhost` binary that runs the foreground runsc under the exit recorder, if any.
    pub(crate) recorder: Option<PathBuf>,
}

/// How a start ended its wait: see [`Runsc::until_running`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// The container runs; runsc's `pid` of it (0 if it gave none).
    Running { pid: i32 },
    /// Its command has already ended.
    Exited(Exit),
}

/// Waits for a change to a file of container `cid` in the watched root; never, without a watch.
async fn changed_for(watch: Option<&FsWatch>, cid: &str) -> io::Result<()> {
    match watch {
        Some(watch) => watch.changed_named(cid).await,
        None => std::future::pending().await,
    }
}

/// The part of `runsc state` we use.
#[derive(Debug, Deserialize)]
pub(crate) struct ContainerState {
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) pid: i32,
}

#[derive(Debug, Deserialize)]
struct WaitResult {
    #[serde(rename = "exitStatus")]
    exit_status: i32,
}

impl Runsc {
    /// The flags every call gives before its verb.
    fn global_args(&self) -> [std::ffi::OsString; 4] {
        [
            "--root".into(),
            self.root.clone().into_os_string(),
            format!("--platform={}", self.platform).into(),
            "--network=none".into(),
        ]
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args(self.global_args())
            .stdin(Stdio::null())
            // Not in the agent's process group: a terminal's Ctrl-C to the agent must not reach
            // runsc (which would forward it into the sandbox, or abort a checkpoint half way).
            .process_group(0)
            .kill_on_drop(true);
        command
    }

    /// Runs a client command to completion; its stdout, or an error carrying its stderr.
    async fn output(&self, args: &[&OsStr]) -> io::Result<Vec<u8>> {
        let out = self.command().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).output().await?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let verb = args.first().map(|a| a.to_string_lossy().into_owned()).unwrap_or_default();
            Err(io::Error::other(format!("runsc {verb}: {}", stderr.trim())))
        }
    }

    /// Spawns `runsc run` or `runsc restore` in the foreground: the child lives as long as the
    /// container and exits with its status (only the parent of a sandbox can learn it: runsc's own
    /// `wait` cannot once the sandbox is gone). Its stdio, inherited by the sandbox, is the log.
    /// Not killed when dropped: the sandbox outlives the agent. With a recorder, runsc runs as the
    /// recorder's child, which writes the exit to `exit_file` (see `recorder`) and exits alike.
    pub(crate) fn spawn_foreground(
        &self,
        args: &[&OsStr],
        log: &File,
        exit_file: &Path,
    ) -> io::Result<Child> {
        let mut command = match &self.recorder {
            Some(sandhost) => {
                let mut command = Command::new(sandhost);
                command
                    .arg(EXIT_RECORDER_SUBCOMMAND)
                    .arg(exit_file)
                    .arg(&self.bin)
                    .args(self.global_args())
                    .stdin(Stdio::null())
                    .process_group(0);
                command
            }
            None => self.command(),
        };
        command
            .kill_on_drop(false)
            .args(args)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log.try_clone()?));
        command.spawn()
    }

    /// Waits until container `cid` runs (`Ok(Ready::Running)` with the pid runsc gave), or until
    /// `child` (its foreground runsc) has exited (`Ok(Ready::Exited)`: the command ended that
    /// fast). runsc's own failures (exit status 128, or a signal) are an error carrying the end of
    /// the log.
    pub(crate) async fn until_running(
        &self,
        cid: &str,
        child: &mut Child,
        log_path: &Path,
        limit: Duration,
    ) -> io::Result<Ready> {
        let deadline = tokio::time::Instant::now() + limit;
        // runsc says nothing when a container runs, but it writes the container's state file in
        // its root (`<cid>_sandbox:<cid>.state`) as the state changes: runsc is asked only when a
        // file of this container's changed, and at a slow fallback pace in case an event is missed.
        let watch = FsWatch::new(&self.root).ok();
        loop {
            tokio::select! {
                status = child.wait() => {
                    let status = status?;
                    return match status.code() {
                        Some(code) if code != 128 => Ok(Ready::Exited(Exit::from_shell_code(code))),
                        _ => {
                            let text = std::fs::read(log_path).unwrap_or_default();
                            let tail = String::from_utf8_lossy(&text[text.len().saturating_sub(400)..]).trim().to_owned();
                            Err(io::Error::other(format!("runsc exited with {status}: {tail}")))
                        }
                    };
                }
                changed = changed_for(watch.as_ref(), cid) => changed?,
                () = tokio::time::sleep(READY_FALLBACK) => {}
            }
            // The deadline first: whether a start counts as timed out must not depend on when this
            // task happened to be polled.
            if tokio::time::Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the container did not start in time"));
            }
            if let Some(state) = self.state(cid).await?
                && state.status == "running"
            {
                return Ok(Ready::Running { pid: state.pid });
            }
        }
    }

    pub(crate) async fn run(&self, args: &[&OsStr]) -> io::Result<()> {
        self.output(args).await.map(drop)
    }

    /// `runsc state`; `Ok(None)` when runsc does not know the container, or not yet: while `runsc
    /// run` creates it, its metadata can exist a moment before its state file ("loading container:
    /// ... no such file or directory").
    pub(crate) async fn state(&self, cid: &str) -> io::Result<Option<ContainerState>> {
        let asked = tokio::time::timeout(CLIENT_TIMEOUT, self.output(&["state".as_ref(), cid.as_ref()]))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "runsc state did not answer")));
        match asked {
            Ok(out) => serde_json::from_slice(&out).map(Some).map_err(io::Error::other),
            Err(e) if e.to_string().contains("does not exist") => Ok(None),
            Err(e)
                if e.to_string().contains("loading container") && e.to_string().contains("no such file") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The ids of every container in our root.
    pub(crate) async fn list(&self) -> io::Result<Vec<String>> {
        let out = self.output(&["list".as_ref(), "-quiet".as_ref()]).await?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// `runsc wait`, for a container whose foreground runsc is not our child (re-adopted): blocks (in runsc, on the sandbox's control socket) until the container stops.
    pub(crate) async fn wait_attached(&self, cid: &str) -> io::Result<Exit> {
        let out = self.output(&["wait".as_ref(), cid.as_ref()]).await?;
        let result: WaitResult = serde_json::from_slice(&out).map_err(io::Error::other)?;
        Ok(Exit::from_shell_code(result.exit_status))
    }

    /// `runsc kill [--all] CID SIGNAL`.
    pub(crate) async fn kill(&self, cid: &str, signal: &str, all: bool) -> io::Result<()> {
        let mut args: Vec<&OsStr> = vec!["kill".as_ref()];
        if all {
            args.push("--all".as_ref());
        }
        args.extend([OsStr::new(cid), OsStr::new(signal)]);
        // A sandbox that cannot answer (frozen, wedged) must not hang a stop: the call is bounded
        // (runsc is killed when dropped).
        tokio::time::timeout(CLIENT_TIMEOUT, self.run(&args))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "runsc kill did not answer"))?
    }

    /// `runsc delete --force`: slow (over a second); idempotent here (an unknown id is fine).
    pub(crate) async fn delete(&self, cid: &str) -> io::Result<()> {
        match self.run(&["delete".as_ref(), "--force".as_ref(), cid.as_ref()]).await {
            Err(e) if e.to_string().contains("does not exist") => Ok(()),
            other => other,
        }
    }
}
