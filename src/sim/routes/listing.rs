//! `GET /cases`: filters, sorting and paging with `limit` <= 500, as a server lists cases.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use crate::sim::answer::{error, json_bytes, raw_response, truncated};
use crate::sim::state::{ListCache, RawAnswer, Shared, SimState, lock, read, small};
use crate::stellar::filter;

/// What a listing asks for.
struct ListQuery {
    limit: usize,
    skip: usize,
    sort: Option<String>,
    desc: bool,
    filters: Vec<(String, String)>,
}

impl ListQuery {
    /// The query of `params`; Err: the 400 message. `refused` is a filter the server is
    /// rigged not to know.
    fn parse(
        params: &[(String, String)],
        refused: Option<&str>,
        ignored: Option<&str>,
    ) -> Result<ListQuery, String> {
        let mut q = ListQuery {
            limit: 100,
            skip: 0,
            sort: None,
            desc: false,
            filters: Vec::new(),
        };
        for (k, v) in params.iter().filter(|(k, _)| Some(k.as_str()) != ignored) {
            match k.as_str() {
                "limit" => match v.parse::<usize>() {
                    Ok(n) => q.limit = n.min(500),
                    Err(_) => return Err(format!("limit: not a number: {v}")),
                },
                "skip" => match v.parse::<usize>() {
                    Ok(n) => q.skip = n,
                    Err(_) => return Err(format!("skip: not a number: {v}")),
                },
                "sort" => q.sort = Some(v.clone()),
                "order" => q.desc = v.eq_ignore_ascii_case("desc"),
                key if refused == Some(key) => return Err(format!("unknown filter: {key}")),
                _ => q.filters.push((k.clone(), v.clone())),
            }
        }
        Ok(q)
    }

    /// The lower bound of a delta listing: `FROM~modified_at`, sorted by `modified_at`
    /// ascending.
    fn modified_from(&self) -> Option<f64> {
        if self.sort.as_deref() != Some("modified_at") || self.desc {
            return None;
        }
        let (_, from) = self.filters.iter().find(|(k, _)| k == FROM_MODIFIED)?;
        from.trim().parse::<f64>().ok()
    }

    /// Whether `case` passes every filter.
    fn matches(&self, case: &Value) -> bool {
        self.matches_but(case, None)
    }

    /// Whether `case` passes every filter but the one of key `but`.
    fn matches_but(&self, case: &Value, but: Option<&str>) -> bool {
        (self.filters.iter())
            .filter(|(k, _)| Some(k.as_str()) != but)
            .all(|(k, v)| case.as_object().is_some_and(|o| filter::matches(o, k, v)))
    }

    /// What identifies the listing for the cache, without the filter of key `but`.
    fn key_but(&self, but: Option<&str>) -> String {
        let filters: Vec<_> = (self.filters.iter())
            .filter(|(k, _)| Some(k.as_str()) != but)
            .collect();
        format!("{but:?} {filters:?} {:?} {}", self.sort, self.desc)
    }

    /// The ticket numbers of a listing that asks for nothing else.
    fn tickets_only(&self) -> Option<Vec<i64>> {
        match self.filters.as_slice() {
            [(k, list)] if k == "ticket_id" && self.sort.is_none() => {
                list.split(',').map(|t| t.trim().parse().ok()).collect()
            }
            _ => None,
        }
    }
}

pub(super) async fn list_cases(
    State(state): State<Shared>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    {
        let s = read(&state);
        if s.faults.edit_before_read.is_none() && s.faults.truncate_next_lists == 0 {
            return listing(&s, &params).map_or_else(NoPage::answer, json_bytes);
        }
    }
    let mut s = lock(&state);
    if s.faults.list_answer.is_none()
        && let Ok(q) = query(&s, &params)
    {
        edit_before_read(&mut s, &q.filters);
    }
    let body = match listing(&s, &params) {
        Ok(body) => body,
        Err(no) => return no.answer(),
    };
    if s.faults.truncate_next_lists > 0 {
        s.faults.truncate_next_lists -= 1;
        return truncated(body);
    }
    json_bytes(body)
}

