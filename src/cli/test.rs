//! `casewarden test [RULES_DIR]`: the rule tests kept beside the rules
//! (`RULES_DIR/tests/*.toml`), each a case, a time and the changes expected, decided as a
//! pass decides them. Exit 1 on a failed expectation, 2 on a test file that cannot be read.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{Cli, Exit};
use crate::rules::RuleSet;
use crate::rules::testing::{Outcome, junit, run_all, test_files};

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

pub(super) fn run(cli: &Cli, args: &TestArgs) -> anyhow::Result<u8> {
    let dir = match &args.rules_dir {
        Some(d) => d.clone(),
        None => crate::config::Settings::load(&super::config_path(cli))
            .map(|c| c.daemon.rules_dir)
            .unwrap_or_else(|_| PathBuf::from("rules")),
    };
    let set = RuleSet::load_dir(&dir).map_err(|errors| Exit::config_all(&errors, None))?;
    let files = test_files(&dir).map_err(Exit::config)?;
    let base = super::test_rule::offline_env(cli.config.as_deref())?;
    let outcomes = run_all(&set, &base, &files).map_err(Exit::config)?;
    let failed = print_outcomes(&mut std::io::stdout().lock(), &outcomes)?;
    if let Some(path) = &args.junit {
        std::fs::write(path, junit(&outcomes))
            .map_err(|e| Exit::config(format!("--junit {}: {e}", path.display())))?;
    }
    Ok(u8::from(failed > 0))
}

/// Each test's outcome and a count; returns how many failed.
fn print_outcomes(out: &mut impl Write, outcomes: &[Outcome]) -> std::io::Result<usize> {
    for o in outcomes {
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
    Ok(failed)
}
