//! Running rules: one rule on one case in the sandbox, every due rule on a case, and the
//! errors located in the rule's file.

use std::sync::Arc;

use rhai::{Dynamic, EvalAltResult, Position};

use super::collector::{self, Asked, EvalEnv};
use super::view::CaseView;
use super::{Rule, RuleSet};
use crate::stellar::{Case, filter};

/// A failed evaluation of one rule on one case.
#[derive(Debug, Clone, thiserror::Error)]
#[error("rule {rule} on case {case_id} ({location}): {message}")]
pub struct EvalError {
    pub rule: String,
    pub case_id: String,
    pub location: String,
    pub message: String,
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
        self.evaluate_case_noting_exempt(rules, case, env, &mut Vec::new())
    }

    /// [`RuleSet::evaluate_case`], also adding to `exempt` the rules whose query selected
    /// the case but an exemption kept off it (for the pass's counts).
    pub fn evaluate_case_noting_exempt(
        &self,
        rules: &[Arc<Rule>],
        case: &Case,
        env: &EvalEnv,
        exempt_from: &mut Vec<usize>,
    ) -> Vec<(usize, Result<Asked, EvalError>)> {
        let mut due = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            if !hints_match(case, &rule.query) {
                continue;
            }
            if exempt(case, rule, env) {
                exempt_from.push(i);
            } else {
                due.push(i);
            }
        }
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
        collector::begin(env, &rule.name, case.activities.clone());
        let result = rule
            .evaluate
            .call::<Dynamic>(&self.engine, &rule.module, (arg,));
        let asked = collector::finish();
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

/// The tag that snoozes casewarden on a case until a date: `casewarden-snooze:2026-12-01`.
pub const SNOOZE_PREFIX: &str = "casewarden-snooze:";

/// Whether `rule` must leave `case` alone: it carries a tag of `daemon.exempt_tags` or of
/// the rule's `exempt_tags`, or a snooze tag whose date (UTC midnight) is still ahead. A
/// snooze tag whose date does not read as `YYYY-MM-DD` exempts too: a person meant to
/// keep casewarden off the case.
pub fn exempt(case: &Case, rule: &Rule, env: &EvalEnv) -> bool {
    let now = env.now_ms.unwrap_or_else(crate::now_ms);
    case.tags().any(|t| {
        env.exempt_tags.iter().any(|x| x == t)
            || rule.exempt_tags.iter().any(|x| x == t)
            || t.strip_prefix(SNOOZE_PREFIX).is_some_and(|date| {
                chrono::NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d").map_or(true, |d| {
                    now < d
                        .and_time(chrono::NaiveTime::MIN)
                        .and_utc()
                        .timestamp_millis()
                })
            })
    })
}

/// Whether a case satisfies a rule's query hints (servers may ignore filters).
pub fn hints_match(case: &Case, hints: &[(String, String)]) -> bool {
    filter::recheck(case.raw(), hints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snoozes_end_at_their_date_and_a_garbled_one_still_holds() {
        let set = RuleSet::from_sources(vec![(
            "r.rhai".into(),
            "const RULE = #{ name: \"r\", exempt_tags: [\"hold\"] };\nfn evaluate(c) { }\n".into(),
        )])
        .unwrap();
        let rule = &set.rules[0];
        let env = EvalEnv {
            // 2026-12-01T00:00:00Z
            now_ms: Some(1_796_083_200_000),
            exempt_tags: Arc::new(vec!["casewarden-ignore".into()]),
            ..EvalEnv::default()
        };
        let with = |tag: &str| {
            let case = Case::from_value(serde_json::json!({"_id": "c", "tags": [tag]})).unwrap();
            exempt(&case, rule, &env)
        };
        assert!(with("casewarden-ignore"));
        assert!(with("hold"));
        assert!(with("casewarden-snooze:2026-12-02"));
        assert!(
            !with("casewarden-snooze:2026-12-01"),
            "ends at midnight of its date"
        );
        assert!(!with("casewarden-snooze:2026-11-30"));
        assert!(
            with("casewarden-snooze:2026-13-01"),
            "a person meant to snooze it"
        );
        assert!(!with("vip"));
    }
}
