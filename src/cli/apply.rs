//! `casewarden apply PLAN.json`: applies exactly a reviewed plan. Each case is read back
//! first; a change whose `old` no longer holds is skipped ("case changed since the plan").
//! A plan for another server, or past its expiry, is refused. Audited as a pass whose
//! trigger and reasons name the plan.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;

use super::alerts::Alerts;
use super::exit::unclaimed;
use super::{Cli, Exit, load_config};
use crate::app::App;
use crate::config::Settings;
use crate::pass::{PassContext, PassOptions, Work};
use crate::plan::CasePlan;
use crate::plan::reviewed::{Approval, ChangeKey, PlanFile, Taken};
use crate::report::print_report;
use crate::rules::RuleSet;

#[derive(Debug, Args)]
#[command(
    after_help = "casewarden once --dry-run --out plan.json     # review plan.json
casewarden apply plan.json --dry-run           # what would still apply now
casewarden apply plan.json --rule escalate     # approve one rule's changes
casewarden apply plan.json                     # the rest (what earlier applies made is left out)"
)]
pub struct ApplyArgs {
    /// The plan written by `casewarden once --dry-run --out`
    pub plan: PathBuf,
    /// Check the plan against the cases and record it, send nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Also apply the changes the blast-radius guard halted when the plan was made
    #[arg(long)]
    pub include_halted: bool,
    /// How long to wait for another casewarden pass on the same audit store to finish
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub wait: u64,
    /// Approve only this rule's changes (repeatable)
    #[arg(long = "rule", value_name = "NAME")]
    pub rules: Vec<String>,
    /// Approve only this case's changes, by case id or ticket number (repeatable)
    #[arg(long = "case", value_name = "ID")]
    pub cases: Vec<String>,
    /// Leave this rule's changes for later (repeatable)
    #[arg(long = "exclude-rule", value_name = "NAME")]
    pub exclude_rules: Vec<String>,
    /// Who approved it, recorded on every row [default: the login user]
    #[arg(long, value_name = "WHO")]
    pub operator: Option<String>,
}

/// `--operator`, else the person logged in (the one behind `sudo` too).
pub(super) fn operator(given: Option<&str>) -> String {
    given
        .map(str::to_string)
        .or_else(|| {
            ["SUDO_USER", "USER", "LOGNAME"]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        })
        .unwrap_or_else(|| "unknown (no --operator, no USER)".into())
}

/// What of the plan this `apply` takes: the approved changes earlier applies of it did not
/// make, up to the budget. Read under the claim, so two applies never take the same change.
async fn take(
    ctx: &PassContext,
    plan: &PlanFile,
    approval: &Approval,
    trigger: &str,
    file: &str,
) -> anyhow::Result<(PlanFile, Taken)> {
    let done: HashSet<ChangeKey> = ctx.audit.made_by(trigger).await?.into_iter().collect();
    let mut now = plan.clone();
    let taken = now.take(approval, &done);
    if !now.cases.is_empty() {
        return Ok((now, taken));
    }
    let last = ctx.audit.live_pass_by(trigger).await?;
    Err(Exit::config(match last {
        Some(last) if taken.not_approved + taken.halted == 0 => format!(
            "{file}: plan {} was already applied by pass {} at {} (the last apply of it): refused (its comments would be posted twice); make a new plan",
            plan.plan_id, last.id, last.started_at
        ),
        _ => format!(
            "{file}: nothing of plan {} is left for this approval ({} change(s) made by earlier applies, {} not approved by --rule/--case/--exclude-rule, {} halted: --include-halted): nothing sent",
            plan.plan_id, taken.done, taken.not_approved, taken.halted
        ),
    })
    .into())
}

/// What this apply left of the plan, for the person who runs it.
fn say_left(taken: &Taken, approval: &Approval, file: &str) {
    let budget = approval.budget;
    let lines = [
        (
            taken.done,
            "of the plan were made by an earlier apply: left out".to_string(),
        ),
        (
            taken.not_approved,
            format!(
                "not approved by --rule/--case/--exclude-rule: `casewarden apply {file}` takes them later"
            ),
        ),
        (
            taken.halted,
            format!(
                "the blast-radius guard halted when planned are left: `casewarden apply {file} --include-halted` applies them"
            ),
        ),
        (
            taken.over_budget,
            format!(
                "remain beyond this run's budget of {budget} (daemon.max_changes_per_run): run `casewarden apply {file}` again"
            ),
        ),
    ];
    for (n, what) in lines.iter().filter(|(n, _)| *n > 0) {
        eprintln!("{n} change(s) {what}");
    }
}

