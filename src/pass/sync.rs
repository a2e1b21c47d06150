//! Stage: bring the server's mirror up to date before the rules run over it. A delta
//! listing asks for the cases modified since the checkpoint (less `list_overlap_secs`, for
//! a search index that trails writes), oldest first, paged by keyset (`FROM~modified_at`
//! moved to the last case seen, so writes meanwhile cannot shift a page); a full listing
//! pages concurrently in creation order (which writes do not reorder) and removes what it
//! did not see. Every page is merged, and the checkpoint moved, in one write.

use std::time::Instant;

use super::options::Step;
use super::run::Run;
use crate::mirror::{Held, Listing, modified_at};
use crate::stellar::{ApiError, CaseParseError};

/// Why a delta listing cannot be trusted, if it cannot.
enum Delta {
    Done,
    Untrusted(String),
}

/// What syncing came to: the cases refused as unreadable, and whether it ran to its end
/// (shutdown stops it between pages).
pub(super) struct Synced {
    pub unparsable: Vec<CaseParseError>,
    pub complete: bool,
}

/// Syncs `held` with the server: a delta when the mirror allows one, else (or when the
/// server's answer shows a delta cannot be trusted) a full listing with `scope`'s filters.
pub(super) async fn sync(
    run: &Run<'_>,
    held: &mut Held,
    scope: &[(String, String)],
    own: &[String],
) -> Result<Synced, ApiError> {
    let settings = &run.ctx.settings;
    held.keep(scope, &run.set.unread_fields);
    let scope_text = serde_json::to_string(scope).expect("strings serialize");
    let mut synced = Synced {
        unparsable: Vec::new(),
        complete: true,
    };
    let listing = held.listing(
        &scope_text,
        crate::now_ms(),
        settings.list_overlap,
        settings.resync_interval,
    );
    let why = match listing {
        Listing::Full(why) => why,
        Listing::Delta { from } => match delta(run, held, scope, own, from, &mut synced).await? {
            Delta::Done => return Ok(synced),
            Delta::Untrusted(why) => why,
        },
    };
    if !synced.complete {
        return Ok(synced);
    }
    tracing::info!(reason = %why, "listing every case of the server");
    full(run, held, scope, &scope_text, &mut synced).await?;
    Ok(synced)
}

/// The cases modified at or after `from`, page by page, but for those casewarden (`own`)
/// modified last: the mirror learned those from its own writes' answers.
async fn delta(
    run: &Run<'_>,
    held: &mut Held,
    scope: &[(String, String)],
    own: &[String],
    from: i64,
    synced: &mut Synced,
) -> Result<Delta, ApiError> {
    let client = &run.ctx.client;
    let limit = u64::from(client.page_size());
    let unread = &run.set.unread_fields;
    let (mut bound, mut ties) = (from, 0u64);
    let mut listed = 0;
    loop {
        let mut filters: Vec<(String, String)> = scope
            .iter()
            .filter(|(k, _)| k == "tenantid")
            .cloned()
            .collect();
        filters.push(("FROM~modified_at".into(), bound.to_string()));
        if !own.is_empty() {
            filters.push(("NOT~modified_by".into(), own.join(",")));
        }
        filters.push(("sort".into(), "modified_at".into()));
        filters.push(("order".into(), "asc".into()));
        let (page, received) = client.case_page(filters, ties).await?;
        let times: Vec<i64> = page.cases.iter().map(modified_at).collect();
        if times.iter().any(|&m| m < bound) {
            return Ok(Delta::Untrusted(format!(
                "the server answered FROM~modified_at={bound} with cases modified before it: it ignores the filter"
            )));
        }
        if times.windows(2).any(|w| w[1] < w[0]) {
            return Ok(Delta::Untrusted(
                "the server did not sort its answer by modified_at".into(),
            ));
        }
        let newest = times.last().copied();
        held.merge(&page.cases, &page.skipped, scope, unread, newest)
            .await;
        listed += received;
        synced.unparsable.extend(page.skipped);
        run.opts.tell(Step::Synced {
            cases: listed,
            full: false,
        });
        if received < limit || run.opts.cancelled() {
            synced.complete = received < limit;
            break;
        }
        match newest {
            Some(last) if last > bound => {
                ties = times.iter().filter(|&&m| m == last).count() as u64;
                bound = last;
            }
            // The whole page at one instant (or unreadable): step over it.
            _ => ties += received,
        }
    }
    let since = chrono::DateTime::from_timestamp_millis(from).unwrap_or_default();
    tracing::info!(
        changed = listed,
        since = %crate::time::timestamp(since),
        cases = held.cases.len(),
        "mirror brought up to date"
    );
    Ok(Delta::Done)
}

/// Every case of the scope, the pages requested concurrently once the total is known.
async fn full(
    run: &Run<'_>,
    held: &mut Held,
    scope: &[(String, String)],
    scope_text: &str,
    synced: &mut Synced,
) -> Result<(), ApiError> {
    let mut filters = scope.to_vec();
    // Creation order: an update does not move a case, so concurrent pages miss none.
    filters.push(("sort".into(), "created_at".into()));
    filters.push(("order".into(), "asc".into()));
    let mut pager = run
        .ctx
        .client
        .list_cases(filters)
        .ahead(run.ctx.settings.max_in_flight);
    held.begin_full(scope_text);
    let started = Instant::now();
    let (mut first_total, mut last_total) = (None, None);
    let mut newest = None::<i64>;
    let mut listed = 0;
    while let Some(page) = pager.next_page().await? {
        first_total.get_or_insert(page.total);
        last_total = Some(page.total);
        newest = page.cases.iter().map(modified_at).chain(newest).max();
        let unread = &run.set.unread_fields;
        held.merge(&page.cases, &page.skipped, scope, unread, None)
            .await;
        listed += (page.cases.len() + page.skipped.len()) as u64;
        synced.unparsable.extend(page.skipped);
        run.opts.tell(Step::Synced {
            cases: listed,
            full: true,
        });
        if run.opts.cancelled() {
            synced.complete = false;
            return Ok(());
        }
    }
    // A case modified while the listing ran may have been read before the change: the next
    // delta reaches back over the listing's whole duration.
    let elapsed = started.elapsed().as_millis() as i64;
    let checkpoint = newest.map_or(0, |n| n - elapsed);
    // A case deleted meanwhile shifts the pages after it: one may have gone unseen, so a
    // listing whose total moved removes nothing.
    let sweep = first_total == last_total;
    let gone = held.end_full(checkpoint, sweep).await;
    tracing::info!(
        listed,
        removed = gone,
        cases = held.cases.len(),
        "mirror filled by a full listing"
    );
    if !sweep {
        tracing::info!(
            "the server's total changed during the listing: no case is removed from the mirror until the next full listing"
        );
    }
    Ok(())
}
