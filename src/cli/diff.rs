//! `casewarden diff --rules-dir CANDIDATE`: what a rule edit would change before it is
//! deployed. The live rules and the candidate decide on the same cases (one listing, or a
//! file saved with `once --save-cases`), nothing is written, and per rule the cases the
//! candidate gains, loses or changes differently are listed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::{Cli, Exit, load_config};
use crate::plan::plan_case;
use crate::rules::{EvalEnv, Rule, RuleSet};
use crate::stellar::Case;

#[derive(Debug, Args)]
#[command(after_help = "casewarden diff --rules-dir ../rules-candidate
casewarden once --dry-run --save-cases cases.json && casewarden diff --rules-dir ../rules-candidate --cases cases.json --format json")]
pub struct DiffArgs {
    /// The candidate rules folder, compared with daemon.rules_dir
    #[arg(long, value_name = "DIR")]
    pub rules_dir: PathBuf,
    /// Decide on these saved cases (any saved answer, or `once --save-cases`) instead of
    /// listing the server's
    #[arg(long, value_name = "FILE")]
    pub cases: Option<PathBuf>,
    /// The time rules see as now() (RFC 3339) [default: the real clock]
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<String>,
    /// table for people, json for CI
    #[arg(long, value_enum, default_value_t = DiffFormat::Table)]
    pub format: DiffFormat,
    /// List this server's cases (an `[[instance]]` name) [default: the first server]
    #[arg(long, value_name = "NAME", conflicts_with = "cases")]
    pub instance: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiffFormat {
    Table,
    Json,
}

/// One case a rule treats differently.
#[derive(Debug, Clone, Serialize)]
struct CaseDiff {
    case_id: String,
    ticket_id: Option<i64>,
    /// `field old -> new` of each change, live and candidate.
    live: Vec<String>,
    candidate: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct RuleDiff {
    rule: String,
    /// added, removed, modified or unchanged (by the rule file's hash)
    status: &'static str,
    gained: Vec<CaseDiff>,
    lost: Vec<CaseDiff>,
    changed: Vec<CaseDiff>,
    /// The blast-radius guard would halt the candidate rule on these cases (nothing of it
    /// would be applied): why.
    candidate_halted: Option<String>,
}

/// Each rule's planned changes on one case, as `field old -> new` lines.
type Decided = BTreeMap<String, Vec<String>>;

fn decide(set: &RuleSet, rules: &[Arc<Rule>], case: &Case, env: &EvalEnv) -> Decided {
    let (requests, _errors) =
        super::test_rule::requests_of(set.evaluate_case(rules, case, env), rules);
    let plan = plan_case(case, &requests);
    let mut out: Decided = BTreeMap::new();
    for d in plan.decisions.iter().filter(|d| d.is_planned()) {
        out.entry(d.rule.clone()).or_default().push(format!(
            "{} {}",
            d.field,
            crate::plan::describe_change(d.field, d.old.as_deref(), d.new.as_deref())
        ));
    }
    out
}

pub(super) async fn run(cli: &Cli, args: &DiffArgs) -> anyhow::Result<u8> {
    let config = load_config(cli)?;
    let load = |dir: &std::path::Path| {
        RuleSet::load_dir_for(dir, &config.rule_names()).map_err(|errors| {
            Exit::config_all(
                &errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                Some(format!("in {}", dir.display())),
            )
        })
    };
    let live = load(&config.daemon.rules_dir)?;
    let candidate = load(&args.rules_dir)?;
    let now_ms = match &args.now {
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| Exit::config(format!("--now {t:?}: not an RFC 3339 time ({e})")))?
                .timestamp_millis(),
        ),
        None => Some(crate::now_ms()),
    };
    let mut env = EvalEnv {
        now_ms,
        calendars: config.calendars(),
        exempt_tags: Arc::new(config.daemon.exempt_tags.clone()),
        ..EvalEnv::default()
    };
    let cases = match &args.cases {
        Some(file) => super::test_rule::read_cases(file)?
            .into_iter()
            .enumerate()
            .map(|(n, v)| {
                Case::from_value(v)
                    .map_err(|e| Exit::config(format!("{} case #{}: {e}", file.display(), n + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => {
            let servers = config.servers();
            let server = match &args.instance {
                None => servers[0],
                Some(name) => *servers
                    .iter()
                    .find(|s| s.instance_name() == name)
                    .ok_or_else(|| {
                        let names: Vec<&str> = servers.iter().map(|s| s.instance_name()).collect();
                        Exit::config(format!(
                            "--instance {name:?}: no such server in the config (servers: {})",
                            names.join(", ")
                        ))
                    })?,
            };
            let client = super::connect(&config, server)?;
            client.authenticate().await.map_err(Exit::server)?;
            if live.needs_users || candidate.needs_users {
                let users = client.list_users().await.map_err(Exit::server)?;
                env.users = Some(Arc::new(crate::stellar::Directory::new(users)));
            }
            env.own_users = Arc::new(client.user().map(str::to_string).into_iter().collect());
            let mut pager = client.list_cases(Vec::new());
            let mut all = Vec::new();
            while let Some(page) = pager.next_page().await.map_err(Exit::server)? {
                all.extend(page.cases);
            }
            all
        }
    };
    let enabled = |set: &RuleSet| -> Vec<Arc<Rule>> {
        set.rules.iter().filter(|r| r.enabled).cloned().collect()
    };
    let (live_rules, candidate_rules) = (enabled(&live), enabled(&candidate));
    let names: BTreeSet<String> = live_rules
        .iter()
        .chain(&candidate_rules)
        .map(|r| r.name.clone())
        .collect();
    let hash_of = |rules: &[Arc<Rule>], name: &str| {
        rules
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.source_hash.clone())
    };
    let mut diffs: BTreeMap<String, RuleDiff> = names
        .iter()
        .map(|name| {
            let status = match (hash_of(&live_rules, name), hash_of(&candidate_rules, name)) {
                (None, _) => "added",
                (_, None) => "removed",
                (a, b) if a == b => "unchanged",
                _ => "modified",
            };
            (
                name.clone(),
                RuleDiff {
                    rule: name.clone(),
                    status,
                    gained: Vec::new(),
                    lost: Vec::new(),
                    changed: Vec::new(),
                    candidate_halted: None,
                },
            )
        })
        .collect();
    let mut wanted: BTreeMap<String, usize> = BTreeMap::new();
    for case in &cases {
        let before = decide(&live, &live_rules, case, &env);
        let after = decide(&candidate, &candidate_rules, case, &env);
        for rule in after.keys() {
            *wanted.entry(rule.clone()).or_default() += 1;
        }
        for (name, d) in diffs.iter_mut() {
            let (b, a) = (before.get(name), after.get(name));
            if b == a {
                continue;
            }
            let entry = CaseDiff {
                case_id: case.id.clone(),
                ticket_id: case.ticket_id(),
                live: b.cloned().unwrap_or_default(),
                candidate: a.cloned().unwrap_or_default(),
            };
            match (b, a) {
                (None, Some(_)) => d.gained.push(entry),
                (Some(_), None) => d.lost.push(entry),
                _ => d.changed.push(entry),
            }
        }
    }
    // As a pass would: a rule wanting too large a share of the listed cases is halted.
    for r in &candidate_rules {
        let n = wanted.get(&r.name).copied().unwrap_or(0);
        let limit = r
            .max_change_fraction
            .unwrap_or(config.daemon.max_change_fraction);
        if crate::plan::guard_trips(n, cases.len(), limit, config.daemon.guard_min_cases)
            && let Some(d) = diffs.get_mut(&r.name)
        {
            d.candidate_halted = Some(format!(
                "the blast-radius guard would halt it: it wants to change {n} of {} cases (limit {:.0}%), so none of its changes would be applied",
                cases.len(),
                limit * 100.0
            ));
        }
    }
    let diffs: Vec<RuleDiff> = diffs.into_values().collect();
    let mut out = std::io::stdout().lock();
    match args.format {
        DiffFormat::Json => {
            serde_json::to_writer_pretty(
                &mut out,
                &serde_json::json!({"cases": cases.len(), "rules": diffs}),
            )?;
            writeln!(out)?;
        }
        DiffFormat::Table => print_table(&mut out, &diffs, cases.len())?,
    }
    Ok(0)
}

fn print_table(out: &mut impl Write, diffs: &[RuleDiff], cases: usize) -> std::io::Result<()> {
    writeln!(
        out,
        "{cases} case(s) decided by the live and the candidate rules"
    )?;
    for d in diffs {
        let same = d.gained.is_empty() && d.lost.is_empty() && d.changed.is_empty();
        writeln!(
            out,
            "rule {} ({}): {}",
            d.rule,
            d.status,
            if same {
                "no case decided differently".to_string()
            } else {
                format!(
                    "{} case(s) gained, {} lost, {} changed",
                    d.gained.len(),
                    d.lost.len(),
                    d.changed.len()
                )
            }
        )?;
        if let Some(why) = &d.candidate_halted {
            writeln!(out, "  ! {why}")?;
        }
        let ticket = |c: &CaseDiff| {
            c.ticket_id
                .map(|t| format!(" (ticket {t})"))
                .unwrap_or_default()
        };
        let show = |v: &[String]| crate::text::for_terminal(&v.join("; ")).into_owned();
        for c in &d.gained {
            writeln!(
                out,
                "  + case {}{}: {}",
                c.case_id,
                ticket(c),
                show(&c.candidate)
            )?;
        }
        for c in &d.lost {
            writeln!(
                out,
                "  - case {}{}: {}",
                c.case_id,
                ticket(c),
                show(&c.live)
            )?;
        }
        for c in &d.changed {
            writeln!(
                out,
                "  ~ case {}{}: live {} | candidate {}",
                c.case_id,
                ticket(c),
                show(&c.live),
                show(&c.candidate)
            )?;
        }
    }
    Ok(())
}
