//! Delivering notices: a task that posts each to its targets, retrying with backoff,
//! counting every attempt in `/metrics`, and keeping the tally `finish` reports at exit.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{EventKind, Kind, Notice, Target};
use crate::audit::AlertKey;
use crate::metrics::{Metrics, NotifyLabels};
use crate::secret::Secret;

/// Attempts per notice and target.
const ATTEMPTS: usize = 5;
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The delivering task, kept to wait for it at exit.
pub struct Delivery {
    pub(super) task: Option<tokio::task::JoinHandle<()>>,
    pub(super) tally: Arc<Tally>,
}

/// Deliveries to one target each: waiting (queued or being tried), delivered, given up;
/// and the alerts that never reached their target, to be forgotten by the alert memory so
/// the next pass sends them again rather than waiting out the realert window.
#[derive(Default)]
pub(super) struct Tally {
    counts: std::sync::Mutex<Delivered>,
    changed: tokio::sync::Notify,
    pub(super) lost: std::sync::Mutex<Vec<(usize, AlertKey)>>,
}

/// What became of the deliveries of a process, as `Delivery::finish` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    pub pending: usize,
    pub delivered: usize,
    pub given_up: usize,
    pub dropped: usize,
}

impl Tally {
    pub(super) fn update(&self, f: impl FnOnce(&mut Delivered)) {
        if let Ok(mut c) = self.counts.lock() {
            f(&mut c);
        }
        self.changed.notify_waiters();
    }

    pub(super) fn now(&self) -> Delivered {
        self.counts.lock().map(|c| *c).unwrap_or_default()
    }

    pub(super) fn lose(&self, target: usize, key: Option<&AlertKey>) {
        if let (Some(key), Ok(mut lost)) = (key, self.lost.lock()) {
            lost.push((target, key.clone()));
        }
    }
}

impl Delivery {
    /// Waits while deliveries are pending, at most `within`, and says what became of them.
    pub async fn finish(self, within: Duration) -> Delivered {
        let waiting = async {
            loop {
                let changed = self.tally.changed.notified();
                if self.tally.now().pending == 0 {
                    return;
                }
                changed.await;
            }
        };
        let _ = tokio::time::timeout(within, waiting).await;
        let done = self.tally.now();
        if done.pending > 0 {
            tracing::warn!(
                pending = done.pending,
                "notifications still undelivered at exit were abandoned"
            );
        }
        if let Some(task) = self.task {
            task.abort();
        }
        done
    }
}

impl std::fmt::Display for Delivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} delivered", self.delivered)?;
        if self.given_up > 0 {
            write!(f, ", {} given up after {ATTEMPTS} attempts", self.given_up)?;
        }
        if self.dropped > 0 {
            write!(f, ", {} dropped (queue full)", self.dropped)?;
        }
        if self.pending > 0 {
            write!(f, ", {} still pending at exit (abandoned)", self.pending)?;
        }
        Ok(())
    }
}

pub(super) fn count(metrics: &Metrics, event: EventKind, outcome: &str) {
    metrics
        .notifications
        .get_or_create(&NotifyLabels {
            event: event.as_str().into(),
            outcome: outcome.into(),
        })
        .inc();
}

pub(super) async fn deliver_all(
    mut rx: mpsc::Receiver<Notice>,
    targets: Arc<Vec<Target>>,
    metrics: Arc<Metrics>,
    tally: Arc<Tally>,
) {
    let http = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .build()
        .unwrap_or_default();
    let host = crate::time::hostname();
    let mut sending = JoinSet::new();
    while let Some(notice) = rx.recv().await {
        let at = crate::time::timestamp(chrono::Utc::now());
        for (i, target) in targets.iter().enumerate() {
            let wanted = match notice.only {
                Some(only) => only == i,
                None => target.wants(notice.event),
            };
            if !wanted {
                continue;
            }
            let body = body(target.kind, &notice, &at, &host);
            let (http, target, metrics) = (http.clone(), target.clone(), metrics.clone());
            let (event, tally, key) = (notice.event, tally.clone(), notice.key.clone());
            sending.spawn(async move {
                let ok = deliver(&http, &target, event, body, &metrics).await;
                if !ok {
                    tally.lose(i, key.as_ref());
                }
                tally.update(|c| {
                    c.pending -= 1;
                    match ok {
                        true => c.delivered += 1,
                        false => c.given_up += 1,
                    }
                });
            });
        }
        while sending.try_join_next().is_some() {}
    }
    while sending.join_next().await.is_some() {}
}

