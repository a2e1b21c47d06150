//! Notifications (`[[notify]]`): webhooks for what a person should know without watching
//! the journal: a rule halted by the guard or disabled by the breaker, a pass that failed,
//! an exhausted budget, an audit log that cannot be written, the daemon starting and
//! stopping, and a daily digest. Sent off the pass path: a pass hands a notice to a
//! bounded queue and goes on; a task delivers it, retrying with backoff, each attempt
//! counted in `/metrics` and logged (by host: a webhook URL is itself a secret). A lasting
//! condition goes to a target once per its `realert` window, whichever process finds it
//! (the audit store remembers), and a `resolved` follows when a pass finds it cleared.

mod deliver;
pub mod events;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::audit::{AlertKey, AuditStore};
use crate::metrics::Metrics;
use crate::secret::Secret;
pub use deliver::{Delivered, Delivery, signature};
use deliver::{Tally, count, deliver_all};

/// What a notification is about (`events = [...]` in a `[[notify]]` block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    GuardHalt,
    BreakerTrip,
    PassFailed,
    BudgetExhausted,
    AuditFailure,
    DaemonStart,
    DaemonStop,
    DailyDigest,
    /// Another automation set back what casewarden applied (yielded to, or a fight).
    Fight,
    /// An alert's condition cleared (a rule no longer halted, passes succeed again).
    Resolved,
    /// The daemon could not reload its rules; the previous set keeps running.
    ReloadFailed,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::GuardHalt,
        EventKind::BreakerTrip,
        EventKind::PassFailed,
        EventKind::BudgetExhausted,
        EventKind::AuditFailure,
        EventKind::DaemonStart,
        EventKind::DaemonStop,
        EventKind::DailyDigest,
        EventKind::Fight,
        EventKind::Resolved,
        EventKind::ReloadFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::GuardHalt => "guard_halt",
            EventKind::BreakerTrip => "breaker_trip",
            EventKind::PassFailed => "pass_failed",
            EventKind::BudgetExhausted => "budget_exhausted",
            EventKind::AuditFailure => "audit_failure",
            EventKind::DaemonStart => "daemon_start",
            EventKind::DaemonStop => "daemon_stop",
            EventKind::DailyDigest => "daily_digest",
            EventKind::Fight => "fight",
            EventKind::Resolved => "resolved",
            EventKind::ReloadFailed => "reload_failed",
        }
    }
}

/// The body format of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `{"event", "at", "host", "text", "details"}`.
    #[default]
    Json,
    /// Slack's incoming webhook: `{"text"}`.
    Slack,
}

/// One notification: a line for people and details for programs.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub event: EventKind,
    pub text: String,
    pub details: serde_json::Value,
    /// Only to this target (a digest is per target); None: every target subscribed.
    pub only: Option<usize>,
    /// A condition that lasts (a halted rule, failing passes): sent at most once per
    /// target's `realert` window, `resolved` when it clears. None: sent every time.
    pub key: Option<AlertKey>,
}

/// One `[[notify]]` block, checked.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: reqwest::Url,
    pub kind: Kind,
    pub events: Vec<EventKind>,
    pub secret: Option<Secret>,
    /// First wait before a failed delivery is tried again.
    pub retry_base: Duration,
    /// The same alert at most once per this window.
    pub realert: Duration,
}

impl Target {
    /// How the alert memory names the target: a digest of its URL, which is a secret.
    fn id(&self) -> String {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(self.url.as_str().as_bytes())[..8])
    }

    fn wants(&self, event: EventKind) -> bool {
        self.events.contains(&event)
    }

    /// Who the logs name: scheme, host and port, never the path (Slack's holds its key).
    fn label(&self) -> String {
        format!(
            "{}://{}{}",
            self.url.scheme(),
            self.url.host_str().unwrap_or("?"),
            self.url.port().map(|p| format!(":{p}")).unwrap_or_default()
        )
    }
}

/// Notices waiting beyond this are dropped (and counted): a dead receiver never holds
/// memory or a pass.
const QUEUE: usize = 256;

/// The sending side, cheap to clone; `send` never waits.
#[derive(Clone)]
pub struct Notifier {
    tx: Option<mpsc::Sender<Notice>>,
    metrics: Arc<Metrics>,
    targets: Arc<Vec<Target>>,
    tally: Arc<Tally>,
}

impl Notifier {
    /// Starts delivering to `targets`; with none, `send` does nothing.
    pub fn start(targets: Vec<Target>, metrics: Arc<Metrics>) -> (Notifier, Delivery) {
        let tally = Arc::new(Tally::default());
        let targets = Arc::new(targets);
        let (tx, task) = match targets.is_empty() {
            true => (None, None),
            false => {
                let (tx, rx) = mpsc::channel(QUEUE);
                let task = tokio::spawn(deliver_all(
                    rx,
                    targets.clone(),
                    metrics.clone(),
                    tally.clone(),
                ));
                (Some(tx), Some(task))
            }
        };
        let notifier = Notifier {
            tx,
            metrics,
            targets,
            tally: tally.clone(),
        };
        (notifier, Delivery { task, tally })
    }

