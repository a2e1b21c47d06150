//! What a pass on one server works with: its client, log and knobs, taken from the config
//! once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::AuditStore;
use crate::calendar::Calendar;
use crate::config::{ServerSettings, Settings};
use crate::mirror::Mirror;
use crate::rules::limits::Limits;
use crate::stellar::Client;

/// What a pass needs: the API, the log, and the settings.
#[derive(Clone)]
pub struct PassContext {
    pub client: Client,
    /// The log, as this server's handle (its rows carry the instance name).
    pub audit: AuditStore,
    pub settings: PassSettings,
    /// The server's name in the config (`default` for `[stellar]`).
    pub instance: String,
    /// Only these customers' cases on this server (`tenants` of its section); empty: all.
    pub tenants: Arc<Vec<String>>,
    /// The local copy of the server's cases the rules run over.
    pub mirror: Mirror,
}

impl PassContext {
    /// The client for writes: each one passed only while this process's claim on the log
    /// outlasts its answer.
    pub(super) fn writer(&self) -> Client {
        let audit = self.audit.clone();
        self.client
            .gated(Arc::new(move |timeout| audit.send_window(timeout)))
    }
}

/// The knobs of a pass, from `[daemon]` and `[stellar]`.
#[derive(Debug, Clone)]
pub struct PassSettings {
    pub dry_run: bool,
    pub max_changes: usize,
    pub comment_changes: bool,
    pub max_change_fraction: f64,
    pub guard_min_cases: usize,
    pub max_in_flight: usize,
    /// A delta listing reaches back this far behind the mirror's checkpoint.
    pub list_overlap: Duration,
    /// A full listing at least this often.
    pub resync_interval: Duration,
    /// How long after it was sent a request may still be applied by the server: a change in
    /// doubt is settled as not applied (and may be sent again) only after this.
    pub settle_after: Duration,
    /// The longest one request may take (`timeout_secs`).
    pub request_timeout: Duration,
    /// After this, a pass sends nothing more and records what it did not send as skipped.
    pub pass_timeout: Duration,
    pub limits: Limits,
    pub calendars: Arc<HashMap<String, Calendar>>,
    pub exempt_tags: Arc<Vec<String>>,
    pub tenant_limits: HashMap<String, crate::plan::TenantLimits>,
}

impl PassSettings {
    /// The settings of a pass on server `s` of config `c`.
    pub fn for_server(c: &Settings, s: &ServerSettings) -> PassSettings {
        PassSettings {
            dry_run: c.daemon.dry_run,
            max_changes: c.daemon.max_changes_per_run,
            comment_changes: c.daemon.comment_changes,
            max_change_fraction: c.daemon.max_change_fraction,
            guard_min_cases: c.daemon.guard_min_cases,
            max_in_flight: s.max_in_flight,
            list_overlap: s.list_overlap,
            resync_interval: s.resync_interval,
            settle_after: s.settle_after(),
            request_timeout: Duration::from_secs(s.timeout_secs),
            pass_timeout: Duration::from_secs(c.daemon.pass_timeout_secs),
            limits: c.daemon.rule_limits.clone(),
            calendars: c.calendars(),
            exempt_tags: Arc::new(c.daemon.exempt_tags.clone()),
            tenant_limits: c.tenants.clone().into_iter().collect(),
        }
    }
}
