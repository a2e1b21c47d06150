//! Reloading the rules: on SIGHUP, or when the rules folder has changed and then stayed
//! the same for one check (an editor saving in steps causes one reload). A reload is
//! atomic: every rule compiles, or the previous set keeps running.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::schedule::{self, Schedule};
use super::{Shared, systemd};
use crate::notify::events;
use crate::rules::RuleSet;

/// How often the rules folder is checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

type DirState = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Watches the rules folder through a cheap fingerprint: names, sizes, modification times.
pub struct Watch {
    dir: PathBuf,
    seen: DirState,
    pending: Option<DirState>,
}

impl Watch {
    pub fn new(dir: &Path) -> Watch {
        Watch {
            dir: dir.to_path_buf(),
            seen: dir_state(dir),
            pending: None,
        }
    }

    /// Takes the folder as it is now as seen (after a reload by signal).
    pub fn reset(&mut self) {
        self.seen = dir_state(&self.dir);
        self.pending = None;
    }

    /// Called every interval: true once a change has held still for one interval.
    pub fn settled_change(&mut self) -> bool {
        let now = dir_state(&self.dir);
        if now == self.seen {
            self.pending = None;
            false
        } else if self.pending.as_ref() == Some(&now) {
            self.seen = now;
            self.pending = None;
            true
        } else {
            self.pending = Some(now);
            false
        }
    }
}

/// The rule files and the shared modules of `lib/`.
fn dir_state(dir: &Path) -> DirState {
    let lib = dir.join(crate::rules::LIB_DIR);
    let mut out: Vec<_> = [dir, lib.as_path()]
        .into_iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten())
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "rhai"))
        .map(|e| {
            let meta = e.metadata().ok();
            (
                e.path(),
                meta.as_ref().map_or(0, |m| m.len()),
                meta.and_then(|m| m.modified().ok()),
            )
        })
        .collect();
    out.sort();
    out
}

/// Loads the rules folder again; on success the new set, its schedules and the breaker's
/// re-enabled rules take effect together.
pub async fn reload(shared: &Shared, schedule: &mut Schedule) {
    systemd::reloading();
    match RuleSet::load_dir_for(&shared.config.daemon.rules_dir, &shared.config.rule_names()) {
        Err(errors) => {
            for e in &errors {
                tracing::error!("rule error: {e}");
            }
            tracing::error!(
                errors = errors.len(),
                "rules NOT reloaded: the previous set keeps running"
            );
            let first = errors.first().map(ToString::to_string).unwrap_or_default();
            shared.state().reload_error = Some(format!(
                "the last reload failed ({} rule error(s), first: {first}); the previous rules keep running",
                errors.len(),
            ));
            let notice = events::reload_failed(errors.len(), &first);
            let key = [events::reload_key()];
            shared
                .notifier
                .settle(&shared.ctx.audit, vec![notice], &key, None)
                .await;
        }
        Ok(set) => {
            set.log_warnings();
            let groups = schedule::groups(&set, &shared.config.daemon.schedule);
            if let Err(e) = schedule.replace(&groups).await {
                tracing::error!(error = %e, "cannot schedule the reloaded rules");
            }
            let current: Vec<(String, String)> = set
                .rules
                .iter()
                .map(|r| (r.name.clone(), r.source_hash.clone()))
                .collect();
            tracing::info!(rules = set.rules.len(), fingerprint = %set.fingerprint, "rules reloaded");
            take(shared, set, &current);
            let key = [events::reload_key()];
            shared
                .notifier
                .settle(&shared.ctx.audit, Vec::new(), &key, None)
                .await;
        }
    }
    systemd::reloaded();
}

/// The reloaded rules in place of the old ones; the breaker forgets rules whose file changed.
fn take(shared: &Shared, set: RuleSet, current: &[(String, String)]) {
    let mut state = shared.state();
    for name in state.breaker.reloaded(current) {
        tracing::info!(rule = %name, "rule file changed: re-enabling the rule the circuit breaker disabled");
    }
    shared
        .metrics
        .rules_disabled
        .set(state.breaker.disabled_count() as i64);
    state.rules = set;
    state.reload_error = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_reported_once_it_holds_still() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = Watch::new(dir.path());
        assert!(!watch.settled_change(), "nothing changed");
        std::fs::write(dir.path().join("a.rhai"), "x").unwrap();
        assert!(!watch.settled_change(), "changed, not yet settled");
        assert!(watch.settled_change(), "the same for one interval");
        assert!(!watch.settled_change(), "reported once");
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        assert!(!watch.settled_change(), "only rule files count");
        std::fs::write(dir.path().join("b.rhai"), "y").unwrap();
        watch.reset();
        assert!(!watch.settled_change(), "a reset takes the folder as seen");
    }

    #[test]
    fn a_shared_module_edit_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.rhai"), "x").unwrap();
        std::fs::create_dir(dir.path().join("lib")).unwrap();
        std::fs::write(dir.path().join("lib/soc.rhai"), "x").unwrap();
        let mut watch = Watch::new(dir.path());
        std::fs::write(dir.path().join("lib/soc.rhai"), "xy").unwrap();
        assert!(!watch.settled_change());
        assert!(
            watch.settled_change(),
            "reloaded once the module held still"
        );
    }
}
