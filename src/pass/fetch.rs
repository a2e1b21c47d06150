//! Stage: bring the server's mirror up to date (see [`super::sync`]), then hand the rules
//! every case it holds, a page at a time, with only this server's customers and their
//! names. A page leaves packed and is read on all cores by [`Fetched::read`], beside the
//! planning of the page before it; a case whose remembered verdict still holds is counted
//! from it instead (see [`super::remember`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::value::RawValue;
use tokio::sync::OwnedMutexGuard;

use super::options::{PageHook, Step};
use super::remember::{Known, Quiet, Recall};
use super::run::Run;
use super::sync::sync;
use crate::mirror::{Body, Cursor, Held, Opened, Verdict};
use crate::rules::{EvalEnv, Rule};
use crate::stellar::{ApiError, ApiFlavor, Case, CaseParseError};

/// One page of the mirror's cases, as their packed text, with what the rules made of each
/// version, when remembered.
pub(super) struct Fetched {
    texts: Vec<(Body, Option<Verdict>)>,
    flavor: Option<ApiFlavor>,
    /// Cases the listing skipped because they could not be read, and why.
    unparsable: Vec<CaseParseError>,
    reading: Arc<Reading>,
}

/// What turns a page's text into the cases the rules see.
struct Reading {
    /// The customers this server is limited to (empty: all).
    tenants: Vec<String>,
    tenant_names: HashMap<String, String>,
    on_page: Option<PageHook>,
    recall: Option<Recall>,
    /// A case's text in the mirror could not be read (a damaged file).
    damaged: AtomicBool,
}

/// A page as the rules get it.
pub(super) struct Read {
    /// The cases to evaluate.
    pub cases: Vec<Case>,
    /// The cases counted from their verdicts.
    pub known: Vec<Known>,
    pub unparsable: Vec<CaseParseError>,
}

/// The cases of one pass, from the mirror, held for the pass.
pub(super) struct Fetch {
    held: OwnedMutexGuard<Held>,
    cursor: Option<Cursor>,
    unparsable: Vec<CaseParseError>,
    reading: Arc<Reading>,
    /// Cases handed out so far, for the progress bar.
    listed: u64,
    /// Shutdown stopped the listing before its end.
    pub cut_short: bool,
}

impl Fetch {
    /// Reads the customers' names when a rule needs them, then syncs the mirror with the
    /// filters every due rule agrees on; `env`: what the rules are evaluated with.
    pub async fn start(run: &Run<'_>, env: &EvalEnv) -> Result<Fetch, ApiError> {
        let ctx = run.ctx;
        let tenant_names = match run.set.needs_tenants {
            true => tenant_names(run).await,
            false => HashMap::new(),
        };
        let mut scope = pushdown(&run.rules);
        // A server limited to some customers lists only theirs (and checks each case).
        if !ctx.tenants.is_empty() && !scope.iter().any(|(k, _)| k == "tenantid") {
            scope.push(("tenantid".into(), ctx.tenants.join(",")));
        }
        let mut held = ctx.mirror.lock().await;
        let synced = sync(run, &mut held, &scope, &env.own_users).await?;
        flavor_of_mirror(run, &held);
        let recall = Recall::new(run, env, &tenant_names, ctx.client.known_flavor());
        Ok(Fetch {
            held,
            cursor: None,
            unparsable: synced.unparsable,
            reading: Arc::new(Reading {
                tenants: ctx.tenants.to_vec(),
                tenant_names,
                on_page: run.opts.on_page.clone(),
                recall,
                damaged: AtomicBool::new(false),
            }),
            listed: 0,
            cut_short: !synced.complete || run.opts.cancelled(),
        })
    }

    /// The next page of the mirror's cases; None at the end or on shutdown.
    pub fn next(&mut self, run: &Run<'_>) -> Option<Fetched> {
        if self.cut_short {
            return None;
        }
        if run.opts.cancelled() {
            self.cut_short = true;
            return None;
        }
        let limit = run.ctx.client.page_size() as usize;
        let chunk = self.held.cases.after(self.cursor.as_ref(), limit);
        let texts: Vec<(Body, Option<Verdict>)> = (chunk.iter())
            .map(|c| (c.body.clone(), c.verdict.cloned()))
            .collect();
        let cursor = chunk.last().map(|last| last.at.clone());
        if cursor.is_none() && self.unparsable.is_empty() {
            return None;
        }
        let unparsable = std::mem::take(&mut self.unparsable);
        self.cursor = cursor.or(self.cursor.take());
        self.listed += texts.len() as u64;
        run.opts.tell(Step::Listed {
            cases: self.listed,
            total: Some(self.held.cases.len() as u64),
        });
        Some(Fetched {
            texts,
            flavor: run.ctx.client.known_flavor(),
            unparsable,
            reading: self.reading.clone(),
        })
    }

