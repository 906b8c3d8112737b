//! The drain coordinator: the one owner of the node status and of the drain phases.

mod coordinator;
mod intent;
mod model;

pub use coordinator::{DrainCoordinator, DrainReport, DrainSettings};
pub use model::{DrainError, DrainFailure, DrainProgress, DrainRequest, Evacuation, NodeStatus};
