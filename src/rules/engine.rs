//! The sandboxed Rhai engine rules run in, and the per-thread collector the functions of
//! the rule library (`functions`) record into, so one shared engine evaluates on many
//! threads at once.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rhai::{Dynamic, Engine, INT};

use super::limits::{Limits, PrintLog};
use crate::calendar::Calendar;
use crate::plan::Change;
use crate::stellar::model::{Directory, HistoryEntry};

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
}

/// What one evaluation asked for.
#[derive(Debug, Default)]
pub struct Asked {
    pub changes: Vec<Change>,
    /// The rule asked when a person last touched a case whose answer is only in its
    /// `/activities`, which were not read: evaluate again once they are.
    pub wants_activities: bool,
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
            })
            .unwrap_or_default()
    })
}

/// `f` on this thread's collector; `fallback` outside an evaluation.
pub(super) fn with<T>(f: impl FnOnce(&mut Collector) -> T, fallback: T) -> T {
    CURRENT.with(|c| c.borrow_mut().as_mut().map(f).unwrap_or(fallback))
}

/// The evaluation's clock, in ms.
pub(super) fn now() -> INT {
    with(|c| c.now_ms, crate::now_ms())
}

fn rule_name() -> String {
    with(|c| c.rule.clone(), String::new())
}

fn may_print() -> bool {
    with(
        |c| c.env.prints.allow(&c.rule, c.env.limits.prints_per_pass),
        true,
    )
}

/// The engine every rule runs in, with every limit set explicitly (the defaults differ
/// between debug and release builds) and no way out of the sandbox.
pub(super) fn engine() -> Engine {
    let mut e = Engine::new();
    e.set_module_resolver(rhai::module_resolvers::StaticModuleResolver::new());
    e.set_max_operations(500_000)
        .set_max_call_levels(32)
        .set_max_expr_depths(64, 32)
        .set_max_string_size(256 * 1024)
        .set_max_array_size(100_000)
        .set_max_map_size(10_000)
        // Modules come only from `rules_dir/lib`, compiled at load: the resolver is a
        // static one set by the rule set, never the file system.
        .set_max_modules(64)
        .set_max_variables(1_000)
        .set_max_functions(1_000)
        .set_strict_variables(true);
    e.disable_symbol("eval");
    e.on_print(|text| {
        if may_print() {
            tracing::info!(rule = %rule_name(), "print: {}", crate::text::for_terminal(text));
        }
    });
    e.on_debug(|text, _source, pos| {
        if may_print() {
            tracing::debug!(rule = %rule_name(), %pos, "debug: {}", crate::text::for_terminal(text));
        }
    });
    // The wall-clock limit: checked every 64 operations, so it costs next to nothing.
    e.on_progress(|ops| {
        let late =
            ops & 0x3f == 0 && DEADLINE.with(|d| d.get().is_some_and(|d| Instant::now() > d));
        late.then(|| Dynamic::from("time"))
    });

    super::functions::register(&mut e);
    super::view::register(&mut e);
    e
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use rhai::EvalAltResult;

    /// Runs `script` as one evaluation; what it gave and the changes it asked for.
    pub(in crate::rules) fn run(
        script: &str,
        env: &EvalEnv,
    ) -> (Result<Dynamic, Box<EvalAltResult>>, Vec<Change>) {
        let e = engine();
        begin(env, "t", None);
        let r = e.eval::<Dynamic>(script);
        (r, finish().changes)
    }

    /// An environment whose clock says `now` and whose own user is "me".
    pub(in crate::rules) fn fixed(now: i64) -> EvalEnv {
        EvalEnv {
            now_ms: Some(now),
            own_users: Arc::new(vec!["me".into()]),
            ..EvalEnv::default()
        }
    }

    #[test]
    fn sandbox_stops_runaway_scripts() {
        let (r, _) = run("loop {}", &fixed(0));
        assert!(matches!(
            *r.unwrap_err(),
            EvalAltResult::ErrorTooManyOperations(_)
        ));
        let (r, _) = run("fn f(x) { f(x + 1) } f(0)", &fixed(0));
        assert!(r.is_err());
        let (r, _) = run("let s = \"x\"; loop { s += s; }", &fixed(0));
        assert!(matches!(
            *r.unwrap_err(),
            EvalAltResult::ErrorDataTooLarge(..)
        ));
        let (r, _) = run("eval(\"1\")", &fixed(0));
        assert!(r.is_err());
    }
}
