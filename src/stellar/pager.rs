//! Paging through the case listing with `limit` + `skip`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use reqwest::Method;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::task::JoinHandle;

use super::client::{Call, Client, data_of, short};
use super::object::CaseObject;
use super::{ApiError, Case, CaseParseError};

/// One page of cases: the cases that parsed and the ones skipped, with reasons.
#[derive(Debug, Default)]
pub struct Page {
    pub cases: Vec<Case>,
    pub skipped: Vec<CaseParseError>,
    /// How many cases the server says match (`data.total`), when it says.
    pub total: Option<u64>,
}

/// Walks the listing with `limit` + `skip` until `total`. Once the first page has told
/// the total, up to `ahead` pages are requested at once (each parsed in its own task) and
/// yielded in order. When the set shifts between pages, a case can come back on the next
/// page: the ids of the last two pages are kept so it is yielded once, while memory stays
/// bounded whatever the total.
pub struct CasePager {
    client: Client,
    filters: Arc<Vec<(String, String)>>,
    /// The `skip` of the next page to request.
    next_skip: u64,
    total: Option<u64>,
    ahead: usize,
    in_flight: VecDeque<JoinHandle<Result<Fetched, ApiError>>>,
    recent: [HashSet<String>; 2],
    done: bool,
}

/// One page as its task fetched and parsed it.
struct Fetched {
    skip: u64,
    parsed: Vec<Result<Case, CaseParseError>>,
    received: u64,
    total: Option<u64>,
}

impl Client {
    /// Pages through the cases matching `filters`, `page_size` at a time, one request at
    /// a time until [`CasePager::ahead`] says more.
    pub fn list_cases(&self, filters: Vec<(String, String)>) -> CasePager {
        CasePager {
            client: self.clone(),
            filters: Arc::new(filters),
            next_skip: 0,
            total: None,
            ahead: 1,
            in_flight: VecDeque::new(),
            recent: [HashSet::new(), HashSet::new()],
            done: false,
        }
    }
}

impl Client {
    /// One page of the listing of `filters` from `skip`, as the server answered it (no
    /// dedupe across pages: keyset paging has none to do). `received`: cases it held.
    pub async fn case_page(
        &self,
        filters: Vec<(String, String)>,
        skip: u64,
    ) -> Result<(Page, u64), ApiError> {
        let fetched = fetch(self.clone(), Arc::new(filters), skip).await?;
        let (cases, skipped) = split(fetched.parsed);
        let page = Page {
            cases,
            skipped,
            total: fetched.total,
        };
        Ok((page, fetched.received))
    }
}

impl CasePager {
    /// Requests up to `pages` pages at once once the total is known (at least 1).
    pub fn ahead(mut self, pages: usize) -> CasePager {
        self.ahead = pages.max(1);
        self
    }

    /// Keeps `ahead` requests going, never past the known total: the first page is
    /// requested alone, since only its answer tells how many there are.
    fn top_up(&mut self) {
        let limit = u64::from(self.client.page_size());
        while !self.done
            && match self.total {
                None => self.in_flight.is_empty(),
                Some(t) => self.in_flight.len() < self.ahead && self.next_skip < t,
            }
        {
            let task = fetch(self.client.clone(), self.filters.clone(), self.next_skip);
            self.in_flight.push_back(tokio::spawn(task));
            self.next_skip += limit;
        }
    }

    /// The next page, or None after the last.
    pub async fn next_page(&mut self) -> Result<Option<Page>, ApiError> {
        self.top_up();
        let Some(task) = self.in_flight.pop_front() else {
            return Ok(None);
        };
        let fetched = match task.await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                self.stop();
                return Err(e);
            }
            Err(e) => {
                self.stop();
                return Err(ApiError::BadResponse {
                    what: "GET cases".into(),
                    detail: format!("the page's task failed: {e}"),
                });
            }
        };
        let (mut cases, skipped) = split(fetched.parsed);
        let mut ids = HashSet::with_capacity(cases.len());
        cases.retain(|case| {
            let repeat = self.recent.iter().any(|r| r.contains(&case.id));
            ids.insert(case.id.clone()) && !repeat
        });
        let mut page = Page {
            cases,
            skipped,
            total: None,
        };
        self.recent.swap(0, 1);
        self.recent[1] = ids;
        let limit = u64::from(self.client.page_size());
        let reached = fetched.skip + fetched.received;
        if let Some(t) = fetched.total {
            self.total = Some(t);
        }
        page.total = self.total;
        // A short page ends the listing even if `total` claims more: the server has no more.
        if fetched.received < limit || self.total.is_some_and(|t| reached >= t) {
            self.stop();
        }
        // The next pages download while the caller works on this one; one at a time means
        // the next request waits for the next call.
        if self.ahead > 1 {
            self.top_up();
        }
        Ok(Some(page))
    }

    /// No more pages: requests still going are dropped.
    fn stop(&mut self) {
        self.done = true;
        for task in self.in_flight.drain(..) {
            task.abort();
        }
    }
}

