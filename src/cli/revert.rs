//! `casewarden revert PASS_ID`: the inverse of a pass's applied changes, where the case
//! still holds what that pass wrote. Tags it added are removed and removed ones added;
//! fields get their old value back; comments are not deleted, a note is posted instead.
//! Recorded as a pass of the rule `revert:PASS_ID`, so a revert can be reverted too.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use futures::TryStreamExt;

use super::apply::{Given, run_given};
use super::{Cli, Exit, load_config};
use crate::app::App;
use crate::audit::{EventRow, Filter, Outcome};
use crate::config::Settings;
use crate::pass::PassContext;
use crate::plan::CasePlan;
use crate::plan::revert::{Applied, Reverter};

#[derive(Debug, Args)]
#[command(
    after_help = "casewarden audit --newest --limit 50        # find the pass
casewarden revert 20261125T120000Z-1a2b3c --dry-run
casewarden revert 20261125T120000Z-1a2b3c --rule tag-by-entity"
)]
pub struct RevertArgs {
    /// The pass to undo (the PASS column of `casewarden audit`)
    pub pass_id: String,
    /// Only the changes of this rule
    #[arg(long)]
    pub rule: Option<String>,
    /// Check and record what would be reverted, send nothing
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for another casewarden pass on the same audit store to finish
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub wait: u64,
    /// Who decided it, recorded on every row [default: the login user]
    #[arg(long, value_name = "WHO")]
    pub operator: Option<String>,
}

pub(super) async fn run(cli: &Cli, args: &RevertArgs) -> anyhow::Result<u8> {
    let config = load_config(cli)?;
    let app = App::build(&config, None).await.map_err(Exit::config)?;
    let pass = &args.pass_id;
    let rows = applied_rows(&app.ctx, &config, args).await?;
    if rows.is_empty() {
        let of_rule = args.rule.as_ref().map(|r| format!(" of rule {r}"));
        println!(
            "pass {pass} applied no change{}: nothing to revert",
            of_rule.unwrap_or_default()
        );
        return Ok(0);
    }
    let ctx = server_of(app.instances, &rows[0], pass)?;
    refuse_overlap(&ctx, pass, args.rule.as_deref()).await?;
    let actor = format!("revert:{pass}");
    let given = Given {
        trigger: trigger_of(pass, args.rule.as_deref()),
        only: vec![actor.clone()],
        dry_run: args.dry_run,
        wait: Duration::from_secs(args.wait),
        operator: super::apply::operator(args.operator.as_deref()),
    };
    let by = Reverter {
        pass,
        actor: &actor,
    };
    let refuse = |done: crate::audit::PassRow| {
        Exit::config(format!(
            "pass {pass} was already reverted by pass {}: refused; `casewarden revert {}` undoes that revert",
            done.id, done.id
        ))
    };
    run_given(
        &config,
        &ctx,
        &app.rules,
        &given,
        Some(&refuse),
        async || inverse(&ctx, &rows, by).await,
    )
    .await
}

/// The changes the pass applied (of `--rule`); refused when the log has no such pass or
/// the pass no such rule.
async fn applied_rows(
    ctx: &PassContext,
    config: &Settings,
    args: &RevertArgs,
) -> anyhow::Result<Vec<EventRow>> {
    let pass = &args.pass_id;
    if !ctx.audit.passes().await?.iter().any(|p| &p.id == pass) {
        return Err(Exit::config(format!(
            "no pass {pass} in {} (the PASS column of `casewarden audit` names them)",
            config.audit.location()
        ))
        .into());
    }
    let of_pass = |outcome, limit| Filter {
        run_id: Some(pass.clone()),
        outcome,
        rule: args.rule.clone(),
        limit,
        ..Filter::default()
    };
    let rows: Vec<EventRow> = ctx
        .audit
        .query(&of_pass(Some(Outcome::Applied), None))
        .try_collect()
        .await?;
    // Only when it applied nothing: a rule of no row at all is a mistyped name.
    if let Some(rule) = args.rule.as_ref().filter(|_| rows.is_empty()) {
        let any: Vec<EventRow> = ctx
            .audit
            .query(&of_pass(None, Some(1)))
            .try_collect()
            .await?;
        if any.is_empty() {
            return Err(Exit::config(format!("pass {pass} has no rows of a rule {rule:?}")).into());
        }
    }
    Ok(rows)
}

/// The server the pass ran on (rows from before instances were recorded: `default`).
fn server_of(instances: Vec<PassContext>, row: &EventRow, pass: &str) -> Result<PassContext, Exit> {
    let server = row
        .instance
        .clone()
        .unwrap_or_else(|| crate::config::DEFAULT_INSTANCE.to_string());
    instances
        .into_iter()
        .find(|i| i.instance == server)
        .ok_or_else(|| {
            Exit::config(format!(
                "pass {pass} ran on server {server:?}, which this config does not have: refused"
            ))
        })
}

/// The trigger the revert pass is recorded with: a revert of one rule leaves the others
/// of that pass revertable.
fn trigger_of(pass: &str, rule: Option<&str>) -> String {
    match rule {
        Some(rule) => format!("revert {pass} rule {rule}"),
        None => format!("revert {pass}"),
    }
}

/// Refuses a revert of one rule after the whole pass was reverted, and a whole revert
/// after some rule of it was.
async fn refuse_overlap(ctx: &PassContext, pass: &str, rule: Option<&str>) -> anyhow::Result<()> {
    if rule.is_some()
        && let Some(done) = ctx.audit.live_pass_by(&trigger_of(pass, None)).await?
    {
        return Err(Exit::config(format!(
            "pass {pass} was already reverted whole by pass {}: refused",
            done.id
        ))
        .into());
    }
    if rule.is_none()
        && let Some(done) = ctx
            .audit
            .live_pass_like(&format!("revert {pass} rule "))
            .await?
    {
        return Err(Exit::config(format!(
            "part of pass {pass} was already reverted by pass {} ({}): revert the other rules with --rule",
            done.id, done.trigger_kind
        ))
        .into());
    }
    Ok(())
}

/// The inverse of the applied rows, case by case, checked against each case as it is now.
async fn inverse(
    ctx: &PassContext,
    rows: &[EventRow],
    by: Reverter<'_>,
) -> anyhow::Result<Vec<CasePlan>> {
    let mut by_case: BTreeMap<&str, Vec<Applied>> = BTreeMap::new();
    for r in rows {
        by_case
            .entry(r.case_id.as_str())
            .or_default()
            .push(Applied {
                rule: &r.rule,
                field: &r.field,
                old: r.old.as_deref(),
                new: r.new.as_deref(),
            });
    }
    let mut plans = Vec::new();
    for (case_id, applied) in by_case {
        match ctx.client.get_case(case_id).await {
            Ok(now) => plans.push(by.plan(case_id, &now, &applied)),
            Err(e) if e.http_status() == Some(404) => {
                eprintln!("case {case_id} no longer exists: nothing of it is reverted");
            }
            Err(e) => {
                return Err(Exit::server(format!("cannot read case {case_id}: {e}")).into());
            }
        }
    }
    Ok(plans)
}
