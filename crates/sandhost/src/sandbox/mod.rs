//! The sandbox manager: the live table keyed by sandbox id, with lifecycle ids; the state machine of
//! [`SandboxState`], enforced in one place; end times; retention of exited sandboxes; node limits;
//! and one event per transition.

mod errors;
mod manager;
mod model;
mod ops;
mod recover;
mod stop;
mod store;
mod validate;

pub use errors::{CreateError, InvalidArgument, SandboxError};
pub use manager::{Counts, Manager, ManagerParts, StopMode};
pub use model::{
    CreateRequest, DrainPolicy, ExitInfo, ExitReason, ListFilter, SandboxInfo, SandboxState, UpdateRequest,
};
