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
    pub changes: Family<ChangeLabels, Counter>,
    pub api_requests: Family<StatusLabel, Counter>,
    pub token_renewals: Counter,
    pub pass_duration: Histogram,
    pub rules_disabled: Gauge,
    pub ticks_skipped: Counter,
    pub rule_errors: Family<RuleLabels, Counter>,
    pub last_success: Gauge,
    pub notifications: Family<NotifyLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("casewarden");
        let passes = Family::<StatusLabel, Counter>::default();
        let changes = Family::<ChangeLabels, Counter>::default();
        let api_requests = Family::<StatusLabel, Counter>::default();
        let token_renewals = Counter::default();
        let pass_duration = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        let rules_disabled = Gauge::default();
        let ticks_skipped = Counter::default();
        let rule_errors = Family::<RuleLabels, Counter>::default();
        let last_success = Gauge::default();
        let notifications = Family::<NotifyLabels, Counter>::default();
        registry.register(
            "notifications",
            "Notification attempts by event and outcome (delivered, attempt_failed, gave_up, dropped)",
            notifications.clone(),
        );
        registry.register(
            "rule_errors",
            "Cases a rule failed on (a script error or a sandbox stop), by rule",
            rule_errors.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the end of the last pass that got through its work (ok, dry-run, budget-exhausted, degraded or failed-changes)",
            last_success.clone(),
        );
        registry.register("passes", "Passes by final status", passes.clone());
        registry.register(
            "changes",
            "Changes by rule and outcome (applied, failed, skipped, deferred), and cases an exempt or snooze tag kept a rule off (exempt)",
            changes.clone(),
        );
        registry.register(
            "api_requests",
            "Cases API requests by HTTP status (or error)",
            api_requests.clone(),
        );
        registry.register(
            "token_renewals",
            "Access tokens fetched",
            token_renewals.clone(),
        );
        registry.register(
            "pass_duration_seconds",
            "Wall time of a pass",
            pass_duration.clone(),
        );
        registry.register(
            "rules_disabled",
            "Rules disabled by the circuit breaker",
            rules_disabled.clone(),
        );
        registry.register(
            "ticks_skipped",
            "Schedule ticks skipped because the previous pass still ran",
            ticks_skipped.clone(),
        );
        Arc::new(Metrics {
            registry,
            passes,
            changes,
            api_requests,
            token_renewals,
            pass_duration,
            rules_disabled,
            ticks_skipped,
            rule_errors,
            last_success,
            notifications,
        })
    }

    /// Counts one API answer (`status` is the HTTP code, or "error" for no answer).
    pub fn api_request(&self, status: &str) {
        self.api_requests
            .get_or_create(&StatusLabel {
                status: status.to_string(),
            })
            .inc();
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
