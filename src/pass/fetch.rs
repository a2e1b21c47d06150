//! Stage: list the server's cases a page at a time (the next pages download while this
//! one is evaluated), with the filters every due rule agrees on, only this server's
//! customers, and their names.

use std::collections::HashMap;
use std::sync::Arc;

use super::options::Step;
use super::run::Run;
use crate::rules::Rule;
use crate::stellar::{ApiError, Case, CasePager, CaseParseError};

/// One page of listed cases, as the rules will see them.
pub(super) struct Fetched {
    pub cases: Vec<Case>,
    /// Cases of the page skipped because they could not be read, and why.
    pub unparsable: Vec<CaseParseError>,
}

/// The listing of one pass.
pub(super) struct Fetch {
    pager: CasePager,
    tenant_names: HashMap<String, String>,
    /// Cases listed so far, parsed or not, for the progress bar.
    listed: u64,
    /// Shutdown stopped the listing before its end.
    pub cut_short: bool,
}

impl Fetch {
    /// Reads the customers' names when a rule needs them, then starts the listing.
    pub async fn start(run: &Run<'_>) -> Fetch {
        let ctx = run.ctx;
        let tenant_names = match run.set.needs_tenants {
            true => tenant_names(run).await,
            false => HashMap::new(),
        };
        let mut filters = pushdown(&run.rules);
        // A server limited to some customers lists only theirs (and checks each case).
        if !ctx.tenants.is_empty() && !filters.iter().any(|(k, _)| k == "tenantid") {
            filters.push(("tenantid".into(), ctx.tenants.join(",")));
        }
        let pager = ctx
            .client
            .list_cases(filters)
            .ahead(ctx.settings.max_in_flight);
        Fetch {
            pager,
            tenant_names,
            listed: 0,
            cut_short: false,
        }
    }

    /// The next page, shown to the hooks; None at the end or on shutdown.
    pub async fn next(&mut self, run: &Run<'_>) -> Result<Option<Fetched>, ApiError> {
        let Some(mut page) = self.pager.next_page().await? else {
            return Ok(None);
        };
        if run.opts.cancelled() {
            self.cut_short = true;
            return Ok(None);
        }
        let tenants = &run.ctx.tenants;
        if !tenants.is_empty() {
            let before = page.cases.len();
            page.cases
                .retain(|c| c.tenant().is_some_and(|t| tenants.iter().any(|x| x == t)));
            if page.cases.len() < before {
                tracing::debug!(
                    left_out = before - page.cases.len(),
                    "cases of customers this instance is not limited to"
                );
            }
        }
        if !self.tenant_names.is_empty() {
            page.cases
                .iter_mut()
                .for_each(|c| c.name_tenant(&self.tenant_names));
        }
        self.listed += (page.cases.len() + page.skipped.len()) as u64;
        if let Some(hook) = &run.opts.on_page {
            (hook.0)(&page.cases);
        }
        run.opts.tell(Step::Listed {
            cases: self.listed,
            total: page.total,
        });
        Ok(Some(Fetched {
            cases: page.cases,
            unparsable: page.skipped,
        }))
    }
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
    out.push(("sort".into(), "modified_at".into()));
    out.push(("order".into(), "asc".into()));
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

/// Customer names by `cust_id`, from the server's tenants list; empty, with a warning, when
/// it cannot be read (rules then see no `tenant_name` on cases that do not carry one).
async fn tenant_names(run: &Run<'_>) -> HashMap<String, String> {
    match run.ctx.client.list_tenants().await {
        Ok(tenants) => tenants
            .into_iter()
            .filter_map(|t| Some((t.id, t.name?)))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list tenants: cases that do not carry tenant_name have none this pass");
            HashMap::new()
        }
    }
}
