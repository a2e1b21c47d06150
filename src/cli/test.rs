//! `casewarden test [RULES_DIR]`: the rule tests kept beside the rules
//! (`RULES_DIR/tests/*.toml`), each a case, a time and the changes expected, decided as a
//! pass decides them. Exit 1 on a failed expectation, 2 on a test file that cannot be read.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde::Deserialize;

use super::{Cli, Exit};
use crate::plan::{Decision, plan_case};
use crate::rules::{EvalEnv, Rule, RuleSet};
use crate::stellar::Case;

#[derive(Debug, Args)]
#[command(after_help = "A test file, rules/tests/escalate.toml:

  rule = \"escalate-aged-new\"          # optional: test one rule, else the whole set

  [[test]]
  name = \"a New case older than a day is escalated\"
  now = \"2026-11-25T12:00:00Z\"
  case = { _id = \"a1\", status = \"New\", priority = \"Medium\", tags = [], created_at = \"now-30h\" }
  expect = [ { field = \"priority\", new = \"High\" }, { field = \"tags\", new = \"+auto-escalated\" } ]

  [[test]]
  name = \"a fresh case is left alone\"
  now = \"2026-11-25T12:00:00Z\"
  case_file = \"cases/fresh.json\"
  no_changes = true")]
pub struct TestArgs {
    /// The rules folder [default: daemon.rules_dir of the config, else ./rules]
    pub rules_dir: Option<PathBuf>,
    /// Also write the results as JUnit XML here (for CI)
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

/// One `tests/*.toml` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// Test only this rule (for every test of the file, unless a test names its own).
    rule: Option<String>,
    #[serde(default)]
    test: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    /// What `now()` is (RFC 3339); required, so a test decides the same every day.
    now: Option<String>,
    /// The case, inline; a string field `"now"` or `"now-30h"` becomes that time in ms.
    case: Option<toml::Value>,
    /// Or a file with the case (JSON), relative to the test file.
    case_file: Option<PathBuf>,
    rule: Option<String>,
    /// casewarden's own API user, for `last_human_activity`.
    self_user: Option<String>,
    expect: Option<Vec<Expected>>,
    #[serde(default)]
    no_changes: bool,
}

/// One change a test expects: the field, and the new value exactly or a part of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    field: String,
    new: Option<String>,
    new_contains: Option<String>,
    old: Option<String>,
    rule: Option<String>,
}

impl Expected {
    fn matches(&self, d: &Decision) -> bool {
        let new = d.new.as_deref().unwrap_or("");
        d.field.as_str() == self.field
            && self.new.as_deref().is_none_or(|n| n == new)
            && self.new_contains.as_deref().is_none_or(|n| new.contains(n))
            && self
                .old
                .as_deref()
                .is_none_or(|o| d.old.as_deref().unwrap_or("") == o)
            && self.rule.as_deref().is_none_or(|r| r == d.rule)
    }

    fn describe(&self) -> String {
        let new = match (&self.new, &self.new_contains) {
            (Some(n), _) => format!("{n:?}"),
            (None, Some(c)) => format!("containing {c:?}"),
            (None, None) => "anything".into(),
        };
        let old = self
            .old
            .as_ref()
            .map(|o| format!("{o:?} -> "))
            .unwrap_or_default();
        let rule = self
            .rule
            .as_ref()
            .map(|r| format!(" by {r}"))
            .unwrap_or_default();
        format!("{} {old}{new}{rule}", self.field)
    }
}

fn describe(d: &Decision) -> String {
    format!(
        "{} {:?} -> {:?} by {}",
        d.field,
        d.old.as_deref().unwrap_or(""),
        d.new.as_deref().unwrap_or(""),
        d.rule
    )
}

/// The outcome of one test.
struct Outcome {
    file: String,
    name: String,
    /// Why it failed, line by line; empty when it passed.
    failure: Vec<String>,
}

pub(super) fn run(cli: &Cli, args: &TestArgs) -> anyhow::Result<u8> {
    let dir = match &args.rules_dir {
        Some(d) => d.clone(),
        None => crate::config::Settings::load(&super::config_path(cli))
            .map(|c| c.daemon.rules_dir)
            .unwrap_or_else(|_| PathBuf::from("rules")),
    };
    let set = RuleSet::load_dir(&dir).map_err(|errors| {
        Exit::config_all(
            &errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            None,
        )
    })?;
    let tests_dir = dir.join("tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&tests_dir)
        .map_err(|e| {
            Exit::config(format!(
                "{}: {e} (rule tests live in RULES_DIR/tests/*.toml; `casewarden test --help` shows one)",
                tests_dir.display()
            ))
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(
            Exit::config(format!("no *.toml rule tests in {}", tests_dir.display())).into(),
        );
    }
    let config = cli.config.as_deref();
    let base = super::test_rule::offline_env(config)?;
    let mut outcomes = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Exit::config(format!("{}: {e}", file.display())))?;
        let parsed: TestFile = toml::from_str(&text)
            .map_err(|e| Exit::config(format!("{}: {}", file.display(), e.message())))?;
        if parsed.test.is_empty() {
            return Err(Exit::config(format!("{}: no [[test]] in it", file.display())).into());
        }
        let mut names = std::collections::HashSet::new();
        for t in &parsed.test {
            if !names.insert(t.name.as_str()) {
                return Err(Exit::config(format!(
                    "{}: two tests named {:?}: names tell failures apart",
                    file.display(),
                    t.name
                ))
                .into());
            }
            let failure = run_one(&set, &base, file, parsed.rule.as_deref(), t)?;
            outcomes.push(Outcome {
                file: file.display().to_string(),
                name: t.name.clone(),
                failure,
            });
        }
    }
    let mut out = std::io::stdout().lock();
    for o in &outcomes {
        if o.failure.is_empty() {
            writeln!(out, "ok    {}: {}", o.file, o.name)?;
        } else {
            writeln!(out, "FAIL  {}: {}", o.file, o.name)?;
            for line in &o.failure {
                writeln!(out, "      {}", crate::text::for_terminal(line))?;
            }
        }
    }
    let failed = outcomes.iter().filter(|o| !o.failure.is_empty()).count();
    writeln!(
        out,
        "{} test(s), {} passed, {failed} failed",
        outcomes.len(),
        outcomes.len() - failed
    )?;
    if let Some(path) = &args.junit {
        std::fs::write(path, junit(&outcomes))
            .map_err(|e| Exit::config(format!("--junit {}: {e}", path.display())))?;
    }
    Ok(u8::from(failed > 0))
}

/// Runs one test; the lines that say why it failed, none when it passed. A test that
/// cannot run (no case, an unknown rule) is an error.
fn run_one(
    set: &RuleSet,
    base: &EvalEnv,
    file: &Path,
    file_rule: Option<&str>,
    t: &TestCase,
) -> Result<Vec<String>, Exit> {
    let at = |m: String| Exit::config(format!("{}: test {:?}: {m}", file.display(), t.name));
    // A test that read the real clock would pass today and fail next week.
    let Some(now) = &t.now else {
        return Err(at("give `now` (RFC 3339), the time the rules see".into()));
    };
    let clock = chrono::DateTime::parse_from_rfc3339(now)
        .map_err(|e| at(format!("now {now:?} is not an RFC 3339 time ({e})")))?
        .timestamp_millis();
    for e in t.expect.iter().flatten() {
        if crate::plan::Field::parse(&e.field).is_none() {
            return Err(at(format!(
                "expect: unknown field {:?}: one of priority, status, resolution, assignee, tags, description, comment",
                e.field
            )));
        }
        if e.new.is_some() == e.new_contains.is_some() {
            return Err(at(format!(
                "expect: give exactly one of `new` and `new_contains` for {}",
                e.field
            )));
        }
    }
    let mut json = match (&t.case, &t.case_file) {
        (Some(c), None) => serde_json::to_value(c).map_err(|e| at(e.to_string()))?,
        (None, Some(f)) => {
            let path = file.parent().unwrap_or(Path::new(".")).join(f);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| at(format!("case_file {}: {e}", path.display())))?;
            serde_json::from_str(&text)
                .map_err(|e| at(format!("case_file {}: not JSON: {e}", path.display())))?
        }
        _ => return Err(at("give exactly one of `case` and `case_file`".into())),
    };
    relative_times(&mut json, clock).map_err(at)?;
    let case = Case::from_value(json).map_err(|e| at(format!("the case: {e}")))?;
    let only = t.rule.as_deref().or(file_rule);
    let rules: Vec<Arc<Rule>> = match only {
        Some(name) => vec![
            set.rules
                .iter()
                .find(|r| r.name == name)
                .cloned()
                .ok_or_else(|| at(format!("no rule named {name:?}")))?,
        ],
        None => set.rules.iter().filter(|r| r.enabled).cloned().collect(),
    };
    let expected: &[Expected] = match (&t.expect, t.no_changes) {
        (Some(e), false) if !e.is_empty() => e,
        (None, true) => &[],
        _ => {
            return Err(at(
                "give either `expect = [...]` (at least one change) or `no_changes = true`".into(),
            ));
        }
    };
    let env = EvalEnv {
        now_ms: Some(clock),
        own_users: Arc::new(t.self_user.iter().cloned().collect()),
        ..base.clone()
    };
    let (requests, errors) =
        super::test_rule::requests_of(set.evaluate_case(&rules, &case, &env), &rules);
    let mut failure: Vec<String> = errors.iter().map(|e| format!("rule error: {e}")).collect();
    let plan = plan_case(&case, &requests);
    let mut actual: Vec<&Decision> = plan.decisions.iter().filter(|d| d.is_planned()).collect();
    let mut missing = Vec::new();
    for e in expected {
        match actual.iter().position(|d| e.matches(d)) {
            Some(i) => {
                actual.remove(i);
            }
            None => missing.push(e.describe()),
        }
    }
    for m in &missing {
        failure.push(format!("expected: {m}"));
    }
    for d in &actual {
        failure.push(format!("unexpected: {}", describe(d)));
    }
    if !failure.is_empty() {
        let all: Vec<String> = plan
            .decisions
            .iter()
            .filter(|d| d.is_planned())
            .map(describe)
            .collect();
        failure.push(format!(
            "actual changes: {}",
            if all.is_empty() {
                "none".to_string()
            } else {
                all.join("; ")
            }
        ));
    }
    Ok(failure)
}

/// `"now"` and `"now-30h"` (any duration `casewarden audit --since` takes) in a case's
/// fields become that time in ms, so a test reads as "created 30 hours ago".
fn relative_times(v: &mut serde_json::Value, now_ms: i64) -> Result<(), String> {
    match v {
        serde_json::Value::Object(map) => {
            for value in map.values_mut() {
                relative_times(value, now_ms)?;
            }
        }
        serde_json::Value::Array(items) => {
            for value in items {
                relative_times(value, now_ms)?;
            }
        }
        serde_json::Value::String(s) if s == "now" => *v = now_ms.into(),
        serde_json::Value::String(s) if s.starts_with("now-") => {
            let ago = crate::time::parse_duration(&s[4..]).map_err(|e| format!("{s:?}: {e}"))?;
            *v = (now_ms - ago.num_milliseconds()).into();
        }
        _ => {}
    }
    Ok(())
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

fn junit(outcomes: &[Outcome]) -> String {
    let mut files: Vec<&str> = outcomes.iter().map(|o| o.file.as_str()).collect();
    files.dedup();
    let failed = outcomes.iter().filter(|o| !o.failure.is_empty()).count();
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"casewarden rule tests\" tests=\"{}\" failures=\"{failed}\">\n",
        outcomes.len()
    );
    for file in files {
        let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.file == file).collect();
        let fails = mine.iter().filter(|o| !o.failure.is_empty()).count();
        x.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{fails}\">\n",
            xml(file),
            mine.len()
        ));
        for o in mine {
            x.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\"",
                xml(file),
                xml(&o.name)
            ));
            if o.failure.is_empty() {
                x.push_str("/>\n");
            } else {
                x.push_str(&format!(
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                    xml(&o.failure[0]),
                    xml(&o.failure.join("\n"))
                ));
            }
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}
