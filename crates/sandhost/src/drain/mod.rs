//! The drain: the coordinator that owns the node status and drives the graceful and forced phases,
//! the drain intent a restarted agent continues, and what a drain reports.

mod coordinator;
mod force;
mod intent;
mod model;
mod report;
mod status;

pub use coordinator::{DrainCoordinator, DrainSettings, Resumed};
pub use intent::DrainOrigin;
pub use model::{
    DrainError, DrainFailure, DrainProgress, DrainRequest, Evacuation, InterruptedShutdown, NodeStatus,
    StopFailure,
};
pub use report::DrainReport;