    /// Keeps what the rules made of the quiet cases of a page.
    pub fn remember<'a>(&mut self, quiet: impl Iterator<Item = Quiet<'a>>) {
        let Some(recall) = &self.reading.recall else {
            return;
        };
        let at = crate::now_ms();
        for q in quiet {
            let before = self.held.verdict(&q.case.id);
            if let Some(v) = recall.verdict(&q, at, before) {
                self.held.remember(&q.case.id, v);
            }
        }
    }

    /// Writes the verdicts of the pass to the mirror's file; a case whose text could not
    /// be read has the next pass list every case.
    pub async fn finish(&mut self) {
        self.held.save_verdicts().await;
        if self.reading.damaged.load(Ordering::Relaxed) {
            tracing::warn!(
                "the mirror of the server's cases holds damaged cases; the next pass lists every case"
            );
            self.held
                .list_all_next("the mirror held damaged cases")
                .await;
        }
    }
}

impl Fetched {
    /// The page's cases, parsed on all cores (call it off the async threads), with only
    /// this server's customers and their names, shown to the page hook; but the cases
    /// whose verdicts still hold, counted from them.
    pub fn read(self) -> Read {
        use rayon::prelude::*;
        let reading = &self.reading;
        let tenants = &reading.tenants;
        let mut known = Vec::new();
        let mut texts = Vec::with_capacity(self.texts.len());
        match &reading.recall {
            Some(recall) => {
                let now = crate::now_ms();
                for (body, verdict) in self.texts {
                    match verdict.as_ref().and_then(|v| recall.reuse(v, now)) {
                        Some(k) => known.push(k),
                        None => texts.push(body),
                    }
                }
            }
            None => texts.extend(self.texts.into_iter().map(|(body, _)| body)),
        }
        let texts = Opened::open(texts);
        let cases: Vec<Case> = (0..texts.count())
            .into_par_iter()
            .filter_map(|i| {
                let read = (texts.text(i))
                    .inspect_err(|_| reading.damaged.store(true, Ordering::Relaxed))
                    .and_then(|text| serde_json::from_str::<&RawValue>(text).map_err(|e| e.to_string()))
                    .map_err(|reason| CaseParseError { id: None, reason })
                    .and_then(Case::index)
                    .and_then(|o| Case::from_object(o, self.flavor));
                let mut case = read.inspect_err(|e| tracing::warn!(error = %e, "a case of the mirror cannot be read; it is listed again at the next full listing"))
                    .ok()?;
                if !tenants.is_empty() && !case.tenant().is_some_and(|t| tenants.iter().any(|x| x == t)) {
                    return None;
                }
                if !reading.tenant_names.is_empty() {
                    case.name_tenant(&reading.tenant_names);
                }
                Some(case)
            })
            .collect();
        if let Some(hook) = &reading.on_page {
            (hook.0)(&cases);
        }
        Read {
            cases,
            known,
            unparsable: self.unparsable,
        }
    }
}

/// With `api_flavor = "auto"` and a listing that showed no case this process, the flavour
/// the mirrored cases carry: the cases are read as a listing would have read them, and
/// a verdict reached under a flavour is reused only under it.
fn flavor_of_mirror(run: &Run<'_>, held: &Held) {
    let client = &run.ctx.client;
    if client.known_flavor().is_some() {
        return;
    }
    let first = held.cases.after(None, 20);
    let texts = Opened::open(first.iter().map(|l| l.body.clone()).collect());
    let read: Vec<_> = (0..texts.count())
        .filter_map(|i| {
            Case::index(serde_json::from_str::<&RawValue>(texts.text(i).ok()?).ok()?).ok()
        })
        .collect();
    client.learn_flavor(&read, "the mirrored");
}

/// Server-side filters: the hints every due rule agrees on (status lists are unioned),
/// so no rule misses a case it would have matched; each rule re-checks its own hints.
fn pushdown(rules: &[Arc<Rule>]) -> Vec<(String, String)> {
    let Some(first) = rules.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, value) in &first.query {
        if key == "status" || key == "priority" || key == "severity" {
            if let Some(union) = union_of(rules, key) {
                out.push((key.clone(), union.join(",")));
            }
        } else if rules
            .iter()
            .all(|r| r.query.iter().any(|(k, v)| k == key && v == value))
        {
            out.push((key.clone(), value.clone()));
        }
    }
    out
}

/// The values of a list filter over all rules, if every rule sets it.
fn union_of(rules: &[Arc<Rule>], key: &str) -> Option<Vec<String>> {
    let mut union: Vec<String> = Vec::new();
    for r in rules {
        let (_, v) = r.query.iter().find(|(k, _)| k == key)?;
        for s in v.split(',').map(str::trim) {
            if !union.iter().any(|u| u == s) {
                union.push(s.to_string());
            }
        }
    }
    Some(union)
}

/// Customer names by `cust_id`, from the server's tenants list (remembered for the
/// reports too); empty, with a warning, when it cannot be read (rules then see no
/// `tenant_name` on cases that do not carry one).
async fn tenant_names(run: &Run<'_>) -> HashMap<String, String> {
    match super::record::read_customers(run).await {
        Ok(names) => names.into_iter().collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list tenants: cases that do not carry tenant_name have none this pass");
            HashMap::new()
        }
    }
}
