//! Re-adoption: the sandboxes an earlier agent left, found through the runtime, with the metadata
//! the manager persisted for them.

use std::sync::Arc;

use super::create::template_name;
use super::manager::Manager;
use super::table::Entry;
use super::{DrainPolicy, ExitInfo, ExitReason, SandboxInfo, SandboxState};
use sandhost_runtime::{RecoverError, RecoveredState, SandboxKey};

impl Manager {
    /// Adopts the sandboxes an earlier agent left (see [`Runtime::recover`]).
    ///
    /// # Errors
    ///
    /// The runtime's error when the state dir cannot be read.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, RecoverError> {
        let recovered = self.runtime.recover().await?;
        let live: Vec<SandboxKey> = recovered
            .iter()
            .filter(|r| matches!(r.state, RecoveredState::Running { .. }))
            .map(|r| r.spec.key.clone())
            .collect();
        let mut adopted = 0;
        for sandbox in recovered {
            let key = sandbox.spec.key.clone();
            let meta = self.store.load(&key);
            let state = match sandbox.state {
                RecoveredState::Running { paused: true } => SandboxState::Paused,
                RecoveredState::Running { paused: false } => SandboxState::Running,
                RecoveredState::Exited(_) => SandboxState::Stopping,
            };
            let info = SandboxInfo {
                id: key.id.clone(),
                lifecycle: key.lifecycle.clone(),
                state,
                argv: sandbox.spec.argv.clone(),
                template: meta
                    .as_ref()
                    .map_or_else(|| template_name(&sandbox.spec.template), |m| m.template.clone()),
                limits: sandbox.spec.limits,
                labels: meta.as_ref().map(|m| m.labels.clone()).unwrap_or_default(),
                drain_policy: meta.as_ref().map_or(DrainPolicy::Wait, |m| m.drain_policy),
                created_at: meta.as_ref().map_or(sandbox.started_at, |m| m.created_at),
                started_at: Some(sandbox.started_at),
                end_time: meta.as_ref().and_then(|m| m.end_time),
                exited_at: None,
                exit: None,
                restored_from: sandbox.spec.restore_from.clone(),
            };
            let entry = Entry::new(info, sandbox.spec);
            let end_changed = Arc::clone(&entry.end_changed);
            self.lock().insert(entry);
            match sandbox.state {
                RecoveredState::Running { .. } => {
                    tracing::info!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, "re-adopted a running sandbox");
                    adopted += 1;
                    tokio::spawn(Arc::clone(self).supervise(key, end_changed));
                }
                RecoveredState::Exited(exit) => {
                    tracing::info!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, "a sandbox ended while no agent ran");
                    let message = Some("ended while no agent was running".to_owned());
                    self.finish(&key, ExitInfo { exit, reason: ExitReason::Exited, message }).await;
                }
            }
        }
        self.store.retain(&live);
        Ok(adopted)
    }
}
