//! `casewarden demo`: the simulator in-process, the example rules for two passes, and
//! the audit log they leave, so a newcomer sees the whole loop in one command.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::audit::report::{Format, Printer};
use crate::audit::{AuditStore, Filter, Verification};
use crate::config::ApiFlavor;
use crate::pass::{PassContext, PassOptions, PassSettings, run_pass};
use crate::report::{print_plans, print_report};
use crate::rules::RuleSet;
use crate::sim::{SimOptions, Simulator};
use crate::stellar::{Client, ClientSettings, credentials};

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
        include_str!("../rules/10-escalate-aged-new.rhai"),
    ),
    (
        "20-sla-breach.rhai",
        include_str!("../rules/20-sla-breach.rhai"),
    ),
    (
        "30-tag-by-entity.rhai",
        include_str!("../rules/30-tag-by-entity.rhai"),
    ),
    (
        "40-assign-by-tag.rhai",
        include_str!("../rules/40-assign-by-tag.rhai"),
    ),
    (
        "50-stale-low-resolve.rhai",
        include_str!("../rules/50-stale-low-resolve.rhai"),
    ),
];

/// How many changed cases the demo lists in full.
const SHOWN_CASES: usize = 8;

fn rules(args: &DemoArgs) -> anyhow::Result<(RuleSet, String)> {
    let dir = args
        .rules_dir
        .clone()
        .or_else(|| Some(PathBuf::from("rules")).filter(|d| d.is_dir()));
    let loaded = match &dir {
        Some(d) => RuleSet::load_dir(d).map(|s| (s, d.display().to_string())),
        None => RuleSet::from_sources(
            EXAMPLES
                .iter()
                .map(|(f, t)| (PathBuf::from(f), t.to_string()))
                .collect(),
        )
        .map(|s| (s, "the built-in examples".to_string())),
    };
    loaded.map_err(|errors| {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("the demo's rules do not compile:\n{}", list.join("\n"))
    })
}

/// The demo's pass context: the simulator's client and the daemon's default settings.
fn context(url: &str, audit: AuditStore) -> anyhow::Result<PassContext> {
    let defaults = crate::config::DaemonConfig::default();
    let client = Client::new(ClientSettings {
        url: url.to_string(),
        flavor: Some(ApiFlavor::Legacy),
        credentials: credentials(Some("demo@example.com"), "demo-key"),
        ca_pem: None,
        insecure_skip_tls_verify: false,
        timeout: Duration::from_secs(10),
        page_size: 100,
        max_attempts: 3,
        retry_base: Duration::from_millis(100),
    })?;
    Ok(PassContext {
        client,
        audit,
        settings: PassSettings {
            dry_run: false,
            max_changes: defaults.max_changes_per_run,
            comment_changes: true,
            max_change_fraction: defaults.max_change_fraction,
            guard_min_cases: defaults.guard_min_cases,
            max_in_flight: 8,
            settle_after: crate::pass::settle_after(Duration::from_secs(10)),
            pass_timeout: Duration::from_secs(defaults.pass_timeout_secs),
            limits: Default::default(),
        },
    })
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
        Verification::Intact { rows, head } => writeln!(
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

pub async fn run(args: &DemoArgs) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    let (set, from) = rules(args)?;
    writeln!(out, "casewarden demo")?;
    writeln!(out, "===============")?;
    writeln!(
        out,
        "1. Starting a simulated Stellar Cyber server with {} cases (seed {})...",
        args.cases, args.seed
    )?;
    let sim = Simulator::start(
        SimOptions {
            cases: args.cases,
            seed: args.seed,
            ..SimOptions::default()
        },
        "127.0.0.1:0".parse()?,
        None,
    )
    .await?;
    writeln!(out, "   listening on {}", sim.url)?;
    writeln!(out, "2. Loaded {} rule(s) from {from}:", set.rules.len())?;
    for r in &set.rules {
        writeln!(out, "   - {:<20} {}", r.name, r.description)?;
    }

    let dir = tempfile::tempdir()?;
    let audit = AuditStore::open(&dir.path().join("audit.db")).await?;
    let ctx = context(&sim.url, audit.clone())?;

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
        let report = run_pass(
            &ctx,
            &set,
            &PassOptions {
                trigger: "demo".into(),
                ..PassOptions::default()
            },
        )
        .await;
        writeln!(out, "done in {} ms", started.elapsed().as_millis())?;
        if n == 1 {
            first_run = report.run_id.clone();
            let changed: Vec<_> = report
                .plans
                .iter()
                .filter(|p| p.has_work())
                .cloned()
                .collect();
            first_changed = changed
                .iter()
                .max_by_key(|p| p.decisions.len())
                .map(|p| p.case_id.clone());
            writeln!(
                out,
                "   {} case(s) changed. The first {}:",
                changed.len(),
                changed.len().min(SHOWN_CASES)
            )?;
            print_plans(&mut out, &changed[..changed.len().min(SHOWN_CASES)])?;
        }
        print_report(&mut out, &report)?;
        if report.has_failures() {
            writeln!(out, "   (unexpected failures: see the log above)")?;
        }
    }

    writeln!(out)?;
    writeln!(
        out,
        "5. The audit trail of one changed case: intent (planned) before each request, outcome after:"
    )?;
    show_trail(&mut out, &audit, first_changed, &first_run).await?;
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
    )?;
    audit.close().await;
    sim.stop().await;
    Ok(0)
}
