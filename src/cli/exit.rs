//! How a command ends when it cannot do its job: what went wrong and the exit code of
//! INTERFACE.md. `main` is the one place that prints it and exits with the code.

use std::fmt::Display;

use crate::audit::ClaimError;
use crate::stellar::ApiError;

/// A command's failure with its exit code; an `ApiError` exits 3, any other error 2.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    message: String,
}

impl Exit {
    /// A config or rule error, or a bad argument (exit 2).
    pub fn config(message: impl Display) -> Exit {
        Exit::with(2, message)
    }

    /// Several config or rule errors found together (exit 2), one per line, and a last
    /// line that sums them up.
    pub fn config_all(messages: &[impl Display], footer: Option<String>) -> Exit {
        let lines: Vec<String> = messages.iter().map(ToString::to_string).collect();
        let mut message = lines.join("\nerror: ");
        if let Some(footer) = footer {
            message.push('\n');
            message.push_str(&footer);
        }
        Exit::config(message)
    }

    /// The server could not be reached or refused the key (exit 3).
    pub fn server(message: impl Display) -> Exit {
        Exit::with(3, message)
    }

    /// Any error, as exit 1 (`once --detailed-exitcode`, where 2 means "changes pending").
    pub fn failed(e: &anyhow::Error) -> Exit {
        Exit::with(1, format!("{e:#}"))
    }

    /// Another casewarden pass holds the audit store (exit 4).
    pub fn held(message: impl Display) -> Exit {
        Exit::with(4, message)
    }

    /// A failure with this code (the worst of several, each of which had one).
    pub(super) fn with(code: u8, message: impl Display) -> Exit {
        Exit {
            code,
            message: message.to_string(),
        }
    }
}

/// A pass that could not take the audit store's claim: held by another (exit 4), or the
/// store failed.
pub(super) fn unclaimed(e: ClaimError) -> anyhow::Error {
    match e {
        ClaimError::Held(held) => Exit::held(held).into(),
        ClaimError::Audit(e) => e.into(),
    }
}

/// The exit code for an error that ended a command.
pub fn code_of(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Exit>() {
        Some(x) => x.code,
        None if e.downcast_ref::<ApiError>().is_some() => 3,
        None => 2,
    }
}