/// Each case of the plan as it is now (read concurrently), its changes checked against it.
async fn check_cases(
    ctx: &PassContext,
    plan: &PlanFile,
    include_halted: bool,
) -> anyhow::Result<Vec<CasePlan>> {
    let fresh: Vec<_> = futures::stream::iter(&plan.cases)
        .map(|c| {
            let client = ctx.client.clone();
            async move { (c, client.get_case(&c.case_id).await) }
        })
        .buffer_unordered(ctx.settings.max_in_flight.max(1))
        .collect()
        .await;
    let mut plans = Vec::new();
    for (c, now) in fresh {
        match now {
            Ok(now) => plans.push(
                c.against(&now, include_halted, &plan.plan_id)
                    .map_err(Exit::config)?,
            ),
            Err(e) if e.http_status() == Some(404) => {
                eprintln!(
                    "case {} no longer exists: its changes are not applied",
                    c.case_id
                );
            }
            Err(e) => {
                return Err(Exit::server(format!(
                    "cannot read case {} to check the plan: {e}",
                    c.case_id
                ))
                .into());
            }
        }
    }
    Ok(plans)
}

pub(super) async fn run(cli: &Cli, args: &ApplyArgs) -> anyhow::Result<u8> {
    let file = args.plan.display();
    let (plan, digest) = read_plan(&args.plan)?;
    let config = load_config(cli)?;
    let instance = instance_of(&config, &plan, &args.plan)?;
    refuse_expired(&plan, &args.plan)?;
    let app = App::build(&config, None).await.map_err(Exit::config)?;
    let set = app.rules;
    let ctx = app
        .instances
        .into_iter()
        .find(|i| i.instance == instance)
        .expect("every configured server has a context");
    if !ctx.audit.plan_recorded(&plan.plan_id, &digest).await? {
        return Err(Exit::config(format!(
            "{file}: refused: this file is not the plan {} that `once --dry-run --out` wrote and recorded in {} (the file was edited, or comes from another audit log); make a new plan",
            plan.plan_id,
            config.audit.location()
        ))
        .into());
    }
    if set.fingerprint != plan.rules_fingerprint {
        tracing::warn!("the rules changed since the plan was made; the plan applies as reviewed");
    }
    check_approval(&plan, args)?;
    let approval = Approval {
        rules: args.rules.clone(),
        cases: args.cases.clone(),
        exclude_rules: args.exclude_rules.clone(),
        include_halted: args.include_halted,
        budget: config.daemon.max_changes_per_run,
    };
    let given = Given {
        trigger: format!("apply plan {}", plan.plan_id),
        only: rules_of(&plan, &set, &config)?,
        dry_run: args.dry_run,
        wait: Duration::from_secs(args.wait),
        operator: operator(args.operator.as_deref()),
    };
    let mut taken = Taken::default();
    let code = run_given(&config, &ctx, &set, &given, None, async || {
        let (now, t) = take(&ctx, &plan, &approval, &given.trigger, &file.to_string()).await?;
        taken = t;
        check_cases(&ctx, &now, args.include_halted).await
    })
    .await?;
    say_left(&taken, &approval, &file.to_string());
    Ok(code)
}

/// Every `--rule`, `--exclude-rule` and `--case` names something the plan holds.
fn check_approval(plan: &PlanFile, args: &ApplyArgs) -> Result<(), Exit> {
    let rules = plan.rules();
    for r in args.rules.iter().chain(&args.exclude_rules) {
        if !rules.contains(r) {
            return Err(Exit::config(format!(
                "the plan has no changes of a rule {r:?} (its rules: {})",
                rules.join(", ")
            )));
        }
    }
    for c in &args.cases {
        let named = |p: &crate::plan::reviewed::PlannedCase| {
            &p.case_id == c || p.ticket_id.is_some_and(|t| &t.to_string() == c)
        };
        if !plan.cases.iter().any(named) {
            return Err(Exit::config(format!(
                "--case {c}: the plan has no changes of such a case (id or ticket number)"
            )));
        }
    }
    Ok(())
}

/// The plan in the file and the file's SHA-256.
fn read_plan(path: &Path) -> Result<(PlanFile, String), Exit> {
    let bytes =
        std::fs::read(path).map_err(|e| Exit::config(format!("{}: {e}", path.display())))?;
    PlanFile::from_bytes(&bytes).map_err(|e| Exit::config(format!("{}: {e}", path.display())))
}

