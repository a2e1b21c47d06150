//! `casewarden demo`: the simulator in-process, the example rules for two passes, and
//! the audit log they leave, so a newcomer sees the whole loop in one command.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::StreamExt;

use crate::app::App;
use crate::audit::export::{Format, Printer};
use crate::audit::{AuditStore, Filter, Verification};
use crate::config::Settings;
use crate::pass::{PassContext, PassOptions, PassReport, run_pass};
use crate::report::{print_plans, print_report};
use crate::rules::RuleSet;
use crate::sim::{SimOptions, Simulator};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of simulated cases
    #[arg(long, default_value_t = 400)]
    pub cases: usize,
    /// Seed for the simulated population
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Rules folder [default: ./rules if present, else the built-in examples]
    #[arg(long, value_name = "DIR")]
    pub rules_dir: Option<PathBuf>,
}

/// The example rules, built in so the demo works from any folder.
const EXAMPLES: [(&str, &str); 5] = [
    (
        "10-escalate-aged-new.rhai",
        include_str!("../../rules/10-escalate-aged-new.rhai"),
    ),
    (
        "20-sla-breach.rhai",
        include_str!("../../rules/20-sla-breach.rhai"),
    ),
    (
        "30-tag-by-entity.rhai",
        include_str!("../../rules/30-tag-by-entity.rhai"),
    ),
    (
        "40-assign-by-tag.rhai",
        include_str!("../../rules/40-assign-by-tag.rhai"),
    ),
    (
        "50-stale-low-resolve.rhai",
        include_str!("../../rules/50-stale-low-resolve.rhai"),
    ),
];

/// How many changed cases the demo lists in full.
const SHOWN_CASES: usize = 8;

/// The rules folder the demo runs: `--rules-dir`, else `./rules`, else the built-in
/// examples written into `scratch`; and how to name it.
fn rules_dir(args: &DemoArgs, scratch: &Path) -> anyhow::Result<(PathBuf, String)> {
    let chosen = args
        .rules_dir
        .clone()
        .or_else(|| Some(PathBuf::from("rules")).filter(|d| d.is_dir()));
    if let Some(dir) = chosen {
        let name = dir.display().to_string();
        return Ok((std::path::absolute(&dir)?, name));
    }
    let dir = scratch.join("rules");
    std::fs::create_dir(&dir)?;
    for (file, text) in EXAMPLES {
        std::fs::write(dir.join(file), text)?;
    }
    Ok((dir, "the built-in examples".into()))
}

/// The demo's config, as a user would write it: the simulator, a key file, the rules and
/// an audit log in `scratch`; everything else the defaults.
fn config(scratch: &Path, url: &str, rules: &Path) -> anyhow::Result<Settings> {
    let key = scratch.join("api_key");
    std::fs::write(&key, "demo-key\n")?;
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let rules = toml::Value::String(rules.display().to_string());
    let text = format!(
        "[stellar]\nurl = \"{url}\"\napi_flavor = \"legacy\"\nuser = \"demo@example.com\"\n\
         api_key_file = \"api_key\"\ntimeout_secs = 10\nretry_base_ms = 100\n\n\
         [daemon]\nrules_dir = {rules}\n\n[audit]\npath = \"audit.db\"\n"
    );
    Ok(Settings::parse(&text, &scratch.join("casewarden.toml"))?)
}

/// One changed case's rows, the first pass's outcome counts, and `audit verify`.
async fn show_trail(
    out: &mut impl Write,
    audit: &AuditStore,
    case_id: Option<String>,
    first_run: &str,
) -> anyhow::Result<()> {
    let filter = Filter {
        case_id,
        ..Filter::default()
    };
    {
        let mut printer = Printer::new(Format::Table, &mut *out)?;
        let mut rows = std::pin::pin!(audit.query(&filter));
        while let Some(row) = rows.next().await {
            printer.row(&row?)?;
        }
        printer.finish()?;
    }
    let counts = audit.outcome_counts(first_run).await?;
    let counts: Vec<String> = counts.iter().map(|(o, n)| format!("{n} {o}")).collect();
    writeln!(out, "   first pass in the audit log: {}", counts.join(", "))?;
    match audit.verify().await? {
        Verification::Intact { rows, head, .. } => writeln!(
            out,
            "   audit verify: ok, {rows} rows, hash chain intact, head {head}"
        )?,
        Verification::Broken { seq, problem, .. } => {
            writeln!(out, "   audit verify: BROKEN at row {seq}: {problem}")?
        }
        Verification::BrokenPass { id, problem } => {
            writeln!(out, "   audit verify: BROKEN: pass {id}: {problem}")?
        }
    }
    Ok(())
}

