//! The TOML configuration: typed sections validated once at start-up, with the API key
//! loaded from a file, an environment variable or systemd's credentials directory.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::calendar::{Calendar, CalendarConfig};
use crate::secret::Secret;

pub use crate::stellar::ApiFlavor;
use crate::stellar::{ClientSettings, Credentials};

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

/// A password file: one line (its line break is not part of it), not empty.
pub fn read_password_file(file: &Path) -> Result<Secret, String> {
    warn_if_world_readable(file);
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(format!("{}: the file is empty", file.display()));
    }
    Ok(Secret::new(password))
}

/// Checks a PostgreSQL URL for the audit log: `postgres://user@host[:port]/db`, with no
/// password in it (a URL is shown in logs and `status`; the password is kept apart).
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url)
        .map_err(|e| format!("not a URL ({e}); expected postgres://user@host/database"))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "{} is not a PostgreSQL URL: it must start with postgres:// (a SQLite log is set with audit.path)",
            crate::secret::redact_url(url)
        ));
    }
    if parsed.password().is_some()
        || parsed
            .query_pairs()
            .any(|(k, _)| crate::secret::is_secret_param(&k))
    {
        return Err(format!(
            "{} holds a password: put it in audit.password_file (or the systemd credential audit_password) instead, so it never shows where the URL is printed",
            crate::secret::redact_url(url)
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{} names no host", crate::secret::redact_url(url)));
    }
    Ok(())
}

/// Everything that can be wrong with a configuration, each naming where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config file {path}: {source} (pass --config PATH or set CASEWARDEN_CONFIG)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error(
        "{path}: no API key configured: set stellar.api_key_file or stellar.api_key_env, or run under systemd with LoadCredential=api_key"
    )]
    NoApiKey { path: PathBuf },
    #[error("{path}: stellar.api_key_file {file}: {source}")]
    KeyFile {
        path: PathBuf,
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: stellar.api_key_env: environment variable {var} is not set or empty")]
    KeyEnv { path: PathBuf, var: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `[stellar]` as written: the server of a one-server setup, instance `default`.
    #[serde(default, rename = "stellar")]
    stellar_section: Option<ServerSettings>,
    /// `[[instance]]` blocks: more servers, each with a `name`.
    #[serde(default)]
    instance: Vec<ServerSettings>,
    /// The first server (`[stellar]`, else the first `[[instance]]`): what the commands
    /// that talk to one server use.
    #[serde(skip, default = "ServerSettings::unset")]
    pub stellar: ServerSettings,
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    /// Webhooks for what a person should know (`[[notify]]`).
    #[serde(default)]
    pub notify: Vec<NotifyConfig>,
    /// Business calendars rules name in `business_hours_since(ms, "NAME")`.
    #[serde(default)]
    pub calendars: BTreeMap<String, CalendarConfig>,
    /// Limits for one customer's cases, by `cust_id` (`[tenants."ID"]`).
    #[serde(default)]
    pub tenants: BTreeMap<String, crate::plan::TenantLimits>,
    /// The file this was read from; relative paths are resolved against its folder.
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// The instance's name in rows, logs and `RULE.instances` (`default` for `[stellar]`).
    pub name: Option<String>,
    /// Only these customers' cases (`cust_id`s); empty: every customer.
    #[serde(default)]
    pub tenants: Vec<String>,
    pub url: String,
    #[serde(default)]
    pub api_flavor: FlavorSetting,
    pub user: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub api_key_env: Option<String>,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Attempts per request before giving up (connect errors, timeouts, 5xx, 429).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First backoff step; doubles per attempt, with full jitter, capped at 30 s.
    #[serde(default = "default_backoff_ms")]
    pub retry_base_ms: u64,
}

/// The instance name of `[stellar]`.
pub const DEFAULT_INSTANCE: &str = "default";

impl ServerSettings {
    /// A placeholder until the config's servers are read.
    fn unset() -> ServerSettings {
        ServerSettings {
            name: None,
            tenants: Vec::new(),
            url: String::new(),
            api_flavor: FlavorSetting::default(),
            user: None,
            api_key_file: None,
            api_key_env: None,
            ca_file: None,
            insecure_skip_tls_verify: false,
            timeout_secs: default_timeout(),
            page_size: default_page_size(),
            max_in_flight: default_max_in_flight(),
            max_attempts: default_max_attempts(),
            retry_base_ms: default_backoff_ms(),
        }
    }

    /// The instance's name.
    pub fn instance_name(&self) -> &str {
        self.name.as_deref().unwrap_or(DEFAULT_INSTANCE)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    #[serde(default = "default_schedule")]
    pub schedule: String,
    #[serde(default = "default_rules_dir")]
    pub rules_dir: PathBuf,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default = "default_budget")]
    pub max_changes_per_run: usize,
    #[serde(default = "default_true")]
    pub comment_changes: bool,
    #[serde(default = "default_fraction")]
    pub max_change_fraction: f64,
    #[serde(default = "default_guard_min")]
    pub guard_min_cases: usize,
    #[serde(default = "default_breaker")]
    pub breaker_passes: u32,
    #[serde(default = "default_shutdown")]
    pub shutdown_timeout_secs: u64,
    /// A pass still sending after this long stops sending; what it did not send is
    /// recorded as skipped.
    #[serde(default = "default_pass_timeout")]
    pub pass_timeout_secs: u64,
    /// Changes (comments included) one rule may ask of one case.
    #[serde(default = "default_changes_per_case")]
    pub max_changes_per_rule_case: usize,
    #[serde(default = "default_comments_per_case")]
    pub max_comments_per_rule_case: usize,
    #[serde(default = "default_comment_chars")]
    pub max_comment_chars: usize,
    /// Wall-clock limit of one rule on one case.
    #[serde(default = "default_rule_timeout")]
    pub rule_timeout_ms: u64,
    /// `print`/`debug` lines one rule may log per pass.
    #[serde(default = "default_prints")]
    pub max_prints_per_rule: u32,
    pub listen: Option<String>,
    /// A bearer token the live view and its API at `listen` require (one line in the file).
    pub ui_token_file: Option<PathBuf>,
    /// A case carrying one of these tags is left alone by every rule.
    #[serde(default = "default_exempt_tags")]
    pub exempt_tags: Vec<String>,
}

