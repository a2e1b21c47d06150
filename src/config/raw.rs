//! The configuration file as written: serde structs with the TOML's sections and keys,
//! unknown keys refused. Each section's defaults are its `Default`, the one place they
//! are stated (docs/config.md is checked against them by a test).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::calendar::CalendarConfig;
use crate::notify::{EventKind, Kind};
use crate::plan::TenantLimits;
use crate::rules::limits::Limits;
use crate::stellar::ApiFlavor;

/// The tag that keeps casewarden off a case unless the config says otherwise.
pub const DEFAULT_EXEMPT_TAG: &str = "casewarden-ignore";

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// The server of a one-server setup, instance `default` unless named.
    pub stellar: Option<RawServer>,
    /// `[[instance]]` blocks: more servers, each with a `name`.
    pub instance: Vec<RawServer>,
    pub daemon: RawDaemon,
    pub audit: RawAudit,
    /// `[[notify]]` blocks: webhooks for what a person should know.
    pub notify: Vec<RawNotify>,
    /// Business calendars rules name in `business_hours_since(ms, "NAME")`.
    pub calendars: BTreeMap<String, CalendarConfig>,
    /// Limits for one customer's cases, by `cust_id` (`[tenants."ID"]`).
    pub tenants: BTreeMap<String, TenantLimits>,
}

/// `stellar.api_flavor`: a fixed flavour, or `auto` to find it from the server's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FlavorSetting {
    #[default]
    Auto,
    Legacy,
    V5,
}

impl FlavorSetting {
    /// The configured flavour; None for `auto`.
    pub fn fixed(self) -> Option<ApiFlavor> {
        match self {
            FlavorSetting::Auto => None,
            FlavorSetting::Legacy => Some(ApiFlavor::Legacy),
            FlavorSetting::V5 => Some(ApiFlavor::V5),
        }
    }
}

/// `[stellar]` or one `[[instance]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    pub name: Option<String>,
    pub tenants: Vec<String>,
    /// Required; optional here so every other key can take its default from `Default`.
    pub url: Option<String>,
    pub api_flavor: FlavorSetting,
    pub user: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub api_key_env: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_tls_verify: bool,
    pub timeout_secs: u64,
    pub settle_after_secs: u64,
    pub list_overlap_secs: u64,
    pub resync_interval: String,
    pub page_size: u32,
    pub max_in_flight: usize,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            name: None,
            tenants: Vec::new(),
            url: None,
            api_flavor: FlavorSetting::Auto,
            user: None,
            api_key_file: None,
            api_key_env: None,
            ca_file: None,
            insecure_skip_tls_verify: false,
            timeout_secs: 30,
            settle_after_secs: 30,
            list_overlap_secs: 120,
            resync_interval: "6h".into(),
            page_size: 100,
            max_in_flight: 48,
            max_attempts: 5,
            retry_base_ms: 250,
        }
    }
}

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDaemon {
    pub schedule: String,
    pub rules_dir: PathBuf,
    pub dry_run: bool,
    pub max_changes_per_run: usize,
    pub comment_changes: bool,
    pub max_change_fraction: f64,
    pub guard_min_cases: usize,
    pub breaker_passes: u32,
    pub shutdown_timeout_secs: u64,
    pub pass_timeout_secs: u64,
    pub max_changes_per_rule_case: usize,
    pub max_comments_per_rule_case: usize,
    pub max_comment_chars: usize,
    pub rule_timeout_ms: u64,
    pub max_prints_per_rule: u32,
    pub listen: Option<String>,
    pub ui_token_file: Option<PathBuf>,
    pub header_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub max_connections: usize,
    pub exempt_tags: Vec<String>,
}

impl Default for RawDaemon {
    fn default() -> Self {
        // A rule's limits are the rule engine's own defaults.
        let limits = Limits::default();
        RawDaemon {
            schedule: "0 */5 * * * *".into(),
            rules_dir: "rules".into(),
            dry_run: false,
            max_changes_per_run: 500,
            comment_changes: true,
            max_change_fraction: 0.25,
            guard_min_cases: 40,
            breaker_passes: 3,
            shutdown_timeout_secs: 30,
            pass_timeout_secs: 1800,
            max_changes_per_rule_case: limits.changes_per_case,
            max_comments_per_rule_case: limits.comments_per_case,
            max_comment_chars: limits.comment_chars,
            rule_timeout_ms: u64::try_from(limits.eval_time.as_millis()).unwrap_or(u64::MAX),
            max_prints_per_rule: limits.prints_per_pass,
            listen: None,
            ui_token_file: None,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 512,
            exempt_tags: vec![DEFAULT_EXEMPT_TAG.to_string()],
        }
    }
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAudit {
    pub path: PathBuf,
    pub busy_timeout_secs: u64,
    pub max_size_mb: Option<u64>,
    pub head_file: Option<PathBuf>,
    pub url: Option<String>,
    pub password_file: Option<PathBuf>,
    pub chain_key_file: Option<PathBuf>,
    pub lease_secs: u64,
    pub lease_renew_secs: u64,
    pub lease_retry_secs: u64,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            path: "/var/lib/casewarden/audit.db".into(),
            busy_timeout_secs: 10,
            max_size_mb: None,
            head_file: None,
            url: None,
            password_file: None,
            chain_key_file: None,
            lease_secs: 15,
            lease_renew_secs: 5,
            lease_retry_secs: 2,
        }
    }
}

/// One `[[notify]]` block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawNotify {
    /// Required; optional here so every other key can take its default from `Default`.
    pub url: Option<String>,
    pub kind: Kind,
    pub events: Vec<EventKind>,
    pub secret_file: Option<PathBuf>,
    pub digest_schedule: String,
    pub retry_base_ms: u64,
    /// The same alert for the same rule and server at most once per this window.
    pub realert: String,
}

impl Default for RawNotify {
    fn default() -> Self {
        RawNotify {
            url: None,
            kind: Kind::default(),
            events: EventKind::ALL.to_vec(),
            secret_file: None,
            digest_schedule: "0 0 7 * * *".into(),
            retry_base_ms: 1_000,
            realert: "1h".into(),
        }
    }
}
