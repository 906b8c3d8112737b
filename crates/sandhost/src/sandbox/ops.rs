//! The operations on existing sandboxes: read, delete, pause, resume, update, wait, logs, and
//! snapshots.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream;
use sandhost_runtime::{ControlError, SandboxKey, SnapshotId, SnapshotInfo};

use super::manager::{Manager, run_to_end};
use super::stop::StopMode;
use super::store::SandboxMeta;
use super::{ExitReason, ListFilter, SandboxError, SandboxInfo, SandboxState, UpdateRequest, validate};
use super::{LogPiece, LogStream};

/// Bytes per log read.
const LOG_CHUNK: usize = 64 * 1024;
/// How often a follower looks for new log bytes when the runtime cannot tell it of them (no
/// inotify instance left, say). Otherwise a write to the log and the exit are events.
const LOG_FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

impl Manager {
    fn key_of(&self, id: &str) -> Result<(SandboxKey, SandboxState), SandboxError> {
        let table = self.lock();
        let entry = table.find(id)?;
        Ok((entry.spec.key.clone(), entry.info.state))
    }

    pub(crate) fn get(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        Ok(self.lock().find(id)?.info.clone())
    }

    pub(crate) fn list(&self, filter: &ListFilter) -> Vec<SandboxInfo> {
        let table = self.lock();
        let mut list: Vec<&SandboxInfo> = table
            .sandboxes
            .values()
            .map(|e| &e.info)
            .filter(|info| filter.after.as_ref().is_none_or(|after| info.id > *after))
            .filter(|info| filter.state.is_none_or(|s| s == info.state))
            .filter(|info| filter.labels.iter().all(|(k, v)| info.labels.get(k) == Some(v)))
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list.into_iter().take(filter.limit).cloned().collect()
    }

    pub(crate) async fn delete(self: &Arc<Self>, id: &str, now: bool) -> Result<SandboxInfo, SandboxError> {
        let (key, _) = self.key_of(id)?;
        let mode = if now { StopMode::Now } else { StopMode::Graceful };
        self.stop_lifecycle(&key, ExitReason::Killed, mode).await?;
        self.wait_exited(&key).await;
        self.get(id)
    }

    pub(crate) async fn pause(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        self.change_freezing(id, Freezing::Pause).await
    }

    pub(crate) async fn resume(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        self.change_freezing(id, Freezing::Resume).await
    }

    /// Pauses or resumes: idempotent when the sandbox is already where the change leads.
    async fn change_freezing(&self, id: &str, change: Freezing) -> Result<SandboxInfo, SandboxError> {
        let (from, to, op) = match change {
            Freezing::Pause => (SandboxState::Running, SandboxState::Paused, "pause"),
            Freezing::Resume => (SandboxState::Paused, SandboxState::Running, "resume"),
        };
        let (key, state) = self.key_of(id)?;
        if state == to {
            return self.get(id);
        }
        if state != from {
            return Err(SandboxError::WrongState { id: key.id, state, op });
        }
        let done = match change {
            Freezing::Pause => self.runtime.pause(&key).await,
            Freezing::Resume => self.runtime.resume(&key).await,
        };
        done.map_err(|e| match e {
            // It ended between the check above and the runtime's call: its supervisor is about to
            // record the exit. The caller's precondition failed; nothing of the host did.
            ControlError::NotRunning(_) | ControlError::NotFound(_) => {
                SandboxError::WrongState { id: key.id.clone(), state: SandboxState::Exited, op }
            }
            other => SandboxError::Runtime { id: key.id.clone(), op, source: Box::new(other) },
        })?;
        let mut table = self.lock();
        // A stop that began meanwhile wins; the sandbox is then Stopping, which is what we report.
        let _ = table.transition(&key, to);
        Ok(table.find(id)?.info.clone())
    }

    pub(crate) fn update(
        self: &Arc<Self>,
        id: &str,
        request: UpdateRequest,
    ) -> Result<SandboxInfo, SandboxError> {
        if let Some(labels) = &request.labels {
            validate::labels(labels)?;
        }
        let timeout = request.end.map(|end| validate::timeout(end.field(), end.from_now())).transpose()?;
        let mut table = self.lock();
        let entry = table.find(id)?;
        let key = entry.spec.key.clone();
        if !entry.info.state.is_live() {
            return Err(SandboxError::WrongState { id: key.id, state: entry.info.state, op: "update" });
        }
        let entry = table.sandboxes.get_mut(&key.id).ok_or_else(|| SandboxError::NotFound(id.to_owned()))?;
        if let Some(timeout) = timeout {
            entry.info.end_time = Some(SystemTime::now() + timeout);
            entry.end_changed.notify_one();
        }
        if let Some(labels) = request.labels {
            entry.info.labels = labels;
        }
        let info = entry.info.clone();
        drop(table);
        if let Err(error) = self.store.save(&SandboxMeta::from_entry(&info)) {
            tracing::warn!(sandbox.id = %info.id, error = %error, "cannot persist sandbox metadata");
        }
        Ok(info)
    }

