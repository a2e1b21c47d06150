//! The one writer of the chain: rows appended in one transaction under the log's write
//! lock, fenced by the lease, hashed into the chain (keyed when `audit.chain_key_file` is
//! set); a pass's row started or sealed in the same transaction as its chained row.

use super::db::{Backend, bind_totals, insert_events, on_pool};
use super::key::ChainKeys;
use super::{AuditError, AuditStore, EventRow, GENESIS, NewEvent, PassRow, PassTotals, timestamp};

/// What [`AuditStore::write_chained`] does to a pass besides appending.
#[derive(Clone, Copy)]
pub(super) enum PassMark<'a> {
    Start {
        id: &'a str,
        trigger: &'a str,
        fingerprint: &'a str,
        dry_run: bool,
    },
    Seal(&'a str, &'a PassTotals),
}

/// Refuses the write of a holder that lost the lease (paused past it while another took
/// over): it writes nothing more, so it cannot settle what the new holder settles.
macro_rules! check_fence {
    ($store:expr, $tx:expr) => {{
        let fence = $store.fence();
        if let Some(mine) = &fence {
            let current: Option<(String, i64)> =
                sqlx::query_as("SELECT holder, epoch FROM lease WHERE id = 1")
                    .fetch_optional(&mut *$tx)
                    .await?;
            if current
                .as_ref()
                .is_none_or(|(h, e)| *h != mine.holder || *e != mine.epoch)
            {
                return Err(AuditError::Fenced {
                    epoch: mine.epoch,
                    current: current.map(|c| c.1),
                });
            }
        }
        fence.map(|f| f.epoch)
    }};
}

/// Starts or seals the pass `$mark` names inside `$tx` (the chain's head being `$head`);
/// evaluates to (the chained row of its start or end, the sealed row).
macro_rules! mark_pass {
    ($store:expr, $tx:expr, $mark:expr, $head:expr) => {{
        match $mark {
            None => (None, None),
            Some(PassMark::Start {
                id,
                trigger,
                fingerprint,
                dry_run,
            }) => {
                sqlx::query(
                    "INSERT INTO passes (id, started_at, trigger_kind, rules_fingerprint, dry_run, status, instance) VALUES ($1, $2, $3, $4, $5, 'running', $6)",
                )
                .bind(id)
                .bind(timestamp(chrono::Utc::now()))
                .bind(trigger)
                .bind(fingerprint)
                .bind(dry_run)
                .bind($store.instance.as_deref())
                .execute(&mut *$tx)
                .await?;
                let start = super::row::pass_started(id, trigger, fingerprint, dry_run);
                (Some(start), None)
            }
            Some(PassMark::Seal(id, totals)) => {
                let mut row: PassRow = sqlx::query_as("SELECT * FROM passes WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *$tx)
                    .await?;
                row.finished_at = Some(timestamp(chrono::Utc::now()));
                row.totals = totals.clone();
                let at = $head.as_ref().map(|h: &(i64, String)| h.1.clone());
                row.chain_head = Some(at.unwrap_or_else(|| GENESIS.to_string()));
                row.hash = Some(row.compute_hash());
                let update = sqlx::query(
                    "UPDATE passes SET finished_at = $1, cases_seen = $2, planned = $3, applied = $4, failed = $5, skipped = $6, status = $7, error = $8, chain_head = $9, hash = $10 WHERE id = $11",
                )
                .bind(&row.finished_at);
                bind_totals(update, totals)
                    .bind(&row.chain_head)
                    .bind(&row.hash)
                    .bind(id)
                    .execute(&mut *$tx)
                    .await?;
                (Some(super::row::pass_finished(&row)), Some(row))
            }
        }
    }};
}

impl AuditStore {
    /// Appends rows in one transaction, extending the hash chain; returns their `seq`s.
    /// When this returns Ok the rows are on disk (synchronous=FULL).
    pub async fn append(&self, events: &[NewEvent]) -> Result<Vec<i64>, AuditError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.write_chained(events, None).await?.0)
    }

    /// Appends `events` to the chain and, with `mark`, starts or seals a pass's row in the
    /// same transaction, with the chained row of its start or end (which carries the sealed
    /// row's hash): a pass row exists exactly when its start is chained, and is sealed
    /// exactly when its end is.
    pub(super) async fn write_chained(
        &self,
        events: &[NewEvent],
        mark: Option<PassMark<'_>>,
    ) -> Result<(Vec<i64>, Option<(PassRow, String)>), AuditError> {
        let _guard = self.write.lock().await;
        on_pool!(&self.pool, |pool| {
            // The write lock is taken before reading the head, so two writers (even in two
            // processes, or on two hosts sharing PostgreSQL) can never fork the chain.
            let mut tx = pool.begin_write().await?;
            let head: Option<(i64, String)> =
                sqlx::query_as("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(&mut *tx)
                    .await?;
            let epoch = check_fence!(self, tx);
            let (end, sealed) = mark_pass!(self, tx, mark, head);
            let rows = self.rows(events.iter().chain(end.as_ref()), head, epoch);
            insert_events!(&mut *tx, &rows);
            tx.commit().await?;
            let head = rows.last().map(|r| r.hash.clone()).unwrap_or_default();
            Ok((
                rows.iter().map(|r| r.seq).collect(),
                sealed.map(|s| (s, head)),
            ))
        })
    }

    /// The rows to append after `head`, hashed into the chain.
    fn rows<'e>(
        &self,
        events: impl Iterator<Item = &'e NewEvent>,
        head: Option<(i64, String)>,
        epoch: Option<i64>,
    ) -> Vec<EventRow> {
        let (mut seq, mut prev) = head.unwrap_or((0, GENESIS.to_string()));
        let now = timestamp(chrono::Utc::now());
        let mut rows = Vec::with_capacity(events.size_hint().0);
        for e in events {
            seq += 1;
            let mut row = EventRow {
                seq,
                run_id: e.run_id.clone(),
                recorded_at: now.clone(),
                rule: e.rule.clone(),
                rule_hash: e.rule_hash.clone(),
                case_id: e.case.id().to_string(),
                ticket_id: e.case.ticket_id(),
                field: e.field.clone(),
                old: e.old.clone(),
                new: e.new.clone(),
                reason: e.reason.clone(),
                dry_run: e.dry_run,
                outcome: e.outcome,
                error: e.error.clone(),
                http_status: e.http_status,
                planned_seq: e.planned_seq,
                prev_hash: prev,
                hash: String::new(),
                tenant: e.case.tenant().map(str::to_string),
                instance: self.instance.as_deref().map(str::to_string),
                epoch,
            };
            row.hash = row.hash_with(self.chain_keys.as_deref().map(ChainKeys::current));
            prev = row.hash.clone();
            rows.push(row);
        }
        rows
    }
}
