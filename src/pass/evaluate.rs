//! Stage: read a page's cases and evaluate every due rule on them, on all cores and beside
//! the planning of the page before; then read the activities of the cases that need them.

use std::sync::Arc;

use futures::StreamExt;

use super::error::PassError;
use super::fetch::{Fetched, Read};
use super::remember::{Known, Quiet};
use super::run::Run;
use crate::plan::RuleChanges;
use crate::rules::{EvalEnv, EvalError, Rule, RuleSet};
use crate::stellar::{Case, CaseParseError};

/// One case after evaluation.
pub(super) struct Evaluated {
    pub(super) case: Case,
    pub(super) requests: Vec<RuleChanges>,
    pub(super) seen_by: Vec<usize>,
    /// Rules whose query selected the case but an exemption kept off it.
    pub(super) exempt_from: Vec<usize>,
    pub(super) errors: Vec<(usize, EvalError)>,
    /// A rule needed the case's activities to tell when a person last touched it.
    pub(super) wants_activities: bool,
    /// Until when (ms) the clock the rules read gives them the same answers.
    pub(super) until: i64,
}

impl Evaluated {
    /// The case as a verdict remembers it, if the rules asked nothing of it, failed nowhere
    /// on it and read no activities for it.
    pub(super) fn quiet(&self) -> Option<Quiet<'_>> {
        let asked = !self.requests.is_empty() || !self.errors.is_empty();
        let activities = self.wants_activities || self.case.activities.is_some();
        (!asked && !activities).then_some(Quiet {
            case: &self.case,
            until: self.until,
            seen_by: &self.seen_by,
            exempt_from: &self.exempt_from,
        })
    }
}

/// A page after evaluation.
pub(super) struct Page {
    pub(super) evaluated: Vec<Evaluated>,
    /// Cases counted from their remembered verdicts.
    pub(super) known: Vec<Known>,
    pub(super) unparsable: Vec<CaseParseError>,
}

/// Evaluates every due rule on one case.
fn evaluate_one(set: &RuleSet, rules: &[Arc<Rule>], case: Case, env: &EvalEnv) -> Evaluated {
    let mut ev = Evaluated {
        requests: Vec::new(),
        seen_by: Vec::new(),
        exempt_from: Vec::new(),
        errors: Vec::new(),
        wants_activities: false,
        until: i64::MAX,
        case,
    };
    for (i, result) in set.evaluate_case_noting_exempt(rules, &ev.case, env, &mut ev.exempt_from) {
        ev.seen_by.push(i);
        match result {
            Ok(asked) => {
                ev.wants_activities |= asked.wants_activities;
                ev.until = ev.until.min(asked.until);
                if !asked.changes.is_empty() {
                    ev.requests.push(RuleChanges {
                        rule: rules[i].name.clone(),
                        changes: asked.changes,
                    });
                }
            }
            Err(e) => ev.errors.push((i, e)),
        }
    }
    ev
}

/// Evaluates every rule on every case of a page, in parallel across cores (rayon's pool),
/// in the caller's span so a rule's `print` carries the pass id.
fn evaluate_page(
    set: &RuleSet,
    rules: &[Arc<Rule>],
    cases: Vec<Case>,
    env: &EvalEnv,
) -> Vec<Evaluated> {
    use rayon::prelude::*;
    let span = tracing::Span::current();
    cases
        .into_par_iter()
        .map(|case| span.in_scope(|| evaluate_one(set, rules, case, env)))
        .collect()
}

/// A page's cases read and evaluated by every due rule: on a blocking thread, started now
/// and awaited when the page is planned. Its cases that need their activities are
/// evaluated again by [`with_activities`].
pub(super) fn start(run: &Run<'_>, env: &EvalEnv, page: Fetched) -> tokio::task::JoinHandle<Page> {
    let (set, rules, env) = (run.set.clone(), run.rules.clone(), env.clone());
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            let Read {
                cases,
                known,
                unparsable,
            } = page.read();
            Page {
                evaluated: evaluate_page(&set, &rules, cases, &env),
                known,
                unparsable,
            }
        })
    })
}

/// `evaluate_page` on a blocking thread, in the current span.
async fn evaluate_cases(
    set: &RuleSet,
    rules: &[Arc<Rule>],
    cases: Vec<Case>,
    env: &EvalEnv,
) -> Result<Vec<Evaluated>, PassError> {
    let (set, rules, env) = (set.clone(), rules.to_vec(), env.clone());
    let span = tracing::Span::current();
    Ok(tokio::task::spawn_blocking(move || {
        span.in_scope(|| evaluate_page(&set, &rules, cases, &env))
    })
    .await?)
}

/// Cases whose last human activity or time in status only their `/activities` can tell
/// (the server sends no `history`), asked about by a rule: reads those activities (kept in
/// the mirror until the case changes) and evaluates the case again with them. A case whose
/// activities cannot be read keeps its first evaluation, which took it as recently touched
/// and new in its status.
pub(super) async fn with_activities(
    run: &Run<'_>,
    env: &EvalEnv,
    mut evaluated: Vec<Evaluated>,
) -> Result<Vec<Evaluated>, PassError> {
    let ctx = run.ctx;
    let wanted: Vec<(usize, Case)> = evaluated
        .iter()
        .enumerate()
        .filter(|(_, ev)| ev.wants_activities)
        .map(|(i, ev)| (i, ev.case.clone()))
        .collect();
    if wanted.is_empty() {
        return Ok(evaluated);
    }
    let read: Vec<(usize, Case)> = futures::stream::iter(wanted)
        .map(|(i, mut case)| async move {
            match activities_of(ctx, &case).await {
                Ok(read) => {
                    case.activities = Some(read);
                    Some((i, case))
                }
                Err(e) => {
                    tracing::warn!(case_id = %case.id, error = %e, "cannot read the case's activities; rules take it as touched by a person just now");
                    None
                }
            }
        })
        .buffer_unordered(ctx.settings.max_in_flight.max(1))
        .filter_map(|x| async move { x })
        .collect()
        .await;
    let (slots, cases): (Vec<usize>, Vec<Case>) = read.into_iter().unzip();
    let again = evaluate_cases(run.set, &run.rules, cases, env).await?;
    for (i, ev) in slots.into_iter().zip(again) {
        evaluated[i] = ev;
    }
    Ok(evaluated)
}

/// A case's `/activities`: kept in the mirror since its last read while the case has not
/// changed, else read and kept.
pub(super) async fn activities_of(
    ctx: &super::PassContext,
    case: &Case,
) -> Result<crate::mirror::Activities, crate::stellar::ApiError> {
    if let Some(kept) = ctx.mirror.activities(case) {
        return Ok(kept);
    }
    let read = Arc::new(ctx.client.list_activities(&case.id).await?);
    ctx.mirror.keep_activities(case, read.clone());
    Ok(read)
}
