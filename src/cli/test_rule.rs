//! `casewarden test-rule`: one rule, offline, on saved cases.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::Exit;
use crate::plan::{RuleChanges, plan_case};
use crate::report::print_plans;
use crate::rules::{EvalEnv, RuleSet};
use crate::stellar::{Case, filter};

#[derive(Debug, Args)]
#[command(
    after_help = "casewarden test-rule RULE.rhai CASES.json      one rule\n\
casewarden test-rule --rules-dir DIR CASES.json   a whole rule set, as a pass decides it"
)]
pub struct TestRuleArgs {
    /// The rule file (*.rhai) and the case file: a case, an array of cases, or the API's
    /// {"data":{"cases":[...]}} answer. With --rules-dir, only the case file.
    #[arg(value_name = "[RULE] CASES", num_args = 1..=2, required = true)]
    pub paths: Vec<PathBuf>,
    /// Run every enabled rule of this folder on each case, with conflicts and no-ops
    /// resolved as a pass resolves them
    #[arg(long, value_name = "DIR")]
    pub rules_dir: Option<PathBuf>,
    /// The time rules see as now() (RFC 3339) [default: the real clock]
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = TestFormat::Table)]
    pub format: TestFormat,
    /// casewarden's own API user (id or email): its "api" history entries are not human activity
    #[arg(long = "self-user", value_name = "USER")]
    pub self_users: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TestFormat {
    Table,
    Json,
}

/// The rules under test and the case file, from the arguments.
fn load(args: &TestRuleArgs) -> Result<(RuleSet, PathBuf), Exit> {
    let rule_errors = |errors: Vec<crate::rules::RuleError>| {
        Exit::config_all(
            &errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            None,
        )
    };
    match (&args.rules_dir, args.paths.as_slice()) {
        (Some(dir), [cases]) => Ok((RuleSet::load_dir(dir).map_err(rule_errors)?, cases.clone())),
        (None, [rule, cases]) => {
            let text = std::fs::read_to_string(rule)
                .map_err(|e| Exit::config(format!("cannot read rule {}: {e}", rule.display())))?;
            let set = RuleSet::from_sources(vec![(rule.clone(), text)]).map_err(rule_errors)?;
            Ok((set, cases.clone()))
        }
        (Some(_), _) => Err(Exit::config("with --rules-dir, give only the case file")),
        (None, _) => Err(Exit::config(
            "give a rule file and a case file (or --rules-dir DIR and a case file)",
        )),
    }
}

pub(super) fn run(args: &TestRuleArgs) -> anyhow::Result<u8> {
    let (set, cases_file) = load(args)?;
    for w in &set.warnings {
        eprintln!("warning: {w}");
    }
    let rules: Vec<_> = if args.rules_dir.is_some() {
        set.rules.iter().filter(|r| r.enabled).cloned().collect()
    } else {
        set.rules.clone()
    };
    let items = read_cases(&cases_file)?;
    let now_ms = match &args.now {
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| {
                    Exit::config(format!(
                        "--now {t:?}: not an RFC 3339 time ({e}), e.g. 2026-01-31T08:00:00Z"
                    ))
                })?
                .timestamp_millis(),
        ),
        None => None,
    };
    let env = EvalEnv {
        now_ms,
        own_users: std::sync::Arc::new(args.self_users.clone()),
        ..EvalEnv::default()
    };
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    if matches!(args.format, TestFormat::Table) {
        for rule in &rules {
            writeln!(out, "rule {} ({})", rule.name, rule.file.display())?;
        }
        if items.is_empty() {
            writeln!(out, "  (no case in {})", cases_file.display())?;
        }
    }
    let (mut selected, mut changed, mut excluded) = (0, 0, 0);
    for (n, item) in items.into_iter().enumerate() {
        let case = match Case::from_value(item) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {} case #{}: {e}", cases_file.display(), n + 1);
                failed = true;
                continue;
            }
        };
        // As in a pass: only the rules whose query selects the case evaluate it.
        let results = set.evaluate_case(&rules, &case, &env);
        if results.is_empty() {
            excluded += 1;
            let why = match rules.as_slice() {
                [rule] => excluded_by(&case, &rule.query).unwrap_or_default(),
                _ => "no rule's query selects it".to_string(),
            };
            print_excluded(&mut out, args.format, &case, &why)?;
            continue;
        }
        selected += 1;
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
        failed |= !errors.is_empty();
        let plan = plan_case(&case, &requests);
        changed += usize::from(plan.has_work());
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        print_case(&mut out, args.format, &case, Some(&plan), error.as_deref())?;
    }
    if matches!(args.format, TestFormat::Table) {
        writeln!(
            out,
            "{selected} case(s) selected by the rules' queries, {changed} would change; {excluded} not selected"
        )?;
    }
    Ok(if failed { 2 } else { 0 })
}

