//! One Stellar Cyber server (`[stellar]` or an `[[instance]]`): checked, with its API key
//! read from a file, an environment variable or systemd's credentials directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::error::ConfigError;
use super::raw::{FlavorSetting, RawServer};
use super::secrets::Loaded;
use super::source::Source;
use crate::secret::Secret;
use crate::stellar::{ClientSettings, Credentials};

/// The instance name of `[stellar]`.
pub const DEFAULT_INSTANCE: &str = "default";

#[derive(Debug, Clone)]
pub struct ServerSettings {
    // Which server, and who casewarden is on it.
    /// The instance's name in rows, logs and `RULE.instances`; None for `[stellar]`
    /// without one (instance `default`).
    pub name: Option<String>,
    /// Where its keys are written: `stellar` or `instance.NAME`.
    section: String,
    /// The base URL, checked, as written: plans and logs show and compare this text.
    pub url: String,
    pub user: Option<String>,
    api_key: Loaded<Secret>,
    pub ca_file: Option<PathBuf>,
    /// The CA file's PEM, read when the settings were built.
    ca_pem: Option<Loaded<Vec<u8>>>,
    pub insecure_skip_tls_verify: bool,
    pub api_flavor: FlavorSetting,
    /// Only these customers' cases (`cust_id`s); empty: every customer.
    pub tenants: Vec<String>,

    // How it is asked.
    pub page_size: u32,
    pub max_in_flight: usize,
    pub timeout_secs: u64,
    /// As configured; see [`ServerSettings::settle_after`].
    pub settle_after_secs: u64,
    /// How far behind the mirror's checkpoint a delta listing reaches back.
    pub list_overlap: Duration,
    /// How often the mirror is refreshed by a full listing.
    pub resync_interval: Duration,
    /// Attempts per request before giving up (connect errors, timeouts, 5xx, 429).
    pub max_attempts: u32,
    /// First backoff step; doubles per attempt, with full jitter, capped at 30 s.
    pub retry_base_ms: u64,
}

impl ServerSettings {
    /// Checks one server's block; `section` is `stellar` or `instance.NAME`.
    pub(super) fn build(
        raw: RawServer,
        section: String,
        src: &Source,
    ) -> Result<ServerSettings, ConfigError> {
        let key = |k: &str| format!("{section}.{k}");
        let name = raw.name.as_deref().unwrap_or(DEFAULT_INSTANCE);
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(src.invalid(
                key("name"),
                format!("{name:?}: use letters, digits, - and _"),
            ));
        }
        let url = raw.url.as_deref().ok_or_else(|| {
            src.invalid(
                key("url"),
                "missing: give the server's base URL, e.g. url = \"https://stellar.example.com\"",
            )
        })?;
        check_url(url, key("url"), src)?;
        check_limits(&raw, &key, src)?;
        let resync_interval = crate::time::parse_duration(&raw.resync_interval)
            .ok()
            .and_then(|d| d.to_std().ok())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                src.invalid(
                    key("resync_interval"),
                    format!(
                        "{:?} is not a duration like 30m, 6h or 1d (at least 1s)",
                        raw.resync_interval
                    ),
                )
            })?;
        let api_key = read_api_key(&raw, name, &section, src);
        let ca_file = raw.ca_file.map(|p| src.resolve(&p));
        let ca_pem = ca_file.as_ref().map(|file| {
            let read = std::fs::read(file).map_err(|e| ConfigError::CaFile {
                path: src.path(),
                key: key("ca_file"),
                file: file.clone(),
                problem: Arc::new(e),
            });
            Loaded::new(read, None)
        });
        Ok(ServerSettings {
            url: url.to_string(),
            name: raw.name,
            tenants: raw.tenants,
            api_flavor: raw.api_flavor,
            user: raw.user,
            ca_file,
            ca_pem,
            insecure_skip_tls_verify: raw.insecure_skip_tls_verify,
            timeout_secs: raw.timeout_secs,
            settle_after_secs: raw.settle_after_secs,
            list_overlap: Duration::from_secs(raw.list_overlap_secs),
            resync_interval,
            page_size: raw.page_size,
            max_in_flight: raw.max_in_flight,
            max_attempts: raw.max_attempts,
            retry_base_ms: raw.retry_base_ms,
            section,
            api_key,
        })
    }

    /// The instance's name.
    pub fn instance_name(&self) -> &str {
        self.name.as_deref().unwrap_or(DEFAULT_INSTANCE)
    }

    /// The config key of one of its settings: `stellar.url`, `instance.eu.url`.
    pub fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.section)
    }

    /// Its API key, as read when the settings were built.
    pub fn api_key(&self) -> Result<Secret, ConfigError> {
        self.api_key.get()
    }

    /// How long after it was sent an update in doubt may still be applied by the server, so
    /// it is settled as not applied (and sent again) only after this: `settle_after_secs`,
    /// and never less than twice the request timeout.
    pub fn settle_after(&self) -> std::time::Duration {
        let secs = self.settle_after_secs.max(2 * self.timeout_secs);
        std::time::Duration::from_secs(secs)
    }

    /// The CA file's PEM (None without `ca_file`), or why it could not be read.
    pub fn ca_pem(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        self.ca_pem.as_ref().map(Loaded::get).transpose()
    }

    /// What its client needs.
    pub fn client_settings(&self) -> Result<ClientSettings, ConfigError> {
        let ca_pem = self.ca_pem()?;
        Ok(ClientSettings {
            url: self.url.clone(),
            flavor: self.api_flavor.fixed(),
            credentials: Credentials {
                user: self.user.clone(),
                key: self.api_key()?,
            },
            ca_pem,
            insecure_skip_tls_verify: self.insecure_skip_tls_verify,
            timeout: Duration::from_secs(self.timeout_secs),
            page_size: self.page_size,
            max_in_flight: self.max_in_flight,
            max_attempts: self.max_attempts,
            retry_base: Duration::from_millis(self.retry_base_ms),
        })
    }
}

