//! Watching a started sandbox to its end: the exit, the end time, the cleanup, the exit record and
//! the retention of exited sandboxes.
//!
//! # Invariants
//!
//! - Each live lifecycle has exactly one supervisor task, the only code that moves a started
//!   sandbox to `Exited`: after its command has exited and its cleanup has run. So "live = 0"
//!   means nothing of ours is left on the host.
//! - An exited sandbox stays readable for the retention period, then is forgotten, with the
//!   runtime's last files.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sandhost_runtime::SandboxKey;
use tokio::sync::Notify;

use super::manager::Manager;
use super::stop::StopMode;
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
        self.finish(&key, ExitInfo { exit, reason, message }).await;
    }

    /// Records an exit, and forgets the sandbox after the retention period.
    pub(super) async fn finish(self: &Arc<Self>, key: &SandboxKey, exit: ExitInfo) {
        let reason = exit.reason;
        {
            let mut table = self.lock();
            if let Some(entry) = table.entry_mut(key) {
                entry.info.exit = Some(exit);
                entry.info.exited_at = Some(SystemTime::now());
            }
            if table.transition(key, SandboxState::Exited).is_err() {
                return;
            }
        }
        self.metrics.count_exit(reason);
        // Off the exit's critical path: the drain already saw this sandbox leave.
        if let Err(error) = self.store.remove(key) {
            tracing::warn!(sandbox.id = %key.id, error = %error, "cannot remove sandbox metadata");
        }
        let this = Arc::clone(self);
        let key = key.clone();
        tokio::spawn(async move {
            tokio::time::sleep(this.config.retention).await;
            let removed = this.lock().remove_exited(&key);
            if removed && let Err(error) = this.runtime.forget(&key).await {
                tracing::warn!(sandbox.id = %key.id, error = %error, "cannot remove the sandbox's last files");
            }
        });
    }

    pub(super) async fn wait_exited(&self, key: &SandboxKey) {
        let Some(mut receiver) = self.lock().entry(key).map(|e| e.state_tx.subscribe()) else {
            return;
        };
        // An error means the entry is gone, which also means it exited.
        let _ = receiver.wait_for(|state| *state == SandboxState::Exited).await;
    }
}
