//! The file settings come from: errors name it, relative paths are relative to its folder.

use std::path::{Component, Path, PathBuf};

use super::error::{ConfigError, SecretFileError};

pub(super) struct Source {
    path: PathBuf,
    folder: PathBuf,
}

impl Source {
    pub(super) fn new(path: &Path) -> Source {
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Source {
            path: path.to_path_buf(),
            folder,
        }
    }

    pub(super) fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// `p` relative to the config's folder; `.` components dropped, so `rules_dir = "."`
    /// names files as `dir/x.rhai`.
    pub(super) fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        let joined: PathBuf = self
            .folder
            .join(p)
            .components()
            .filter(|c| *c != Component::CurDir)
            .collect();
        if joined.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            joined
        }
    }

    /// A value of `key` that cannot be used.
    pub(super) fn invalid(
        &self,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// The file named by `key` that cannot be used.
    pub(super) fn secret_file(
        &self,
        key: impl Into<String>,
        problem: SecretFileError,
    ) -> ConfigError {
        ConfigError::SecretFile {
            path: self.path(),
            key: key.into(),
            problem,
        }
    }
}