/// The config's name of the server the plan is for; refused when the config lacks it.
fn instance_of(config: &Settings, plan: &PlanFile, path: &Path) -> Result<String, Exit> {
    let servers = config.servers();
    match servers.iter().find(|s| plan.is_for(&s.url)) {
        Some(server) => Ok(server.instance_name().to_string()),
        None => {
            let urls: Vec<&str> = servers.iter().map(|s| s.url.as_str()).collect();
            Err(Exit::config(format!(
                "{}: the plan is for {}, this config's servers are {}: refused",
                path.display(),
                plan.server_url,
                urls.join(", ")
            )))
        }
    }
}

fn refuse_expired(plan: &PlanFile, path: &Path) -> Result<(), Exit> {
    let expired = plan
        .expired(chrono::Utc::now())
        .map_err(|e| Exit::config(format!("{}: expires_at: {e}", path.display())))?;
    if expired {
        return Err(Exit::config(format!(
            "{}: the plan expired at {}: refused; make a new one with once --dry-run --out",
            path.display(),
            plan.expires_at
        )));
    }
    Ok(())
}

/// The rules whose changes the plan holds, each of which must still be loaded.
fn rules_of(plan: &PlanFile, set: &RuleSet, config: &Settings) -> Result<Vec<String>, Exit> {
    let rules = plan.rules();
    if let Some(missing) = rules
        .iter()
        .find(|r| !set.rules.iter().any(|x| &&x.name == r))
    {
        return Err(Exit::config(format!(
            "the plan's rule {missing:?} is no longer in {}; apply needs the rules it was made with",
            config.daemon.rules_dir.display()
        )));
    }
    Ok(rules)
}

/// A pass of given case plans (`apply`, `revert`).
pub(super) struct Given {
    /// Names the pass; a live pass with the same trigger means it was done already.
    pub trigger: String,
    pub only: Vec<String>,
    pub dry_run: bool,
    pub wait: Duration,
    /// Who approved it: every row's reason names them.
    pub operator: String,
}

/// Under the one-writer claim (so two cannot race): refuses what a live pass with the same
/// trigger already did (when `refuse` is given), makes the plans, runs them as a pass and
/// prints its summary.
pub(super) async fn run_given(
    config: &Settings,
    ctx: &PassContext,
    set: &RuleSet,
    given: &Given,
    refuse: Option<&dyn Fn(crate::audit::PassRow) -> Exit>,
    plans: impl AsyncFnOnce() -> anyhow::Result<Vec<CasePlan>>,
) -> anyhow::Result<u8> {
    let alerts = Alerts::start(config)?;
    if let Err(e) = ctx.client.authenticate().await {
        // Recorded under a trigger of its own: a refused attempt is not the pass done.
        let opts = PassOptions {
            work: if given.dry_run {
                Work::DryRun
            } else {
                Work::Live
            },
            only: given.only.clone(),
            trigger: format!("{} (server unreachable)", given.trigger),
            ..PassOptions::default()
        };
        let report = crate::pass::record_unreachable(ctx, set, &opts, e, given.wait).await;
        alerts.after(ctx, &report, false).await;
        alerts.finish(&ctx.audit).await;
        return Err(Exit::server(report.error.unwrap_or_default()).into());
    }
    let claimed = crate::pass::with_claim(ctx, given.wait, async || {
        if let Some(refuse) = refuse
            && let Some(done) = ctx.audit.live_pass_by(&given.trigger).await?
        {
            return Err(refuse(done).into());
        }
        let mut plans = plans().await?;
        for d in plans.iter_mut().flat_map(|p| &mut p.decisions) {
            d.reason = format!("{} [operator {}]", d.reason, given.operator);
        }
        let opts = PassOptions {
            work: Work::Given {
                plans: Arc::new(plans),
                dry_run: given.dry_run,
            },
            only: given.only.clone(),
            trigger: given.trigger.clone(),
            ..PassOptions::default()
        };
        Ok::<_, anyhow::Error>(crate::pass::run_pass(ctx, set, &opts).await)
    })
    .await;
    let mut report = claimed.map_err(unclaimed)??;
    alerts.after(ctx, &report, false).await;
    crate::report::name_people(&ctx.client, &mut report).await;
    let printed = print_report(&mut std::io::stdout().lock(), &report);
    alerts.finish(&ctx.audit).await;
    ctx.audit.close().await;
    printed?;
    Ok(if report.has_failures() { 1 } else { 0 })
}