    /// Whether any target is configured.
    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    pub fn send(&self, notice: Notice) {
        let Some(tx) = &self.tx else { return };
        let event = notice.event;
        let wanted: Vec<usize> = self.receivers(&notice).collect();
        let key = notice.key.clone();
        self.tally.update(|c| c.pending += wanted.len());
        if tx.try_send(notice).is_err() {
            tracing::warn!(
                event = event.as_str(),
                "notification dropped: {QUEUE} are already waiting (is the receiver down?)"
            );
            self.count(event, "dropped");
            self.tally.update(|c| {
                c.pending -= wanted.len();
                c.dropped += wanted.len();
            });
            for i in wanted {
                self.tally.lose(i, key.as_ref());
            }
        }
    }

    /// Forgets, in `store`, the alerts that never reached their target: the next pass that
    /// finds the condition sends them again.
    pub async fn forget_lost(&self, store: &AuditStore) {
        let lost = std::mem::take(&mut *self.tally.lost.lock().unwrap_or_else(|e| e.into_inner()));
        let stamp = crate::time::timestamp(chrono::Utc::now());
        for (i, key) in lost {
            if let Err(e) = store
                .alert_cleared(&self.targets[i].id(), &key, &stamp)
                .await
            {
                tracing::warn!(error = %e, "cannot forget an alert that was not delivered");
            }
        }
    }

    /// The targets a notice goes to.
    fn receivers<'a>(&'a self, n: &'a Notice) -> impl Iterator<Item = usize> + 'a {
        self.targets
            .iter()
            .enumerate()
            .filter(move |(i, t)| n.only.map_or(t.wants(n.event), |only| only == *i))
            .map(|(i, _)| i)
    }

    /// Sends what a pass (or a reload) found: an alert (a notice with a key) only to the
    /// targets whose `realert` window since they were last sent it has passed, as
    /// `store` remembers; and a `resolved` to each target for each key of `evaluated`
    /// that was firing for it and is not among `notices`. A store that cannot be read
    /// sends rather than stays silent.
    pub async fn settle(
        &self,
        store: &AuditStore,
        notices: Vec<Notice>,
        evaluated: &[AlertKey],
        about: Option<&events::Server<'_>>,
    ) {
        if !self.is_on() {
            return;
        }
        self.forget_lost(store).await;
        let now = chrono::Utc::now();
        let stamp = crate::time::timestamp(now);
        let active: Vec<&AlertKey> = notices.iter().filter_map(|n| n.key.as_ref()).collect();
        let cleared = self.cleared(store, evaluated, &active, &stamp).await;
        for notice in notices {
            let Some(key) = notice.key.clone() else {
                self.send(notice);
                continue;
            };
            let targets: Vec<usize> = self.receivers(&notice).collect();
            for i in targets {
                let t = &self.targets[i];
                let window = chrono::Duration::from_std(t.realert).unwrap_or_default();
                let cutoff = crate::time::timestamp(now - window);
                let due = store.alert_due(&t.id(), &key, &stamp, &cutoff).await;
                if due.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read which alerts were sent; sending");
                    true
                }) {
                    self.send(Notice {
                        only: Some(i),
                        ..notice.clone()
                    });
                } else {
                    tracing::info!(event = notice.event.as_str(), rule = %key.rule, instance = %key.instance, "alert already sent within the target's realert window; not sent again");
                }
            }
        }
        for (i, key) in cleared {
            self.send(resolved(i, key, about));
        }
    }

    /// The (target, key) pairs among `evaluated` that were firing and are not `active`,
    /// cleared in `store`.
    async fn cleared(
        &self,
        store: &AuditStore,
        evaluated: &[AlertKey],
        active: &[&AlertKey],
        stamp: &str,
    ) -> Vec<(usize, AlertKey)> {
        let firing = match store.firing_alerts().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read which alerts are firing");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (target, key) in firing {
            if !evaluated.contains(&key) || active.contains(&&key) {
                continue;
            }
            let Some(i) = self.targets.iter().position(|t| t.id() == target) else {
                continue;
            };
            if let Ok(true) = store.alert_cleared(&target, &key, stamp).await
                && self.targets[i].wants(EventKind::Resolved)
            {
                out.push((i, key));
            }
        }
        out
    }

    fn count(&self, event: EventKind, outcome: &str) {
        count(&self.metrics, event, outcome);
    }
}

/// The notice that an alert's condition cleared (found by the pass `about`, when one did).
fn resolved(target: usize, key: AlertKey, about: Option<&events::Server<'_>>) -> Notice {
    let what = match key.rule.as_str() {
        "" => key.event.clone(),
        rule => format!("{} of rule {rule}", key.event),
    };
    let place = match key.instance.as_str() {
        "" => String::new(),
        i => format!(" on server {i}"),
    };
    let mut details =
        serde_json::json!({"resolved": key.event, "rule": key.rule, "instance": key.instance});
    let mut text = format!("resolved: {what}{place} no longer holds");
    if let Some(server) = about {
        text = server.mark(&text, &mut details);
    }
    Notice {
        event: EventKind::Resolved,
        text,
        details,
        only: Some(target),
        key: None,
    }
}