/// Why a listing answers with something else than a page.
enum NoPage {
    Rigged(RawAnswer),
    /// A 400's message.
    Bad(String),
}

impl NoPage {
    fn answer(self) -> Response {
        match self {
            NoPage::Rigged(raw) => raw_response(raw),
            NoPage::Bad(msg) => error(StatusCode::BAD_REQUEST, msg),
        }
    }
}

fn query(s: &SimState, params: &[(String, String)]) -> Result<ListQuery, NoPage> {
    let refused = s.faults.refuse_filter.as_deref();
    ListQuery::parse(params, refused, s.faults.ignore_filter.as_deref()).map_err(NoPage::Bad)
}

/// A page of the listing `params` ask for, as its body.
fn listing(s: &SimState, params: &[(String, String)]) -> Result<Vec<u8>, NoPage> {
    if let Some(raw) = s.faults.list_answer.clone() {
        return Err(NoPage::Rigged(raw));
    }
    let q = query(s, params)?;
    let bad = s.faults.invalid_utf8_case.clone();
    Ok(if s.faults.list_lag_ms > 0 {
        // Rare and for tests of lag: the lagged population is copied per listing.
        let cases = s.lagged();
        let hits = select(&cases, &q);
        page(&hits, q.skip, q.limit, |i| {
            let mut text = serde_json::to_vec(&cases[i]).expect("a Value serializes");
            spoil(&mut text, &cases[i], bad.as_deref());
            text.into()
        })
    } else {
        let hits = matching(s, &q);
        page(&hits, q.skip, q.limit, |i| match bad.as_deref() {
            Some(_) => {
                let mut text = s.served(i).to_vec();
                spoil(&mut text, &s.cases[i], bad.as_deref());
                text.into()
            }
            None => s.served(i),
        })
    })
}

/// A person's edit lands before the first read of a case, by ticket number too.
fn edit_before_read(s: &mut SimState, filters: &[(String, String)]) {
    let Some((who, field, value)) = s.faults.edit_before_read.clone() else {
        return;
    };
    let Some((_, tickets)) = filters.iter().find(|(k, _)| k == "ticket_id") else {
        return;
    };
    let read: Vec<String> = s
        .cases
        .iter()
        .filter_map(Value::as_object)
        .filter(|c| filter::matches(*c, "ticket_id", tickets))
        .filter_map(|c| Some(c.get("_id")?.as_str()?.to_string()))
        .collect();
    for id in read {
        if s.edited.insert(id.clone()) {
            s.human_change(&id, &who, &field, value.clone());
        }
    }
}

/// The positions of the cases `q` lists, in its order. Paging re-runs the same query with a
/// growing `skip`; filtering and sorting a large population once per query (until a case
/// changes) keeps big listings linear.
fn matching(s: &SimState, q: &ListQuery) -> Arc<Vec<usize>> {
    // A delta listing's pages differ only in their bound, which keyset paging moves on:
    // a page reuses what the page before selected, from its own bound on.
    let from = q.modified_from();
    let query_key = q.key_but(from.map(|_| FROM_MODIFIED));
    let bound = from.unwrap_or(f64::MIN);
    let cached = (small(&s.list_cache).as_ref())
        .filter(|c| c.key == query_key && c.version == s.version && c.from <= bound)
        .map(|c| c.hits.clone());
    let hits = match cached {
        Some(hits) => hits,
        None if let Some(tickets) = q.tickets_only() => return Arc::new(s.by_tickets(&tickets)),
        // The whole population in its own order: nothing to compute or remember.
        None if q.filters.is_empty() && q.sort.is_none() => {
            return Arc::new((0..s.cases.len()).collect());
        }
        None if let Some(from) = from => Arc::new(modified_from(s, q, from)),
        None => Arc::new(select(&s.cases, q)),
    };
    *small(&s.list_cache) = Some(ListCache {
        key: query_key,
        version: s.version,
        from: bound,
        hits: hits.clone(),
    });
    match from {
        Some(from) => {
            let start = hits.partition_point(|&i| modified(&s.cases[i]).is_some_and(|m| m < from));
            Arc::new(hits[start..].to_vec())
        }
        None => hits,
    }
}

