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
use super::server::{DEFAULT_INSTANCE, ServerSettings};
use super::source::Source;
use crate::calendar::Calendar;
use crate::plan::TenantLimits;

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
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            problem: Arc::new(e),
        })?;
        Settings::parse(&text, path)
    }

    /// Parses config text as if it came from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: crate::text::toml_error(text, &e),
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

    /// The configured business calendars, loaded when the settings were built.
    pub fn calendars(&self) -> Arc<HashMap<String, Calendar>> {
        self.calendars.clone()
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
        // Names first: a second block of the same name is that, whatever else it holds.
        let name = raw.name.as_deref().unwrap_or(DEFAULT_INSTANCE);
        if !names.insert(name.to_string()) {
            return Err(src.invalid(
                format!("{section}.name"),
                format!("two servers are named {name:?}; each instance needs its own name"),
            ));
        }
        servers.push(ServerSettings::build(raw, section, src)?);
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
