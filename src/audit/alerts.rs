//! What the log keeps beside the chained record, updated in place: which alerts each
//! notify target was sent (an alert goes out at most once per target's `realert` window,
//! in whichever process or replica sees the condition first, and a `resolved` follows once
//! when the condition clears), and the names servers give their customers.

use std::collections::HashMap;

use super::db::on_pool;
use super::{AuditError, AuditStore};

/// One alert condition: an event about a rule (empty for the whole pass) on a server
/// (empty for the daemon itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlertKey {
    pub event: String,
    pub rule: String,
    pub instance: String,
}

impl AuditStore {
    /// Whether `target` is to be sent alert `key` now: it is not firing for the target, or
    /// was last sent before `cutoff`. When so it is marked firing, sent `now`, in the same
    /// statement, so of two processes seeing it at once one sends it.
    pub async fn alert_due(
        &self,
        target: &str,
        key: &AlertKey,
        now: &str,
        cutoff: &str,
    ) -> Result<bool, AuditError> {
        let rows = on_pool!(&self.pool, |pool| {
            sqlx::query(
                "INSERT INTO alerts (target, event, rule, instance, firing, sent_at) \
                 VALUES ($1, $2, $3, $4, TRUE, $5) \
                 ON CONFLICT (target, event, rule, instance) DO UPDATE SET firing = TRUE, sent_at = $5 \
                 WHERE NOT alerts.firing OR alerts.sent_at < $6",
            )
            .bind(target)
            .bind(&key.event)
            .bind(&key.rule)
            .bind(&key.instance)
            .bind(now)
            .bind(cutoff)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(rows == 1)
    }

    /// Whether alert `key` was firing for `target`; it is cleared, so one process sends the
    /// `resolved`.
    pub async fn alert_cleared(
        &self,
        target: &str,
        key: &AlertKey,
        now: &str,
    ) -> Result<bool, AuditError> {
        let rows = on_pool!(&self.pool, |pool| {
            sqlx::query(
                "UPDATE alerts SET firing = FALSE, sent_at = $5 \
                 WHERE target = $1 AND event = $2 AND rule = $3 AND instance = $4 AND firing",
            )
            .bind(target)
            .bind(&key.event)
            .bind(&key.rule)
            .bind(&key.instance)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(rows == 1)
    }

    /// The alerts firing for any target: (target, event, rule, instance).
    pub async fn firing_alerts(&self) -> Result<Vec<(String, AlertKey)>, AuditError> {
        let rows: Vec<(String, String, String, String)> = on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT target, event, rule, instance FROM alerts WHERE firing")
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(target, event, rule, instance)| {
                let key = AlertKey {
                    event,
                    rule,
                    instance,
                };
                (target, key)
            })
            .collect())
    }
}

impl AuditStore {
    /// The customers' names this log knows: `cust_id` -> `cust_name` (of any server; empty
    /// for an id the server's `/tenants` did not name). None in a log written before
    /// casewarden kept them, opened read-only.
    pub async fn customer_names(&self) -> Result<HashMap<String, String>, AuditError> {
        if !self.has_table("customers").await? {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, String)> = on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT cust_id, cust_name FROM customers ORDER BY seen_at")
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().collect())
    }

    /// Remembers the names server `instance` gives its customers, writing only what changed.
    pub async fn remember_customers(
        &self,
        instance: &str,
        named: &[(String, String)],
    ) -> Result<(), AuditError> {
        let known = self.customer_names().await?;
        let now = crate::time::timestamp(chrono::Utc::now());
        let changed = named
            .iter()
            .filter(|(id, name)| known.get(id) != Some(name));
        for (id, name) in changed {
            on_pool!(&self.pool, |pool| {
                sqlx::query(
                    "INSERT INTO customers (instance, cust_id, cust_name, seen_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (instance, cust_id) DO UPDATE SET cust_name = $3, seen_at = $4",
                )
                .bind(instance)
                .bind(id)
                .bind(name)
                .bind(&now)
                .execute(pool)
                .await?
                .rows_affected()
            });
        }
        Ok(())
    }
}

/// A row of `customers` or `alerts` as `audit migrate` copies it: the table's columns as
/// text, and `firing` for an alert.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct KeptRow {
    a: String,
    b: String,
    c: String,
    d: String,
    firing: bool,
    at: String,
}

impl AuditStore {
    /// The customers' names and the alerts' state, for `audit migrate` (none in a log that
    /// predates them).
    pub(super) async fn kept_rows(&self) -> Result<(Vec<KeptRow>, Vec<KeptRow>), AuditError> {
        if !self.has_table("customers").await? {
            return Ok((Vec::new(), Vec::new()));
        }
        let (customers, alerts) = on_pool!(&self.pool, |pool| {
            let customers: Vec<KeptRow> = sqlx::query_as(
                "SELECT instance AS a, cust_id AS b, cust_name AS c, '' AS d, FALSE AS firing, seen_at AS at FROM customers",
            )
            .fetch_all(pool)
            .await?;
            let alerts: Vec<KeptRow> = sqlx::query_as(
                "SELECT target AS a, event AS b, rule AS c, instance AS d, firing, sent_at AS at FROM alerts",
            )
            .fetch_all(pool)
            .await?;
            (customers, alerts)
        });
        Ok((customers, alerts))
    }
}

/// Writes what [`AuditStore::kept_rows`] read into a PostgreSQL log.
pub(super) async fn insert_kept(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    customers: &[KeptRow],
    alerts: &[KeptRow],
) -> Result<(), sqlx::Error> {
    for r in customers {
        sqlx::query("INSERT INTO customers (instance, cust_id, cust_name, seen_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(&r.a)
            .bind(&r.b)
            .bind(&r.c)
            .bind(&r.at)
            .execute(&mut **tx)
            .await?;
    }
    for r in alerts {
        sqlx::query("INSERT INTO alerts (target, event, rule, instance, firing, sent_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING")
            .bind(&r.a)
            .bind(&r.b)
            .bind(&r.c)
            .bind(&r.d)
            .bind(r.firing)
            .bind(&r.at)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