const FROM_MODIFIED: &str = "FROM~modified_at";

fn modified(case: &Value) -> Option<f64> {
    case.get("modified_at").and_then(Value::as_f64)
}

/// A delta listing's cases (`FROM~modified_at`, sorted by it ascending), from the index by
/// `modified_at`: in the order `select` gives, without walking the whole population.
fn modified_from(s: &SimState, q: &ListQuery, from: f64) -> Vec<usize> {
    let held = small(&s.by_modified).clone();
    let order = match held {
        Some((version, order)) if version == s.version => order,
        _ => {
            let mut order: Vec<(f64, usize)> = (s.cases.iter().enumerate())
                .filter_map(|(i, c)| Some((modified(c)?, i)))
                .collect();
            order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let order = Arc::new(order.into_iter().map(|(_, i)| i).collect::<Vec<_>>());
            *small(&s.by_modified) = Some((s.version, order.clone()));
            order
        }
    };
    let cases = &s.cases;
    let start = order.partition_point(|&i| modified(&cases[i]).is_some_and(|m| m < from));
    (order[start..].iter().copied())
        .filter(|&i| q.matches_but(&cases[i], Some(FROM_MODIFIED)))
        .collect()
}

/// The positions of the `cases` that `q`'s filters match, in its order.
fn select(cases: &[Value], q: &ListQuery) -> Vec<usize> {
    let mut hits: Vec<usize> = (0..cases.len()).filter(|&i| q.matches(&cases[i])).collect();
    if let Some(key) = &q.sort {
        sort(cases, &mut hits, key, q.desc);
    }
    hits
}

/// Sorts positions of `cases` by `key`: as numbers when both are, else as text.
fn sort(cases: &[Value], hits: &mut [usize], key: &str, desc: bool) {
    hits.sort_by(|&a, &b| {
        let (a, b) = (&cases[a], &cases[b]);
        let ord = match (
            a.get(key).and_then(Value::as_f64),
            b.get(key).and_then(Value::as_f64),
        ) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            _ => field_str(a, key).cmp(field_str(b, key)),
        };
        if desc { ord.reverse() } else { ord }
    });
}

fn field_str<'a>(case: &'a Value, key: &str) -> &'a str {
    case.get(key).and_then(Value::as_str).unwrap_or("")
}

/// One page of the listing as the answer's bytes, each case's JSON from `json_of` (its
/// position): copied from bytes written once, not serialized again while the state is locked.
fn page(
    hits: &[usize],
    skip: usize,
    limit: usize,
    mut json_of: impl FnMut(usize) -> std::sync::Arc<[u8]>,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(limit.min(hits.len()) * 1400 + 64);
    body.extend_from_slice(b"{\"data\":{\"cases\":[");
    for (n, &i) in hits.iter().skip(skip).take(limit).enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&json_of(i));
    }
    body.extend_from_slice(format!("],\"total\":{}}}}}", hits.len()).as_bytes());
    body
}

/// The case with id `bad` gets a byte of invalid UTF-8 in its name.
fn spoil(text: &mut Vec<u8>, case: &Value, bad: Option<&str>) {
    if bad.is_some_and(|id| case.get("_id").and_then(Value::as_str) == Some(id)) {
        let name = text.windows(8).position(|w| w == b"\"name\":\"");
        text.insert(name.map_or(1, |at| at + 8), 0xff);
    }
}
