//! Moving a log into PostgreSQL (`casewarden audit migrate --to URL`): every row copied as
//! it is (seq, times, hashes, epochs), so the copy's chain is the same chain and verifies
//! to the same head. A copy stopped half-way is resumed: rows the target already holds
//! must be the same rows.

use std::collections::HashSet;

use futures::StreamExt;

use super::alerts::insert_kept;
use super::db::{Backend, Pool, insert_events, on_pool};
use super::lease::insert_released;
use super::passes::insert_pass;
use super::rule_texts::insert_rule_texts;
use super::users::insert_users;
use super::{AuditError, AuditStore, EventRow, Verification};

/// Rows copied per transaction.
const BATCH: usize = 2_000;

/// What a copy did.
#[derive(Debug, Clone, PartialEq)]
pub struct Copied {
    /// Rows the target held already (an earlier, interrupted copy).
    pub already: i64,
    pub rows: u64,
    pub passes: u64,
    /// The chain head both logs verify to.
    pub head: String,
    /// Rows in the target's chain.
    pub total: u64,
    /// Rows the target holds beyond the source's: the log was moved and continued there.
    pub continued: i64,
}

/// Why a copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(
        "the target already holds a different log (its newest row, seq {seq}, is not a row of the source): nothing was copied; use an empty database"
    )]
    Diverged { seq: i64 },
    #[error("the source log does not verify ({0}); fix or restore it before moving it")]
    SourceBroken(String),
    #[error(
        "the copy does not verify ({0}); the target keeps what was written, the source is unchanged"
    )]
    CopyBroken(String),
}

impl From<sqlx::Error> for CopyError {
    fn from(e: sqlx::Error) -> CopyError {
        CopyError::Audit(e.into())
    }
}

impl AuditStore {
    /// Copies this log's rows, passes, users and lease epoch into `target` (a PostgreSQL
    /// log), then verifies both chains end at the same head. `progress` is told how many
    /// rows are copied so far. Hold the source's claim while copying: nothing may write it.
    pub async fn copy_into(
        &self,
        target: &AuditStore,
        progress: impl Fn(u64),
    ) -> Result<Copied, CopyError> {
        let Pool::Postgres(to) = &target.pool else {
            unreachable!("the target of a copy is opened with open_postgres")
        };
        let source_head = match self.verify().await? {
            Verification::Intact { head, .. } => head,
            broken => return Err(CopyError::SourceBroken(describe(&broken))),
        };
        let (already, head) = target.head().await?;
        if already > 0 && self.seq_of_hash(&head).await? != Some(already) {
            // Moved earlier and written since: the target holds the whole source.
            let (rows, source_last) = self.head().await?;
            if rows < already && target.seq_of_hash(&source_last).await? == Some(rows) {
                let total = match target.verify().await? {
                    Verification::Intact { rows, .. } => rows,
                    broken => return Err(CopyError::CopyBroken(describe(&broken))),
                };
                return Ok(Copied {
                    already: rows,
                    rows: 0,
                    passes: 0,
                    head: source_head,
                    total,
                    continued: already - rows,
                });
            }
            return Err(CopyError::Diverged { seq: already });
        }
        let mut rows = on_pool!(&self.pool, |pool| {
            sqlx::query_as::<_, EventRow>("SELECT * FROM events WHERE seq > $1 ORDER BY seq")
                .bind(already)
                .fetch(pool)
                .chunks(BATCH)
                .boxed()
        });
        let mut copied = 0u64;
        while let Some(batch) = rows.next().await {
            let batch = batch.into_iter().collect::<Result<Vec<EventRow>, _>>()?;
            let mut tx = to.begin_write().await?;
            insert_events!(&mut *tx, &batch);
            tx.commit().await?;
            copied += batch.len() as u64;
            progress(copied);
        }
        let passes = self.copy_passes(to).await?;
        self.copy_users_and_lease(to).await?;
        // Fresh statistics, or the planner scans the whole table for each open change.
        sqlx::query("ANALYZE events, passes").execute(to).await?;
        match target.verify().await? {
            Verification::Intact { rows, head, .. } if head == source_head => Ok(Copied {
                already,
                rows: copied,
                passes,
                head,
                total: rows,
                continued: 0,
            }),
            Verification::Intact { head, .. } => Err(CopyError::CopyBroken(format!(
                "its head is {head}, the source's {source_head}"
            ))),
            broken => Err(CopyError::CopyBroken(describe(&broken))),
        }
    }

    /// The passes the target does not hold yet, sealed or not, as they are.
    async fn copy_passes(&self, to: &sqlx::PgPool) -> Result<u64, CopyError> {
        let have: HashSet<String> = sqlx::query_scalar::<_, String>("SELECT id FROM passes")
            .fetch_all(to)
            .await?
            .into_iter()
            .collect();
        let mut tx = to.begin_write().await?;
        let mut n = 0;
        for p in self
            .passes()
            .await?
            .into_iter()
            .filter(|p| !have.contains(&p.id))
        {
            insert_pass(&mut tx, &p).await?;
            n += 1;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// The users' emails, the rule texts, the customers' names, the alerts sent, and the
    /// lease's epoch (released), so epochs keep growing.
    async fn copy_users_and_lease(&self, to: &sqlx::PgPool) -> Result<(), CopyError> {
        let users = self.user_emails().await?;
        let lease = self.lease().await?;
        let (texts, pass_rules) = (self.rule_texts().await?, self.pass_rules().await?);
        let (customers, alerts) = self.kept_rows().await?;
        let mut tx = to.begin_write().await?;
        insert_users(&mut tx, &users).await?;
        insert_rule_texts(&mut tx, &texts, &pass_rules).await?;
        insert_kept(&mut tx, &customers, &alerts).await?;
        if let Some(lease) = &lease {
            insert_released(&mut tx, lease).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn describe(v: &Verification) -> String {
    match v {
        Verification::Intact { rows, head, .. } => format!("intact: {rows} row(s), head {head}"),
        Verification::Broken { seq, problem, .. } => format!("broken at row {seq}: {problem}"),
        Verification::BrokenPass { id, problem } => format!("pass {id}: {problem}"),
    }
}
