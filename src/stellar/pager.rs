//! Paging through the case listing with `limit` + `skip`.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::Value;

use super::client::{Call, Client, data_of, short};
use super::{ApiError, ApiFlavor, Case, CaseParseError};

/// One page of cases: the cases that parsed and the ones skipped, with reasons.
#[derive(Debug, Default)]
pub struct Page {
    pub cases: Vec<Case>,
    pub skipped: Vec<CaseParseError>,
    /// How many cases the server says match (`data.total`), when it says.
    pub total: Option<u64>,
}

/// Walks the listing with `limit` + `skip` until `total`. When the set shifts between
/// pages, a case can come back on the next page: the ids of the last two pages are kept
/// so it is yielded once, while memory stays bounded whatever the total.
pub struct CasePager {
    client: Client,
    filters: Vec<(String, String)>,
    skip: u64,
    total: Option<u64>,
    recent: [HashSet<String>; 2],
    done: bool,
}

impl Client {
    /// Pages through the cases matching `filters`, `page_size` at a time.
    pub fn list_cases(&self, filters: Vec<(String, String)>) -> CasePager {
        CasePager::new(self.clone(), filters)
    }
}

impl CasePager {
    fn new(client: Client, filters: Vec<(String, String)>) -> CasePager {
        CasePager {
            client,
            filters,
            skip: 0,
            total: None,
            recent: [HashSet::new(), HashSet::new()],
            done: false,
        }
    }

    /// The next page, or None after the last.
    pub async fn next_page(&mut self) -> Result<Option<Page>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let limit = u64::from(self.client.page_size());
        let mut query = self.filters.clone();
        query.push(("limit".into(), limit.to_string()));
        query.push(("skip".into(), self.skip.to_string()));
        let what = format!("GET cases (skip {})", self.skip);
        let v = self
            .client
            .call(Call {
                method: Method::GET,
                path: "/connect/api/v1/cases".into(),
                query: &query,
                body: None,
                idempotent: true,
            })
            .await?;
        let data = data_of(v, &what)?;
        let Some(items) = data.get("cases").and_then(Value::as_array) else {
            return Err(ApiError::BadResponse {
                what,
                detail: format!("data.cases should be a list, got {}", short(&data)),
            });
        };
        let total = data.get("total").and_then(Value::as_u64);
        let received = items.len() as u64;
        if self.client.known_flavor().is_none()
            && let Some(f) = items
                .iter()
                .find_map(|c| c.as_object().and_then(ApiFlavor::of_case))
        {
            self.client.detect_flavor(
                f,
                &format!("the server's cases carry `{}`", f.priority_key()),
            );
        }
        let flavor = self.client.known_flavor();
        let mut page = Page::default();
        let mut ids = HashSet::with_capacity(items.len());
        for item in items.iter().cloned() {
            match Case::parse(item, flavor) {
                Ok(case) => {
                    let repeat = self.recent.iter().any(|r| r.contains(&case.id));
                    if ids.insert(case.id.clone()) && !repeat {
                        page.cases.push(case);
                    }
                }
                Err(e) => {
                    tracing::warn!(case_id = e.id.as_deref().unwrap_or("-"), reason = %e.reason, "skipping a case that does not parse");
                    page.skipped.push(e);
                }
            }
        }
        self.recent.swap(0, 1);
        self.recent[1] = ids;
        self.skip += received;
        if let Some(t) = total {
            self.total = Some(t);
        }
        page.total = self.total;
        // A short page ends the listing even if `total` claims more: the server has no more.
        self.done = received < limit || self.total.is_some_and(|t| self.skip >= t);
        Ok(Some(page))
    }
}
