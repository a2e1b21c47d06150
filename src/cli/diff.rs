//! `casewarden diff --rules-dir CANDIDATE`: what a rule edit would change before it is
//! deployed. The live rules and the candidate decide on the same cases (one listing, or a
//! file saved with `once --save-cases`), nothing is written, and per rule the cases the
//! candidate gains, loses or changes differently are listed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};

use super::{Cli, Exit, load_config};
use crate::config::{ServerSettings, Settings};
use crate::rules::diff::{CaseDiff, Guard, RuleDiff, diff};
use crate::rules::{EvalEnv, RuleSet};
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
    /// Exit 0 when the candidate decides every case as the live rules do, 2 when it
    /// decides some differently or adds or removes a rule, 1 on an error (as `terraform
    /// plan -detailed-exitcode`)
    #[arg(long)]
    pub detailed_exitcode: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiffFormat {
    Table,
    Json,
}

pub(super) async fn run(cli: &Cli, args: &DiffArgs) -> anyhow::Result<u8> {
    let result = compare(cli, args).await;
    // With --detailed-exitcode, 2 means "different": every error is 1.
    match result {
        Err(e) if args.detailed_exitcode => Err(Exit::failed(&e).into()),
        Ok(true) if args.detailed_exitcode => Ok(2),
        other => other.map(|_| 0),
    }
}

/// Prints what the candidate decides differently; Ok(true) when it does.
async fn compare(cli: &Cli, args: &DiffArgs) -> anyhow::Result<bool> {
    let config = load_config(cli)?;
    let live = load_rules(&config, &config.daemon.rules_dir)?;
    let candidate = load_rules(&config, &args.rules_dir)?;
    let mut env = EvalEnv {
        now_ms: Some(super::now_arg(args.now.as_deref())?.unwrap_or_else(crate::now_ms)),
        calendars: config.calendars(),
        exempt_tags: Arc::new(config.daemon.exempt_tags.clone()),
        ..EvalEnv::default()
    };
    let cases = match &args.cases {
        Some(file) => cases_in(file)?,
        None => {
            let needs_users = live.needs_users || candidate.needs_users;
            list_cases(&config, args.instance.as_deref(), needs_users, &mut env).await?
        }
    };
    let guard = Guard {
        max_change_fraction: config.daemon.max_change_fraction,
        min_cases: config.daemon.guard_min_cases,
    };
    let diffs = diff(&live, &candidate, &cases, &env, guard);
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
    Ok(diffs
        .iter()
        .any(|d| !d.is_same() || matches!(d.status, "added" | "removed")))
}

fn load_rules(config: &Settings, dir: &Path) -> Result<RuleSet, Exit> {
    RuleSet::load_dir_for(dir, &config.rule_names())
        .map_err(|errors| Exit::config_all(&errors, Some(format!("in {}", dir.display()))))
}

/// The cases of a saved file.
fn cases_in(file: &Path) -> Result<Vec<Case>, Exit> {
    super::test_rule::read_cases(file)?
        .into_iter()
        .enumerate()
        .map(|(n, v)| {
            Case::from_value(v)
                .map_err(|e| Exit::config(format!("{} case #{}: {e}", file.display(), n + 1)))
        })
        .collect()
}

/// Every case of the server, and into `env` what rules read of it (its users, our own).
async fn list_cases(
    config: &Settings,
    instance: Option<&str>,
    needs_users: bool,
    env: &mut EvalEnv,
) -> Result<Vec<Case>, Exit> {
    let client = super::connect(server_of(config, instance)?)?;
    client.authenticate().await.map_err(Exit::server)?;
    if needs_users {
        let users = client.list_users().await.map_err(Exit::server)?;
        env.users = Some(Arc::new(crate::stellar::Directory::new(users)));
    }
    env.own_users = Arc::new(client.user().map(str::to_string).into_iter().collect());
    let mut pager = client.list_cases(Vec::new());
    let mut all = Vec::new();
    while let Some(page) = pager.next_page().await.map_err(Exit::server)? {
        all.extend(page.cases);
    }
    Ok(all)
}

/// The server `--instance` names, else the first.
fn server_of<'a>(config: &'a Settings, instance: Option<&str>) -> Result<&'a ServerSettings, Exit> {
    let servers = config.servers();
    let Some(name) = instance else {
        return Ok(servers[0]);
    };
    servers
        .iter()
        .find(|s| s.instance_name() == name)
        .copied()
        .ok_or_else(|| {
            let names: Vec<&str> = servers.iter().map(|s| s.instance_name()).collect();
            Exit::config(format!(
                "--instance {name:?}: no such server in the config (servers: {})",
                names.join(", ")
            ))
        })
}

fn print_table(out: &mut impl Write, diffs: &[RuleDiff], cases: usize) -> std::io::Result<()> {
    writeln!(
        out,
        "{cases} case(s) decided by the live and the candidate rules"
    )?;
    for d in diffs {
        print_rule(out, d)?;
    }
    Ok(())
}

fn print_rule(out: &mut impl Write, d: &RuleDiff) -> std::io::Result<()> {
    let summary = if d.is_same() {
        "no case decided differently".to_string()
    } else {
        format!(
            "{} case(s) gained, {} lost, {} changed",
            d.gained.len(),
            d.lost.len(),
            d.changed.len()
        )
    };
    writeln!(out, "rule {} ({}): {summary}", d.rule, d.status)?;
    if let Some(why) = &d.candidate_halted {
        writeln!(out, "  ! {why}")?;
    }
    for c in &d.gained {
        writeln!(out, "  + case {}: {}", head(c), show(&c.candidate))?;
    }
    for c in &d.lost {
        writeln!(out, "  - case {}: {}", head(c), show(&c.live))?;
    }
    for c in &d.changed {
        writeln!(
            out,
            "  ~ case {}: live {} | candidate {}",
            head(c),
            show(&c.live),
            show(&c.candidate)
        )?;
    }
    Ok(())
}

/// The case id and its ticket, if it has one.
fn head(c: &CaseDiff) -> String {
    match c.ticket_id {
        Some(t) => format!("{} (ticket {t})", c.case_id),
        None => c.case_id.clone(),
    }
}

fn show(changes: &[String]) -> String {
    crate::text::for_terminal(&changes.join("; ")).into_owned()
}