/// One `[[notify]]` block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    pub url: String,
    #[serde(default)]
    pub kind: crate::notify::Kind,
    #[serde(default = "all_events")]
    pub events: Vec<crate::notify::EventKind>,
    /// A secret for the `X-Casewarden-Signature` HMAC header.
    pub secret_file: Option<PathBuf>,
    /// When the daily digest goes out (cron with seconds, UTC).
    #[serde(default = "default_digest_schedule")]
    pub digest_schedule: String,
    /// First wait before a failed delivery is tried again (doubling, 5 attempts).
    #[serde(default = "default_notify_retry")]
    pub retry_base_ms: u64,
}

fn all_events() -> Vec<crate::notify::EventKind> {
    crate::notify::EventKind::ALL.to_vec()
}

/// The tag that keeps casewarden off a case unless the config says otherwise.
pub const DEFAULT_EXEMPT_TAG: &str = "casewarden-ignore";

fn default_exempt_tags() -> Vec<String> {
    vec![DEFAULT_EXEMPT_TAG.to_string()]
}

fn default_digest_schedule() -> String {
    "0 0 7 * * *".into()
}

fn default_notify_retry() -> u64 {
    1_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default = "default_audit_path")]
    pub path: PathBuf,
    /// How long a write waits for another process holding the database lock.
    #[serde(default = "default_busy_timeout")]
    pub busy_timeout_secs: u64,
    /// Optional cap on the database size; at the cap, passes stop (nothing is sent that
    /// cannot be recorded) until the file is archived or the cap raised.
    pub max_size_mb: Option<u64>,
    /// Every finished pass appends its chain head here.
    pub head_file: Option<PathBuf>,
    /// `postgres://user@host[:port]/db`: the log in PostgreSQL, shared by replicas, instead
    /// of the SQLite file at `path`. No password in it: see `password_file`.
    pub url: Option<String>,
    /// The PostgreSQL password; else the systemd credential `audit_password`, else
    /// `PGPASSWORD` or `~/.pgpass`.
    pub password_file: Option<PathBuf>,
    /// Replicas on PostgreSQL: how long the leader's lease lives without renewal.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// How often the leader renews it.
    #[serde(default = "default_lease_renew")]
    pub lease_renew_secs: u64,
    /// How often a follower tries to take it.
    #[serde(default = "default_lease_retry")]
    pub lease_retry_secs: u64,
}

