//! Talking to Stellar Cyber's Cases API: the client (tokens, retries, the calls of both
//! API flavours), paging, the retry decision, and the shapes the server sends.

mod auth;
mod client;
mod error;
pub mod filter;
mod flavor;
pub mod model;
pub mod object;
mod pager;
mod retry;

pub use auth::Credentials;
pub use client::{Client, ClientSettings, credentials};
pub use error::ApiError;
pub use flavor::ApiFlavor;
pub use model::{Case, CaseParseError, Comment, Directory, Tenant, User};
pub use pager::{CasePager, Page};