/// `https://`, or `http://` to a loopback address; never with credentials in it (they
/// are masked in the error: the key belongs in its file).
fn check_url(url: &str, key: String, src: &Source) -> Result<(), ConfigError> {
    // Text before an `@` may be a key: never repeated.
    let shown = crate::secret::mask_userinfo(url);
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        let message = if e == url::ParseError::RelativeUrlWithoutBase {
            format!(
                "not a URL: {shown:?} has no scheme: write it as https://{}",
                shown.trim_start_matches('/')
            )
        } else {
            format!("not a URL ({e}): {shown:?}")
        };
        src.invalid(key.clone(), message)
    })?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(src.invalid(
            key,
            format!(
                "{shown:?} carries credentials: a URL must not hold a user or key (they end up in logs and process lists); put the key in api_key_file (or api_key_env) and the user in `user`"
            ),
        ));
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        "http" => Err(src.invalid(
            key,
            "http:// is only allowed for loopback addresses; use https://",
        )),
        other => Err(src.invalid(key, format!("unsupported scheme {other:?}; use https://"))),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The numbers and the key source; `key` names a key of the block.
fn check_limits(
    s: &RawServer,
    key: &dyn Fn(&str) -> String,
    src: &Source,
) -> Result<(), ConfigError> {
    let invalid = |k: &str, message: String| Err(src.invalid(key(k), message));
    if s.page_size == 0 || s.page_size > 500 {
        let range = "is out of range: the API serves 1 to 500 cases per page";
        return invalid("page_size", format!("{} {range}", s.page_size));
    }
    if s.max_in_flight == 0 {
        return invalid("max_in_flight", "must be at least 1".into());
    }
    if s.max_attempts == 0 {
        return invalid("max_attempts", "must be at least 1".into());
    }
    if s.api_key_file.is_some() && s.api_key_env.is_some() {
        let both = "set only one of api_key_file and api_key_env";
        return invalid("api_key_file", both.into());
    }
    if !(1..=3_600).contains(&s.timeout_secs) {
        let range = "is out of range: 1 to 3600";
        return invalid("timeout_secs", format!("{} {range}", s.timeout_secs));
    }
    if s.settle_after_secs > 86_400 {
        let range = "is out of range: at most 86400";
        return invalid(
            "settle_after_secs",
            format!("{} {range}", s.settle_after_secs),
        );
    }
    if s.list_overlap_secs > 86_400 {
        let range = "is out of range: at most 86400";
        return invalid(
            "list_overlap_secs",
            format!("{} {range}", s.list_overlap_secs),
        );
    }
    match s
        .tenants
        .iter()
        .find(|t| t.trim().is_empty() || t.contains(','))
    {
        Some(t) => invalid("tenants", format!("{t:?} is not a customer id (cust_id)")),
        None => Ok(()),
    }
}

/// Its `api_key_file`, its `api_key_env`, else the systemd credential (LoadCredential)
/// `api_key` (instance `default`) or `api_key.NAME`; errors name the server's `section`.
fn read_api_key(s: &RawServer, name: &str, section: &str, src: &Source) -> Loaded<Secret> {
    let credential = match name {
        DEFAULT_INSTANCE => "api_key".to_string(),
        name => format!("api_key.{name}"),
    };
    let file = match (&s.api_key_file, &s.api_key_env) {
        (Some(f), _) => src.resolve(f),
        (None, Some(var)) => return Loaded::new(key_from_env(var, section, src), None),
        (None, None) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => PathBuf::from(dir).join(credential),
            None => {
                let none = ConfigError::NoApiKey {
                    path: src.path(),
                    section: section.to_string(),
                    credential,
                };
                return Loaded::new(Err(none), None);
            }
        },
    };
    Loaded::new(key_in_file(&file, section, src), Some(&file))
}

fn key_from_env(var: &str, section: &str, src: &Source) -> Result<Secret, ConfigError> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
        _ => Err(ConfigError::KeyEnv {
            path: src.path(),
            section: section.to_string(),
            var: var.to_string(),
        }),
    }
}

fn key_in_file(file: &std::path::Path, section: &str, src: &Source) -> Result<Secret, ConfigError> {
    let failed = |e: std::io::Error| ConfigError::KeyFile {
        path: src.path(),
        section: section.to_string(),
        file: file.to_path_buf(),
        problem: Arc::new(e),
    };
    let text = std::fs::read_to_string(file).map_err(failed)?;
    match text.trim() {
        "" => Err(failed(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is empty",
        ))),
        key => Ok(Secret::new(key)),
    }
}