fn default_lease() -> u64 {
    15
}
fn default_lease_renew() -> u64 {
    5
}
fn default_lease_retry() -> u64 {
    2
}

fn default_timeout() -> u64 {
    30
}
fn default_page_size() -> u32 {
    100
}
fn default_max_in_flight() -> usize {
    8
}
fn default_max_attempts() -> u32 {
    5
}
fn default_backoff_ms() -> u64 {
    250
}
fn default_schedule() -> String {
    "0 */5 * * * *".into()
}
fn default_rules_dir() -> PathBuf {
    "rules".into()
}
fn default_budget() -> usize {
    500
}
fn default_true() -> bool {
    true
}
fn default_fraction() -> f64 {
    0.25
}
fn default_guard_min() -> usize {
    40
}
fn default_breaker() -> u32 {
    3
}
fn default_shutdown() -> u64 {
    30
}
fn default_changes_per_case() -> usize {
    crate::rules::limits::Limits::default().changes_per_case
}
fn default_comments_per_case() -> usize {
    crate::rules::limits::Limits::default().comments_per_case
}
fn default_comment_chars() -> usize {
    crate::rules::limits::Limits::default().comment_chars
}
fn default_rule_timeout() -> u64 {
    crate::rules::limits::Limits::default()
        .eval_time
        .as_millis() as u64
}
fn default_prints() -> u32 {
    crate::rules::limits::Limits::default().prints_per_pass
}
fn default_pass_timeout() -> u64 {
    1800
}
fn default_busy_timeout() -> u64 {
    10
}
fn default_audit_path() -> PathBuf {
    "/var/lib/casewarden/audit.db".into()
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            schedule: default_schedule(),
            rules_dir: default_rules_dir(),
            dry_run: false,
            max_changes_per_run: default_budget(),
            comment_changes: true,
            max_change_fraction: default_fraction(),
            guard_min_cases: default_guard_min(),
            breaker_passes: default_breaker(),
            shutdown_timeout_secs: default_shutdown(),
            pass_timeout_secs: default_pass_timeout(),
            max_changes_per_rule_case: default_changes_per_case(),
            max_comments_per_rule_case: default_comments_per_case(),
            max_comment_chars: default_comment_chars(),
            rule_timeout_ms: default_rule_timeout(),
            max_prints_per_rule: default_prints(),
            listen: None,
            ui_token_file: None,
            exempt_tags: default_exempt_tags(),
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: default_audit_path(),
            busy_timeout_secs: default_busy_timeout(),
            max_size_mb: None,
            head_file: None,
            url: None,
            password_file: None,
            lease_secs: default_lease(),
            lease_renew_secs: default_lease_renew(),
            lease_retry_secs: default_lease_retry(),
        }
    }
}

