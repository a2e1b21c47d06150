//! `[[notify]]`: webhook receivers, checked, with their signing secrets read.

use std::time::Duration;

use super::error::{ConfigError, SecretFileError};
use super::raw::RawNotify;
use super::secrets::{self, Loaded};
use super::source::Source;
use crate::cron::CronSchedule;
use crate::notify::{EventKind, Kind, Target};
use crate::secret::Secret;

/// One receiver.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub url: reqwest::Url,
    pub kind: Kind,
    pub events: Vec<EventKind>,
    /// When the daily digest goes out (UTC).
    pub digest_schedule: CronSchedule,
    /// First wait before a failed delivery is tried again (doubling).
    pub retry_base_ms: u64,
    /// The same alert for the same rule and server at most once per this window.
    pub realert: Duration,
    /// The secret for the `X-Casewarden-Signature` HMAC header.
    secret: Loaded<Option<Secret>>,
}

impl NotifySettings {
    /// Checks block `i`.
    pub(super) fn build(
        i: usize,
        n: RawNotify,
        src: &Source,
    ) -> Result<NotifySettings, ConfigError> {
        let key = |k: &str| format!("notify[{i}].{k}");
        // The URL is not repeated in errors: a webhook URL carries its own key.
        let url = n
            .url
            .as_deref()
            .and_then(|u| reqwest::Url::parse(u).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| src.invalid(key("url"), "not an http(s) URL with a host"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(src.invalid(
                key("url"),
                "carries credentials (user:key@): a URL must not hold them; sign with secret_file instead",
            ));
        }
        let digest_schedule = CronSchedule::parse(&n.digest_schedule)
            .map_err(|e| src.invalid(key("digest_schedule"), e))?;
        if n.retry_base_ms == 0 || n.retry_base_ms > 600_000 {
            return Err(src.invalid(key("retry_base_ms"), "out of range: 1 to 600000"));
        }
        let realert = crate::time::parse_duration(&n.realert)
            .ok()
            .and_then(|d| d.to_std().ok())
            .filter(|d| *d <= Duration::from_secs(30 * 86_400))
            .ok_or_else(|| {
                src.invalid(
                    key("realert"),
                    format!(
                        "{:?} is not a duration like 0s, 30m, 1h or 1d (at most 30d)",
                        n.realert
                    ),
                )
            })?;
        // An empty file would sign with an empty key: refused like an empty password.
        let secret = n
            .secret_file
            .map(|f| {
                let file = src.resolve(&f);
                match secrets::read(&file)?.trim() {
                    "" => Err(SecretFileError::Empty { file }),
                    text => Ok(Secret::new(text)),
                }
            })
            .transpose()
            .map_err(|e| src.secret_file(key("secret_file"), e));
        Ok(NotifySettings {
            url,
            kind: n.kind,
            events: n.events,
            digest_schedule,
            retry_base_ms: n.retry_base_ms,
            realert,
            secret: Loaded::new(secret, None),
        })
    }

    /// The receiver, with its secret.
    pub(super) fn target(&self) -> Result<Target, ConfigError> {
        Ok(Target {
            url: self.url.clone(),
            kind: self.kind,
            events: self.events.clone(),
            secret: self.secret.get()?,
            retry_base: Duration::from_millis(self.retry_base_ms),
            realert: self.realert,
        })
    }
}
