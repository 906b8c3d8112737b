//! The [`Runtime`] implementation of the fake: each method records its call, applies the script
//! for its [`Op`], then acts on the in-memory sandboxes.

use std::io;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{Call, FAKE_BACKEND, FakeRuntime, Op, Sandbox, StopBehaviour};
use crate::{
    CheckpointError, CleanupError, CloseError, ControlError, Exit, LogChunk, LogsError, RecoverError,
    Recovered, RecoveredState, Runtime, SandboxKey, SandboxSpec, SnapshotId, SnapshotInfo, StartError,
    Started, StopError, WaitError,
};

/// The error a real backend gives when a cgroup still has processes.
fn busy(key: &SandboxKey) -> CleanupError {
    CleanupError::Host {
        key: key.clone(),
        what: "cgroup",
        source: io::Error::new(io::ErrorKind::ResourceBusy, "the sandbox still runs"),
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        FAKE_BACKEND
    }

    fn can_checkpoint(&self) -> bool {
        self.shared.can_checkpoint
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<Started, StartError> {
        let key = &spec.key;
        self.record(Call::Start(key.clone()));
        self.start_gate().await;
        self.scripted(Op::Start).await.map_err(|failure| StartError::Host {
            key: key.clone(),
            step: "scripted",
            source: failure.io(),
        })?;
        let started = self.start_now(spec);
        self.bump();
        started
    }

    async fn wait(&self, key: &SandboxKey) -> Result<Exit, WaitError> {
        self.record(Call::Wait(key.clone()));
        self.scripted(Op::Wait)
            .await
            .map_err(|failure| WaitError::Host { key: key.clone(), source: failure.io() })?;
        let mut exit = self.exit_watch(key).ok_or_else(|| WaitError::NotFound(key.clone()))?;
        // Err: the sandbox was forgotten while we waited.
        let exited = exit.wait_for(Option::is_some).await.map(|exit| *exit);
        match exited {
            Ok(Some(exit)) => Ok(exit),
            Ok(None) | Err(_) => Err(WaitError::NotFound(key.clone())),
        }
    }

    async fn stop(&self, key: &SandboxKey, grace: Duration) -> Result<(), StopError> {
        self.record(Call::Stop { key: key.clone(), grace });
        self.scripted(Op::Stop).await.map_err(|failure| StopError::Host {
            key: key.clone(),
            step: "scripted",
            source: failure.io(),
        })?;
        let behaviour = self.lock().stop_behaviours.get(key).copied().unwrap_or_default();
        match behaviour {
            StopBehaviour::ExitsOnTerm(exit) => self.end(key, exit),
            StopBehaviour::IgnoresTerm => {
                let Some(mut exit) = self.exit_watch(key) else {
                    return Ok(());
                };
                tokio::select! {
                    _ = exit.wait_for(Option::is_some) => {}
                    () = tokio::time::sleep(grace) => self.end(key, Exit::Signal(libc::SIGKILL)),
                }
            }
        }
        Ok(())
    }

    async fn kill(&self, key: &SandboxKey) -> Result<(), StopError> {
        self.record(Call::Kill(key.clone()));
        self.scripted(Op::Kill).await.map_err(|failure| StopError::Host {
            key: key.clone(),
            step: "scripted",
            source: failure.io(),
        })?;
        self.end(key, Exit::Signal(libc::SIGKILL));
        Ok(())
    }

    async fn pause(&self, key: &SandboxKey) -> Result<(), ControlError> {
        self.record(Call::Pause(key.clone()));
        self.scripted(Op::Pause).await.map_err(|failure| ControlError::Host {
            key: key.clone(),
            step: "scripted",
            source: failure.io(),
        })?;
        self.control(key, true)
    }

    async fn resume(&self, key: &SandboxKey) -> Result<(), ControlError> {
        self.record(Call::Resume(key.clone()));
        self.scripted(Op::Resume).await.map_err(|failure| ControlError::Host {
            key: key.clone(),
            step: "scripted",
            source: failure.io(),
        })?;
        self.control(key, false)
    }

    async fn read_logs(&self, key: &SandboxKey, offset: u64, max: usize) -> Result<LogChunk, LogsError> {
        self.record(Call::ReadLogs { key: key.clone(), offset, max });
        let state = self.lock();
        let sandbox = state.sandboxes.get(key).ok_or_else(|| LogsError::NotFound(key.clone()))?;
        let log = &sandbox.log;
        let start = usize::try_from(offset).map_or(log.len(), |offset| offset.min(log.len()));
        let end = start.saturating_add(max).min(log.len());
        let data = log[start..end].to_vec();
        let next_offset = start as u64 + data.len() as u64;
        Ok(LogChunk { data, next_offset, dropped: 0 })
    }

    async fn log_offset_at(&self, key: &SandboxKey, since: SystemTime) -> Result<u64, LogsError> {
        self.record(Call::LogOffsetAt { key: key.clone(), since });
        let state = self.lock();
        let sandbox = state.sandboxes.get(key).ok_or_else(|| LogsError::NotFound(key.clone()))?;
        // Exact: the end of the last write made before `since`.
        Ok(sandbox.log_writes.iter().take_while(|(_, at)| *at < since).last().map_or(0, |(end, _)| *end))
    }

    async fn cleanup(&self, key: &SandboxKey) -> Result<(), CleanupError> {
        self.record(Call::Cleanup(key.clone()));
        self.scripted(Op::Cleanup).await.map_err(|failure| CleanupError::Host {
            key: key.clone(),
            what: "scripted",
            source: failure.io(),
        })?;
        let mut state = self.lock();
        match state.sandboxes.get_mut(key) {
            Some(sandbox) if sandbox.is_running() => Err(busy(key)),
            Some(sandbox) => {
                sandbox.cleaned_up = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn forget(&self, key: &SandboxKey) -> Result<(), CleanupError> {
        self.record(Call::Forget(key.clone()));
        let mut state = self.lock();
        if state.sandboxes.get(key).is_some_and(Sandbox::is_running) {
            return Err(busy(key));
        }
        // Dropping the sandbox drops its exit sender: pending waits end with NotFound.
        state.sandboxes.remove(key);
        state.stop_behaviours.remove(key);
        Ok(())
    }

    async fn recover(&self) -> Result<Vec<Recovered>, RecoverError> {
        self.record(Call::Recover);
        let mut state = self.lock();
        let recovered = state.recoverable.clone();
        for found in &recovered {
            let RecoveredState::Running { paused } = found.state else {
                continue;
            };
            if state.sandboxes.contains_key(&found.spec.key) {
                continue;
            }
            let pid = state.next_pid;
            state.next_pid += 1;
            let mut sandbox = Sandbox::new(found.spec.clone(), pid);
            sandbox.paused = paused;
            state.sandboxes.insert(found.spec.key.clone(), sandbox);
        }
        Ok(recovered)
    }

    async fn checkpoint(
        &self,
        key: &SandboxKey,
        snapshot: &SnapshotId,
        stop: bool,
    ) -> Result<SnapshotInfo, CheckpointError> {
        self.record(Call::Checkpoint { key: key.clone(), snapshot: snapshot.clone(), stop });
        self.snapshot_support()?;
        self.scripted(Op::Checkpoint)
            .await
            .map_err(|failure| CheckpointError::Host { step: "scripted", source: failure.io() })?;
        let info = {
            let mut state = self.lock();
            let sandbox = match state.sandboxes.get(key) {
                Some(sandbox) if sandbox.is_running() => sandbox,
                _ => return Err(CheckpointError::NotFound(key.clone())),
            };
            if state.snapshots.iter().any(|existing| existing.id == *snapshot) {
                return Err(CheckpointError::SnapshotExists(snapshot.clone()));
            }
            // The "size" of a fake snapshot is the size of the sandbox's log: something to compare.
            let info = SnapshotInfo {
                id: snapshot.clone(),
                source: sandbox.spec.key.id.clone(),
                created_at: SystemTime::now(),
                size_bytes: sandbox.log.len() as u64,
            };
            state.snapshots.push(info.clone());
            info
        };
        if stop {
            self.end(key, Exit::Signal(libc::SIGKILL));
        } else if let Some(sandbox) = self.lock().sandboxes.get_mut(key) {
            // As on gvisor: a checkpoint thaws a paused sandbox, and it runs on.
            sandbox.paused = false;
        }
        Ok(info)
    }

    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, CheckpointError> {
        self.record(Call::ListSnapshots);
        self.snapshot_support()?;
        Ok(self.lock().snapshots.clone())
    }

    async fn delete_snapshot(&self, snapshot: &SnapshotId) -> Result<(), CheckpointError> {
        self.record(Call::DeleteSnapshot(snapshot.clone()));
        self.snapshot_support()?;
        let mut state = self.lock();
        let before = state.snapshots.len();
        state.snapshots.retain(|info| info.id != *snapshot);
        if state.snapshots.len() == before {
            return Err(CheckpointError::SnapshotNotFound(snapshot.clone()));
        }
        Ok(())
    }

    fn oom_kills(&self, key: &SandboxKey) -> Option<u64> {
        Some(self.lock().oom_kills.get(key).copied().unwrap_or(0))
    }

    async fn close(&self) -> Result<(), CloseError> {
        self.record(Call::Close);
        Ok(())
    }
}