impl Settings {
    /// Reads, parses and validates the file; relative paths become relative to its folder.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::parse(&text, path)
    }

    /// Parses config text as if it came from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let mut config: Settings = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: describe_toml_error(text, &e),
        })?;
        config.source = path.to_path_buf();
        if config.stellar_section.is_none() && config.instance.is_empty() {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: "no server: give it in [stellar] (url, user, api_key_file), or several in [[instance]] blocks".into(),
            });
        }
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        // `.` components dropped, so `rules_dir = "."` names files as `dir/x.rhai`.
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base
                    .join(&*p)
                    .components()
                    .filter(|c| *c != std::path::Component::CurDir)
                    .collect();
                if p.as_os_str().is_empty() {
                    *p = PathBuf::from(".");
                }
            }
        };
        resolve(&mut config.daemon.rules_dir);
        resolve(&mut config.audit.path);
        for s in config
            .stellar_section
            .iter_mut()
            .chain(config.instance.iter_mut())
        {
            if let Some(p) = s.api_key_file.as_mut() {
                resolve(p);
            }
            if let Some(p) = s.ca_file.as_mut() {
                resolve(p);
            }
        }
        config.stellar = config.servers()[0].clone();
        if let Some(p) = config.audit.head_file.as_mut() {
            resolve(p);
        }
        if let Some(p) = config.audit.password_file.as_mut() {
            resolve(p);
        }
        if let Some(p) = config.daemon.ui_token_file.as_mut() {
            resolve(p);
        }
        for n in &mut config.notify {
            if let Some(p) = n.secret_file.as_mut() {
                resolve(p);
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// Every server casewarden works on: `[stellar]` (instance `default` unless named),
    /// then the `[[instance]]` blocks.
    pub fn servers(&self) -> Vec<&ServerSettings> {
        self.stellar_section.iter().chain(&self.instance).collect()
    }

    /// The config key of a server's setting: `stellar.url`, `instance.eu.url`.
    pub fn server_key(&self, s: &ServerSettings, key: &str) -> String {
        match self.stellar_section.as_ref() {
            Some(first) if std::ptr::eq(first, s) => format!("stellar.{key}"),
            _ => format!("instance.{}.{key}", s.instance_name()),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.instance.iter().enumerate() {
            if s.name.is_none() {
                return Err(self.invalid(
                    format!("instance[{i}].name"),
                    "every [[instance]] needs a name, e.g. name = \"eu\"",
                ));
            }
        }
        for s in self.servers() {
            let name = s.instance_name();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(self.invalid(
                    self.server_key(s, "name"),
                    format!("{name:?}: use letters, digits, - and _"),
                ));
            }
            if !names.insert(s.instance_name()) {
                return Err(self.invalid(
                    self.server_key(s, "name"),
                    format!(
                        "two servers are named {:?}; each instance needs its own name",
                        s.instance_name()
                    ),
                ));
            }
            self.validate_server(s)?;
        }
        self.validate_rest()
    }

    fn validate_server(&self, s: &ServerSettings) -> Result<(), ConfigError> {
        let key = |k: &str| self.server_key(s, k);
        let url = reqwest::Url::parse(&s.url).map_err(|e| {
            let hint = if e == url::ParseError::RelativeUrlWithoutBase {
                format!(
                    "not a URL: {:?} has no scheme: write it as https://{}",
                    s.url,
                    s.url.trim_start_matches('/')
                )
            } else {
                format!("not a URL ({e}): {:?}", s.url)
            };
            self.invalid(key("url"), hint)
        })?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&url) => {}
            "http" => {
                return Err(self.invalid(
                    key("url"),
                    "http:// is only allowed for loopback addresses; use https://",
                ));
            }
            other => {
                return Err(self.invalid(
                    key("url"),
                    format!("unsupported scheme {other:?}; use https://"),
                ));
            }
        }
        if s.page_size == 0 || s.page_size > 500 {
            return Err(self.invalid(
                key("page_size"),
                format!(
                    "{} is out of range: the API serves 1 to 500 cases per page",
                    s.page_size
                ),
            ));
        }
        if s.max_in_flight == 0 {
            return Err(self.invalid(key("max_in_flight"), "must be at least 1"));
        }
        if s.max_attempts == 0 {
            return Err(self.invalid(key("max_attempts"), "must be at least 1"));
        }
        if s.api_key_file.is_some() && s.api_key_env.is_some() {
            return Err(self.invalid(
                key("api_key_file"),
                "set only one of api_key_file and api_key_env",
            ));
        }
        if !(1..=3_600).contains(&s.timeout_secs) {
            return Err(self.invalid(
                key("timeout_secs"),
                format!("{} is out of range: 1 to 3600", s.timeout_secs),
            ));
        }
        for t in &s.tenants {
            if t.trim().is_empty() || t.contains(',') {
                return Err(self.invalid(
                    key("tenants"),
                    format!("{t:?} is not a customer id (cust_id)"),
                ));
            }
        }
        Ok(())
    }

    fn validate_audit(&self) -> Result<(), ConfigError> {
        let a = &self.audit;
        if let Some(url) = &a.url {
            check_postgres_url(url).map_err(|e| self.invalid("audit.url", e))?;
        }
        if let Some(file) = &a.password_file
            && !file.is_file()
        {
            return Err(self.invalid(
                "audit.password_file",
                format!("{}: no such file", file.display()),
            ));
        }
        if a.lease_secs < 2 || a.lease_secs > 3600 {
            return Err(self.invalid(
                "audit.lease_secs",
                format!("{} is out of range: 2 to 3600", a.lease_secs),
            ));
        }
        if a.lease_renew_secs == 0 || a.lease_renew_secs >= a.lease_secs {
            return Err(self.invalid(
                "audit.lease_renew_secs",
                format!(
                    "{} must be at least 1 and less than audit.lease_secs ({}), so the lease is renewed before it ends",
                    a.lease_renew_secs, a.lease_secs
                ),
            ));
        }
        if a.lease_retry_secs == 0 || a.lease_retry_secs > a.lease_secs {
            return Err(self.invalid(
                "audit.lease_retry_secs",
                format!(
                    "{} is out of range: 1 to audit.lease_secs ({})",
                    a.lease_retry_secs, a.lease_secs
                ),
            ));
        }
        Ok(())
    }

    /// Where the audit log is, as it may be shown: the file, or the URL.
    pub fn audit_location(&self) -> String {
        match &self.audit.url {
            Some(url) => crate::secret::redact_url(url),
            None => self.audit.path.display().to_string(),
        }
    }

    /// The PostgreSQL password: `audit.password_file`, else the systemd credential
    /// `audit_password`; None leaves it to `PGPASSWORD` or `~/.pgpass`.
    pub fn audit_password(&self) -> Result<Option<Secret>, ConfigError> {
        let file = match (
            &self.audit.password_file,
            std::env::var_os("CREDENTIALS_DIRECTORY"),
        ) {
            (Some(f), _) => f.clone(),
            (None, Some(dir)) if PathBuf::from(&dir).join("audit_password").is_file() => {
                PathBuf::from(dir).join("audit_password")
            }
            _ => return Ok(None),
        };
        read_password_file(&file)
            .map(Some)
            .map_err(|e| self.invalid("audit.password_file", e))
    }

    fn validate_rest(&self) -> Result<(), ConfigError> {
        self.validate_audit()?;
        let d = &self.daemon;
        if !(d.max_change_fraction > 0.0 && d.max_change_fraction <= 1.0) {
            return Err(self.invalid(
                "daemon.max_change_fraction",
                format!("{} must be in (0, 1]", d.max_change_fraction),
            ));
        }
        for (key, value, max) in [
            (
                "daemon.max_changes_per_rule_case",
                d.max_changes_per_rule_case as u64,
                10_000,
            ),
            (
                "daemon.max_comment_chars",
                d.max_comment_chars as u64,
                1_000_000,
            ),
            ("daemon.rule_timeout_ms", d.rule_timeout_ms, 600_000),
            ("daemon.pass_timeout_secs", d.pass_timeout_secs, 7 * 86_400),
            (
                "daemon.shutdown_timeout_secs",
                d.shutdown_timeout_secs,
                86_400,
            ),
        ] {
            if value == 0 || value > max {
                return Err(self.invalid(key, format!("{value} is out of range: 1 to {max}")));
            }
        }
        if d.breaker_passes == 0 {
            return Err(self.invalid("daemon.breaker_passes", "must be at least 1"));
        }
        if let Err(e) = crate::cron::validate(&d.schedule) {
            return Err(self.invalid("daemon.schedule", e));
        }
        if let Some(listen) = &d.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(self.invalid(
                "daemon.listen",
                format!("{listen:?} is not an address like 127.0.0.1:9187"),
            ));
        }
        self.calendars()?;
        for (id, t) in &self.tenants {
            if let Some(f) = t.max_change_fraction
                && !(f > 0.0 && f <= 1.0)
            {
                return Err(self.invalid(
                    format!("tenants.{id}.max_change_fraction"),
                    format!("{f} must be in (0, 1]"),
                ));
            }
        }
        for (i, n) in self.notify.iter().enumerate() {
            let key = |k: &str| format!("notify[{i}].{k}");
            match reqwest::Url::parse(&n.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                // The URL is not repeated: a webhook URL carries its own key.
                _ => {
                    return Err(self.invalid(key("url"), "not an http(s) URL with a host"));
                }
            }
            if let Err(e) = crate::cron::validate(&n.digest_schedule) {
                return Err(self.invalid(key("digest_schedule"), e));
            }
            if n.retry_base_ms == 0 || n.retry_base_ms > 600_000 {
                return Err(self.invalid(key("retry_base_ms"), "out of range: 1 to 600000"));
            }
        }
        Ok(())
    }

    /// The `[[notify]]` targets, with their secrets read.
    pub fn notify_targets(&self) -> Result<Vec<crate::notify::Target>, ConfigError> {
        self.notify
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let secret = match &n.secret_file {
                    Some(file) => {
                        let text = std::fs::read_to_string(file).map_err(|e| {
                            self.invalid(
                                format!("notify[{i}].secret_file"),
                                format!("{}: {e}", file.display()),
                            )
                        })?;
                        Some(Secret::new(text.trim()))
                    }
                    None => None,
                };
                Ok(crate::notify::Target {
                    url: reqwest::Url::parse(&n.url)
                        .map_err(|_| self.invalid(format!("notify[{i}].url"), "not a URL"))?,
                    kind: n.kind,
                    events: n.events.clone(),
                    secret,
                    retry_base: Duration::from_millis(n.retry_base_ms),
                })
            })
            .collect()
    }

    /// The names rules may use: calendars and servers.
    pub fn rule_names(&self) -> crate::rules::ConfigNames<'_> {
        crate::rules::ConfigNames {
            calendars: self.calendars.keys().map(String::as_str).collect(),
            instances: self.servers().iter().map(|s| s.instance_name()).collect(),
        }
    }

    /// The live view's bearer token, if `daemon.ui_token_file` is set.
    pub fn ui_token(&self) -> Result<Option<Secret>, ConfigError> {
        let Some(file) = &self.daemon.ui_token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            self.invalid("daemon.ui_token_file", format!("{}: {e}", file.display()))
        })?;
        let token = text.trim();
        if token.len() < 16 {
            return Err(self.invalid(
                "daemon.ui_token_file",
                format!(
                    "{}: the token must be at least 16 characters",
                    file.display()
                ),
            ));
        }
        Ok(Some(Secret::new(token)))
    }

    /// The configured business calendars, checked.
    pub fn calendars(&self) -> Result<HashMap<String, Calendar>, ConfigError> {
        self.calendars
            .iter()
            .map(|(name, c)| {
                Calendar::from_config(c)
                    .map(|cal| (name.clone(), cal))
                    .map_err(|(key, message)| {
                        self.invalid(format!("calendars.{name}.{key}"), message)
                    })
            })
            .collect()
    }

    /// A server's API key: its `api_key_file`, its `api_key_env`, else the systemd
    /// credential (LoadCredential) `api_key` (instance `default`) or `api_key.NAME`.
    pub fn api_key_of(&self, s: &ServerSettings) -> Result<Secret, ConfigError> {
        let file = match (&s.api_key_file, &s.api_key_env) {
            (Some(f), _) => f.clone(),
            (None, Some(var)) => {
                return match std::env::var(var) {
                    Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                    _ => Err(ConfigError::KeyEnv {
                        path: self.source.clone(),
                        var: var.clone(),
                    }),
                };
            }
            (None, None) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) if s.instance_name() == DEFAULT_INSTANCE => {
                    PathBuf::from(dir).join("api_key")
                }
                Some(dir) => PathBuf::from(dir).join(format!("api_key.{}", s.instance_name())),
                None => {
                    return Err(ConfigError::NoApiKey {
                        path: self.source.clone(),
                    });
                }
            },
        };
        warn_if_world_readable(&file);
        let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::KeyFile {
            path: self.source.clone(),
            file: file.clone(),
            source,
        })?;
        let key = text.trim();
        if key.is_empty() {
            return Err(ConfigError::KeyFile {
                path: self.source.clone(),
                file,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"),
            });
        }
        Ok(Secret::new(key))
    }
}

