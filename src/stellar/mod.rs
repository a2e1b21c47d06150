//! Talking to Stellar Cyber's Cases API: the client (tokens, retries, the calls of both
//! API flavours), paging, the retry decision, and the shapes the server sends.

mod auth;
mod client;
mod derived;
mod document;
mod error;
pub mod filter;
mod flavor;
mod history;
pub mod model;
pub mod object;
mod pager;
mod retry;
mod window;

pub use auth::Credentials;
pub use client::{Client, ClientSettings, WriteGate, credentials};
pub use derived::{Entity, entity_of, involved, parse_entity, priority_rank};
pub use document::{cases_in_answer, parse_lenient};
pub use error::ApiError;
pub use flavor::ApiFlavor;
pub use history::{HistoryEntry, is_own_entry, last_human_activity, status_since};
pub use model::{Case, CaseParseError, Comment, Directory, Tenant, User};
pub use pager::{CasePager, Page};
