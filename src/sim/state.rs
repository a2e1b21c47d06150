//! The simulated server's state: cases, activities, comments, users, tokens and the
//! requests seen. Reads (listings, a case by id, the request log) share it: the lock is
//! taken exclusively only by writes and by faults that change what they answer; the read
//! path's own caches and counters have their own small locks and atomics.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::{Map, Value, json};

use super::data::{self, SimUser};
use super::error::SimError;
use crate::stellar::ApiFlavor;

/// One request as the simulator saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    /// When the request arrived.
    pub arrived: std::time::Instant,
    /// When the answer was ready (a held-back one goes out later).
    pub at: std::time::Instant,
}

/// A webhook the simulator received at `/hooks/{name}` (it stands in for Slack or a
/// ticketing system, so notifications can be checked).
#[derive(Debug, Clone)]
pub struct Webhook {
    pub name: String,
    /// `X-Casewarden-Event`, `-Signature` and `-Timestamp`, when sent.
    pub event: Option<String>,
    pub signature: Option<String>,
    pub timestamp: Option<String>,
    pub body: Vec<u8>,
    pub at: std::time::Instant,
}

/// The positions of the cases a listing selected, remembered for its next pages.
pub(super) struct ListCache {
    /// The listing's filters (without a delta's bound), sort and order.
    pub key: String,
    /// The state's version it was made at.
    pub version: u64,
    /// A delta listing's bound (`FROM~modified_at`): the positions hold the cases from it on.
    pub from: f64,
    pub hits: Arc<Vec<usize>>,
}

/// The simulator's data and counters; tests lock it to inspect or rig the server.
pub struct SimState {
    pub flavor: ApiFlavor,
    pub cases: Vec<Value>,
    pub(super) index: HashMap<String, usize>,
    /// Where each ticket number's case is; rebuilt when found stale (`cases` is public).
    tickets: Mutex<HashMap<i64, usize>>,
    pub comments: HashMap<String, Vec<Value>>,
    /// v5: each case's change history, served at `/cases/{id}/activities` (v5 case
    /// objects carry no `history`).
    pub activities: HashMap<String, Vec<Value>>,
    pub users: Vec<SimUser>,
    pub tenants: Vec<data::SimTenant>,
    pub(super) api_user: String,
    pub(super) api_key: String,
    pub(super) accept_basic: bool,
    pub token_ttl_secs: u64,
    pub(super) tokens: HashMap<String, i64>,
    /// Every JWT handed out, so tests can grep logs for them.
    pub issued_tokens: Vec<String>,
    requests: Mutex<Vec<SeenRequest>>,
    /// Bytes of every answer body sent (the API's and the token service's).
    bytes_served: AtomicU64,
    pub faults: Faults,
    /// Update requests that reached the update handler, per case id (whatever their
    /// answer, even one its client never received).
    pub update_calls: HashMap<String, u32>,
    /// Every webhook received, answered or not.
    pub webhooks: Vec<Webhook>,
    /// Cases `edit_before_read` has edited.
    pub(super) edited: HashSet<String>,
    pub(super) rng: fastrand::Rng,
    pub(super) api_requests: AtomicU64,
    pub(super) burst_left: u64,
    /// Bumped on every change to `cases`; invalidates `list_cache`.
    pub(super) version: u64,
    /// With a listing lag: each case's earlier versions, with when each was replaced.
    past: HashMap<String, Vec<(std::time::Instant, Value)>>,
    pub(super) list_cache: Mutex<Option<ListCache>>,
    /// The positions of the cases with a numeric `modified_at`, in its order (ties by
    /// position), at a version: delta listings start at a binary search instead of a scan.
    pub(super) by_modified: Mutex<Option<(u64, Arc<Vec<usize>>)>>,
    /// Each case's JSON as served, by position, written once and kept until the case
    /// changes (a page or a read copies bytes instead of walking a `Value`).
    served: Vec<OnceLock<Arc<[u8]>>>,
}

