//! Secrets read once, when the settings are built: API keys, the audit log's password,
//! the live view's token and webhook secrets. A secret that cannot be read is kept as
//! its error, so only the commands that need it fail.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{ConfigError, SecretFileError};
use crate::secret::Secret;

/// A secret as read when the settings were built, or why it could not be.
#[derive(Debug, Clone)]
pub(super) struct Loaded<T> {
    value: Result<T, ConfigError>,
    /// A file every user may read: warned about each time the secret is used.
    readable_by_all: Option<PathBuf>,
}

impl<T: Clone> Loaded<T> {
    /// `value`, read from `file` if it came from one.
    pub(super) fn new(value: Result<T, ConfigError>, file: Option<&Path>) -> Loaded<T> {
        Loaded {
            value,
            readable_by_all: file.filter(|f| readable_by_all(f)).map(Path::to_path_buf),
        }
    }

    /// The secret, or the error that reading it gave.
    pub(super) fn get(&self) -> Result<T, ConfigError> {
        if let Some(file) = &self.readable_by_all {
            warn_readable_by_all(file);
        }
        self.value.clone()
    }
}

/// The least bytes a chain key has: shorter ones are guessable.
const MIN_CHAIN_KEY: usize = 32;

/// A chain key file: one key per line (the current one first, older ones after it for
/// rows written before a rotation), each at least [`MIN_CHAIN_KEY`] characters.
pub(super) fn chain_keys_in(file: &Path) -> Result<Vec<Secret>, SecretFileError> {
    let text = read(file)?;
    let keys: Vec<Secret> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| Secret::new(l.to_string()))
        .collect();
    if keys.is_empty() {
        return Err(SecretFileError::Empty { file: file.into() });
    }
    if keys.iter().any(|k| k.expose().len() < MIN_CHAIN_KEY) {
        return Err(SecretFileError::TooShort {
            file: file.into(),
            min: MIN_CHAIN_KEY,
        });
    }
    Ok(keys)
}

/// A password file: one line (its line break is not part of it), not empty.
pub fn read_password_file(file: &Path) -> Result<Secret, SecretFileError> {
    if readable_by_all(file) {
        warn_readable_by_all(file);
    }
    password_in(file)
}

/// The password in `file`, without the warning about its mode.
pub(super) fn password_in(file: &Path) -> Result<Secret, SecretFileError> {
    let text = read(file)?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(SecretFileError::Empty { file: file.into() });
    }
    Ok(Secret::new(password))
}

/// A file's text; the error names the file.
pub(super) fn read(file: &Path) -> Result<String, SecretFileError> {
    std::fs::read_to_string(file).map_err(|e| SecretFileError::Read {
        file: file.into(),
        problem: Arc::new(e),
    })
}

#[cfg(unix)]
fn readable_by_all(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(file).is_ok_and(|meta| meta.permissions().mode() & 0o004 != 0)
}

#[cfg(not(unix))]
fn readable_by_all(_file: &Path) -> bool {
    false
}

fn warn_readable_by_all(file: &Path) {
    tracing::warn!(
        file = %file.display(),
        "a secret file (key, password or token) is readable by every user on this machine; chmod 600 it"
    );
}
