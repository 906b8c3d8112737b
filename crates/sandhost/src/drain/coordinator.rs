//! The drain coordinator (being written).
#![allow(missing_docs, unused_variables)]

use tokio::sync::watch;

use super::{DrainError, DrainProgress, DrainRequest, NodeStatus};

/// The drain coordinator.
#[derive(Debug, Clone)]
pub struct DrainCoordinator {}

impl DrainCoordinator {
    pub(crate) fn progress(&self) -> DrainProgress { todo!() }
    pub(crate) fn drain(&self, request: DrainRequest) -> Result<DrainProgress, DrainError> { todo!() }
    pub(crate) fn undrain(&self) -> Result<DrainProgress, DrainError> { todo!() }
    pub(crate) fn force_stop(&self) -> Result<DrainProgress, DrainError> { todo!() }
    pub(crate) fn watch(&self) -> watch::Receiver<DrainProgress> { todo!() }
    pub(crate) fn status(&self) -> NodeStatus { todo!() }
}