#[cfg(unix)]
fn warn_if_world_readable(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(file)
        && meta.permissions().mode() & 0o004 != 0
    {
        tracing::warn!(
            file = %file.display(),
            "the API key file is readable by every user on this machine; chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_world_readable(_file: &Path) {}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// toml's message plus the line and column it points at, so the user can jump there.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}: {message}")
        }
        None => message,
    }
}

impl Settings {
    /// What one rule may ask of one case, from `[daemon]`.
    pub fn rule_limits(&self) -> crate::rules::limits::Limits {
        let d = &self.daemon;
        crate::rules::limits::Limits {
            changes_per_case: d.max_changes_per_rule_case,
            comments_per_case: d.max_comments_per_rule_case,
            comment_chars: d.max_comment_chars,
            eval_time: Duration::from_millis(d.rule_timeout_ms),
            prints_per_pass: d.max_prints_per_rule,
        }
    }

    /// Client settings from the `[stellar]` section, reading the key and CA file.
    /// The client of one server.
    pub fn client_settings_of(&self, s: &ServerSettings) -> anyhow::Result<ClientSettings> {
        let ca_pem = match &s.ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("stellar.ca_file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        Ok(ClientSettings {
            url: s.url.clone(),
            flavor: s.api_flavor.fixed(),
            credentials: Credentials {
                user: s.user.clone(),
                key: self.api_key_of(s)?,
            },
            ca_pem,
            insecure_skip_tls_verify: s.insecure_skip_tls_verify,
            timeout: Duration::from_secs(s.timeout_secs),
            page_size: s.page_size,
            max_attempts: s.max_attempts,
            retry_base: Duration::from_millis(s.retry_base_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[stellar]\nurl = \"https://stellar.example.com\"\n";

    #[test]
    fn a_server_name_that_cannot_be_one_is_refused_with_its_key() {
        let text = format!("{MINIMAL}name = \"eu west\"\n");
        let err = Settings::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("stellar.name") && err.contains("\"eu west\""),
            "{err}"
        );
    }

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(text, Path::new("/etc/casewarden/casewarden.toml"))
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse(&format!(
            "{MINIMAL}api_key_file = \"key\"\n[audit]\npath = \"a.db\"\n"
        ))
        .unwrap();
        assert_eq!(c.stellar.page_size, 100);
        assert_eq!(c.stellar.api_flavor, FlavorSetting::Auto);
        assert_eq!(c.daemon.max_changes_per_run, 500);
        assert_eq!(c.audit.path, Path::new("/etc/casewarden/a.db"));
        assert_eq!(c.daemon.rules_dir, Path::new("/etc/casewarden/rules"));
        assert_eq!(
            c.stellar.api_key_file.as_deref(),
            Some(Path::new("/etc/casewarden/key"))
        );
    }

    /// Every key serde accepts, found from its own "expected one of" list, is in the
    /// reference.
    #[test]
    fn every_config_key_is_in_the_reference() {
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md"))
            .unwrap();
        let mut missing = Vec::new();
        for section in ["stellar", "daemon", "audit", "calendars.soc", "notify"] {
            let text = match section {
                "stellar" => format!("{MINIMAL}no_such_key = 1\n"),
                "notify" => {
                    format!("{MINIMAL}[[notify]]\nurl = \"https://h.example\"\nno_such_key = 1\n")
                }
                _ => format!("{MINIMAL}[{section}]\nno_such_key = 1\n"),
            };
            let err = parse(&text).unwrap_err().to_string();
            let expected = err
                .split("expected")
                .nth(1)
                .unwrap_or_else(|| panic!("{err}"));
            let keys: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            assert!(keys.len() > 3, "{section}: {err}");
            for key in keys {
                if !docs.contains(&format!("`{key}`")) {
                    missing.push(format!("{section}.{key}"));
                }
            }
        }
        assert!(missing.is_empty(), "not in docs/config.md: {missing:?}");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse(&format!("{MINIMAL}page_sise = 5\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("page_sise"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let err = parse(&format!("{MINIMAL}page_size = 900\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("stellar.page_size"), "{err}");
        let err = parse("[stellar]\nurl = \"http://stellar.example.com\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("loopback"), "{err}");
        let err = parse(&format!("{MINIMAL}[daemon]\nschedule = \"every minute\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("daemon.schedule"), "{err}");
    }

    #[test]
    fn missing_key_env_is_a_clear_error() {
        let c = parse(&format!(
            "{MINIMAL}api_key_env = \"CASEWARDEN_TEST_UNSET_VAR\"\n"
        ))
        .unwrap();
        let err = c.api_key_of(&c.stellar).unwrap_err().to_string();
        assert!(err.contains("CASEWARDEN_TEST_UNSET_VAR"), "{err}");
    }
}
