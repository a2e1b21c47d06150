//! `[audit]`: where the audit log is (a SQLite file or PostgreSQL), checked, with the
//! PostgreSQL password read.

use std::path::{Path, PathBuf};

use super::error::{ConfigError, PostgresUrlError, SecretFileError};
use super::raw::RawAudit;
use super::secrets::{self, Loaded};
use super::source::Source;
use crate::secret::{Secret, is_secret_param, redact_url};

#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub path: PathBuf,
    /// How long a write waits for another process holding the database lock.
    pub busy_timeout_secs: u64,
    /// Optional cap on the database size; at the cap, passes stop (nothing is sent that
    /// cannot be recorded) until the file is archived or the cap raised.
    pub max_size_mb: Option<u64>,
    /// Every finished pass appends its chain head here.
    pub head_file: Option<PathBuf>,
    /// `postgres://user@host[:port]/db`: the log in PostgreSQL, shared by replicas,
    /// instead of the SQLite file at `path`. No password in it.
    pub url: Option<String>,
    /// Replicas on PostgreSQL: how long the leader's lease lives without renewal.
    pub lease_secs: u64,
    /// How often the leader renews it.
    pub lease_renew_secs: u64,
    /// How often a follower tries to take it.
    pub lease_retry_secs: u64,
    /// The PostgreSQL password; None leaves it to `PGPASSWORD` or `~/.pgpass`.
    password: Loaded<Option<Secret>>,
    /// `chain_key_file`: the keys of the keyed chain, the current one first.
    chain_keys: Loaded<Vec<Secret>>,
}

impl AuditSettings {
    pub(super) fn build(a: RawAudit, src: &Source) -> Result<AuditSettings, ConfigError> {
        if let Some(url) = &a.url {
            check_postgres_url(url).map_err(|problem| ConfigError::AuditUrl {
                path: src.path(),
                problem,
            })?;
        }
        let password_file = a.password_file.as_deref().map(|p| src.resolve(p));
        if let Some(file) = &password_file
            && !file.is_file()
        {
            let missing = SecretFileError::Missing { file: file.clone() };
            return Err(src.secret_file("audit.password_file", missing));
        }
        check_lease(&a, src)?;
        let key_file = a.chain_key_file.as_deref().map(|p| src.resolve(p));
        let chain_keys = key_file
            .as_deref()
            .map_or(Ok(Vec::new()), secrets::chain_keys_in)
            .map_err(|e| src.secret_file("audit.chain_key_file", e));
        Ok(AuditSettings {
            chain_keys: Loaded::new(chain_keys, key_file.as_deref()),
            password: read_password(password_file, src),
            path: src.resolve(&a.path),
            busy_timeout_secs: a.busy_timeout_secs,
            max_size_mb: a.max_size_mb,
            head_file: a.head_file.map(|p| src.resolve(&p)),
            url: a.url,
            lease_secs: a.lease_secs,
            lease_renew_secs: a.lease_renew_secs,
            lease_retry_secs: a.lease_retry_secs,
        })
    }

    /// Where the log is, as it may be shown: the file, or the URL.
    pub fn location(&self) -> String {
        match &self.url {
            Some(url) => redact_url(url),
            None => self.path.display().to_string(),
        }
    }

    /// The keys of the keyed chain (`chain_key_file`), the current one first; empty when
    /// the chain is not keyed.
    pub fn chain_keys(&self) -> Result<Vec<Secret>, ConfigError> {
        self.chain_keys.get()
    }

    /// The PostgreSQL password, as read when the settings were built.
    pub fn password(&self) -> Result<Option<Secret>, ConfigError> {
        self.password.get()
    }
}

/// Checks a PostgreSQL URL for the audit log: `postgres://user@host[:port]/db`, with no
/// password in it (a URL is shown in logs and `status`; the password is kept apart).
pub fn check_postgres_url(url: &str) -> Result<(), PostgresUrlError> {
    let parsed = url::Url::parse(url).map_err(PostgresUrlError::NotUrl)?;
    let shown = || redact_url(url);
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(PostgresUrlError::NotPostgres { shown: shown() });
    }
    if parsed.password().is_some() || parsed.query_pairs().any(|(k, _)| is_secret_param(&k)) {
        return Err(PostgresUrlError::HoldsPassword { shown: shown() });
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(PostgresUrlError::NoHost { shown: shown() });
    }
    Ok(())
}

/// The lease's times.
fn check_lease(a: &RawAudit, src: &Source) -> Result<(), ConfigError> {
    if a.lease_secs < 2 || a.lease_secs > 3600 {
        return Err(src.invalid(
            "audit.lease_secs",
            format!("{} is out of range: 2 to 3600", a.lease_secs),
        ));
    }
    if a.lease_renew_secs == 0 || a.lease_renew_secs >= a.lease_secs {
        return Err(src.invalid(
            "audit.lease_renew_secs",
            format!(
                "{} must be at least 1 and less than audit.lease_secs ({}), so the lease is renewed before it ends",
                a.lease_renew_secs, a.lease_secs
            ),
        ));
    }
    if a.lease_retry_secs == 0 || a.lease_retry_secs > a.lease_secs {
        return Err(src.invalid(
            "audit.lease_retry_secs",
            format!(
                "{} is out of range: 1 to audit.lease_secs ({})",
                a.lease_retry_secs, a.lease_secs
            ),
        ));
    }
    Ok(())
}

/// `audit.password_file`, else the systemd credential `audit_password`.
fn read_password(file: Option<PathBuf>, src: &Source) -> Loaded<Option<Secret>> {
    let file = file.or_else(|| {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
        Some(Path::new(&dir).join("audit_password")).filter(|f| f.is_file())
    });
    let password = file
        .as_deref()
        .map(secrets::password_in)
        .transpose()
        .map_err(|e| src.secret_file("audit.password_file", e));
    Loaded::new(password, file.as_deref())
}
