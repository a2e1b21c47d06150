//! The rule tests kept beside the rules (`RULES_DIR/tests/*.toml`): each a case, a time
//! and the changes expected, decided as a pass decides them; and their JUnit XML.
//! `casewarden test` runs them and prints the outcomes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::offline::plan_of;
use super::{EvalEnv, Rule, RuleSet};
use crate::plan::{CasePlan, Decision, Field};
use crate::stellar::Case;

/// A test file that cannot be run; each names the file and, where one is at fault, the test.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error(
        "{}: {source} (rule tests live in RULES_DIR/tests/*.toml; `casewarden test --help` shows one)",
        dir.display()
    )]
    NoTestsDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("no *.toml rule tests in {}", dir.display())]
    NoTests { dir: PathBuf },
    #[error("{}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", file.display())]
    Parse { file: PathBuf, message: String },
    #[error("{}: no [[test]] in it", file.display())]
    Empty { file: PathBuf },
    #[error("{}: two tests named {name:?}: names tell failures apart", file.display())]
    SameName { file: PathBuf, name: String },
    /// The test cannot run: no case, an unknown rule, no `now`.
    #[error("{}: test {name:?}: {problem}", file.display())]
    Test {
        file: PathBuf,
        name: String,
        problem: String,
    },
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

    /// A field the planner knows, and exactly one of `new` and `new_contains`.
    fn check(&self) -> Result<(), String> {
        if Field::parse(&self.field).is_none() {
            return Err(format!(
                "expect: unknown field {:?}: one of priority, status, resolution, assignee, tags, description, comment",
                self.field
            ));
        }
        if self.new.is_some() == self.new_contains.is_some() {
            return Err(format!(
                "expect: give exactly one of `new` and `new_contains` for {}",
                self.field
            ));
        }
        Ok(())
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
#[derive(Debug)]
pub struct Outcome {
    pub file: String,
    pub name: String,
    /// Why it failed, line by line; empty when it passed.
    pub failure: Vec<String>,
}

/// Runs every test of the `files` ([`test_files`]), file by file; `base` holds what the
/// config gives the rules (calendars, exempt tags).
pub fn run_all(
    set: &RuleSet,
    base: &EvalEnv,
    files: &[PathBuf],
) -> Result<Vec<Outcome>, TestError> {
    let mut outcomes = Vec::new();
    for file in files {
        outcomes.extend(run_file(set, base, file)?);
    }
    Ok(outcomes)
}

/// The `*.toml` files of a rules folder's `tests/`, in name order; at least one.
pub fn test_files(rules_dir: &Path) -> Result<Vec<PathBuf>, TestError> {
    let dir = rules_dir.join("tests");
    let dir = dir.as_path();
    let entries = std::fs::read_dir(dir).map_err(|source| TestError::NoTestsDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(TestError::NoTests {
            dir: dir.to_path_buf(),
        });
    }
    Ok(files)
}

/// Runs the tests of one file.
fn run_file(set: &RuleSet, base: &EvalEnv, file: &Path) -> Result<Vec<Outcome>, TestError> {
    let text = std::fs::read_to_string(file).map_err(|source| TestError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    let parsed: TestFile = toml::from_str(&text).map_err(|e| TestError::Parse {
        file: file.to_path_buf(),
        message: crate::text::toml_error(&text, &e),
    })?;
    if parsed.test.is_empty() {
        return Err(TestError::Empty {
            file: file.to_path_buf(),
        });
    }
    let mut names = HashSet::new();
    let mut outcomes = Vec::new();
    for t in &parsed.test {
        if !names.insert(t.name.as_str()) {
            return Err(TestError::SameName {
                file: file.to_path_buf(),
                name: t.name.clone(),
            });
        }
        let failure = run_one(set, base, file, parsed.rule.as_deref(), t).map_err(|problem| {
            TestError::Test {
                file: file.to_path_buf(),
                name: t.name.clone(),
                problem,
            }
        })?;
        outcomes.push(Outcome {
            file: file.display().to_string(),
            name: t.name.clone(),
            failure,
        });
    }
    Ok(outcomes)
}

/// Runs one test; the lines that say why it failed, none when it passed. A test that
/// cannot run (no case, an unknown rule) is an error.
fn run_one(
    set: &RuleSet,
    base: &EvalEnv,
    file: &Path,
    file_rule: Option<&str>,
    t: &TestCase,
) -> Result<Vec<String>, String> {
    let clock = clock_of(t)?;
    for e in t.expect.iter().flatten() {
        e.check()?;
    }
    let case = case_of(t, file, clock)?;
    let rules = rules_of(set, t.rule.as_deref().or(file_rule))?;
    let expected = expected_of(t)?;
    let env = EvalEnv {
        now_ms: Some(clock),
        own_users: Arc::new(t.self_user.iter().cloned().collect()),
        ..base.clone()
    };
    let (plan, errors) = plan_of(set, &rules, &case, &env);
    Ok(failures(&plan, &errors, expected))
}

/// The test's `now` in ms.
fn clock_of(t: &TestCase) -> Result<i64, String> {
    // A test that read the real clock would pass today and fail next week.
    let Some(now) = &t.now else {
        return Err("give `now` (RFC 3339), the time the rules see".into());
    };
    Ok(chrono::DateTime::parse_from_rfc3339(now)
        .map_err(|e| format!("now {now:?} is not an RFC 3339 time ({e})"))?
        .timestamp_millis())
}

/// The test's case, inline or from its file, its relative times made absolute.
fn case_of(t: &TestCase, file: &Path, clock: i64) -> Result<Case, String> {
    let mut json = match (&t.case, &t.case_file) {
        (Some(c), None) => serde_json::to_value(c).map_err(|e| e.to_string())?,
        (None, Some(f)) => {
            let path = file.parent().unwrap_or(Path::new(".")).join(f);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("case_file {}: {e}", path.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("case_file {}: not JSON: {e}", path.display()))?
        }
        _ => return Err("give exactly one of `case` and `case_file`".into()),
    };
    relative_times(&mut json, clock)?;
    Case::from_value(json).map_err(|e| format!("the case: {e}"))
}

/// The rule the test names (enabled or not), else every enabled rule.
fn rules_of(set: &RuleSet, only: Option<&str>) -> Result<Vec<Arc<Rule>>, String> {
    let Some(name) = only else {
        return Ok(set.enabled().cloned().collect());
    };
    let rule = set.rules.iter().find(|r| r.name == name).cloned();
    Ok(vec![rule.ok_or_else(|| format!("no rule named {name:?}"))?])
}

fn expected_of(t: &TestCase) -> Result<&[Expected], String> {
    match (&t.expect, t.no_changes) {
        (Some(e), false) if !e.is_empty() => Ok(e),
        (None, true) => Ok(&[]),
        _ => {
            Err("give either `expect = [...]` (at least one change) or `no_changes = true`".into())
        }
    }
}

/// Why the plan fails the expectations: rule errors, changes missing and unexpected, and
/// then every planned change; nothing when it meets them.
fn failures(plan: &CasePlan, errors: &[String], expected: &[Expected]) -> Vec<String> {
    let mut failure: Vec<String> = errors.iter().map(|e| format!("rule error: {e}")).collect();
    let planned: Vec<&Decision> = plan.decisions.iter().filter(|d| d.is_planned()).collect();
    let mut unmatched = planned.clone();
    for e in expected {
        match unmatched.iter().position(|d| e.matches(d)) {
            Some(i) => {
                unmatched.remove(i);
            }
            None => failure.push(format!("expected: {}", e.describe())),
        }
    }
    failure.extend(
        unmatched
            .iter()
            .map(|d| format!("unexpected: {}", describe(d))),
    );
    if !failure.is_empty() {
        let all: Vec<String> = planned.iter().map(|d| describe(d)).collect();
        failure.push(format!(
            "actual changes: {}",
            if all.is_empty() {
                "none".to_string()
            } else {
                all.join("; ")
            }
        ));
    }
    failure
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

/// The outcomes as JUnit XML, a test suite per file.
pub fn junit(outcomes: &[Outcome]) -> String {
    let mut files: Vec<&str> = outcomes.iter().map(|o| o.file.as_str()).collect();
    files.dedup();
    let failed = outcomes.iter().filter(|o| !o.failure.is_empty()).count();
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"casewarden rule tests\" tests=\"{}\" failures=\"{failed}\">\n",
        outcomes.len()
    );
    for file in files {
        let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.file == file).collect();
        junit_suite(&mut x, file, &mine);
    }
    x.push_str("</testsuites>\n");
    x
}

fn junit_suite(x: &mut String, file: &str, mine: &[&Outcome]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const ESCALATE: &str = "const RULE = #{ name: \"escalate\" };\nfn evaluate(c) { if c.status == \"New\" && hours_since(c.created_at) >= 24 { set_priority(\"High\", \"aged\"); } }\n";

    fn folder(tests: &str) -> (tempfile::TempDir, RuleSet) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tests")).unwrap();
        std::fs::write(dir.path().join("tests/t.toml"), tests).unwrap();
        let set = RuleSet::from_sources(vec![("a.rhai".into(), ESCALATE.into())]).unwrap();
        (dir, set)
    }

    #[test]
    fn relative_times_count_back_from_the_tests_now() {
        let mut v = serde_json::json!({"created_at": "now-1h", "a": ["now"], "b": "later"});
        relative_times(&mut v, 10_000_000).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"created_at": 6_400_000, "a": [10_000_000], "b": "later"})
        );
        assert!(relative_times(&mut serde_json::json!("now-soon"), 0).is_err());
    }

    #[test]
    fn a_met_expectation_passes_and_a_missed_one_says_what_happened() {
        let (dir, set) = folder(
            "[[test]]\nname = \"aged\"\nnow = \"2026-11-25T12:00:00Z\"\ncase = { _id = \"a\", status = \"New\", priority = \"Medium\", created_at = \"now-30h\" }\nexpect = [ { field = \"priority\", new = \"High\" } ]\n\n\
             [[test]]\nname = \"fresh\"\nnow = \"2026-11-25T12:00:00Z\"\ncase = { _id = \"b\", status = \"New\", priority = \"Medium\", created_at = \"now-30h\" }\nno_changes = true\n",
        );
        let outcomes =
            run_all(&set, &EvalEnv::default(), &test_files(dir.path()).unwrap()).unwrap();
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes[0].failure.is_empty(), "{:?}", outcomes[0].failure);
        assert_eq!(
            outcomes[1].failure,
            [
                "unexpected: priority \"Medium\" -> \"High\" by escalate",
                "actual changes: priority \"Medium\" -> \"High\" by escalate"
            ]
        );
    }

    #[test]
    fn a_test_without_now_cannot_run() {
        let (dir, set) =
            folder("[[test]]\nname = \"clockless\"\ncase = { _id = \"a\" }\nno_changes = true\n");
        let e = run_all(&set, &EvalEnv::default(), &test_files(dir.path()).unwrap()).unwrap_err();
        assert!(
            e.to_string().ends_with(
                "t.toml: test \"clockless\": give `now` (RFC 3339), the time the rules see"
            ),
            "{e}"
        );
    }

    #[test]
    fn junit_escapes_and_counts_failures() {
        let outcomes = [
            Outcome {
                file: "t.toml".into(),
                name: "a <b>".into(),
                failure: vec!["expected: x \"y\"".into()],
            },
            Outcome {
                file: "t.toml".into(),
                name: "ok".into(),
                failure: Vec::new(),
            },
        ];
        let x = junit(&outcomes);
        assert!(x.contains("tests=\"2\" failures=\"1\""));
        assert!(x.contains("name=\"a &lt;b&gt;\""));
        assert!(x.contains("<failure message=\"expected: x &quot;y&quot;\">"));
        assert!(x.contains("<testcase classname=\"t.toml\" name=\"ok\"/>"));
    }
}
