//! The handle on the log: which database it is in (a SQLite file on one host, or
//! PostgreSQL shared by replicas), which server it writes for, and its lease and head-file
//! settings. Opening is in `open`; the SQL of each table in `events`, `passes`, `users`
//! and `lease`. Both backends run the same SQL (`$N` parameters, which SQLite accepts
//! too); where they differ, [`super::db::Backend`] says how.

use std::path::{Path, PathBuf};

use super::db::{Pool, on_pool};
use super::key::{CHAIN, ChainKeys, KEYED};
use super::{AuditError, lease};

#[derive(Clone)]
pub struct AuditStore {
    pub(super) pool: Pool,
    /// The SQLite file, or the PostgreSQL URL without its password (for messages).
    pub(super) path: PathBuf,
    pub(super) write: std::sync::Arc<tokio::sync::Mutex<()>>,
    pub(super) claim: std::sync::Arc<tokio::sync::Mutex<lease::Slot>>,
    /// The lease this process holds, if any: its rows carry the epoch, and are refused
    /// once the lease is someone else's.
    pub(super) fence: std::sync::Arc<std::sync::Mutex<Option<lease::Fence>>>,
    pub(super) lease_times: lease::LeaseTimes,
    /// `audit.head_file`: every finished pass appends its chain head there.
    pub(super) head_file: Option<std::sync::Arc<PathBuf>>,
    /// The server this handle writes for: recorded in its rows, and its lookups of earlier
    /// rows see only that server's.
    pub(super) instance: Option<std::sync::Arc<str>>,
    /// `audit.chain_key_file`: new rows are keyed under the current key; `verify` checks
    /// keyed rows with the key their "keyed" row names.
    pub(super) chain_keys: Option<std::sync::Arc<ChainKeys>>,
}

impl AuditStore {
    /// Whether the log is in PostgreSQL (shared by replicas) rather than a SQLite file.
    pub fn is_shared(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    /// Where the log is: the SQLite file, or the PostgreSQL URL without a password.
    pub fn location(&self) -> String {
        self.path.display().to_string()
    }

    pub(super) fn over(pool: Pool, path: &Path) -> AuditStore {
        AuditStore {
            pool,
            path: path.to_path_buf(),
            write: Default::default(),
            claim: Default::default(),
            fence: Default::default(),
            lease_times: lease::LeaseTimes::ONE_HOST,
            head_file: None,
            instance: None,
            chain_keys: None,
        }
    }

    /// The same log, with the chain keys (`audit.chain_key_file`) for reading and
    /// verifying; writers use [`AuditStore::key_chain`].
    pub fn with_chain_keys(mut self, keys: Option<ChainKeys>) -> AuditStore {
        self.chain_keys = keys.map(std::sync::Arc::new);
        self
    }

    /// For a writer: the chain keys, and a chained "keyed" row naming the current key when
    /// the chain is not keyed with it yet (the first time, or after a rotation). A keyed
    /// log opened without keys is refused: its rows could not be written so they verify.
    pub async fn key_chain(self, keys: Option<ChainKeys>) -> Result<AuditStore, AuditError> {
        let store = self.with_chain_keys(keys);
        let last: Option<Option<String>> = on_pool!(&store.pool, |pool| {
            sqlx::query_scalar(
                "SELECT old FROM events WHERE field = $1 AND new = $2 ORDER BY seq DESC LIMIT 1",
            )
            .bind(CHAIN)
            .bind(KEYED)
            .fetch_optional(pool)
            .await?
        });
        let last = last.flatten();
        match (&store.chain_keys, last) {
            (None, None) => {}
            (None, Some(id)) => return Err(AuditError::KeyNeeded { id }),
            (Some(keys), last) if last.as_deref() != Some(keys.current().id.as_str()) => {
                store
                    .append(&[super::row::chain_keyed(&keys.current().id, last.as_deref())])
                    .await?;
            }
            (Some(_), _) => {}
        }
        Ok(store)
    }

    pub(super) fn fence(&self) -> Option<lease::Fence> {
        self.fence.lock().expect("fence lock").clone()
    }

    /// The same log, writing and remembering for the server named `name` (a config
    /// instance name: letters, digits, `-` and `_`).
    pub fn for_instance(&self, name: &str) -> AuditStore {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "instance names are checked with the config"
        );
        AuditStore {
            instance: Some(name.into()),
            ..self.clone()
        }
    }

    /// The SQL condition keeping a lookup to this handle's server; rows from before
    /// instances were recorded belong to `default`.
    pub(super) fn instance_filter(&self, alias: &str) -> String {
        match self.instance.as_deref() {
            None => String::new(),
            Some(crate::config::DEFAULT_INSTANCE) => {
                format!(" AND ({alias}instance IS NULL OR {alias}instance = 'default')")
            }
            Some(name) => format!(" AND {alias}instance = '{name}'"),
        }
    }

    /// How long the lease lives and how often it is renewed (replicas on PostgreSQL; a
    /// SQLite file keeps [`lease::LeaseTimes::ONE_HOST`]).
    pub fn with_lease_times(mut self, times: lease::LeaseTimes) -> AuditStore {
        if self.is_shared() {
            self.lease_times = times;
        }
        self
    }

    /// Appends the chain head of every finished pass to `file` (a second place to check
    /// the log against; keep it where the database's writers cannot rewrite it).
    pub fn with_head_file(mut self, file: Option<PathBuf>) -> AuditStore {
        self.head_file = file.map(std::sync::Arc::new);
        self
    }

    pub async fn close(&self) {
        on_pool!(&self.pool, |pool| pool.close().await);
    }
}
