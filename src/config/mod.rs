//! The configuration: the TOML file as written (`raw`), checked once into typed
//! [`Settings`] (`settings` and one file per section) with parsed values, loaded
//! calendars and secrets read at start-up (`secrets`), errors naming the file and key.

mod audit;
mod daemon;
mod error;
mod notify;
mod raw;
mod secrets;
mod server;
mod settings;
mod source;
#[cfg(test)]
mod tests;

pub use crate::stellar::ApiFlavor;
pub use audit::{AuditSettings, check_postgres_url};
pub use daemon::{DaemonSettings, ListenerLimits};
pub use error::{ConfigError, PostgresUrlError, SecretFileError};
pub use notify::NotifySettings;
pub use raw::{DEFAULT_EXEMPT_TAG, FlavorSetting};
pub use secrets::read_password_file;
pub use server::{DEFAULT_INSTANCE, ServerSettings};
pub use settings::Settings;