pub(super) async fn run(args: &DemoArgs) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "casewarden demo")?;
    writeln!(out, "===============")?;
    writeln!(
        out,
        "1. Starting a simulated Stellar Cyber server with {} cases (seed {})...",
        args.cases, args.seed
    )?;
    let options = SimOptions {
        cases: args.cases,
        seed: args.seed,
        ..SimOptions::default()
    };
    let sim = Simulator::start(options, "127.0.0.1:0".parse()?, None).await?;
    writeln!(out, "   listening on {}", sim.url)?;
    let scratch = tempfile::tempdir()?;
    let (dir, from) = rules_dir(args, scratch.path())?;
    let App {
        rules: set, ctx, ..
    } = App::build(&config(scratch.path(), &sim.url, &dir)?, None)
        .await
        .map_err(|e| anyhow::anyhow!("the demo cannot start: {e}"))?;
    writeln!(out, "2. Loaded {} rule(s) from {from}:", set.rules.len())?;
    for r in &set.rules {
        writeln!(out, "   - {:<20} {}", r.name, r.description)?;
    }
    let (first_run, first_changed) = two_passes(&mut out, &ctx, &set).await?;
    writeln!(out)?;
    writeln!(
        out,
        "5. The audit trail of one changed case: intent (planned) before each request, outcome after:"
    )?;
    show_trail(&mut out, &ctx.audit, first_changed, &first_run).await?;
    print_epilogue(&mut out, &sim)?;
    ctx.audit.close().await;
    sim.stop().await;
    Ok(0)
}

/// What reached the simulator, and where to go next.
fn print_epilogue(out: &mut impl Write, sim: &Simulator) -> std::io::Result<()> {
    let (writes, comments) = {
        let s = sim.state();
        (
            s.write_requests(),
            s.comments.values().map(Vec::len).sum::<usize>(),
        )
    };
    writeln!(out)?;
    writeln!(
        out,
        "The simulator received {writes} write request(s) and holds {comments} comment(s) explaining the changes."
    )?;
    writeln!(
        out,
        "Next: `casewarden simulate` in one terminal, then `casewarden once --dry-run` against it (see README)."
    )
}

/// The first cases the pass changed, in full; returns the one it changed most.
fn list_changed(out: &mut impl Write, report: &PassReport) -> std::io::Result<Option<String>> {
    let changed: Vec<_> = report
        .plans
        .iter()
        .filter(|p| p.has_work())
        .cloned()
        .collect();
    let shown = changed.len().min(SHOWN_CASES);
    writeln!(
        out,
        "   {} case(s) changed. The first {shown}:",
        changed.len()
    )?;
    print_plans(out, &changed[..shown])?;
    Ok(changed
        .iter()
        .max_by_key(|p| p.decisions.len())
        .map(|p| p.case_id.clone()))
}

/// Two passes with their summaries, the first one's changed cases listed; returns the
/// first pass's id and the case it changed most.
async fn two_passes(
    out: &mut impl Write,
    ctx: &PassContext,
    set: &RuleSet,
) -> anyhow::Result<(String, Option<String>)> {
    let mut first_run = String::new();
    let mut first_changed = None;
    for (n, title) in [
        (1, "first pass"),
        (2, "second pass (only what the first pass led to is left)"),
    ] {
        writeln!(out)?;
        write!(out, "{}. Running the {title}... ", n + 2)?;
        out.flush()?;
        let started = Instant::now();
        let (bar, progress) = super::progress::pass_bar();
        let options = PassOptions {
            trigger: "demo".into(),
            progress: Some(progress),
            ..PassOptions::default()
        };
        let report = run_pass(ctx, set, &options).await;
        bar.finish_and_clear();
        writeln!(out, "done in {} ms", started.elapsed().as_millis())?;
        if n == 1 {
            first_run = report.run_id.clone();
            first_changed = list_changed(out, &report)?;
        }
        print_report(out, &report)?;
        if report.has_failures() {
            writeln!(out, "   (unexpected failures: see the log above)")?;
        }
    }
    Ok((first_run, first_changed))
}
