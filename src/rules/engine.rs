//! The sandboxed Rhai engine every rule runs in: its limits, its hooks for printing and
//! the time limit, and the functions rules may call (`functions`, `view`).

use rhai::{Dynamic, Engine};

use super::collector::{may_print, past_deadline, rule_name};

/// At most this many shared modules (`rules_dir/lib`): the rule set refuses more.
pub(super) const MAX_MODULES: usize = 64;

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
        .set_max_modules(MAX_MODULES)
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
    e.on_progress(|ops| (ops & 0x3f == 0 && past_deadline()).then(|| Dynamic::from("time")));

    super::functions::register(&mut e);
    super::view::register(&mut e);
    e
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::plan::Change;
    use crate::rules::EvalEnv;
    use crate::rules::collector::{begin, finish};
    use rhai::EvalAltResult;

    /// Runs `script` as one evaluation; what it gave and the changes it asked for.
    pub(in crate::rules) fn run(
        script: &str,
        env: &EvalEnv,
    ) -> (Result<Dynamic, Box<EvalAltResult>>, Vec<Change>) {
        let (r, asked) = run_asking(script, env);
        (r, asked.changes)
    }

    /// Runs `script` as one evaluation; what it gave and all it asked.
    pub(in crate::rules) fn run_asking(
        script: &str,
        env: &EvalEnv,
    ) -> (Result<Dynamic, Box<EvalAltResult>>, crate::rules::Asked) {
        let e = engine();
        begin(env, "t", None);
        let r = e.eval::<Dynamic>(script);
        (r, finish())
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
