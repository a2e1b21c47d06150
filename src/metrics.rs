//! Prometheus metrics for `GET /metrics`: passes, changes, API requests, token renewals,
//! pass durations, disabled rules and notifications.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    pub rule: String,
    pub outcome: String,
    /// The server (config instance name).
    pub instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
    pub outcome: String,
    pub instance: String,
}

/// Distinct customers given their own label; the rest are counted as `other`, so a server
/// sending arbitrary `cust_id`s cannot grow the metrics without bound.
const TENANT_LABELS: usize = 200;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    /// The server's host and port (never the rest of its URL).
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifyLabels {
    pub event: String,
    pub outcome: String,
}

/// Every metric casewarden exports; cheap to clone through the `Arc`.
pub struct Metrics {
    registry: Registry,
    pub passes: Family<StatusLabel, Counter>,
    pub cases_seen: Counter,
    pub cases_remembered: Counter,
    pub changes: Family<ChangeLabels, Counter>,
    pub api_requests: Family<StatusLabel, Counter>,
    pub token_renewals: Counter,
    pub pass_duration: Histogram,
    pub rules_disabled: Gauge,
    pub ticks_skipped: Counter,
    pub rule_errors: Family<RuleLabels, Counter>,
    pub last_success: Gauge,
    /// 1 while this daemon may run passes (the leader, or alone on a SQLite file).
    pub leader: Gauge,
    pub lease_epoch: Gauge,
    pub notifications: Family<NotifyLabels, Counter>,
    api_in_flight: Family<ServerLabel, Gauge>,
    api_window: Family<ServerLabel, Gauge>,
    api_latency: Family<ServerLabel, Histogram, fn() -> Histogram>,
    tenant_changes: Family<TenantLabels, Counter>,
    tenants_labelled: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("casewarden"),
            passes: Family::default(),
            cases_seen: Counter::default(),
            cases_remembered: Counter::default(),
            changes: Family::default(),
            api_requests: Family::default(),
            token_renewals: Counter::default(),
            pass_duration: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            rules_disabled: Gauge::default(),
            ticks_skipped: Counter::default(),
            rule_errors: Family::default(),
            last_success: Gauge::default(),
            leader: Gauge::default(),
            lease_epoch: Gauge::default(),
            notifications: Family::default(),
            api_in_flight: Family::default(),
            api_window: Family::default(),
            api_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            tenant_changes: Family::default(),
            tenants_labelled: Default::default(),
        };
        metrics.register();
        metrics.register_api();
        Arc::new(metrics)
    }

    /// Names and explains each metric in the registry, in the order `render` lists them.
    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "leader",
            "1 when this daemon runs the passes (the leader of the replicas sharing a PostgreSQL log, or alone on a SQLite file), 0 when a follower",
            self.leader.clone(),
        );
        r.register(
            "lease_epoch",
            "The epoch of the audit log's lease this daemon leads with (0: not leading, or on a SQLite file)",
            self.lease_epoch.clone(),
        );
        r.register(
            "tenant_changes",
            "Field changes by customer (cust_id; `other` past the first 200), outcome (applied, failed, skipped) and server (instance)",
            self.tenant_changes.clone(),
        );
        r.register(
            "notifications",
            "Notification attempts by event and outcome (delivered, attempt_failed, gave_up, dropped)",
            self.notifications.clone(),
        );
        r.register(
            "rule_errors",
            "Cases a rule failed on (a script error or a sandbox stop), by rule",
            self.rule_errors.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the end of the last pass that got through its work (ok, dry-run, budget-exhausted, degraded or failed-changes)",
            self.last_success.clone(),
        );
        r.register("passes", "Passes by final status", self.passes.clone());
        r.register(
            "cases_seen",
            "Cases the passes' rules saw (counted from remembered verdicts or evaluated)",
            self.cases_seen.clone(),
        );
        r.register(
            "cases_remembered",
            "Cases a pass counted from the verdict remembered for their version instead of evaluating them again",
            self.cases_remembered.clone(),
        );
        r.register(
            "changes",
            "Changes by rule, outcome (applied, failed, skipped, deferred) and server (instance), and cases an exempt or snooze tag kept a rule off (exempt)",
            self.changes.clone(),
        );
        r.register(
            "api_requests",
            "Cases API requests by HTTP status (or error)",
            self.api_requests.clone(),
        );
        r.register(
            "token_renewals",
            "Access tokens fetched",
            self.token_renewals.clone(),
        );
        r.register(
            "pass_duration_seconds",
            "Wall time of a pass",
            self.pass_duration.clone(),
        );
        r.register(
            "rules_disabled",
            "Rules disabled by the circuit breaker",
            self.rules_disabled.clone(),
        );
        r.register(
            "ticks_skipped",
            "Schedule ticks skipped because the previous pass still ran",
            self.ticks_skipped.clone(),
        );
    }

    /// The requests to each server: in flight, the window, how long they took.
    fn register_api(&mut self) {
        let r = &mut self.registry;
        r.register(
            "api_in_flight",
            "Cases API requests in flight now, by server (host:port)",
            self.api_in_flight.clone(),
        );
        r.register(
            "api_window",
            "Requests the adaptive window allows in flight (halved when a server answers 429 or 5xx or times out, grown back as answers come; at most stellar.max_in_flight)",
            self.api_window.clone(),
        );
        r.register(
            "api_request_duration_seconds",
            "Wall time of one Cases API request attempt, from send to the end of its answer, by server",
            self.api_latency.clone(),
        );
    }

    /// Counts `n` changes with `outcome` to the cases of customer `tenant` on `instance`.
    pub fn tenant_changes(&self, instance: &str, tenant: &str, outcome: &str, n: u64) {
        let tenant = {
            let mut seen = self
                .tenants_labelled
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if seen.contains(tenant) || seen.len() < TENANT_LABELS {
                seen.insert(tenant.to_string());
                tenant.to_string()
            } else {
                "other".to_string()
            }
        };
        self.tenant_changes
            .get_or_create(&TenantLabels {
                tenant,
                outcome: outcome.to_string(),
                instance: instance.to_string(),
            })
            .inc_by(n);
    }

    /// Counts one API answer (`status` is the HTTP code, or "error" for no answer).
    pub fn api_request(&self, status: &str) {
        self.api_requests
            .get_or_create(&StatusLabel {
                status: status.to_string(),
            })
            .inc();
    }

    /// A request to `server` entered the window: `now` is (in flight, window).
    pub fn in_flight(&self, server: &str, now: (usize, usize)) {
        let label = ServerLabel {
            server: server.to_string(),
        };
        self.api_in_flight.get_or_create(&label).set(now.0 as i64);
        self.api_window.get_or_create(&label).set(now.1 as i64);
    }

    /// A request to `server` was answered after `took`.
    pub fn request_took(&self, server: &str, took: std::time::Duration, now: (usize, usize)) {
        let label = ServerLabel {
            server: server.to_string(),
        };
        self.api_latency
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        self.in_flight(server, now);
    }

    /// The text exposition format, with the token renewal count as the client knows it.
    pub fn render(&self, token_renewals: u64) -> String {
        self.token_renewals
            .inner()
            .store(token_renewals, Ordering::Relaxed);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customers_past_the_label_limit_are_counted_as_other() {
        let m = Metrics::new();
        for i in 0..TENANT_LABELS + 5 {
            m.tenant_changes("eu", &format!("cust-{i}"), "applied", 2);
        }
        m.tenant_changes("eu", "cust-0", "applied", 1);
        let text = m.render(0);
        assert!(
            text.contains(
                "casewarden_tenant_changes_total{tenant=\"cust-0\",outcome=\"applied\",instance=\"eu\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "casewarden_tenant_changes_total{tenant=\"other\",outcome=\"applied\",instance=\"eu\"} 10"
            )
        );
        let labelled = text
            .lines()
            .filter(|l| l.starts_with("casewarden_tenant_changes_total{"))
            .count();
        assert_eq!(labelled, TENANT_LABELS + 1);
    }
}
