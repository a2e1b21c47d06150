//! Reading rows back for people and scripts: the filters of `casewarden audit`.

use futures::{Stream, StreamExt};
use sqlx::AssertSqlSafe;

use super::db::{numbered, on_pool};
use super::{AuditError, AuditStore, EventRow, Outcome};

/// Filters for `casewarden audit`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub case_id: Option<String>,
    pub ticket_id: Option<i64>,
    pub rule: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub outcome: Option<Outcome>,
    pub run_id: Option<String>,
    /// Rows about cases of this customer (`cust_id`).
    pub tenant: Option<String>,
    /// Rows about cases on this server (config instance name; `default` also matches
    /// rows written before instances were recorded).
    pub instance: Option<String>,
    pub limit: Option<i64>,
    /// Rows to pass over first (paging; with `limit`).
    pub offset: Option<i64>,
    /// Newest rows first (with `limit`: the newest N).
    pub newest: bool,
}

impl AuditStore {
    /// Rows matching `filter`, oldest first, streamed from the database.
    pub fn query<'a>(
        &'a self,
        filter: &'a Filter,
    ) -> impl Stream<Item = Result<EventRow, AuditError>> + 'a {
        let mut sql = String::from("SELECT * FROM events WHERE 1 = 1");
        let conds: [(&str, bool); 9] = [
            (" AND case_id = ?", filter.case_id.is_some()),
            (" AND ticket_id = ?", filter.ticket_id.is_some()),
            (" AND rule = ?", filter.rule.is_some()),
            (" AND recorded_at >= ?", filter.since.is_some()),
            (" AND recorded_at <= ?", filter.until.is_some()),
            (" AND outcome = ?", filter.outcome.is_some()),
            (" AND run_id = ?", filter.run_id.is_some()),
            (" AND tenant = ?", filter.tenant.is_some()),
            (
                " AND (instance = ? OR (instance IS NULL AND ? = 'default'))",
                filter.instance.is_some(),
            ),
        ];
        for (cond, on) in conds {
            if on {
                sql.push_str(cond);
            }
        }
        sql.push_str(if filter.newest {
            " ORDER BY seq DESC"
        } else {
            " ORDER BY seq"
        });
        if filter.limit.is_some() {
            sql.push_str(" LIMIT ?");
            if filter.offset.is_some() {
                sql.push_str(" OFFSET ?");
            }
        }
        let sql = numbered(&sql);
        on_pool!(&self.pool, |pool| {
            let mut q = sqlx::query_as::<_, EventRow>(AssertSqlSafe(sql));
            if let Some(v) = &filter.case_id {
                q = q.bind(v);
            }
            if let Some(v) = filter.ticket_id {
                q = q.bind(v);
            }
            if let Some(v) = &filter.rule {
                q = q.bind(v);
            }
            if let Some(v) = &filter.since {
                q = q.bind(v);
            }
            if let Some(v) = &filter.until {
                q = q.bind(v);
            }
            if let Some(v) = filter.outcome {
                q = q.bind(v.as_str());
            }
            if let Some(v) = &filter.run_id {
                q = q.bind(v);
            }
            if let Some(v) = &filter.tenant {
                q = q.bind(v);
            }
            if let Some(v) = &filter.instance {
                q = q.bind(v).bind(v);
            }
            if let Some(v) = filter.limit {
                q = q.bind(v);
                if let Some(o) = filter.offset {
                    q = q.bind(o);
                }
            }
            q.fetch(pool).map(|r| r.map_err(AuditError::from)).boxed()
        })
    }
}
