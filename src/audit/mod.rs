//! The audit log: an append-only, hash-chained record (SQLite or PostgreSQL) of every
//! decision casewarden makes (planned, applied, failed, skipped), plus one row per pass.
//! The row types are here and `row` builds the rows to write; `store` is the handle,
//! `events`, `passes` and `users` hold the SQL of each, `chain` hashes and verifies,
//! `query` reads back, `export` prints, `lease` keeps to one writer at a time.

mod alerts;
mod chain;
mod copy;
mod db;
mod events;
pub mod export;
pub mod key;
mod lease;
mod open;
mod passes;
mod query;
pub mod row;
mod rule_texts;
mod stats;
mod store;
mod users;
mod write;

pub use crate::time::timestamp;
pub use alerts::AlertKey;
pub use chain::{GENESIS, Keyed, Verification};
pub use copy::{Copied, CopyError};
pub use lease::{Claim, ClaimError, Fence, Held, Lease, LeaseTimes};
pub use query::Filter;
pub use row::{CaseRef, NewEvent, Settled};
pub use rule_texts::{RuleSource, RuleText};
pub use stats::{CaseCount, DayCount, FailureGroup, GroupCount, Period, RuleVersion, Step};
pub use store::AuditStore;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Serialize;
use sqlx::FromRow;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit DB {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "the audit log's chain is keyed (key id {id}) but no audit.chain_key_file is set: new rows could not be written so they verify; set it to the key file (its first line the current key)"
    )]
    KeyNeeded { id: String },
    #[error(
        "audit DB {path} was written by a newer casewarden (schema version {found}, this build knows up to {known}); upgrade casewarden or set audit.path to another file — the file was not changed"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    /// The database answers but holds no log (no pass has written one yet).
    #[error(
        "audit DB {path}: not a casewarden audit log (no events table; has a pass run with audit.url yet?)"
    )]
    NoLog { path: PathBuf },
    #[error(
        "this process no longer holds the audit log's lease (its epoch {epoch}, now {}): it sends and writes nothing more; the holder settles what it left open",
        current.map_or_else(|| "none".to_string(), |c| c.to_string())
    )]
    Fenced { epoch: i64, current: Option<i64> },
    /// Not a `source`: its text is already in the message, once.
    #[error("audit DB: {}", with_hint(.0))]
    Db(sqlx::Error),
}

impl From<sqlx::Error> for AuditError {
    fn from(e: sqlx::Error) -> AuditError {
        AuditError::Db(e)
    }
}

/// What the database said: a refusal's own message (PostgreSQL's adds the line of its
/// own source code that raised it, which means nothing to an operator).
pub(crate) fn db_message(e: &sqlx::Error) -> String {
    match e.as_database_error() {
        Some(d) => format!("error returned from database: {}", d.message()),
        None => e.to_string(),
    }
}

/// The database's message plus what the operator can do about it.
fn with_hint(e: &sqlx::Error) -> String {
    let text = db_message(e);
    let hint = if text.contains("full") {
        " (the disk or audit.max_size_mb is full: nothing further is sent until the log can be written; archive the file or raise the limit)"
    } else if text.contains("locked") || text.contains("busy") {
        " (another process holds the database lock; nothing is sent until it is released)"
    } else if text.contains("readonly") {
        " (the file or its folder is read-only for this user)"
    } else {
        ""
    };
    format!("{text}{hint}")
}

/// What happened to a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Planned,
    Applied,
    Failed,
    Skipped,
    /// A crash left a planned row whose result could not be read back.
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Planned => "planned",
            Outcome::Applied => "applied",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::Unknown => "unknown",
        }
    }

    pub const ALL: [Outcome; 5] = [
        Outcome::Planned,
        Outcome::Applied,
        Outcome::Failed,
        Outcome::Skipped,
        Outcome::Unknown,
    ];
}

impl FromStr for Outcome {
    type Err = String;

    fn from_str(s: &str) -> Result<Outcome, String> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                format!("{s:?} is not an outcome: planned, applied, failed, skipped or unknown")
            })
    }
}

/// How rows are read back (stored as text in either backend).
impl TryFrom<String> for Outcome {
    type Error = String;

    fn try_from(s: String) -> Result<Outcome, String> {
        s.parse()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rows read back compare with the names scripts and tests know them by.
impl PartialEq<&str> for Outcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One stored row, as the audit command prints it.
#[derive(Debug, Clone, FromRow, Serialize, PartialEq)]
pub struct EventRow {
    pub seq: i64,
    pub run_id: String,
    pub recorded_at: String,
    pub rule: String,
    pub rule_hash: String,
    pub case_id: String,
    pub ticket_id: Option<i64>,
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
    pub reason: String,
    pub dry_run: bool,
    #[sqlx(try_from = "String")]
    pub outcome: Outcome,
    pub error: Option<String>,
    pub http_status: Option<i64>,
    pub planned_seq: Option<i64>,
    pub prev_hash: String,
    pub hash: String,
    pub tenant: Option<String>,
    pub instance: Option<String>,
    /// The lease epoch of the process that wrote it (None: written without the lease,
    /// or before epochs were recorded).
    pub epoch: Option<i64>,
}

/// A planned change without a final outcome, and its newest outcome so far.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct Unsettled {
    #[sqlx(flatten)]
    pub row: EventRow,
    /// None: no outcome at all; else `unknown`.
    pub last_outcome: Option<String>,
    pub last_at: Option<String>,
}

/// A rule that failed on some cases of a pass.
#[derive(Debug, Clone, FromRow, PartialEq, serde::Serialize)]
pub struct RuleErrors {
    #[sqlx(rename = "run_id")]
    pub pass: String,
    pub rule: String,
    /// How many cases, as recorded.
    #[sqlx(rename = "old")]
    pub cases: Option<String>,
    /// The first failure: case, place and message.
    #[sqlx(rename = "error")]
    pub first_error: Option<String>,
}

/// A field change casewarden applied to a case.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct AppliedChange {
    pub case_id: String,
    pub rule: String,
    pub field: String,
    pub new: Option<String>,
}

/// A row of the newest dry run of a rule on a case.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct DryRow {
    pub case_id: String,
    pub rule: String,
    pub field: String,
    pub new: Option<String>,
    #[sqlx(try_from = "String")]
    pub outcome: Outcome,
}

/// The newest live row of a rule's change of one value on a case: whether a skip of it
/// is already recorded.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct LastChange {
    pub case_id: String,
    pub rule: String,
    pub rule_hash: String,
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
    pub reason: String,
    #[sqlx(try_from = "String")]
    pub outcome: Outcome,
}

/// One row of the passes table.
#[derive(Debug, Clone, FromRow, Serialize, PartialEq)]
pub struct PassRow {
    pub id: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub trigger_kind: String,
    pub rules_fingerprint: String,
    pub dry_run: bool,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub totals: PassTotals,
    /// The events chain head when the pass finished.
    pub chain_head: Option<String>,
    /// SHA-256 over the finished row (chain head included); None while it runs.
    pub hash: Option<String>,
    /// The server it ran on (None: recorded before servers were).
    pub instance: Option<String>,
}

/// Totals of a finished pass.
#[derive(Debug, Clone, Default, Serialize, FromRow, PartialEq)]
pub struct PassTotals {
    pub cases_seen: i64,
    pub planned: i64,
    pub applied: i64,
    pub failed: i64,
    pub skipped: i64,
    pub status: String,
    pub error: Option<String>,
}