/// Why the rule's query does not select `case` (the first filter it fails), if it does not.
fn excluded_by(case: &Case, query: &[(String, String)]) -> Option<String> {
    let (key, value) = query
        .iter()
        .find(|(k, v)| filter::is_known(k) && !filter::matches(case.raw(), k, v))?;
    let field = key.rsplit('~').next().unwrap_or(key);
    let holds = case
        .raw()
        .get(field)
        .map_or("nothing".to_string(), |v| v.to_string());
    Some(format!("RULE.query {key}={value} (the case holds {holds})"))
}

fn print_excluded(
    out: &mut impl Write,
    format: TestFormat,
    case: &Case,
    why: &str,
) -> std::io::Result<()> {
    match format {
        TestFormat::Json => {
            serde_json::to_writer(
                &mut *out,
                &serde_json::json!({
                    "case_id": case.id, "ticket_id": case.ticket_id(), "excluded": why,
                    "changes": [], "update": null, "error": null,
                }),
            )?;
            writeln!(out)
        }
        TestFormat::Table => writeln!(
            out,
            "  case {} (ticket {}): not selected: {}",
            case.id,
            case.ticket_id()
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
            crate::text::for_terminal(why)
        ),
    }
}

/// The case objects of a saved file (any saved answer; trailing commas forgiven with a
/// warning).
fn read_cases(path: &std::path::Path) -> Result<Vec<serde_json::Value>, Exit> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| Exit::config(format!("cannot read case file {}: {e}", path.display())))?;
    let (json, repaired) = crate::stellar::model::parse_lenient(&raw).map_err(|e| {
        Exit::config(format!(
            "{}:{}:{}: not valid JSON: {e}",
            path.display(),
            e.line(),
            e.column()
        ))
    })?;
    if repaired {
        eprintln!(
            "warning: {}: not strict JSON (trailing commas); read without them",
            path.display()
        );
    }
    crate::stellar::model::cases_in_answer(json)
        .map_err(|e| Exit::config(format!("{}: {e}", path.display())))
}

/// One case's result: a JSON line, or table lines.
fn print_case(
    out: &mut impl Write,
    format: TestFormat,
    case: &Case,
    plan: Option<&crate::plan::CasePlan>,
    error: Option<&str>,
) -> std::io::Result<()> {
    match format {
        TestFormat::Json => {
            let changes: Vec<serde_json::Value> = plan
                .iter()
                .flat_map(|p| &p.decisions)
                .map(|d| {
                    serde_json::json!({
                        "rule": d.rule, "field": d.field, "old": d.old, "new": d.new,
                        "reason": d.reason, "skipped": d.skipped,
                    })
                })
                .collect();
            let body = plan.and_then(|p| p.body());
            serde_json::to_writer(
                &mut *out,
                &serde_json::json!({
                    "case_id": case.id, "ticket_id": case.ticket_id(),
                    "changes": changes, "update": body, "error": error,
                }),
            )?;
            writeln!(out)
        }
        TestFormat::Table => match (plan, error) {
            (_, Some(e)) => writeln!(
                out,
                "  case {}: ERROR {}",
                case.id,
                crate::text::for_terminal(e)
            ),
            (Some(p), None) if p.decisions.is_empty() => writeln!(
                out,
                "  case {} (ticket {}): no changes",
                case.id,
                case.ticket_id()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into())
            ),
            (Some(p), None) => print_plans(out, std::slice::from_ref(p)),
            (None, None) => Ok(()),
        },
    }
}
