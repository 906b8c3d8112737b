//! The drain coordinator: the one owner of the node status and of the drain phases.

mod coordinator;
mod model;

pub use coordinator::DrainCoordinator;
pub use model::{DrainError, DrainFailure, DrainProgress, DrainRequest, NodeStatus};
