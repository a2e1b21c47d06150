//! One start-up for the commands that run passes (`once`, `run`): the rules, the client,
//! the audit store and the pass settings, built from the config in one place.

use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use crate::audit::{AuditError, AuditStore, LeaseTimes};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::pass::{PassContext, PassSettings};
use crate::rules::{RuleError, RuleSet};
use crate::stellar::Client;

/// What a pass needs, ready.
pub struct App {
    pub rules: RuleSet,
    /// The first server's (the one `[stellar]` names, else the first `[[instance]]`).
    pub ctx: PassContext,
    /// Every server's, in config order (the first is `ctx`).
    pub instances: Vec<PassContext>,
}

/// Why casewarden could not start; every one is a config or rule error (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{} rule error(s) in {}:\n{}", .errors.len(), .dir.display(), list(.errors))]
    Rules {
        dir: PathBuf,
        errors: Vec<RuleError>,
    },
    #[error("{0:#}")]
    Setup(anyhow::Error),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// Opens the configured audit log for writing: the SQLite file, or PostgreSQL.
pub async fn open_audit(config: &Settings) -> Result<AuditStore, StartError> {
    let a = &config.audit;
    let store = match &a.url {
        Some(url) => {
            let password = a.password().map_err(|e| StartError::Setup(e.into()))?;
            AuditStore::open_postgres(url, password.as_ref().map(|p| p.expose()))
                .await?
                .with_lease_times(LeaseTimes {
                    ttl: Duration::from_secs(a.lease_secs),
                    renew: Duration::from_secs(a.lease_renew_secs),
                })
        }
        None => {
            AuditStore::open_with(
                &a.path,
                Duration::from_secs(a.busy_timeout_secs),
                a.max_size_mb,
            )
            .await?
        }
    };
    let keys = a.chain_keys().map_err(|e| StartError::Setup(e.into()))?;
    let keys = crate::audit::key::ChainKeys::new(&keys);
    Ok(store
        .with_head_file(a.head_file.clone())
        .key_chain(keys)
        .await?)
}

fn list(errors: &[RuleError]) -> String {
    errors
        .iter()
        .map(|e| format!("error: {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl App {
    /// Compiles the rules, builds the client (counting its requests in `metrics`) and
    /// opens the audit store. Nothing is sent to the server yet.
    pub async fn build(
        config: &Settings,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<App, StartError> {
        let rules = RuleSet::load_dir_for(&config.daemon.rules_dir, &config.rule_names()).map_err(
            |errors| StartError::Rules {
                dir: config.daemon.rules_dir.clone(),
                errors,
            },
        )?;
        rules.log_warnings();
        let audit = open_audit(config).await?;
        let mirror_path = crate::mirror::path_beside(&config.audit.path);
        let mirror_file = match crate::mirror::MirrorFile::open(&mirror_path).await {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::warn!(file = %mirror_path.display(), error = %e, "cannot open the mirror of the servers' cases; it is kept in memory only");
                None
            }
        };
        let mut instances = Vec::new();
        for s in config.servers() {
            let settings = s.client_settings().map_err(|e| match s.name {
                Some(_) => StartError::Setup(
                    anyhow::Error::new(e).context(format!("instance {}", s.instance_name())),
                ),
                None => StartError::Setup(e.into()),
            })?;
            let client = Client::with_metrics(settings, metrics.clone())
                .map_err(|e| StartError::Setup(e.into()))?;
            instances.push(PassContext {
                client,
                audit: audit.for_instance(s.instance_name()),
                settings: PassSettings::for_server(config, s),
                instance: s.instance_name().to_string(),
                tenants: Arc::new(s.tenants.clone()),
                mirror: Mirror::new(mirror_file.clone(), s.instance_name()),
            });
        }
        Ok(App {
            rules,
            ctx: instances[0].clone(),
            instances,
        })
    }
}
