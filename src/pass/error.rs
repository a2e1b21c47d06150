//! Why a pass stopped early.

use crate::audit::AuditError;
use crate::stellar::ApiError;

/// A failure that stops a pass: what it had done is recorded, the rest waits.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The audit log could not be written or read: nothing more is sent.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The listing failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A task of the pass (rule evaluation, the outcome writer) panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}
