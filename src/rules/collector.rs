//! What one evaluation knows and asks for: the rule's environment (clock, users,
//! calendars, limits) and the changes it asked, kept per thread so one shared engine
//! evaluates on many threads at once; the rule library (`functions`) records into it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rhai::INT;

use super::limits::{Limits, PrintLog};
use crate::calendar::Calendar;
use crate::plan::Change;
use crate::stellar::{Directory, HistoryEntry};

/// What a rule's environment holds besides the case: the clock and who "we" are.
#[derive(Debug, Clone, Default)]
pub struct EvalEnv {
    /// `now()` in ms; None means the real clock.
    pub now_ms: Option<i64>,
    /// History `user` values that are casewarden itself (its API user's id and email);
    /// their `"api": true` entries are not human activity.
    pub own_users: Arc<Vec<String>>,
    pub limits: Limits,
    /// What each rule printed this pass.
    pub prints: Arc<PrintLog>,
    /// The server's users for `user_email`/`user_id`; None when they were not read.
    pub users: Option<Arc<Directory>>,
    /// The config's business calendars by name.
    pub calendars: Arc<HashMap<String, Calendar>>,
    /// `daemon.exempt_tags`: a case carrying one is left alone by every rule.
    pub exempt_tags: Arc<Vec<String>>,
}

/// What the evaluation running on this thread knows and has asked for so far.
pub(super) struct Collector {
    pub rule: String,
    pub now_ms: i64,
    pub env: EvalEnv,
    /// The case's `/activities`, when they were read.
    pub activities: Option<Arc<Vec<HistoryEntry>>>,
    /// `last_human_activity` needed the case's activities and they were not read.
    pub wants_activities: bool,
    pub changes: Vec<Change>,
    /// Until when (ms) the clock the rule read keeps giving it the same answers.
    pub until: i64,
}

/// What one evaluation asked for.
#[derive(Debug)]
pub struct Asked {
    pub changes: Vec<Change>,
    /// The rule asked when a person last touched a case whose answer is only in its
    /// `/activities`, which were not read: evaluate again once they are.
    pub wants_activities: bool,
    /// Until when (ms, the evaluation's clock) the same case would get the same answer:
    /// `i64::MAX` when the rule read no clock, the next whole unit of a `*_since` it read,
    /// now + 1 ms after `now()`, a calendar, the users list or a print.
    pub until: i64,
}

impl Default for Asked {
    fn default() -> Self {
        Asked {
            changes: Vec::new(),
            wants_activities: false,
            until: i64::MAX,
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Collector>> = const { RefCell::new(None) };
    /// When the evaluation on this thread must stop (apart from the collector, as the
    /// engine checks it every few operations).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Starts collecting for one evaluation on this thread.
pub(super) fn begin(env: &EvalEnv, rule: &str, activities: Option<Arc<Vec<HistoryEntry>>>) {
    DEADLINE.with(|d| d.set(Some(Instant::now() + env.limits.eval_time)));
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Collector {
            rule: rule.to_string(),
            now_ms: env.now_ms.unwrap_or_else(crate::now_ms),
            env: env.clone(),
            activities,
            wants_activities: false,
            changes: Vec::new(),
            until: i64::MAX,
        })
    });
}

/// Ends the evaluation and returns what the rule asked for.
pub(super) fn finish() -> Asked {
    DEADLINE.with(|d| d.set(None));
    CURRENT.with(|c| {
        c.borrow_mut()
            .take()
            .map(|c| Asked {
                changes: c.changes,
                wants_activities: c.wants_activities,
                until: c.until,
            })
            .unwrap_or_default()
    })
}

/// `f` on this thread's collector; `fallback` outside an evaluation.
pub(super) fn with<T>(f: impl FnOnce(&mut Collector) -> T, fallback: T) -> T {
    CURRENT.with(|c| c.borrow_mut().as_mut().map(f).unwrap_or(fallback))
}

/// The evaluation's clock, in ms, to the millisecond: its answer changes at once.
pub(super) fn now() -> INT {
    volatile();
    with(|c| c.now_ms, crate::now_ms())
}

/// The rule read something that may give another answer at any time (the clock to the
/// millisecond, a calendar, the users list) or printed: its evaluation is not reused.
pub(super) fn volatile() {
    with(|c| c.until = c.until.min(c.now_ms.saturating_add(1)), ());
}

/// Whole `unit`s (in ms) from `ms` to the evaluation's now; the same until the next one.
pub(super) fn since(ms: INT, unit: INT) -> INT {
    with(
        |c| {
            let whole = (c.now_ms - ms).div_euclid(unit);
            let next = ms.saturating_add(whole.saturating_add(1).saturating_mul(unit));
            c.until = c.until.min(next);
            whole
        },
        (crate::now_ms() - ms).div_euclid(unit),
    )
}

/// The name of the rule running on this thread, for its log lines.
pub(super) fn rule_name() -> String {
    with(|c| c.rule.clone(), String::new())
}

/// Whether the rule running on this thread may log one more line this pass.
pub(super) fn may_print() -> bool {
    volatile();
    with(
        |c| c.env.prints.allow(&c.rule, c.env.limits.prints_per_pass),
        true,
    )
}

/// Whether the evaluation on this thread has run past its time limit.
pub(super) fn past_deadline() -> bool {
    DEADLINE.with(|d| d.get().is_some_and(|d| Instant::now() > d))
}
