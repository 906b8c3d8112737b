//! The sandbox manager: the table keyed by sandbox id, with lifecycle ids; the state machine of
//! [`SandboxState`], enforced in one place; creating, supervising and stopping; end times;
//! retention of exited sandboxes; node limits; and one event per transition. It depends on
//! neither the drain nor the node: admission reaches it as an [`crate::admission::Admission`].

mod create;
mod errors;
mod manager;
mod model;
mod ops;
mod recover;
mod stop;
mod store;
mod supervise;
mod table;
mod validate;

pub use errors::{CreateError, Interrupted, InvalidArgument, SandboxError};
pub use manager::{Manager, ManagerParts};
pub use model::{
    Condition, ConditionKind, CreateRequest, DrainPolicy, ExitInfo, ExitReason, ListFilter, LogPiece,
    LogStream, NewEnd, Resources, SandboxInfo, SandboxState, UpdateRequest,
};
pub use stop::StopMode;
pub use table::Counts;
pub(crate) use validate::labels as check_labels;
pub(crate) use validate::limits as check_limits;