/// Sends one body to one target, retrying with backoff; whether it was delivered.
async fn deliver(
    http: &reqwest::Client,
    target: &Target,
    event: EventKind,
    body: Vec<u8>,
    metrics: &Metrics,
) -> bool {
    let retry_base = target.retry_base;
    let label = target.label();
    let attempt = || async {
        let mut request = http
            .post(target.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Casewarden-Event", event.as_str());
        if let Some(secret) = &target.secret {
            let ts = chrono::Utc::now().timestamp().to_string();
            request = request
                .header("X-Casewarden-Timestamp", &ts)
                .header("X-Casewarden-Signature", signature(secret, &ts, &body));
        }
        let answer = request.body(body.clone()).send().await;
        match answer {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
            // Without the URL: reqwest names it in its errors.
            Err(e) => Err(describe(&e)),
        }
    };
    let sent = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(retry_base)
                .with_max_delay(retry_base * 30)
                .with_max_times(ATTEMPTS - 1)
                .with_jitter(),
        )
        .notify(|e: &String, wait: Duration| {
            count(metrics, event, "attempt_failed");
            tracing::warn!(target = %label, event = event.as_str(), error = %e, "notification not delivered; again in {:.1}s", wait.as_secs_f64());
        })
        .await;
    match sent {
        Ok(()) => {
            count(metrics, event, "delivered");
            tracing::info!(target = %label, event = event.as_str(), "notification delivered");
            true
        }
        Err(e) => {
            count(metrics, event, "attempt_failed");
            count(metrics, event, "gave_up");
            tracing::error!(target = %label, event = event.as_str(), error = %e, "notification given up after {ATTEMPTS} attempts");
            false
        }
    }
}

/// What went wrong with a request, without its URL.
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut cause = String::new();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {cause}")
    }
}

/// `sha256=HEX` of HMAC-SHA256 over `TIMESTAMP.BODY` with the target's secret.
pub fn signature(secret: &Secret, timestamp: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn body(kind: Kind, n: &Notice, at: &str, host: &str) -> Vec<u8> {
    let value = match kind {
        Kind::Json => serde_json::json!({
            "event": n.event.as_str(),
            "at": at,
            "host": host,
            "text": n.text,
            "details": n.details,
        }),
        Kind::Slack => serde_json::json!({
            "text": format!("casewarden on {host}: {}", n.text),
        }),
    };
    value.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_the_timestamp_and_the_body() {
        let s = Secret::new("shh");
        let a = signature(&s, "1700000000", b"{}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64, "{a}");
        assert_ne!(a, signature(&s, "1700000001", b"{}"));
        assert_ne!(a, signature(&s, "1700000000", b"{ }"));
        assert_ne!(a, signature(&Secret::new("other"), "1700000000", b"{}"));
    }

    #[test]
    fn slack_bodies_carry_only_text() {
        let n = Notice {
            event: EventKind::GuardHalt,
            text: "rule x halted".into(),
            details: serde_json::json!({"rule": "x"}),
            only: None,
            key: None,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&body(Kind::Slack, &n, "t", "h")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"text": "casewarden on h: rule x halted"})
        );
        let v: serde_json::Value = serde_json::from_slice(&body(Kind::Json, &n, "t", "h")).unwrap();
        assert_eq!(v["event"], "guard_halt");
        assert_eq!(v["details"]["rule"], "x");
    }
}
