//! Deciding saved cases without a server, as a pass decides them: which rules select a
//! case (or why none does), what they ask, and the resulting plan. `test-rule`, `test`
//! and `diff` share it.

use std::sync::Arc;

use super::{Asked, EvalEnv, EvalError, Rule, RuleSet, exempt};
use crate::plan::{CasePlan, RuleChanges, plan_case, resolve_emails};
use crate::stellar::{Case, filter};

/// Why a case a single rule leaves alone is exempt, as `test-rule` says it.
const EXEMPT: &str = "exempt: it carries an exempt tag (daemon.exempt_tags, RULE.exempt_tags) or a casewarden-snooze:DATE still ahead";

/// Why several rules leave a case alone (they are not told apart).
const NONE_SELECTS: &str = "no rule's query selects it, or it is exempt";

/// What the rules asked of a case, as a pass collects it, and their errors.
fn requests_of(
    results: Vec<(usize, Result<Asked, EvalError>)>,
    rules: &[Arc<Rule>],
) -> (Vec<RuleChanges>, Vec<String>) {
    let mut requests = Vec::new();
    let mut errors = Vec::new();
    for (i, result) in results {
        match result {
            Ok(asked) => requests.push(RuleChanges {
                rule: rules[i].name.clone(),
                changes: asked.changes,
            }),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (requests, errors)
}

/// The plan of `rules` on one case and the rules' errors.
pub fn plan_of(
    set: &RuleSet,
    rules: &[Arc<Rule>],
    case: &Case,
    env: &EvalEnv,
) -> (CasePlan, Vec<String>) {
    let (requests, errors) = requests_of(set.evaluate_case(rules, case, env), rules);
    (plan_case(case, &requests), errors)
}

/// What the rules decide on one saved case.
#[derive(Debug)]
pub enum Verdict {
    /// No rule evaluated it: why.
    Excluded(String),
    /// The rules' plan, and their errors.
    Decided { plan: CasePlan, errors: Vec<String> },
}

/// Decides one case as a pass would; with the users in `env`, `assign("someone@x")`
/// becomes the user's id as a pass sends it.
pub fn decide(set: &RuleSet, rules: &[Arc<Rule>], case: &Case, env: &EvalEnv) -> Verdict {
    // As in a pass: only the rules whose query selects the case evaluate it.
    let results = set.evaluate_case(rules, case, env);
    if results.is_empty() {
        return Verdict::Excluded(why_excluded(rules, case, env));
    }
    let (mut requests, mut errors) = requests_of(results, rules);
    if let Some(users) = env.users.as_deref() {
        for (rule, who) in resolve_emails(&mut requests, Some(users)) {
            errors.push(format!(
                "rule {rule}: assign: no user with email {who:?} in --users"
            ));
        }
    }
    Verdict::Decided {
        plan: plan_case(case, &requests),
        errors,
    }
}

fn why_excluded(rules: &[Arc<Rule>], case: &Case, env: &EvalEnv) -> String {
    match rules {
        [rule] if exempt(case, rule, env) => EXEMPT.to_string(),
        [rule] => excluded_by(case, &rule.query).unwrap_or_default(),
        _ => NONE_SELECTS.to_string(),
    }
}

/// Why the rule's query does not select `case` (the first filter it fails), if it does not.
fn excluded_by(case: &Case, query: &[(String, String)]) -> Option<String> {
    let (key, value) = filter::first_failing(case.raw(), query)?;
    let field = key.rsplit('~').next().unwrap_or(key);
    let holds = case
        .raw()
        .get(field)
        .map_or("nothing".to_string(), |v| v.to_string());
    Some(format!("RULE.query {key}={value} (the case holds {holds})"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stellar::Directory;

    /// A rule set of (file, source) pairs.
    pub(crate) fn set(sources: &[(&str, &str)]) -> RuleSet {
        RuleSet::from_sources(
            sources
                .iter()
                .map(|(f, s)| (f.into(), s.to_string()))
                .collect(),
        )
        .unwrap()
    }

    fn case(json: serde_json::Value) -> Case {
        Case::from_value(json).unwrap()
    }

    const NEW_ONLY: &str = "const RULE = #{ name: \"new-only\", query: #{ status: \"New\" } };\nfn evaluate(c) { add_tag(\"seen\", \"why\"); }\n";

    #[test]
    fn a_case_the_query_does_not_select_says_which_filter_it_fails() {
        let set = set(&[("a.rhai", NEW_ONLY)]);
        let closed = case(serde_json::json!({"_id": "c1", "status": "Resolved", "tags": []}));
        let Verdict::Excluded(why) = decide(&set, &set.rules, &closed, &EvalEnv::default()) else {
            panic!("a Resolved case is not selected");
        };
        assert_eq!(why, "RULE.query status=New (the case holds \"Resolved\")");
    }

    #[test]
    fn a_selected_case_gets_the_rules_plan() {
        let set = set(&[("a.rhai", NEW_ONLY)]);
        let new = case(serde_json::json!({"_id": "c1", "status": "New", "tags": []}));
        let Verdict::Decided { plan, errors } = decide(&set, &set.rules, &new, &EvalEnv::default())
        else {
            panic!("a New case is selected");
        };
        assert!(errors.is_empty());
        assert_eq!(plan.decisions.len(), 1);
        assert_eq!(plan.decisions[0].new.as_deref(), Some("+seen"));
    }

    #[test]
    fn an_email_no_user_has_is_the_rules_error() {
        let assign = "const RULE = #{ name: \"assign\" };\nfn evaluate(c) { assign(\"nobody@x\", \"why\"); }\n";
        let set = set(&[("a.rhai", assign)]);
        let c = case(serde_json::json!({"_id": "c1", "status": "New", "tags": []}));
        let env = EvalEnv {
            users: Some(Arc::new(Directory::new(std::iter::empty()))),
            ..EvalEnv::default()
        };
        let Verdict::Decided { errors, .. } = decide(&set, &set.rules, &c, &env) else {
            panic!("the rule has no query");
        };
        assert_eq!(
            errors,
            ["rule assign: assign: no user with email \"nobody@x\" in --users"]
        );
    }

    #[test]
    fn several_rules_do_not_tell_why_none_selects() {
        let other = NEW_ONLY.replace("new-only", "other");
        let set = set(&[("a.rhai", NEW_ONLY), ("b.rhai", &other)]);
        let closed = case(serde_json::json!({"_id": "c1", "status": "Resolved", "tags": []}));
        let verdict = decide(&set, &set.rules, &closed, &EvalEnv::default());
        assert!(matches!(verdict, Verdict::Excluded(why) if why == NONE_SELECTS));
    }
}
