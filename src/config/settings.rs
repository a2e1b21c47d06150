//! The typed settings: the raw file checked once, with parsed values, calendars loaded
//! and secrets read, ready for every command.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::audit::AuditSettings;
use super::daemon::DaemonSettings;
use super::error::ConfigError;
use super::notify::NotifySettings;
use super::raw::RawConfig;
use super::server::ServerSettings;
use super::source::Source;
use crate::calendar::Calendar;
use crate::plan::TenantLimits;
use crate::rules::limits::Limits;
use crate::secret::Secret;
use crate::stellar::ClientSettings;

/// The raw settings of one file, with the path they were read from.
pub struct RawFile {
    pub path: PathBuf,
    pub config: RawConfig,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// The first server (`[stellar]`, else the first `[[instance]]`): what the commands
    /// that talk to one server use.
    pub stellar: ServerSettings,
    /// The servers after the first, in config order.
    more_servers: Vec<ServerSettings>,
    pub daemon: DaemonSettings,
    pub audit: AuditSettings,
    /// Webhooks for what a person should know (`[[notify]]`).
    pub notify: Vec<NotifySettings>,
    /// Business calendars rules name in `business_hours_since(ms, "NAME")`.
    calendars: Arc<HashMap<String, Calendar>>,
    /// Limits for one customer's cases, by `cust_id` (`[tenants."ID"]`).
    pub tenants: BTreeMap<String, TenantLimits>,
    /// The file this was read from; relative paths are resolved against its folder.
    pub source: PathBuf,
}

impl Settings {
    /// Reads, parses and checks the file; relative paths become relative to its folder.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source: Arc::new(source),
        })?;
        Settings::parse(&text, path)
    }

    /// Parses config text as if it came from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: describe_toml_error(text, &e),
        })?;
        Settings::try_from(RawFile {
            path: path.to_path_buf(),
            config,
        })
    }

    /// Every server casewarden works on: `[stellar]` (instance `default` unless named),
    /// then the `[[instance]]` blocks.
    pub fn servers(&self) -> Vec<&ServerSettings> {
        std::iter::once(&self.stellar)
            .chain(&self.more_servers)
            .collect()
    }

    /// The config key of a server's setting: `stellar.url`, `instance.eu.url`.
    pub fn server_key(&self, s: &ServerSettings, key: &str) -> String {
        s.key(key)
    }

    /// Where the audit log is, as it may be shown: the file, or the URL.
    pub fn audit_location(&self) -> String {
        self.audit.location()
    }

    /// The PostgreSQL password: `audit.password_file`, else the systemd credential
    /// `audit_password`; None leaves it to `PGPASSWORD` or `~/.pgpass`.
    pub fn audit_password(&self) -> Result<Option<Secret>, ConfigError> {
        self.audit.password()
    }

    /// The `[[notify]]` targets, with their secrets.
    pub fn notify_targets(&self) -> Result<Vec<crate::notify::Target>, ConfigError> {
        self.notify.iter().map(NotifySettings::target).collect()
    }

    /// The names rules may use: calendars and servers.
    pub fn rule_names(&self) -> crate::rules::ConfigNames<'_> {
        let mut calendars: Vec<&str> = self.calendars.keys().map(String::as_str).collect();
        calendars.sort_unstable();
        crate::rules::ConfigNames {
            calendars,
            instances: self.servers().iter().map(|s| s.instance_name()).collect(),
        }
    }

    /// The live view's bearer token, if `daemon.ui_token_file` is set.
    pub fn ui_token(&self) -> Result<Option<Secret>, ConfigError> {
        self.daemon.ui_token()
    }

    /// The configured business calendars, loaded when the settings were built.
    pub fn calendars(&self) -> Arc<HashMap<String, Calendar>> {
        self.calendars.clone()
    }

    /// A server's API key: its `api_key_file`, its `api_key_env`, else the systemd
    /// credential (LoadCredential) `api_key` (instance `default`) or `api_key.NAME`.
    pub fn api_key_of(&self, s: &ServerSettings) -> Result<Secret, ConfigError> {
        s.api_key()
    }

    /// What one rule may ask of one case, from `[daemon]`.
    pub fn rule_limits(&self) -> Limits {
        self.daemon.rule_limits.clone()
    }

    /// The client of one server, with its key and CA file.
    pub fn client_settings_of(&self, s: &ServerSettings) -> Result<ClientSettings, ConfigError> {
        s.client_settings()
    }
}

impl TryFrom<RawFile> for Settings {
    type Error = ConfigError;

    fn try_from(raw: RawFile) -> Result<Settings, ConfigError> {
        let src = Source::new(&raw.path);
        let c = raw.config;
        let mut servers = servers(c.stellar, c.instance, &src)?.into_iter();
        let Some(stellar) = servers.next() else {
            return Err(ConfigError::Parse {
                path: src.path(),
                message: "no server: give it in [stellar] (url, user, api_key_file), or several in [[instance]] blocks".into(),
            });
        };
        let audit = AuditSettings::build(c.audit, &src)?;
        let daemon = DaemonSettings::build(c.daemon, &src)?;
        let calendars = c
            .calendars
            .iter()
            .map(|(name, c)| {
                Calendar::from_config(c)
                    .map(|cal| (name.clone(), cal))
                    .map_err(|(key, message)| {
                        src.invalid(format!("calendars.{name}.{key}"), message)
                    })
            })
            .collect::<Result<_, _>>()?;
        check_tenants(&c.tenants, &src)?;
        let notify = c
            .notify
            .into_iter()
            .enumerate()
            .map(|(i, n)| NotifySettings::build(i, n, &src))
            .collect::<Result<_, _>>()?;
        Ok(Settings {
            stellar,
            more_servers: servers.collect(),
            daemon,
            audit,
            notify,
            calendars: Arc::new(calendars),
            tenants: c.tenants,
            source: src.path(),
        })
    }
}

/// `[stellar]` then the `[[instance]]` blocks, each named, the names unique.
fn servers(
    stellar: Option<super::raw::RawServer>,
    instances: Vec<super::raw::RawServer>,
    src: &Source,
) -> Result<Vec<ServerSettings>, ConfigError> {
    if let Some(i) = instances.iter().position(|s| s.name.is_none()) {
        return Err(src.invalid(
            format!("instance[{i}].name"),
            "every [[instance]] needs a name, e.g. name = \"eu\"",
        ));
    }
    let sections = stellar
        .map(|s| ("stellar".to_string(), s))
        .into_iter()
        .chain(instances.into_iter().map(|s| {
            let name = s.name.clone().unwrap_or_default();
            (format!("instance.{name}"), s)
        }));
    let mut names = HashSet::new();
    let mut servers = Vec::new();
    for (section, raw) in sections {
        let server = ServerSettings::build(raw, section, src)?;
        if !names.insert(server.instance_name().to_string()) {
            return Err(src.invalid(
                server.key("name"),
                format!(
                    "two servers are named {:?}; each instance needs its own name",
                    server.instance_name()
                ),
            ));
        }
        servers.push(server);
    }
    Ok(servers)
}

fn check_tenants(
    tenants: &BTreeMap<String, TenantLimits>,
    src: &Source,
) -> Result<(), ConfigError> {
    for (id, t) in tenants {
        if let Some(f) = t.max_change_fraction
            && !(f > 0.0 && f <= 1.0)
        {
            return Err(src.invalid(
                format!("tenants.{id}.max_change_fraction"),
                format!("{f} must be in (0, 1]"),
            ));
        }
    }
    Ok(())
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