impl SimState {
    pub fn new(opts: &SimOptions) -> Result<SimState, SimError> {
        let users = data::users(&opts.user);
        let tenants = data::tenants(opts.tenants.max(1));
        let mut cases = match &opts.cases_file {
            Some(path) => data::load_cases(path)?,
            None => data::generate(
                opts.cases,
                opts.seed,
                crate::now_ms(),
                opts.flavor,
                &users,
                &tenants,
            ),
        };
        let mut activities = HashMap::new();
        if opts.flavor == ApiFlavor::V5 {
            for case in &mut cases {
                take_history(case, &mut activities, &users);
            }
        }
        let index = cases
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((c.get("_id")?.as_str()?.to_string(), i)))
            .collect();
        Ok(SimState {
            flavor: opts.flavor,
            served: cases.iter().map(|_| OnceLock::new()).collect(),
            cases,
            index,
            tickets: Mutex::default(),
            comments: HashMap::new(),
            activities,
            users,
            tenants,
            api_user: opts.user.clone(),
            api_key: opts.api_key.clone(),
            accept_basic: opts.accept_basic,
            token_ttl_secs: opts.token_ttl_secs,
            tokens: HashMap::new(),
            issued_tokens: Vec::new(),
            requests: Mutex::default(),
            bytes_served: AtomicU64::new(0),
            faults: opts.faults.clone(),
            update_calls: HashMap::new(),
            webhooks: Vec::new(),
            edited: HashSet::new(),
            rng: fastrand::Rng::with_seed(opts.seed ^ 0xfa17),
            api_requests: AtomicU64::new(0),
            burst_left: 0,
            version: 0,
            past: HashMap::new(),
            list_cache: Mutex::default(),
            by_modified: Mutex::default(),
        })
    }

    /// A case by id, as the server currently holds it.
    pub fn case(&self, id: &str) -> Option<&Value> {
        self.index.get(id).map(|&i| &self.cases[i])
    }

    /// The JSON of the case at `i` as served.
    pub(super) fn served(&self, i: usize) -> Arc<[u8]> {
        let json = || {
            serde_json::to_vec(&self.cases[i])
                .expect("a Value serializes")
                .into()
        };
        match self.served.get(i) {
            Some(cell) => cell.get_or_init(json).clone(),
            // A case a test pushed onto `cases` itself.
            None => json(),
        }
    }

    /// The case at `i` changed: its JSON is written again when next served.
    fn changed(&mut self, i: usize) {
        if let Some(cell) = self.served.get_mut(i) {
            cell.take();
        }
    }

    /// Every request seen so far, in order of their answers.
    pub fn requests(&self) -> MutexGuard<'_, Vec<SeenRequest>> {
        small(&self.requests)
    }

    /// Bytes of every answer body sent (the API's and the token service's).
    pub fn bytes_served(&self) -> u64 {
        self.bytes_served.load(Ordering::Relaxed)
    }

    /// Logs a request and the size of its answer's body.
    pub(super) fn log(&self, request: SeenRequest, bytes: u64) {
        self.bytes_served.fetch_add(bytes, Ordering::Relaxed);
        self.requests().push(request);
    }

    /// The positions of the cases with these ticket numbers, in population order, as a
    /// server answers `ticket_id=1,2,3` from its index rather than by scanning.
    pub(super) fn by_tickets(&self, tickets: &[i64]) -> Vec<usize> {
        let ticket_at = |cases: &[Value], i: usize| cases.get(i)?.get("ticket_id")?.as_i64();
        let mut index = small(&self.tickets);
        let stale = tickets.iter().any(|t| {
            index
                .get(t)
                .is_none_or(|&i| ticket_at(&self.cases, i) != Some(*t))
        });
        if stale {
            *index = (0..self.cases.len())
                .filter_map(|i| Some((ticket_at(&self.cases, i)?, i)))
                .collect();
        }
        let mut hits: Vec<usize> = tickets
            .iter()
            .filter_map(|t| index.get(t).copied())
            .collect();
        hits.sort_unstable();
        hits.dedup();
        hits
    }

    /// Bumps the version before the case at `i` changes, keeping the version it replaces
    /// while listings lag (and only as long as they can still serve it).
    pub(super) fn remember(&mut self, i: usize) {
        self.version += 1;
        self.changed(i);
        let lag = std::time::Duration::from_millis(self.faults.list_lag_ms);
        if lag.is_zero() {
            return;
        }
        let Some(id) = self.cases[i].get("_id").and_then(Value::as_str) else {
            return;
        };
        let now = std::time::Instant::now();
        let versions = self.past.entry(id.to_string()).or_default();
        versions.retain(|(replaced, _)| now.duration_since(*replaced) <= lag);
        versions.push((now, self.cases[i].clone()));
    }

    /// The population as a listing lagging `list_lag_ms` behind serves it.
    pub(super) fn lagged(&self) -> Vec<Value> {
        let lag = std::time::Duration::from_millis(self.faults.list_lag_ms);
        let now = std::time::Instant::now();
        self.cases
            .iter()
            .map(|c| {
                let id = c.get("_id").and_then(Value::as_str).unwrap_or("");
                // The oldest version replaced within the lag is what the index still holds.
                self.past
                    .get(id)
                    .and_then(|v| v.iter().find(|(at, _)| now.duration_since(*at) <= lag))
                    .map_or(c, |(_, old)| old)
                    .clone()
            })
            .collect()
    }

    /// Adds or replaces a case (tests plant exactly the cases they need, broken ones too).
    /// On v5 its `history` moves to its activities, as a 5.x server keeps it.
    pub fn put_case(&mut self, mut case: Value) {
        self.version += 1;
        if self.flavor == ApiFlavor::V5 {
            take_history(&mut case, &mut self.activities, &self.users);
        }
        let Some(id) = case.get("_id").and_then(Value::as_str).map(str::to_string) else {
            self.push(case);
            return;
        };
        match self.index.get(&id) {
            Some(&i) => {
                self.changed(i);
                self.cases[i] = case;
            }
            None => {
                self.index.insert(id, self.cases.len());
                self.push(case);
            }
        }
    }

    fn push(&mut self, case: Value) {
        // A test may have pushed onto `cases` itself.
        self.served.resize_with(self.cases.len(), OnceLock::new);
        self.served.push(OnceLock::new());
        self.cases.push(case);
    }

    /// Deletes a case, as a person deleting it in the UI; false when there is none.
    pub fn delete_case(&mut self, id: &str) -> bool {
        let Some(i) = self.index.remove(id) else {
            return false;
        };
        self.version += 1;
        if i < self.served.len() {
            self.served.remove(i);
        }
        self.cases.remove(i);
        for at in self.index.values_mut().filter(|at| **at > i) {
            *at -= 1;
        }
        true
    }

    /// Makes every issued token invalid, as if they had all expired.
    pub fn expire_tokens(&mut self) {
        self.tokens.clear();
    }

    /// Update and comment requests received (POST/PUT on cases), whatever their answer.
    pub fn write_requests(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| (r.method == "POST" || r.method == "PUT") && r.path.contains("/cases"))
            .count()
    }

    /// The user id history entries carry for changes made through the API.
    pub fn api_user_id(&self) -> &str {
        &self.users[0].user_id
    }

    /// A person changing a case in the UI, `ago_ms` before now: records the change with
    /// `"api": false`, as its last modification.
    pub fn human_change_at(
        &mut self,
        case_id: &str,
        user_email: &str,
        field: &str,
        to: Value,
        ago_ms: i64,
    ) {
        self.change_by(case_id, user_email, field, to, ago_ms, false);
    }

    /// Another API client (a SOAR playbook, a sync tool) changing a case now: an entry
    /// with `"api": true` by a user that is not casewarden's.
    pub fn automation_change(&mut self, case_id: &str, user: &str, field: &str, to: Value) {
        self.change_by(case_id, user, field, to, 0, true);
    }

    fn change_by(
        &mut self,
        case_id: &str,
        user_email: &str,
        field: &str,
        to: Value,
        ago_ms: i64,
        api: bool,
    ) {
        let (user, name) = self
            .users
            .iter()
            .find(|u| u.email == user_email)
            .map(|u| (u.user_id.clone(), u.name.clone()))
            .unwrap_or_else(|| (user_email.to_string(), user_email.to_string()));
        let modifier = match self.flavor {
            ApiFlavor::Legacy => user_email.to_string(),
            ApiFlavor::V5 => user.clone(),
        };
        let Some(&i) = self.index.get(case_id) else {
            return;
        };
        self.remember(i);
        let at = crate::now_ms() - ago_ms;
        let case = self.cases[i].as_object_mut().expect("cases are objects");
        let from = case.get(field).cloned().unwrap_or(Value::Null);
        case.insert(field.to_string(), to.clone());
        case.insert("modified_at".into(), json!(at));
        case.insert("modified_by".into(), json!(modifier));
        let entry = json!({"field": field, "from": from, "to": to, "timestamp": at, "user": user, "api": api});
        self.record_change(case_id, entry, &name);
    }

    /// A person changing a case in the UI, now.
    pub fn human_change(&mut self, case_id: &str, user_email: &str, field: &str, to: Value) {
        self.human_change_at(case_id, user_email, field, to, 0);
    }

    /// Files one change where the flavour keeps it: the case's `history` (legacy) or its
    /// activities (v5, which also name the modifier on the case).
    pub(super) fn record_change(&mut self, case_id: &str, entry: Value, user_name: &str) {
        let Some(&i) = self.index.get(case_id) else {
            return;
        };
        self.changed(i);
        let case = self.cases[i].as_object_mut().expect("cases are objects");
        match self.flavor {
            ApiFlavor::Legacy => push_history(case, entry),
            ApiFlavor::V5 => {
                case.insert("modified_by_name".into(), json!(user_name));
                self.activities
                    .entry(case_id.to_string())
                    .or_default()
                    .push(data::activity(case_id, entry, &self.users));
            }
        }
    }

    /// The changes made through the API to a case: its `history` entries (legacy) or
    /// activities (v5) with `"api": true`.
    pub fn api_changes(&self, case_id: &str) -> Vec<Value> {
        let entries = match self.flavor {
            ApiFlavor::Legacy => self
                .case(case_id)
                .and_then(|c| c.get("history"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            ApiFlavor::V5 => self.activities.get(case_id).cloned().unwrap_or_default(),
        };
        entries.into_iter().filter(|h| h["api"] == true).collect()
    }
}

/// Moves a case's `history` into `activities`, as a 5.x server keeps it.
pub(super) fn take_history(
    case: &mut Value,
    activities: &mut HashMap<String, Vec<Value>>,
    users: &[SimUser],
) {
    let Some(obj) = case.as_object_mut() else {
        return;
    };
    let id = obj
        .get("_id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if let Some(Value::Array(history)) = obj.remove("history") {
        let entries = history
            .into_iter()
            .map(|h| data::activity(&id, h, users))
            .collect();
        activities.insert(id, entries);
    }
}

pub(super) type Shared = Arc<RwLock<SimState>>;

/// The state for a write (or a fault that changes what it answers).
pub(super) fn lock(state: &Shared) -> RwLockWriteGuard<'_, SimState> {
    // A handler that panicked left the data as it was; keep serving.
    state.write().unwrap_or_else(|p| p.into_inner())
}

