//! `casewarden test-rule`: one rule, offline, on saved cases.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};

use super::Exit;
use crate::report::print_plans;
use crate::rules::offline::{Verdict, decide};
use crate::rules::{EvalEnv, Rule, RuleSet};
use crate::stellar::{Case, Directory, User};

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
    /// The server's users, for user_email/user_id and assign by email: a saved answer of
    /// GET /connect/api/v1/users ({"data": [...]}) or a list of {user_id, email}
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TestFormat {
    Table,
    Json,
}

/// The rules under test and the case file, from the arguments.
fn load(args: &TestRuleArgs) -> Result<(RuleSet, PathBuf), Exit> {
    let rule_errors = |errors: Vec<crate::rules::RuleError>| Exit::config_all(&errors, None);
    match (&args.rules_dir, args.paths.as_slice()) {
        (Some(dir), [cases]) => Ok((RuleSet::load_dir(dir).map_err(rule_errors)?, cases.clone())),
        (None, [rule, cases]) => Ok((
            RuleSet::load_file(rule).map_err(rule_errors)?,
            cases.clone(),
        )),
        (Some(_), _) => Err(Exit::config("with --rules-dir, give only the case file")),
        (None, _) => Err(Exit::config(
            "give a rule file and a case file (or --rules-dir DIR and a case file)",
        )),
    }
}

/// The server's users from a saved `/users` answer.
fn read_users(path: &Path) -> Result<Directory, Exit> {
    let bad = |what: String| Exit::config(format!("--users {}: {what}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let items = match &json {
        serde_json::Value::Array(items) => items,
        v => match v.get("data") {
            Some(serde_json::Value::Array(items)) => items,
            _ => return Err(bad("expected a list of users or {\"data\": [...]}".into())),
        },
    };
    Ok(Directory::new(items.iter().filter_map(User::from_value)))
}

/// What offline runs take from the config (read once): its calendars and
/// `daemon.exempt_tags`. The one named with --config, else `casewarden.toml` here as every
/// other command reads it; without either, no calendars and the default tag.
pub(super) fn offline_env(config: Option<&Path>) -> Result<EvalEnv, Exit> {
    let default = Path::new("casewarden.toml");
    let path = match config {
        Some(path) => path,
        None if default.is_file() => default,
        None => {
            return Ok(EvalEnv {
                exempt_tags: Arc::new(vec![crate::config::DEFAULT_EXEMPT_TAG.to_string()]),
                ..EvalEnv::default()
            });
        }
    };
    let config = crate::config::Settings::load(path).map_err(Exit::config)?;
    Ok(EvalEnv {
        calendars: config.calendars(),
        exempt_tags: Arc::new(config.daemon.exempt_tags),
        ..EvalEnv::default()
    })
}

pub(super) fn run(args: &TestRuleArgs, config: Option<&Path>) -> anyhow::Result<u8> {
    let (set, cases_file) = load(args)?;
    for w in &set.warnings {
        eprintln!("warning: {w}");
    }
    let rules = if args.rules_dir.is_some() {
        set.enabled().cloned().collect()
    } else {
        set.rules.clone()
    };
    let items = read_cases(&cases_file)?;
    let users = args.users.as_deref().map(read_users).transpose()?;
    let env = EvalEnv {
        now_ms: super::now_arg(args.now.as_deref())?,
        own_users: Arc::new(args.self_users.clone()),
        users: users.map(Arc::new),
        ..offline_env(config)?
    };
    let mut out = std::io::stdout().lock();
    let table = matches!(args.format, TestFormat::Table);
    if table {
        print_header(&mut out, &rules, items.is_empty(), &cases_file)?;
    }
    let mut tally = Tally::default();
    for (n, item) in items.into_iter().enumerate() {
        let case = match Case::from_value(item) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {} case #{}: {e}", cases_file.display(), n + 1);
                tally.failed = true;
                continue;
            }
        };
        let verdict = decide(&set, &rules, &case, &env);
        tally.print(&mut out, args.format, &case, verdict)?;
    }
    if table {
        writeln!(
            out,
            "{} case(s) selected by the rules' queries, {} would change; {} not selected",
            tally.selected, tally.changed, tally.excluded
        )?;
    }
    Ok(if tally.failed { 2 } else { 0 })
}

/// The rules under test and, when it has none, that the case file is empty.
fn print_header(
    out: &mut impl Write,
    rules: &[Arc<Rule>],
    no_case: bool,
    cases_file: &Path,
) -> std::io::Result<()> {
    for rule in rules {
        writeln!(out, "rule {} ({})", rule.name, rule.file.display())?;
    }
    if no_case {
        writeln!(out, "  (no case in {})", cases_file.display())?;
    }
    Ok(())
}

/// The cases seen so far.
#[derive(Default)]
struct Tally {
    selected: usize,
    changed: usize,
    excluded: usize,
    /// A case could not be read or a rule failed on one.
    failed: bool,
}

impl Tally {
    /// Counts one case's verdict and prints it.
    fn print(
        &mut self,
        out: &mut impl Write,
        format: TestFormat,
        case: &Case,
        verdict: Verdict,
    ) -> std::io::Result<()> {
        match verdict {
            Verdict::Excluded(why) => {
                self.excluded += 1;
                print_excluded(out, format, case, &why)
            }
            Verdict::Decided { plan, errors } => {
                self.selected += 1;
                self.failed |= !errors.is_empty();
                self.changed += usize::from(plan.has_work());
                let error = (!errors.is_empty()).then(|| errors.join("; "));
                print_case(out, format, case, Some(&plan), error.as_deref())
            }
        }
    }
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
pub(super) fn read_cases(path: &Path) -> Result<Vec<serde_json::Value>, Exit> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| Exit::config(format!("cannot read case file {}: {e}", path.display())))?;
    let (json, repaired) = crate::stellar::parse_lenient(&raw).map_err(|e| {
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
    crate::stellar::cases_in_answer(json)
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
