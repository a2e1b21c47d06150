//! `casewarden test-rule`: one rule, offline, on saved cases.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::plan::{RuleChanges, plan_case};
use crate::report::print_plans;
use crate::rules::{EvalEnv, RuleSet, case_arg};
use crate::stellar::Case;

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
    let text = match std::fs::read_to_string(&args.rule) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read rule {}: {e}", args.rule.display());
            return Ok(2);
        }
    };
    let set = match RuleSet::from_sources(vec![(args.rule.clone(), text)]) {
        Ok(s) => s,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return Ok(2);
        }
    };
    let rule = &set.rules[0];
    let Some(items) = read_cases(&args.cases) else {
        return Ok(2);
    };
    let now_ms = match &args.now {
        Some(t) => match chrono::DateTime::parse_from_rfc3339(t) {
            Ok(t) => Some(t.timestamp_millis()),
            Err(e) => {
                eprintln!(
                    "error: --now {t:?}: not an RFC 3339 time ({e}), e.g. 2026-01-31T08:00:00Z"
                );
                return Ok(2);
            }
        },
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
    for (n, item) in items.into_iter().enumerate() {
        let case = match Case::from_value(item) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {} case #{}: {e}", args.cases.display(), n + 1);
                failed = true;
                continue;
            }
        };
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
        print_case(
            &mut out,
            args.format,
            &case,
            plan.as_ref(),
            error.as_deref(),
        )?;
    }
    Ok(if failed { 2 } else { 0 })
}

/// The case objects of a saved file (any saved answer; trailing commas forgiven with a
/// warning); None after printing why not.
fn read_cases(path: &std::path::Path) -> Option<Vec<serde_json::Value>> {
    let raw = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read case file {}: {e}", path.display());
            return None;
        }
    };
    let json = match crate::stellar::model::parse_lenient(&raw) {
        Ok((v, repaired)) => {
            if repaired {
                eprintln!(
                    "warning: {}: not strict JSON (trailing commas); read without them",
                    path.display()
                );
            }
            v
        }
        Err(e) => {
            eprintln!(
                "error: {}:{}:{}: not valid JSON: {e}",
                path.display(),
                e.line(),
                e.column()
            );
            return None;
        }
    };
    match crate::stellar::model::cases_in_answer(json) {
        Ok(items) => Some(items),
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            None
        }
    }
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