/// The state for a read, shared with the other reads.
pub(super) fn read(state: &Shared) -> RwLockReadGuard<'_, SimState> {
    state.read().unwrap_or_else(|p| p.into_inner())
}

/// One of the read path's own caches or logs, held for a moment.
pub(super) fn small<T>(lock: &Mutex<T>) -> MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|p| p.into_inner())
}

/// How the simulator starts.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub cases: usize,
    pub seed: u64,
    pub flavor: ApiFlavor,
    pub user: String,
    pub api_key: String,
    pub token_ttl_secs: u64,
    /// Cases loaded from a JSON array instead of generated.
    pub cases_file: Option<PathBuf>,
    /// Also accept `Authorization: Basic user:key` on every call, as the vendor's on-prem
    /// sync mode sends it, instead of a JWT.
    pub accept_basic: bool,
    /// Customers the generated cases are spread over (3: the default population's).
    pub tenants: usize,
    pub faults: Faults,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            cases: 200,
            seed: 1,
            flavor: ApiFlavor::Legacy,
            user: "demo@example.com".into(),
            api_key: "demo-key".into(),
            token_ttl_secs: 600,
            cases_file: None,
            accept_basic: false,
            tenants: data::TENANTS.len(),
            faults: Faults::default(),
        }
    }
}

