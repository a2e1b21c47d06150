//! One writer: a pass holds an exclusive claim on the audit store for its whole run, so
//! two processes never plan and send the same change. The `lease` row, taken under the
//! store's write lock, names the holder, its epoch (one more at every new holder) and its
//! heartbeat. On one host (SQLite) an OS file lock beside the database is the fast path:
//! the kernel drops it when a holder dies. Replicas sharing PostgreSQL have only the row:
//! a lease is honoured until it expires, and the daemon that holds it is the leader.
//! Fencing keeps a holder that lost the lease (paused past it while another took over)
//! from acting: it sends nothing once its lease has run out by its own clock, and the
//! store refuses its writes once the row names another epoch. Passes of one process share
//! the claim.

use std::fs::{File, TryLockError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::FromRow;
use tokio::time::Instant;

use super::db::{Backend, Pool, on_pool};
use super::{AuditError, AuditStore, timestamp};

/// How long a lease lives without renewal, and how often its holder renews it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseTimes {
    pub ttl: Duration,
    pub renew: Duration,
}

impl LeaseTimes {
    /// On one host the OS lock tells when a holder died; the row only says when.
    pub const ONE_HOST: LeaseTimes = LeaseTimes {
        ttl: Duration::from_secs(30),
        renew: Duration::from_secs(1),
    };
}

/// This process's hold on the lease, as its own clock sees it.
#[derive(Debug, Clone)]
pub struct Fence {
    pub holder: String,
    pub epoch: i64,
    /// The lease's end as of the last renewal that the database confirmed, measured from
    /// before that renewal was sent (the monotonic clock runs on while a process is paused).
    valid_until: Arc<Mutex<Instant>>,
    /// A renewal found the row naming another holder.
    lost: Arc<AtomicBool>,
}

impl Fence {
    /// Whether this process must stop acting as the holder.
    pub fn is_lost(&self) -> bool {
        self.left().is_zero()
    }

    /// How long this process still holds the lease by its own monotonic clock (zero once
    /// lost): a process resumed from a stall sees the time it was stopped as gone.
    pub fn left(&self) -> Duration {
        if self.lost.load(Ordering::SeqCst) {
            return Duration::ZERO;
        }
        let until = *self.valid_until.lock().expect("fence clock");
        until.saturating_duration_since(Instant::now())
    }
}

