//! Watching a started sandbox to its end: the exit, the end time, the cleanup, the exit record and
//! the retention of exited sandboxes.
//!
//! # Invariants
//!
//! - Each live lifecycle has exactly one supervisor task, the only code that moves a started
//!   sandbox to `Exited`: after its command has exited and its cleanup has run. So "live = 0"
//!   means nothing of ours is left on the host.
//! - An exited sandbox stays readable for the retention period, counted from its exit, then is
//!   forgotten, with the runtime's last files. Its exit is persisted (`store.rs`) before it is
//!   visible, so an exit anyone saw survives a restart within the retention (`recover.rs`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sandhost_runtime::SandboxKey;
use tokio::sync::Notify;

use super::manager::Manager;
use super::stop::StopMode;
use super::store::SandboxMeta;
use super::{ExitInfo, ExitReason, SandboxState};

impl Manager {
    /// Watches one lifecycle until its command exits, stopping it at its end time; then cleans up
    /// and records the exit. The only code that moves a started sandbox to `Exited`.
    pub(super) async fn supervise(self: Arc<Self>, key: SandboxKey, end_changed: Arc<Notify>) {
        let exit = loop {
            let end_time = {
                let table = self.lock();
                table.entry(&key).filter(|e| e.stop_reason.is_none()).and_then(|e| e.info.end_time)
            };
            let until_end = end_time.map(|t| t.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO));
            let changed = end_changed.notified();
            tokio::select! {
                exit = self.runtime.wait(&key) => break exit,
                () = crate::sleep_or_forever(until_end) => {
                    // begin_stop records the reason at once, so the timer is not armed again.
                    if let Some(stop) = self.begin_stop(&key, ExitReason::Timeout, StopMode::Graceful) {
                        let this = Arc::clone(&self);
                        tokio::spawn(async move {
                            if let Err(error) = this.execute_stop(stop).await {
                                tracing::error!(error = %error, "stopping a sandbox at its end time failed");
                            }
                        });
                    }
                }
                () = changed => {}
            }
        };
        // Read before the cleanup removes the cgroup that counts them.
        let oom_killed = self.runtime.oom_kills(&key).map(|kills| kills > 0);
        let exit = match exit {
            Ok(exit) => Some(exit),
            Err(error) => {
                tracing::error!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, error = %error, "waiting for the sandbox failed");
                None
            }
        };
        let mut message = None;
        if let Err(error) = self.runtime.cleanup(&key).await {
            tracing::error!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, error = %error, "sandbox cleanup failed");
            message = Some(error.to_string());
        }
        let reason = {
            let table = self.lock();
            table.entry(&key).and_then(|e| e.stop_reason).unwrap_or(ExitReason::Exited)
        };
        if oom_killed == Some(true) {
            tracing::info!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, "the kernel's OOM killer killed a process of the sandbox");
        }
        self.finish(&key, ExitInfo { exit, reason, message, oom_killed }).await;
    }

    /// Records an exit: first in the store (durably: a restart shows it, see `recover.rs`), then
    /// in the table, where `Wait`, the drain and the API see it; then forgets the sandbox when its
    /// retention ends.
    pub(super) async fn finish(self: &Arc<Self>, key: &SandboxKey, exit: ExitInfo) {
        let reason = exit.reason;
        let exited_at = SystemTime::now();
        let Some(mut record) = self.lock().entry(key).map(|e| e.info.clone()) else {
            return;
        };
        record.exit = Some(exit.clone());
        record.exited_at = Some(exited_at);
        // On the blocking pool: a durable write waits for the disk (two fsyncs).
        let this = Arc::clone(self);
        let saved =
            tokio::task::spawn_blocking(move || this.store.save(&SandboxMeta::from_entry(&record))).await;
        if let Err(error) = saved.map_err(std::io::Error::other).and_then(|saved| saved) {
            tracing::warn!(sandbox.id = %key.id, error = %error, "cannot persist the sandbox's exit");
        }
        {
            let mut table = self.lock();
            if let Some(entry) = table.entry_mut(key) {
                entry.info.exit = Some(exit);
                entry.info.exited_at = Some(exited_at);
            }
            if table.transition(key, SandboxState::Exited).is_err() {
                return;
            }
        }
        self.metrics.count_exit(reason);
        self.forget_after_retention(key.clone(), exited_at);
    }

    /// Forgets a lifecycle that exited at `exited_at` once its retention has passed (counted from
    /// the exit, so a restart does not extend it).
    pub(super) fn forget_after_retention(self: &Arc<Self>, key: SandboxKey, exited_at: SystemTime) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(this.retention_left(exited_at)).await;
            this.forget(&key).await;
        });
    }

    /// Removes an exited lifecycle: from the table (unless a later lifecycle of its id replaced
    /// it), the runtime's last files (its log), then its record. A failure keeps the record, so
    /// that the next agent tries again.
    pub(super) async fn forget(&self, key: &SandboxKey) {
        self.lock().remove_exited(key);
        if let Err(error) = self.runtime.forget(key).await {
            tracing::warn!(sandbox.id = %key.id, error = %error, "cannot remove the sandbox's last files");
            return;
        }
        if let Err(error) = self.store.remove(key) {
            tracing::warn!(sandbox.id = %key.id, error = %error, "cannot remove the sandbox's record");
        }
    }

    pub(super) async fn wait_exited(&self, key: &SandboxKey) {
        let Some(mut receiver) = self.lock().entry(key).map(|e| e.state_tx.subscribe()) else {
            return;
        };
        // An error means the entry is gone, which also means it exited.
        let _ = receiver.wait_for(|state| *state == SandboxState::Exited).await;
    }
}
