//! Notifications from `once`, `apply` and `revert`: the daemon's notices about a pass, sent
//! once per target's `realert` window (the audit store remembers, across processes and
//! replicas), waited for while any is pending, at most [`WAIT`], and reported on stderr.

use std::time::Duration;

use super::Exit;
use crate::audit::AuditStore;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::notify::{Delivery, Notifier};
use crate::pass::{PassContext, PassReport};

/// Delivery is retried with backoff; a receiver still failing after this is reported.
const WAIT: Duration = Duration::from_secs(30);

pub(super) struct Alerts {
    notifier: Notifier,
    delivery: Delivery,
    /// A dry run a person asked for on the command line tells nobody; one the config
    /// asks for (`daemon.dry_run`, unattended) does.
    config_dry_run: bool,
}

impl Alerts {
    /// Starts the `[[notify]]` targets (none: nothing is sent).
    pub fn start(config: &Settings) -> Result<Alerts, Exit> {
        let targets = config.notify_targets().map_err(Exit::config)?;
        let (notifier, delivery) = Notifier::start(targets, Metrics::new());
        Ok(Alerts {
            notifier,
            delivery,
            config_dry_run: config.daemon.dry_run,
        })
    }

    /// What the pass on `ctx` has to tell, and what it found cleared (`listed`: a pass
    /// over the server's listing, not of given plans).
    pub async fn after(&self, ctx: &PassContext, report: &PassReport, listed: bool) {
        if !self.notifier.is_on() || (report.dry_run && !self.config_dry_run) {
            return;
        }
        self.notifier.tell_pass(ctx, report, listed).await;
    }

    /// Waits for what is pending and says what became of it; an alert that did not reach
    /// its target is forgotten in `store`, so the next run sends it again.
    pub async fn finish(self, store: &AuditStore) {
        let done = self.delivery.finish(WAIT).await;
        if self.notifier.is_on() && done != Default::default() {
            self.notifier.forget_lost(store).await;
            eprintln!("notifications: {done}");
        }
    }
}