/// The lease row: who holds (or last held) the claim.
#[derive(Debug, Clone, FromRow, PartialEq, serde::Serialize)]
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
    "the audit store is claimed by another casewarden pass: {}; it runs one pass at a time (try again, or pass --wait SECS; a daemon leading replicas on PostgreSQL holds it for as long as it runs)",
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
    fence: Fence,
    /// Kept open for its OS lock (SQLite).
    _file: Option<File>,
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
    /// The holder and epoch this process took the lease with, and whether it still holds it.
    pub fn fence(&self) -> &Fence {
        &self.shared.fence
    }

    /// Gives this pass's share back; the last share of the process marks the lease
    /// released (a claim dropped without this still ends: the OS lock goes with it and
    /// the lease expires).
    pub async fn release(self) {
        let Claim { shared, .. } = self;
        if let Ok(shared) = Arc::try_unwrap(shared) {
            shared.heartbeat.abort();
            shared.store.fence.lock().expect("fence lock").take();
            let now = timestamp(chrono::Utc::now());
            let released: Result<_, sqlx::Error> = on_pool!(&shared.store.pool, |pool| {
                sqlx::query(
                    "UPDATE lease SET released = TRUE, heartbeat_at = $1, expires_at = $2 WHERE holder = $3 AND epoch = $4",
                )
                .bind(&now)
                .bind(&now)
                .bind(&shared.fence.holder)
                .bind(shared.fence.epoch)
                .execute(pool)
                .await
                .map(|_| ())
            });
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
            // A share of a lost lease is no claim: passes still holding it are stopping.
            if shared.fence.is_lost() {
                return Err(ClaimError::Held(Held {
                    holder: self.lease().await.ok().flatten(),
                }));
            }
            return Ok(Claim {
                shared,
                previous: slot.previous.clone(),
                first: false,
            });
        }
        // On one host the OS lock comes first: while another process holds it, the row
        // is not even read for writing.
        let file = match self.pool {
            Pool::Sqlite(_) => Some(self.lock_file().await?),
            Pool::Postgres(_) => None,
        };
        let holder = uuid::Uuid::new_v4().to_string();
        // The lease's end by this process's clock starts before the row is written.
        let asked = Instant::now();
        let (previous, epoch) = self.take_row(&holder, file.is_some()).await?;
        let fence = Fence {
            holder,
            epoch,
            valid_until: Arc::new(Mutex::new(asked + self.lease_times.ttl)),
            lost: Arc::new(AtomicBool::new(false)),
        };
        *self.fence.lock().expect("fence lock") = Some(fence.clone());
        let heartbeat = tokio::spawn(heartbeat(self.clone(), fence.clone()));
        let shared = Arc::new(Shared {
            store: self.clone(),
            fence,
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

    /// Writes the lease row naming `holder` with the next epoch, unless a live lease
    /// stands in the way; returns the row as it was and the new epoch. `os_locked`: this
    /// process holds the OS lock beside a SQLite file.
    async fn take_row(
        &self,
        holder: &str,
        os_locked: bool,
    ) -> Result<(Option<Lease>, i64), ClaimError> {
        let host = crate::time::hostname();
        let now = chrono::Utc::now();
        Ok(on_pool!(&self.pool, |pool| {
            let mut tx = pool.begin_write().await.map_err(AuditError::from)?;
            let previous: Option<Lease> = sqlx::query_as("SELECT * FROM lease WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(AuditError::from)?;
            // With the OS lock ours, a live lease of this host belongs to a dead process;
            // any other live lease (another host's, or any on PostgreSQL) is honoured until
            // it expires.
            if let Some(p) = &previous
                && !p.released
                && (!os_locked || p.host != host)
                && p.expires_at > timestamp(now)
            {
                return Err(ClaimError::Held(Held {
                    holder: Some(p.clone()),
                }));
            }
            let epoch = previous.as_ref().map_or(1, |p| p.epoch + 1);
            sqlx::query(
                "INSERT INTO lease (id, holder, pid, host, started_at, heartbeat_at, expires_at, released, epoch) \
                 VALUES (1, $1, $2, $3, $4, $5, $6, FALSE, $7) \
                 ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, pid = excluded.pid, host = excluded.host, \
                 started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, \
                 expires_at = excluded.expires_at, released = excluded.released, epoch = excluded.epoch",
            )
            .bind(holder)
            .bind(i64::from(std::process::id()))
            .bind(&host)
            .bind(timestamp(now))
            .bind(timestamp(now))
            .bind(timestamp(now + self.lease_times.ttl))
            .bind(epoch)
            .execute(&mut *tx)
            .await
            .map_err(AuditError::from)?;
            tx.commit().await.map_err(AuditError::from)?;
            (previous, epoch)
        }))
    }

    /// The OS lock beside a SQLite file, taken without waiting.
    async fn lock_file(&self) -> Result<File, ClaimError> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path(&self.path))
            .map_err(|e| {
                ClaimError::Audit(self.open_error(format!("cannot open the lock file: {e}")))
            })?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            // A released row names the previous holder, not this one (still starting).
            Err(TryLockError::WouldBlock) => Err(ClaimError::Held(Held {
                holder: self.lease().await.ok().flatten().filter(|l| !l.released),
            })),
            Err(TryLockError::Error(e)) => Err(ClaimError::Audit(
                self.open_error(format!("cannot lock: {e}")),
            )),
        }
    }

    /// Whether this process took the lease and has since lost it (see [`Fence::is_lost`]):
    /// nothing more may be sent.
    pub fn lease_lost(&self) -> bool {
        self.fence
            .lock()
            .expect("fence lock")
            .as_ref()
            .is_some_and(Fence::is_lost)
    }

    /// How long a write sent now may take: None when this process holds no claim (nothing to
    /// fence), else the claim's time left, if that is at least `timeout` (at most half the
    /// time a holder renewing on time always has left, for a slow renewal); else why not.
    pub fn send_window(&self, timeout: Duration) -> Result<Option<Duration>, String> {
        let Some(fence) = self.fence() else {
            return Ok(None);
        };
        let times = self.lease_times;
        let need = timeout.min(times.ttl.saturating_sub(times.renew) / 2);
        let left = fence.left();
        if !left.is_zero() && left >= need {
            return Ok(Some(left));
        }
        Err(format!(
            "this process's claim on the audit log has {} ms left, less than the {} ms an answer may take (the process was paused, or cut off from the log): it sends nothing more, and whoever holds the claim next settles what is open",
            left.as_millis(),
            need.as_millis()
        ))
    }

    /// How long after its last recorded heartbeat a holder that stopped renewing may still
    /// have sent a request: on one host the OS lock shows it died (so within one renewal);
    /// a replica stops sending when its lease runs out by its own clock.
    pub fn quiet_after_heartbeat(&self) -> Duration {
        match self.pool {
            Pool::Sqlite(_) => self.lease_times.renew,
            Pool::Postgres(_) => self.lease_times.ttl,
        }
    }

    /// The lease row, if any process ever held the claim.
    pub async fn lease(&self) -> Result<Option<Lease>, AuditError> {
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT * FROM lease WHERE id = 1")
                .fetch_optional(pool)
                .await?
        }))
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

/// Writes the lease row of a log being copied, released, unless the target has one: its
/// epoch carries on, so rows of the copy never share an epoch with later holders'.
pub(super) async fn insert_released(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    lease: &Lease,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO lease (id, holder, pid, host, started_at, heartbeat_at, expires_at, released, epoch) \
         VALUES (1, $1, $2, $3, $4, $5, $5, TRUE, $6) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&lease.holder)
    .bind(lease.pid)
    .bind(&lease.host)
    .bind(&lease.started_at)
    .bind(&lease.heartbeat_at)
    .bind(lease.epoch)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The OS lock file beside the database (also taken around migrations).
pub(super) fn lock_path(db: &std::path::Path) -> std::path::PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    db.with_file_name(name)
}

/// Renews the lease every `renew`; a renewal that finds the row naming another holder
/// marks the fence lost for good.
async fn heartbeat(store: AuditStore, fence: Fence) {
    let times = store.lease_times;
    loop {
        tokio::time::sleep(times.renew).await;
        let asked = Instant::now();
        let now = chrono::Utc::now();
        let beat: Result<u64, sqlx::Error> = on_pool!(&store.pool, |pool| {
            sqlx::query(
                "UPDATE lease SET heartbeat_at = $1, expires_at = $2 WHERE id = 1 AND holder = $3 AND epoch = $4",
            )
            .bind(timestamp(now))
            .bind(timestamp(now + times.ttl))
            .bind(&fence.holder)
            .bind(fence.epoch)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        });
        match beat {
            Ok(1) => *fence.valid_until.lock().expect("fence clock") = asked + times.ttl,
            Ok(_) => {
                fence.lost.store(true, Ordering::SeqCst);
                tracing::error!(
                    epoch = fence.epoch,
                    "the audit store's lease was taken over by another process: this one sends nothing more"
                );
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the audit store's claim"),
        }
    }
}
