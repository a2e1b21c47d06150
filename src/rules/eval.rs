//! Running rules: one rule on one case in the sandbox, every due rule on a case, and the
//! errors located in the rule's file.

use std::fmt;
use std::sync::Arc;

use rhai::{Dynamic, EvalAltResult, Position};

use super::engine::{self, Asked, EvalEnv};
use super::view::CaseView;
use super::{Rule, RuleSet};
use crate::stellar::{Case, filter};

/// A failed evaluation of one rule on one case.
#[derive(Debug, Clone)]
pub struct EvalError {
    pub rule: String,
    pub case_id: String,
    pub location: String,
    pub message: String,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule {} on case {} ({}): {}",
            self.rule, self.case_id, self.location, self.message
        )
    }
}

impl RuleSet {
    /// Runs every rule of `rules` whose query hints the case matches, in order. Each rule
    /// gets its own view of the case (copy-on-write), so whatever a rule does to its
    /// argument, the next rule sees the case as the server sent it. Returns (index in
    /// `rules`, result).
    pub fn evaluate_case(
        &self,
        rules: &[Arc<Rule>],
        case: &Case,
        env: &EvalEnv,
    ) -> Vec<(usize, Result<Asked, EvalError>)> {
        let due: Vec<usize> = (0..rules.len())
            .filter(|&i| hints_match(case, &rules[i].query))
            .collect();
        if due.is_empty() {
            return Vec::new();
        }
        let view = case_arg(case);
        due.into_iter()
            .map(|i| {
                let rule = &rules[i];
                // A bug of ours (not of the rule) must not lose the case: it is this
                // rule's error on this case, like any other.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.evaluate(rule, case, view.clone(), env)
                }));
                let result = run.unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(EvalError {
                        rule: rule.name.clone(),
                        case_id: case.id.clone(),
                        location: rule.file.display().to_string(),
                        message: format!("casewarden failed while evaluating the rule: {what}"),
                    })
                });
                (i, result)
            })
            .collect()
    }

    /// Runs `rule` on `case`, passed as `arg` made with [`case_arg`]; the rule may change
    /// its argument freely, it is the rule's own.
    pub fn evaluate(
        &self,
        rule: &Rule,
        case: &Case,
        arg: Dynamic,
        env: &EvalEnv,
    ) -> Result<Asked, EvalError> {
        engine::begin(env, &rule.name, case.activities.clone());
        let result = rule
            .evaluate
            .call::<Dynamic>(&self.engine, &rule.module, (arg,));
        let asked = engine::finish();
        match result {
            Ok(_) => Ok(asked),
            Err(err) => {
                let (message, pos) = innermost(*err);
                // Rhai moves a sandbox stop's position to the outermost call, which is ours.
                let pos = if pos.is_none() { rule.body } else { pos };
                Err(EvalError {
                    rule: rule.name.clone(),
                    case_id: case.id.clone(),
                    location: format!(
                        "{}:{}:{}",
                        rule.file.display(),
                        pos.line().unwrap_or(0),
                        pos.position().unwrap_or(0)
                    ),
                    message,
                })
            }
        }
    }
}

/// The case as a rule's argument: a map, as the server sent it (see [`CaseView`]).
pub fn case_arg(case: &Case) -> Dynamic {
    Dynamic::from(CaseView::new(case.shared_raw()))
}

/// The deepest error in a chain of function calls, without its position, and that position.
pub(super) fn innermost(err: EvalAltResult) -> (String, Position) {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => innermost(*inner),
        EvalAltResult::ErrorTooManyOperations(pos) => (
            "stopped: too many operations (an endless loop?)".into(),
            pos,
        ),
        EvalAltResult::ErrorStackOverflow(pos) => (
            "stopped: calls nested too deep (endless recursion?)".into(),
            pos,
        ),
        EvalAltResult::ErrorTerminated(_, pos) => (
            "stopped: ran longer than the rule time limit (daemon.rule_timeout_ms)".into(),
            pos,
        ),
        EvalAltResult::ErrorDataTooLarge(what, pos) => (
            format!("stopped: {what} grew beyond the sandbox limit"),
            pos,
        ),
        mut other => {
            let pos = other.take_position();
            (other.to_string(), pos)
        }
    }
}

/// Whether a case satisfies a rule's query hints (servers may ignore filters).
pub fn hints_match(case: &Case, hints: &[(String, String)]) -> bool {
    filter::recheck(case.raw(), hints)
}
