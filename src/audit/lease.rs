//! One writer: a pass holds an exclusive claim on the audit store for its whole run, so
//! two processes never plan and send the same change. On one host an OS file lock beside
//! the database is the fast path (the kernel drops it when a holder dies); the `lease` row,
//! taken in one `BEGIN IMMEDIATE` transaction, names the holder and carries its heartbeat,
//! which tells reconciliation when a dead holder's requests can no longer land. Passes of
//! one process share the claim.

use std::fs::{File, TryLockError};
use std::sync::Arc;
use std::time::Duration;

use sqlx::FromRow;

use super::{AuditError, AuditStore, timestamp};

/// How long a claim lives without a heartbeat.
const TTL: Duration = Duration::from_secs(30);
/// How often a holder renews it: a holder may have sent its last request up to this long
/// after its last recorded heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// The lease row: who holds (or last held) the claim.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct Lease {
    pub holder: String,
    pub pid: i64,
    pub host: String,
    pub started_at: String,
    pub heartbeat_at: String,
    pub expires_at: String,
    pub released: bool,
    pub epoch: i64,
}

impl std::fmt::Display for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {} since {} (last heartbeat {})",
            self.pid, self.host, self.started_at, self.heartbeat_at
        )
    }
}

/// Another process holds the claim.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the audit store is claimed by another casewarden pass: {}; it runs one pass at a time (try again, or pass --wait SECS)",
    holder.as_ref().map_or_else(|| "a process on this host".to_string(), |h| h.to_string())
)]
pub struct Held {
    pub holder: Option<Lease>,
}

/// The process's share of the claim; passes release theirs with [`Claim::release`].
pub struct Claim {
    shared: Arc<Shared>,
    /// The lease row as it was before this process took it: a holder that did not
    /// release it died, and its requests may still be landing until its last heartbeat
    /// plus the request timeout.
    pub previous: Option<Lease>,
    /// This pass took the claim; no other pass of this process runs beside it.
    pub first: bool,
}

/// What the passes of one process hold together.
pub(super) struct Shared {
    store: AuditStore,
    holder: String,
    /// Kept open for its OS lock.
    _file: File,
    heartbeat: tokio::task::JoinHandle<()>,
}

/// The claim state of one store in this process.
#[derive(Default)]
pub(super) struct Slot {
    shared: Option<std::sync::Weak<Shared>>,
    previous: Option<Lease>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl Claim {
    /// Gives this pass's share back; the last share of the process marks the lease
    /// released (a claim dropped without this still ends: the OS lock goes with it and
    /// the lease expires).
    pub async fn release(self) {
        let Claim { shared, .. } = self;
        if let Ok(shared) = Arc::try_unwrap(shared) {
            shared.heartbeat.abort();
            let now = timestamp(chrono::Utc::now());
            let released = sqlx::query(
                "UPDATE lease SET released = 1, heartbeat_at = ?, expires_at = ? WHERE holder = ?",
            )
            .bind(&now)
            .bind(&now)
            .bind(&shared.holder)
            .execute(&shared.store.pool)
            .await;
            if let Err(e) = released {
                tracing::warn!(error = %e, "cannot mark the audit store's claim released; it expires by itself");
            }
        }
    }
}

impl AuditStore {
    /// Takes the one-writer claim, waiting up to `wait` for another holder to finish.
    pub async fn claim(&self, wait: Duration) -> Result<Claim, ClaimError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.try_claim().await {
                Err(ClaimError::Held(held)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%held, "waiting for the audit store's claim");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    async fn try_claim(&self) -> Result<Claim, ClaimError> {
        let mut slot = self.claim.lock().await;
        if let Some(shared) = slot.shared.as_ref().and_then(std::sync::Weak::upgrade) {
            return Ok(Claim {
                shared,
                previous: slot.previous.clone(),
                first: false,
            });
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path(&self.path))
            .map_err(|e| {
                ClaimError::Audit(self.open_error(format!("cannot open the lock file: {e}")))
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                // A released row names the previous holder, not this one (still starting).
                return Err(ClaimError::Held(Held {
                    holder: self.lease().await.ok().flatten().filter(|l| !l.released),
                }));
            }
            Err(TryLockError::Error(e)) => {
                return Err(ClaimError::Audit(
                    self.open_error(format!("cannot lock: {e}")),
                ));
            }
        }
        let holder = uuid::Uuid::new_v4().to_string();
        let host = hostname();
        let now = chrono::Utc::now();
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(AuditError::from)?;
        let previous: Option<Lease> = sqlx::query_as("SELECT * FROM lease WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(AuditError::from)?;
        // The OS lock is ours, so a live lease of this host belongs to a dead process; one
        // of another host (a shared file system) is honoured until it expires.
        if let Some(p) = &previous
            && !p.released
            && p.host != host
            && p.expires_at > timestamp(now)
        {
            return Err(ClaimError::Held(Held {
                holder: Some(p.clone()),
            }));
        }
        let epoch = previous.as_ref().map_or(1, |p| p.epoch + 1);
        sqlx::query(
            "INSERT OR REPLACE INTO lease (id, holder, pid, host, started_at, heartbeat_at, expires_at, released, epoch) \
             VALUES (1, ?, ?, ?, ?, ?, ?, 0, ?)",
        )
        .bind(&holder)
        .bind(i64::from(std::process::id()))
        .bind(&host)
        .bind(timestamp(now))
        .bind(timestamp(now))
        .bind(timestamp(now + TTL))
        .bind(epoch)
        .execute(&mut *tx)
        .await
        .map_err(AuditError::from)?;
        tx.commit().await.map_err(AuditError::from)?;
        let heartbeat = tokio::spawn(heartbeat(self.clone(), holder.clone()));
        let shared = Arc::new(Shared {
            store: self.clone(),
            holder,
            _file: file,
            heartbeat,
        });
        let previous = previous.filter(|p| !p.released);
        slot.shared = Some(Arc::downgrade(&shared));
        slot.previous = previous.clone();
        Ok(Claim {
            shared,
            previous,
            first: true,
        })
    }

    /// The lease row, if any process ever held the claim.
    pub async fn lease(&self) -> Result<Option<Lease>, AuditError> {
        Ok(sqlx::query_as("SELECT * FROM lease WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?)
    }

    fn open_error(&self, message: String) -> AuditError {
        AuditError::Open {
            path: self.path.clone(),
            message,
        }
    }
}

/// Why a claim could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(transparent)]
    Held(#[from] Held),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// The OS lock file beside the database (also taken around migrations).
pub(super) fn lock_path(db: &std::path::Path) -> std::path::PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    db.with_file_name(name)
}

async fn heartbeat(store: AuditStore, holder: String) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let now = chrono::Utc::now();
        let beat =
            sqlx::query("UPDATE lease SET heartbeat_at = ?, expires_at = ? WHERE holder = ?")
                .bind(timestamp(now))
                .bind(timestamp(now + TTL))
                .bind(&holder)
                .execute(&store.pool)
                .await;
        if let Err(e) = beat {
            tracing::warn!(error = %e, "cannot renew the audit store's claim");
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}