/// Misbehaviour to inject, switchable at run time through [`Simulator::state`].
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Added to every answer.
    pub latency_ms: u64,
    /// Share of API requests (not token requests) answered with 503.
    pub error_rate: f64,
    /// Every Nth API request starts a burst of `rate_limit_burst` 429 answers.
    pub rate_limit_every: u64,
    pub rate_limit_burst: u64,
    pub retry_after_secs: u64,
    /// Updates to these case ids always answer 500 (and change nothing).
    pub fail_updates_for: HashSet<String>,
    /// Every API request answers 503 (the server "goes away").
    pub down: bool,
    /// The next N API requests answer 503, then the server recovers.
    pub fail_next: u32,
    /// The next N API requests answer 429 with Retry-After.
    pub throttle_next: u32,
    /// The next N token requests answer 503.
    pub token_fail_next: u32,
    /// Replaces the answer to case listings, to serve malformed or hostile pages.
    pub list_answer: Option<RawAnswer>,
    /// Writes (POST/PUT) are applied, then their answer is held back this long, so a
    /// client with a shorter timeout never learns that they succeeded.
    pub slow_write_answers_ms: u64,
    /// Writes wait this long before they are applied: a server still working on a
    /// request after its client gave up (or died).
    pub slow_write_apply_ms: u64,
    /// Requests matching it are answered with a redirect.
    pub redirect: Option<RedirectFault>,
    /// Webhooks are answered with this status (after being recorded) instead of 200.
    pub hook_status: Option<u16>,
    /// Webhooks are answered this late.
    pub hook_delay_ms: u64,
    /// The next N case listings drop the connection halfway through the body.
    pub truncate_next_lists: u32,
    /// A person edits each case (email, field, value) between its listing and the first
    /// read of that one case.
    pub edit_before_read: Option<(String, String, Value)>,
    /// Updates are applied, then answered 200 with a body that is not JSON.
    pub garble_write_answers: bool,
    /// Reads of one case (`GET /cases/{id}`) that has been sent an update answer 503.
    pub fail_reads_after_updates: bool,
    /// Listings with this filter key answer 400, as a server that does not know it.
    pub refuse_filter: Option<String>,
    /// Listings leave out this filter key (`FROM~modified_at`, `sort`...), as a server
    /// that ignores it.
    pub ignore_filter: Option<String>,
    /// Listings serve each case as it was this long ago, as a search index trailing
    /// writes; `GET /cases/{id}` is current.
    pub list_lag_ms: u64,
    /// Share of updates that are applied, then answered 502 with a gateway's HTML page.
    pub apply_then_fail: f64,
    /// Listings serve the case with this id with a byte of invalid UTF-8 in its name.
    pub invalid_utf8_case: Option<String>,
}

/// A redirect answer for requests of `method` (any when None) whose path ends with
/// `path_suffix`.
#[derive(Debug, Clone)]
pub struct RedirectFault {
    pub status: u16,
    pub location: String,
    pub method: Option<String>,
    pub path_suffix: String,
}

/// A hand-made answer: status, content type, body, and an optional delay between
/// 1 KiB chunks of the body (a slow-loris server).
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    pub drip_ms: u64,
}

pub(super) fn push_history(case: &mut Map<String, Value>, entry: Value) {
    match case.get_mut("history").and_then(Value::as_array_mut) {
        Some(h) => h.push(entry),
        None => {
            case.insert("history".into(), json!([entry]));
        }
    }
}
