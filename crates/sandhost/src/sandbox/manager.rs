//! The sandbox manager (being written).
#![allow(clippy::unused_async, unused_variables, missing_docs)]

use sandhost_runtime::SnapshotInfo;

use super::{CreateError, CreateRequest, ListFilter, SandboxError, SandboxInfo, SandboxState, UpdateRequest};
use crate::node::{LogStream, Resources};

/// The sandbox manager.
#[derive(Debug)]
pub struct Manager {}

impl Manager {
    pub(crate) async fn create(&self, request: CreateRequest) -> Result<SandboxInfo, CreateError> { todo!() }
    pub(crate) fn get(&self, id: &str) -> Result<SandboxInfo, SandboxError> { todo!() }
    pub(crate) fn list(&self, filter: &ListFilter) -> Vec<SandboxInfo> { todo!() }
    pub(crate) async fn delete(&self, id: &str, now: bool) -> Result<SandboxInfo, SandboxError> { todo!() }
    pub(crate) async fn pause(&self, id: &str) -> Result<SandboxInfo, SandboxError> { todo!() }
    pub(crate) async fn resume(&self, id: &str) -> Result<SandboxInfo, SandboxError> { todo!() }
    pub(crate) fn update(&self, id: &str, request: UpdateRequest) -> Result<SandboxInfo, SandboxError> { todo!() }
    pub(crate) async fn wait(&self, id: &str) -> Result<SandboxInfo, SandboxError> { todo!() }
    pub(crate) fn logs(&self, id: &str, follow: bool) -> Result<LogStream, SandboxError> { todo!() }
    pub(crate) async fn checkpoint(&self, id: &str, stop: bool) -> Result<SnapshotInfo, SandboxError> { todo!() }
    pub(crate) async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, SandboxError> { todo!() }
    pub(crate) async fn delete_snapshot(&self, id: &str) -> Result<(), SandboxError> { todo!() }
    pub(crate) fn runtime_name(&self) -> &'static str { todo!() }
    pub(crate) fn counts_by_state(&self) -> Vec<(SandboxState, u64)> { todo!() }
    pub(crate) fn allocated(&self) -> Resources { todo!() }
    pub(crate) fn capacity(&self) -> Resources { todo!() }
}