    pub(crate) async fn wait(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let (key, _) = self.key_of(id)?;
        self.wait_exited(&key).await;
        self.get(id)
    }

    /// The log of `id`, from its start or from `since` (see [`crate::node::Node::logs`]). The
    /// offset for `since` is asked of the runtime at the stream's first read, after a `since` in
    /// the future has come (with `follow`; without, the stream is empty).
    pub(crate) fn logs(
        self: &Arc<Self>,
        id: &str,
        follow: bool,
        since: Option<SystemTime>,
    ) -> Result<LogStream, SandboxError> {
        let (key, _) = self.key_of(id)?;
        let this = Arc::clone(self);
        let state = (this, key, None, false);
        let stream = stream::unfold(state, move |(this, key, offset, done)| async move {
            if done {
                return None;
            }
            let offset = match offset {
                Some(offset) => offset,
                None => match this.log_start(&key, follow, since).await {
                    Ok(Some(offset)) => offset,
                    Ok(None) => return None,
                    Err(error) => return Some((Err(error), (this, key, None, true))),
                },
            };
            loop {
                let chunk = match this.runtime.read_logs(&key, offset, LOG_CHUNK).await {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        let error =
                            SandboxError::Runtime { id: key.id.clone(), op: "logs", source: Box::new(e) };
                        return Some((Err(error), (this, key, Some(offset), true)));
                    }
                };
                if !chunk.data.is_empty() {
                    let next = chunk.next_offset;
                    let piece = LogPiece { data: chunk.data, dropped: chunk.dropped };
                    return Some((Ok(piece), (this, key, Some(next), false)));
                }
                if !follow || this.is_exited(&key) {
                    // One last read after the exit was seen catches what was written before it.
                    let last = this.runtime.read_logs(&key, chunk.next_offset, LOG_CHUNK).await.ok()?;
                    let piece = LogPiece { data: last.data, dropped: chunk.dropped + last.dropped };
                    return (!piece.data.is_empty())
                        .then(|| (Ok(piece), (this, key, Some(last.next_offset), true)));
                }
                let grown = async {
                    if let Err(e) = this.runtime.log_grown(&key, chunk.next_offset).await {
                        tracing::debug!(sandbox.id = %key.id, error = %e, "no log event; reading at an interval");
                        tokio::time::sleep(LOG_FOLLOW_INTERVAL).await;
                    }
                };
                tokio::select! {
                    () = this.wait_exited(&key) => {}
                    () = grown => {}
                }
            }
        });
        Ok(Box::pin(stream))
    }

    /// Where a read of the log starts: 0, or the runtime's offset for `since`. `None` when nothing
    /// can come: a `since` in the future without `follow`, or one the sandbox exits before. With
    /// `follow`, a `since` in the future is waited for (on the time of day, checked again at each
    /// wake: the clock may be set meanwhile).
    async fn log_start(
        &self,
        key: &SandboxKey,
        follow: bool,
        since: Option<SystemTime>,
    ) -> Result<Option<u64>, SandboxError> {
        let Some(since) = since else {
            return Ok(Some(0));
        };
        while let Ok(left) = since.duration_since(SystemTime::now()) {
            if !follow {
                return Ok(None);
            }
            tokio::select! {
                () = self.wait_exited(key) => return Ok(None),
                () = tokio::time::sleep(left.max(Duration::from_millis(1))) => {}
            }
        }
        match self.runtime.log_offset_at(key, since).await {
            Ok(offset) => Ok(Some(offset)),
            Err(e) => Err(SandboxError::Runtime { id: key.id.clone(), op: "logs", source: Box::new(e) }),
        }
    }

    fn is_exited(&self, key: &SandboxKey) -> bool {
        self.lock().entry(key).is_none_or(|e| e.info.state == SandboxState::Exited)
    }

    pub(crate) async fn checkpoint(
        self: &Arc<Self>,
        id: &str,
        stop: bool,
    ) -> Result<SnapshotInfo, SandboxError> {
        validate::sandbox_id("id", id)?;
        if !self.runtime.can_checkpoint() {
            return Err(SandboxError::NotSupported { backend: self.runtime.name(), what: "checkpoint" });
        }
        let (key, state) = self.key_of(id)?;
        if !matches!(state, SandboxState::Running | SandboxState::Paused) {
            return Err(SandboxError::WrongState { id: key.id, state, op: "checkpoint" });
        }
        // Checkpoint-and-continue keeps a sandbox running across the operation: it holds one
        // admission permit for the whole of it, so a drain waits for it and never rejects its
        // internal restart. Checkpoint-and-stop only ends work, and is allowed while draining.
        let permit = if stop {
            None
        } else {
            let permit = self
                .admission
                .enter()
                .map_err(|refused| SandboxError::NotAdmitting { status: refused.status })?;
            Some(permit)
        };
        // A checkpoint runs to its end in a task of its own, holding the permit, even if the
        // caller goes away (a half-done checkpoint cannot be undone; the runtime finishes it).
        let this = Arc::clone(self);
        run_to_end(async move {
            let _permit = permit;
            let snapshot = snapshot_id_for(&key);
            let info = this.runtime.checkpoint(&key, &snapshot, stop).await;
            if !stop && state == SandboxState::Paused {
                this.pause_again(&key).await;
            }
            let info = info.map_err(SandboxError::Checkpoint)?;
            if stop {
                this.stop_lifecycle(&key, ExitReason::Checkpointed, StopMode::Now).await?;
                this.wait_exited(&key).await;
            }
            Ok(info)
        })
        .await?
    }

    /// Pauses a sandbox that was paused before a checkpoint-and-continue thawed it: the table first
    /// says what it is (running), then it is paused as a Pause call would, so that the table follows
    /// the runtime whatever happens meanwhile (a Resume, a stop, a pause that fails).
    async fn pause_again(&self, key: &SandboxKey) {
        if self.lock().transition(key, SandboxState::Running).is_err() {
            return; // a stop began meanwhile, or it ended: that wins
        }
        if let Err(e) = self.change_freezing(key.id.as_str(), Freezing::Pause).await {
            tracing::warn!(sandbox.id = %key.id, error = %e, "pausing again after a checkpoint failed; it runs");
        }
    }

    /// Checkpoints a sandbox and stops it (the drain's evacuation). Returns the snapshot's id.
    ///
    /// # Errors
    ///
    /// The checkpoint's or the stop's error; the sandbox is then still live.
    pub async fn evacuate(self: &Arc<Self>, key: &SandboxKey) -> Result<String, SandboxError> {
        let snapshot = snapshot_id_for(key);
        let info = self.runtime.checkpoint(key, &snapshot, true).await.map_err(SandboxError::Checkpoint)?;
        self.stop_lifecycle(key, ExitReason::Checkpointed, StopMode::Now).await?;
        Ok(info.id.to_string())
    }

    pub(crate) async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, SandboxError> {
        if !self.runtime.can_checkpoint() {
            return Ok(Vec::new());
        }
        self.runtime.list_snapshots().await.map_err(SandboxError::Checkpoint)
    }

    pub(crate) async fn delete_snapshot(&self, id: &str) -> Result<(), SandboxError> {
        let snapshot = validate::snapshot_id("id", id)?;
        if !self.runtime.can_checkpoint() {
            return Err(SandboxError::NotSupported { backend: self.runtime.name(), what: "snapshots" });
        }
        self.runtime.delete_snapshot(&snapshot).await.map_err(SandboxError::Checkpoint)
    }
}

/// What [`Manager::change_freezing`] does.
#[derive(Debug, Clone, Copy)]
enum Freezing {
    /// Freeze a running sandbox.
    Pause,
    /// Thaw a paused one.
    Resume,
}

/// `<sandbox id>-<lifecycle id prefix>-<unix millis>`, cut to a valid id.
fn snapshot_id_for(key: &SandboxKey) -> SnapshotId {
    let millis = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let id: String = key.id.as_str().chars().take(40).collect();
    let lifecycle: String = key.lifecycle.as_str().chars().take(6).collect();
    SnapshotId::parse(format!("{id}-{lifecycle}-{millis:x}"))
        .unwrap_or_else(|_| unreachable!("built from valid parts"))
}
