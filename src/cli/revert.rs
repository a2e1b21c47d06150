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
use crate::pass::PassContext;
use crate::plan::{CasePlan, Decision, Field};
use crate::stellar::Case;

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
}

pub(super) async fn run(cli: &Cli, args: &RevertArgs) -> anyhow::Result<u8> {
    let config = load_config(cli)?;
    let app = App::build(&config, None).await.map_err(Exit::config)?;
    let (set, ctx, instances) = (app.rules, app.ctx, app.instances);
    let pass = &args.pass_id;
    if !ctx.audit.passes().await?.iter().any(|p| &p.id == pass) {
        return Err(Exit::config(format!(
            "no pass {pass} in {} (the PASS column of `casewarden audit` names them)",
            config.audit_location()
        ))
        .into());
    }
    let rows: Vec<EventRow> = ctx
        .audit
        .query(&Filter {
            run_id: Some(pass.clone()),
            outcome: Some(Outcome::Applied),
            rule: args.rule.clone(),
            ..Filter::default()
        })
        .try_collect()
        .await?;
    if let Some(rule) = &args.rule {
        let any: Vec<EventRow> = ctx
            .audit
            .query(&Filter {
                run_id: Some(pass.clone()),
                rule: Some(rule.clone()),
                limit: Some(1),
                ..Filter::default()
            })
            .try_collect()
            .await?;
        if any.is_empty() {
            return Err(Exit::config(format!("pass {pass} has no rows of a rule {rule:?}")).into());
        }
    }
    if rows.is_empty() {
        println!(
            "pass {pass} applied no change{}: nothing to revert",
            match &args.rule {
                Some(r) => format!(" of rule {r}"),
                None => String::new(),
            }
        );
        return Ok(0);
    }
    // The server the pass ran on (rows from before instances were recorded: `default`).
    let server = rows[0]
        .instance
        .clone()
        .unwrap_or_else(|| crate::config::DEFAULT_INSTANCE.to_string());
    let Some(ctx) = instances.into_iter().find(|i| i.instance == server) else {
        return Err(Exit::config(format!(
            "pass {pass} ran on server {server:?}, which this config does not have: refused"
        ))
        .into());
    };
    let actor = format!("revert:{pass}");
    // A revert of one rule leaves the others of that pass revertable.
    let whole = format!("revert {pass}");
    let trigger = match &args.rule {
        Some(rule) => format!("revert {pass} rule {rule}"),
        None => whole.clone(),
    };
    if args.rule.is_some()
        && let Some(done) = ctx.audit.live_pass_by(&whole).await?
    {
        return Err(Exit::config(format!(
            "pass {pass} was already reverted whole by pass {}: refused",
            done.id
        ))
        .into());
    }
    if args.rule.is_none()
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
    let given = Given {
        trigger,
        only: vec![actor.clone()],
        dry_run: args.dry_run,
        wait: Duration::from_secs(args.wait),
    };
    run_given(
        &ctx,
        &set,
        given,
        |done| {
            Exit::config(format!(
                "pass {pass} was already reverted by pass {}: refused; `casewarden revert {}` undoes that revert",
                done.id, done.id
            ))
        },
        async || inverse(&ctx, &rows, pass, &actor).await,
    )
    .await
}

/// The inverse of the applied rows, case by case, checked against each case as it is now.
async fn inverse(
    ctx: &PassContext,
    rows: &[EventRow],
    pass: &str,
    actor: &str,
) -> anyhow::Result<Vec<CasePlan>> {
    let mut by_case: BTreeMap<&str, Vec<&EventRow>> = BTreeMap::new();
    for r in rows {
        by_case.entry(r.case_id.as_str()).or_default().push(r);
    }
    let mut plans = Vec::new();
    for (case_id, rows) in by_case {
        let now = match ctx.client.get_case(case_id).await {
            Ok(c) => c,
            Err(e) if e.http_status() == Some(404) => {
                eprintln!("case {case_id} no longer exists: nothing of it is reverted");
                continue;
            }
            Err(e) => {
                return Err(Exit::server(format!("cannot read case {case_id}: {e}")).into());
            }
        };
        let mut decisions = Vec::new();
        let mut commented = false;
        for r in rows {
            let Some(field) = Field::parse(&r.field) else {
                continue;
            };
            match field {
                Field::Comment => commented = true,
                // A resolution goes with its status, which is reverted.
                Field::Resolution => {}
                _ => decisions.push(undo(&now, field, r, pass, actor)),
            }
        }
        if commented {
            decisions.push(Decision {
                rule: actor.to_string(),
                field: Field::Comment,
                old: None,
                new: Some(format!(
                    "casewarden reverted pass {pass} on this case: what it changed is set back where the case still held it; the comment it posted then no longer applies."
                )),
                reason: format!("revert of pass {pass}: a note instead of deleting its comment"),
                skipped: None,
            });
        }
        plans.push(CasePlan {
            case_id: case_id.to_string(),
            ticket_id: now.ticket_id(),
            decisions,
            stamp: None,
            tenant: now.tenant().map(str::to_string),
        });
    }
    Ok(plans)
}

/// The inverse of one applied change, skipped when the case no longer holds what the pass
/// wrote.
fn undo(now: &Case, field: Field, r: &EventRow, pass: &str, actor: &str) -> Decision {
    let wrote = r.new.clone().unwrap_or_default();
    let reason = format!(
        "revert of pass {pass}: rule {} set {}",
        r.rule,
        crate::plan::describe_change(field, r.old.as_deref(), r.new.as_deref())
    );
    let (old, new) = match field {
        Field::Tags => {
            let (sign, tag) = wrote.split_at_checked(1).unwrap_or(("", ""));
            let back = if sign == "+" { "-" } else { "+" };
            (None, format!("{back}{tag}"))
        }
        _ => (Some(wrote.clone()), r.old.clone().unwrap_or_default()),
    };
    let holds = crate::plan::holds(now, field, &wrote);
    Decision {
        rule: actor.to_string(),
        field,
        old,
        new: Some(new),
        reason,
        skipped: (!holds).then(|| {
            format!(
                "the case changed since pass {pass}: it no longer holds {}",
                describe(field, &wrote)
            )
        }),
    }
}

fn describe(field: Field, value: &str) -> String {
    match field {
        Field::Tags => match value.split_at_checked(1) {
            Some(("+", t)) => format!("tag {t}"),
            Some((_, t)) => format!("the removal of tag {t}"),
            None => value.to_string(),
        },
        _ => format!("{field} {value:?}"),
    }
}
