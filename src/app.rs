//! One start-up for the commands that run passes (`once`, `run`): the rules, the client,
//! the audit store and the pass settings, built from the config in one place.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::{AuditError, AuditStore};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pass::{PassContext, PassSettings};
use crate::rules::{RuleError, RuleSet};
use crate::stellar::Client;

/// What a pass needs, ready.
pub struct App {
    pub rules: RuleSet,
    pub ctx: PassContext,
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
    pub async fn build(config: &Config, metrics: Option<Arc<Metrics>>) -> Result<App, StartError> {
        let rules = RuleSet::load_dir_for(&config.daemon.rules_dir, &config.calendar_names())
            .map_err(|errors| StartError::Rules {
                dir: config.daemon.rules_dir.clone(),
                errors,
            })?;
        rules.log_warnings();
        let settings = config.client_settings().map_err(StartError::Setup)?;
        let client =
            Client::with_metrics(settings, metrics).map_err(|e| StartError::Setup(e.into()))?;
        let audit = AuditStore::open_with(
            &config.audit.path,
            Duration::from_secs(config.audit.busy_timeout_secs),
            config.audit.max_size_mb,
        )
        .await?
        .with_head_file(config.audit.head_file.clone());
        Ok(App {
            rules,
            ctx: PassContext {
                client,
                audit,
                settings: PassSettings::from_config(config),
            },
        })
    }
}
