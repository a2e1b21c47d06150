//! What can be wrong with a configuration: each error names the file and the key.

use std::path::PathBuf;
use std::sync::Arc;

/// A configuration that cannot be used. `Clone`, so a secret that could not be read is
/// kept with the settings and given to each command that needs it. An I/O cause is a
/// field named `problem`, not `source`: it is part of the message, and printing the error
/// with its chain must not repeat it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config file {path}: {problem} (pass --config PATH or set CASEWARDEN_CONFIG)"
    )]
    Read {
        path: PathBuf,
        problem: Arc<std::io::Error>,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{path}: {key}: {problem}")]
    SecretFile {
        path: PathBuf,
        key: String,
        problem: SecretFileError,
    },
    #[error("{path}: audit.url: {problem}")]
    AuditUrl {
        path: PathBuf,
        problem: PostgresUrlError,
    },
    /// `section` is the server's (`stellar`, `instance.NAME`), `credential` the systemd
    /// credential it would read (`api_key`, `api_key.NAME`).
    #[error(
        "{path}: no API key configured: set {section}.api_key_file or {section}.api_key_env, or run under systemd with LoadCredential={credential}"
    )]
    NoApiKey {
        path: PathBuf,
        section: String,
        credential: String,
    },
    #[error("{path}: {section}.api_key_file {file}: {problem}")]
    KeyFile {
        path: PathBuf,
        section: String,
        file: PathBuf,
        problem: Arc<std::io::Error>,
    },
    #[error("{path}: {section}.api_key_env: environment variable {var} is not set or empty")]
    KeyEnv {
        path: PathBuf,
        section: String,
        var: String,
    },
    #[error("{path}: {key} {file}: {problem}")]
    CaFile {
        path: PathBuf,
        key: String,
        file: PathBuf,
        problem: Arc<std::io::Error>,
    },
}

/// A file holding a password, token or webhook secret that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SecretFileError {
    #[error("{file}: {problem}")]
    Read {
        file: PathBuf,
        problem: Arc<std::io::Error>,
    },
    #[error("{file}: no such file")]
    Missing { file: PathBuf },
    #[error("{file}: the file is empty")]
    Empty { file: PathBuf },
    #[error("{file}: the token must be at least {min} characters")]
    TooShort { file: PathBuf, min: usize },
}

/// A PostgreSQL URL for the audit log that cannot be used; the URL is shown with any
/// password in it hidden.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PostgresUrlError {
    #[error("not a URL ({0}); expected postgres://user@host/database")]
    NotUrl(url::ParseError),
    #[error(
        "{shown} is not a PostgreSQL URL: it must start with postgres:// (a SQLite log is set with audit.path)"
    )]
    NotPostgres { shown: String },
    #[error(
        "{shown} holds a password: put it in audit.password_file (or the systemd credential audit_password) instead, so it never shows where the URL is printed"
    )]
    HoldsPassword { shown: String },
    #[error("{shown} names no host")]
    NoHost { shown: String },
}