impl Drop for CasePager {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A page's cases that parsed, and the ones skipped (each logged).
fn split(parsed: Vec<Result<Case, CaseParseError>>) -> (Vec<Case>, Vec<CaseParseError>) {
    let (cases, skipped): (Vec<_>, Vec<_>) = parsed.into_iter().partition(Result::is_ok);
    let skipped: Vec<CaseParseError> = skipped.into_iter().filter_map(Result::err).collect();
    for e in &skipped {
        tracing::warn!(case_id = e.id.as_deref().unwrap_or("-"), reason = %e.reason, "skipping a case that does not parse");
    }
    (cases.into_iter().filter_map(Result::ok).collect(), skipped)
}

/// A listing's answer: the common shape read without parsing the cases' fields, or any
/// other JSON, for [`fetch`] to make sense of or report.
enum Listed {
    Page {
        cases: Vec<Result<CaseObject, CaseParseError>>,
        total: Option<u64>,
    },
    Other(Value),
}

#[derive(serde::Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    data: Cases<'a>,
}

#[derive(serde::Deserialize)]
struct Cases<'a> {
    #[serde(borrow)]
    cases: Vec<&'a RawValue>,
    total: Option<u64>,
}

fn decode(body: &[u8]) -> serde_json::Result<Listed> {
    if let Err(e) = std::str::from_utf8(body) {
        return decode_invalid_utf8(body, e.valid_up_to());
    }
    match serde_json::from_slice::<Answer>(body) {
        Ok(a) => Ok(Listed::Page {
            cases: a.data.cases.into_iter().map(Case::index).collect(),
            total: a.data.total,
        }),
        Err(_) => serde_json::from_slice(body).map(Listed::Other),
    }
}

/// A page with bytes that are not UTF-8 (from `first` on): each is read as `?` so the
/// page parses, and the cases that held one are refused, naming where.
fn decode_invalid_utf8(body: &[u8], first: usize) -> serde_json::Result<Listed> {
    let mut text = body.to_vec();
    let mut bad = Vec::new();
    let mut at = first;
    while at < text.len() {
        match std::str::from_utf8(&text[at..]) {
            Ok(_) => break,
            Err(e) => {
                let from = at + e.valid_up_to();
                let len = e.error_len().unwrap_or(text.len() - from);
                text[from..from + len].fill(b'?');
                bad.push(from);
                at = from + len;
            }
        }
    }
    let a = serde_json::from_slice::<Answer>(&text)?;
    let base = text.as_ptr() as usize;
    let cases = a.data.cases.into_iter().map(|raw| {
        let start = raw.get().as_ptr() as usize - base;
        let end = start + raw.get().len();
        let parsed = Case::index(raw)?;
        match bad.iter().find(|&&b| (start..end).contains(&b)) {
            None => Ok(parsed),
            Some(b) => Err(CaseParseError {
                id: parsed
                    .get("_id")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                reason: format!("invalid UTF-8 at byte {b} of the page"),
            }),
        }
    });
    Ok(Listed::Page {
        cases: cases.collect(),
        total: a.data.total,
    })
}

/// Requests and parses the page at `skip`.
async fn fetch(
    client: Client,
    filters: Arc<Vec<(String, String)>>,
    skip: u64,
) -> Result<Fetched, ApiError> {
    let limit = u64::from(client.page_size());
    let mut query = filters.to_vec();
    query.push(("limit".into(), limit.to_string()));
    query.push(("skip".into(), skip.to_string()));
    let what = format!("GET cases (skip {skip})");
    let listed = client
        .call_with(
            Call {
                method: Method::GET,
                path: "/connect/api/v1/cases".into(),
                query: &query,
                body: None,
            },
            decode,
        )
        .await?;
    let (items, total) = match listed {
        Listed::Page { cases, total } => (cases, total),
        Listed::Other(v) => {
            let mut data = data_of(v, &what)?;
            let items = match data.get_mut("cases") {
                Some(Value::Array(items)) => std::mem::take(items),
                _ => {
                    return Err(ApiError::BadResponse {
                        what,
                        detail: format!("data.cases should be a list, got {}", short(&data)),
                    });
                }
            };
            let total = data.get("total").and_then(Value::as_u64);
            (items.into_iter().map(Case::object).collect(), total)
        }
    };
    client.learn_flavor(items.iter().filter_map(|c| c.as_ref().ok()), "the server's");
    let flavor = client.known_flavor();
    Ok(Fetched {
        skip,
        received: items.len() as u64,
        parsed: items
            .into_iter()
            .map(|item| item.and_then(|o| Case::from_object(o, flavor)))
            .collect(),
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_with_bytes_that_are_not_utf8_is_refused_alone_naming_where() {
        let mut page =
            br#"{"data":{"cases":[{"_id":"a","name":"ok"},{"_id":"b","name":"bad "#.to_vec();
        page.extend_from_slice(&[0xff, 0xc3]);
        page.extend_from_slice(br#""},{"_id":"c","name":"fine"}],"total":3}}"#);
        let Ok(Listed::Page { cases, total }) = decode(&page) else {
            panic!("the page did not parse");
        };
        assert_eq!(total, Some(3));
        assert_eq!(cases.len(), 3);
        assert!(cases[0].is_ok() && cases[2].is_ok());
        let err = cases[1].as_ref().expect_err("b is refused");
        assert_eq!(err.id.as_deref(), Some("b"));
        assert!(
            err.reason.contains("invalid UTF-8 at byte 65"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_outside_any_case_fail_the_page() {
        let mut page = br#"{"data":{"cases":[],"total":0}}"#.to_vec();
        page.insert(1, 0xff);
        assert!(decode(&page).is_err());
    }
}
