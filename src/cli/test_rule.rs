//! `casewarden test-rule`: one rule, offline, on saved cases.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::Exit;
use crate::plan::{RuleChanges, plan_case};
use crate::report::print_plans;
use crate::rules::{EvalEnv, RuleSet, case_arg};
use crate::stellar::{Case, filter};

#[derive(Debug, Args)]
pub struct TestRuleArgs {
    /// The rule file (*.rhai)
    pub rule: PathBuf,
    /// A case, an array of cases, or the API's {"data":{"cases":[...]}} answer
    pub cases: PathBuf,
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

pub(super) fn run(args: &TestRuleArgs) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(&args.rule)
        .map_err(|e| Exit::config(format!("cannot read rule {}: {e}", args.rule.display())))?;
    let set = RuleSet::from_sources(vec![(args.rule.clone(), text)]).map_err(|errors| {
        Exit::config_all(
            &errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            None,
        )
    })?;
    let rule = &set.rules[0];
    let items = read_cases(&args.cases)?;
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
        writeln!(out, "rule {} ({})", rule.name, rule.file.display())?;
        if items.is_empty() {
            writeln!(out, "  (no case in {})", args.cases.display())?;
        }
    }
    let (mut selected, mut changed, mut excluded) = (0, 0, 0);
    for (n, item) in items.into_iter().enumerate() {
        let case = match Case::from_value(item) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {} case #{}: {e}", args.cases.display(), n + 1);
                failed = true;
                continue;
            }
        };
        // As in a pass: a case the rule's query does not select is never evaluated.
        if let Some(why) = excluded_by(&case, &rule.query) {
            excluded += 1;
            print_excluded(&mut out, args.format, &case, &why)?;
            continue;
        }
        selected += 1;
        let (plan, error) = match set.evaluate(rule, &case, case_arg(&case), &env) {
            Ok(asked) => {
                let asked = RuleChanges {
                    rule: rule.name.clone(),
                    changes: asked.changes,
                };
                (Some(plan_case(&case, &[asked])), None)
            }
            Err(e) => {
                failed = true;
                (None, Some(e.to_string()))
            }
        };
        changed += usize::from(plan.as_ref().is_some_and(|p| p.has_work()));
        print_case(
            &mut out,
            args.format,
            &case,
            plan.as_ref(),
            error.as_deref(),
        )?;
    }
    if matches!(args.format, TestFormat::Table) {
        writeln!(
            out,
            "{selected} case(s) selected by the rule's query, {changed} would change; {excluded} not selected"
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
