//! The Cases API simulator: an axum server that behaves like a Stellar Cyber server
//! (tokens, filters, paging, both update flavours, history, comments, users, tenants) with
//! switchable faults. `casewarden simulate`, the demo, the tests and the benchmarks use it.

pub mod data;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::{Map, Value, json};

use crate::stellar::ApiFlavor;
use crate::stellar::model::{PRIORITIES, RESOLUTIONS, STATUSES, cases_in_answer, parse_lenient};
use data::SimUser;

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
    /// The next N case listings drop the connection halfway through the body.
    pub truncate_next_lists: u32,
    /// A person edits each case (email, field, value) between its listing and the first
    /// read of that one case.
    pub edit_before_read: Option<(String, String, Value)>,
    /// Updates are applied, then answered 200 with a body that is not JSON.
    pub garble_write_answers: bool,
    /// Reads of one case (`GET /cases/{id}`) that has been sent an update answer 503.
    pub fail_reads_after_updates: bool,
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

impl RawAnswer {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = if self.drip_ms == 0 {
            axum::body::Body::from(self.body)
        } else {
            let chunks: Vec<Vec<u8>> = self.body.chunks(1024).map(<[u8]>::to_vec).collect();
            let drip = Duration::from_millis(self.drip_ms);
            axum::body::Body::from_stream(futures::stream::iter(chunks).then(move |c| async move {
                tokio::time::sleep(drip).await;
                Ok::<_, std::io::Error>(c)
            }))
        };
        let mut r = Response::new(body);
        *r.status_mut() = status;
        if let Ok(v) = header::HeaderValue::from_str(&self.content_type) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r
    }
}

/// One request as the simulator saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    /// When the answer was ready (a held-back one goes out later).
    pub at: std::time::Instant,
}

/// The simulator's data and counters; tests lock it to inspect or rig the server.
pub struct SimState {
    pub flavor: ApiFlavor,
    pub cases: Vec<Value>,
    index: HashMap<String, usize>,
    pub comments: HashMap<String, Vec<Value>>,
    /// v5: each case's change history, served at `/cases/{id}/activities` (v5 case
    /// objects carry no `history`).
    pub activities: HashMap<String, Vec<Value>>,
    pub users: Vec<SimUser>,
    api_user: String,
    api_key: String,
    accept_basic: bool,
    pub token_ttl_secs: u64,
    tokens: HashMap<String, i64>,
    /// Every JWT handed out, so tests can grep logs for them.
    pub issued_tokens: Vec<String>,
    pub requests: Vec<SeenRequest>,
    pub faults: Faults,
    /// Update requests that reached the update handler, per case id (whatever their
    /// answer, even one its client never received).
    pub update_calls: HashMap<String, u32>,
    /// Cases `edit_before_read` has edited.
    edited: HashSet<String>,
    rng: fastrand::Rng,
    api_requests: u64,
    burst_left: u64,
    /// Bumped on every change to `cases`; invalidates `list_cache`.
    version: u64,
    list_cache: Option<(String, u64, Arc<Vec<usize>>)>,
}

impl SimState {
    pub fn new(opts: &SimOptions) -> anyhow::Result<SimState> {
        let users = data::users(&opts.user);
        let mut cases = match &opts.cases_file {
            Some(path) => load_cases(path)?,
            None => data::generate(opts.cases, opts.seed, crate::now_ms(), opts.flavor, &users),
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
            cases,
            index,
            comments: HashMap::new(),
            activities,
            users,
            api_user: opts.user.clone(),
            api_key: opts.api_key.clone(),
            accept_basic: opts.accept_basic,
            token_ttl_secs: opts.token_ttl_secs,
            tokens: HashMap::new(),
            issued_tokens: Vec::new(),
            requests: Vec::new(),
            faults: opts.faults.clone(),
            update_calls: HashMap::new(),
            edited: HashSet::new(),
            rng: fastrand::Rng::with_seed(opts.seed ^ 0xfa17),
            api_requests: 0,
            burst_left: 0,
            version: 0,
            list_cache: None,
        })
    }

    /// A case by id, as the server currently holds it.
    pub fn case(&self, id: &str) -> Option<&Value> {
        self.index.get(id).map(|&i| &self.cases[i])
    }

    /// Adds or replaces a case (tests plant exactly the cases they need, broken ones too).
    /// On v5 its `history` moves to its activities, as a 5.x server keeps it.
    pub fn put_case(&mut self, mut case: Value) {
        self.version += 1;
        if self.flavor == ApiFlavor::V5 {
            take_history(&mut case, &mut self.activities, &self.users);
        }
        let Some(id) = case.get("_id").and_then(Value::as_str).map(str::to_string) else {
            self.cases.push(case);
            return;
        };
        match self.index.get(&id) {
            Some(&i) => self.cases[i] = case,
            None => {
                self.index.insert(id, self.cases.len());
                self.cases.push(case);
            }
        }
    }

    /// Makes every issued token invalid, as if they had all expired.
    pub fn expire_tokens(&mut self) {
        self.tokens.clear();
    }

    /// Update and comment requests received (POST/PUT on cases), whatever their answer.
    pub fn write_requests(&self) -> usize {
        self.requests
            .iter()
            .filter(|r| (r.method == "POST" || r.method == "PUT") && r.path.contains("/cases"))
            .count()
    }

    /// The user id history entries carry for changes made through the API.
    pub fn api_user_id(&self) -> &str {
        &self.users[0].user_id
    }

    /// A person changing a case in the UI, `ago_ms` before now: records the change
    /// without `api`, as its last modification.
    pub fn human_change_at(
        &mut self,
        case_id: &str,
        user_email: &str,
        field: &str,
        to: Value,
        ago_ms: i64,
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
        self.version += 1;
        let at = crate::now_ms() - ago_ms;
        let case = self.cases[i].as_object_mut().expect("cases are objects");
        let from = case.get(field).cloned().unwrap_or(Value::Null);
        case.insert(field.to_string(), to.clone());
        case.insert("modified_at".into(), json!(at));
        case.insert("modified_by".into(), json!(modifier));
        let entry = json!({"field": field, "from": from, "to": to, "timestamp": at, "user": user});
        self.record_change(case_id, entry, &name);
    }

    /// A person changing a case in the UI, now.
    pub fn human_change(&mut self, case_id: &str, user_email: &str, field: &str, to: Value) {
        self.human_change_at(case_id, user_email, field, to, 0);
    }

    /// Files one change where the flavour keeps it: the case's `history` (legacy) or its
    /// activities (v5, which also name the modifier on the case).
    fn record_change(&mut self, case_id: &str, entry: Value, user_name: &str) {
        let Some(&i) = self.index.get(case_id) else {
            return;
        };
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
fn take_history(case: &mut Value, activities: &mut HashMap<String, Vec<Value>>, users: &[SimUser]) {
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

/// Cases from a file: a case, an array, or any saved answer that holds cases (see
/// [`cases_in_answer`]), strict JSON or with the trailing commas real documentation prints.
fn load_cases(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--cases-file {}: {e}", path.display()))?;
    let (v, repaired) = parse_lenient(&text).map_err(|e| {
        anyhow::anyhow!(
            "--cases-file {}:{}:{}: not JSON: {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
    if repaired {
        tracing::warn!(file = %path.display(), "not strict JSON (trailing commas); read without them");
    }
    let cases =
        cases_in_answer(v).map_err(|e| anyhow::anyhow!("--cases-file {}: {e}", path.display()))?;
    if cases.is_empty() {
        tracing::warn!(file = %path.display(), "the file holds no case; serving none");
    }
    Ok(cases)
}

type Shared = Arc<Mutex<SimState>>;

/// A running simulator.
pub struct Simulator {
    pub addr: SocketAddr,
    /// Base URL to put in `stellar.url`.
    pub url: String,
    state: Shared,
    handle: axum_server::Handle<SocketAddr>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Simulator {
    /// Binds `listen` (port 0 picks a free port) and serves in the background. With
    /// `tls_cert_out`, serves HTTPS and writes the CA certificate that signed its
    /// certificate there, for `stellar.ca_file`.
    pub async fn start(
        opts: SimOptions,
        listen: SocketAddr,
        tls_cert_out: Option<&Path>,
    ) -> anyhow::Result<Simulator> {
        let state: Shared = Arc::new(Mutex::new(SimState::new(&opts)?));
        let app = router(state.clone());
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|e| anyhow::anyhow!("simulator cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        let handle = axum_server::Handle::new();
        let (scheme, task) = match tls_cert_out {
            Some(out) => {
                let (ca_pem, cert_pem, key_pem) = self_signed_chain()?;
                std::fs::write(out, ca_pem)
                    .map_err(|e| anyhow::anyhow!("--tls-cert-out {}: {e}", out.display()))?;
                let config = axum_server::tls_rustls::RustlsConfig::from_pem(
                    cert_pem.into_bytes(),
                    key_pem.into_bytes(),
                )
                .await?;
                let server = axum_server::from_tcp_rustls(listener, config)?.handle(handle.clone());
                ("https", tokio::spawn(server.serve(app.into_make_service())))
            }
            None => {
                let server = axum_server::from_tcp(listener)?.handle(handle.clone());
                ("http", tokio::spawn(server.serve(app.into_make_service())))
            }
        };
        let host = if tls_cert_out.is_some() && addr.ip().is_loopback() {
            format!("localhost:{}", addr.port())
        } else {
            addr.to_string()
        };
        Ok(Simulator {
            addr,
            url: format!("{scheme}://{host}"),
            state,
            handle,
            task,
        })
    }

    /// Locks the server's state for inspection or rigging.
    pub fn state(&self) -> MutexGuard<'_, SimState> {
        lock(&self.state)
    }

    /// Stops serving at once, keeping the state readable (a server "going away").
    pub fn halt(&self) {
        self.handle.shutdown();
    }

    /// Stops accepting connections and closes open ones.
    pub async fn stop(self) {
        self.handle.shutdown();
        let _ = self.task.await;
    }

    /// Serves until the task ends (for `casewarden simulate`).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await??;
        Ok(())
    }
}

fn lock(state: &Shared) -> MutexGuard<'_, SimState> {
    // A handler that panicked left the data as it was; keep serving.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// A CA and a `localhost`/`127.0.0.1` certificate signed by it, all PEM.
fn self_signed_chain() -> anyhow::Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "casewarden simulator CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?
        .signed_by(&leaf_key, &ca)?;
    Ok((ca.pem(), leaf.pem(), leaf_key.serialize_pem()))
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/connect/api/v1/access_token", post(access_token))
        .route("/connect/api/v1/cases", get(list_cases).post(update_legacy))
        .route("/connect/api/v1/cases/{id}", get(get_case).put(update_v5))
        .route(
            "/connect/api/v1/cases/{id}/comments",
            get(list_comments).post(add_comment),
        )
        .route(
            "/connect/api/v1/cases/{id}/activities",
            get(list_activities),
        )
        .route("/connect/api/v1/cases/{id}/{part}", get(case_part))
        .route("/connect/api/v1/users", get(list_users))
        .route("/connect/api/v1/users/{id}", get(get_user))
        .route("/connect/api/v1/tenants", get(list_tenants))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            faults_and_log,
        ))
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// Injects latency, outages, 5xx and 429 bursts, and records every request.
async fn faults_and_log(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let latency = lock(&state).faults.latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let injected = {
        let mut s = lock(&state);
        let is_token = path.ends_with("/access_token");
        let redirect = s.faults.redirect.clone().filter(|r| {
            path.ends_with(&r.path_suffix) && r.method.as_ref().is_none_or(|m| *m == method)
        });
        if let Some(r) = redirect {
            let mut resp = Response::new(axum::body::Body::empty());
            *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND);
            if let Ok(v) = header::HeaderValue::from_str(&r.location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Some(resp)
        } else if s.faults.down {
            Some(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "service unavailable",
            ))
        } else if is_token && s.faults.token_fail_next > 0 {
            s.faults.token_fail_next -= 1;
            Some(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "token service unavailable",
            ))
        } else if is_token {
            None
        } else {
            s.api_requests += 1;
            let every = s.faults.rate_limit_every;
            if every > 0 && s.api_requests.is_multiple_of(every) {
                s.burst_left = s.faults.rate_limit_burst.max(1);
            }
            if s.faults.throttle_next > 0 {
                s.faults.throttle_next -= 1;
                s.burst_left += 1;
            }
            if s.burst_left > 0 {
                s.burst_left -= 1;
                let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    header::HeaderValue::from(s.faults.retry_after_secs),
                );
                Some(r)
            } else if s.faults.fail_next > 0 {
                s.faults.fail_next -= 1;
                Some(error(StatusCode::SERVICE_UNAVAILABLE, "injected fault"))
            } else if s.faults.error_rate > 0.0 && s.rng.f64() < s.faults.error_rate {
                Some(error(StatusCode::SERVICE_UNAVAILABLE, "injected fault"))
            } else {
                None
            }
        }
    };
    let is_write = (method == "POST" || method == "PUT") && !path.ends_with("/access_token");
    let apply_delay = lock(&state).faults.slow_write_apply_ms;
    let resp = match injected {
        Some(r) => r,
        // Detached, so the write lands even if the client gives up (or dies) meanwhile.
        None if is_write && apply_delay > 0 => tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(apply_delay)).await;
            next.run(req).await
        })
        .await
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        None => next.run(req).await,
    };
    // Logged before a held-back answer, which a client that gives up never waits for.
    let slow = {
        let mut s = lock(&state);
        s.requests.push(SeenRequest {
            method,
            path,
            query,
            status: resp.status().as_u16(),
            at: std::time::Instant::now(),
        });
        s.faults.slow_write_answers_ms
    };
    if slow > 0 && is_write {
        tokio::time::sleep(Duration::from_millis(slow)).await;
    }
    resp
}

async fn access_token(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let mut s = lock(&state);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = if let Some(b) = auth.strip_prefix("Basic ") {
        basic_ok(&s, b)
    } else if let Some(key) = auth.strip_prefix("Bearer ") {
        key.trim() == s.api_key
    } else {
        false
    };
    if !ok {
        return error(StatusCode::UNAUTHORIZED, "invalid credentials");
    }
    let exp_ms = crate::now_ms() + s.token_ttl_secs as i64 * 1000;
    let exp = exp_ms / 1000;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let n = s.issued_tokens.len();
    let jwt = format!(
        "{}.{}.{}",
        b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64.encode(
            json!({"sub": s.api_user, "exp": exp, "jti": n, "nonce": s.rng.u64(..)}).to_string()
        ),
        b64.encode(s.rng.u64(..).to_be_bytes())
    );
    s.tokens.insert(jwt.clone(), exp_ms);
    s.issued_tokens.push(jwt.clone());
    Json(json!({"access_token": jwt, "exp": exp})).into_response()
}

/// The answer for a caller who is not authorized or asks for a case that does not exist.
fn refuse(s: &SimState, headers: &HeaderMap, id: &str) -> Option<Response> {
    if let Err(msg) = authorize(s, headers) {
        return Some(error(StatusCode::UNAUTHORIZED, msg));
    }
    s.case(id)
        .is_none()
        .then(|| error(StatusCode::NOT_FOUND, format!("case {id} not found")))
}

/// Whether `Basic base64(user:key)` carries the simulator's credentials.
fn basic_ok(s: &SimState, encoded: &str) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .is_some_and(|pair| pair == format!("{}:{}", s.api_user, s.api_key))
}

/// An answer announcing its whole length whose connection drops halfway through.
fn truncated(body: Vec<u8>) -> Response {
    let len = body.len();
    let half = body[..len / 2].to_vec();
    let chunks = futures::stream::iter([
        Ok::<_, std::io::Error>(half),
        Err(std::io::Error::other("connection dropped")),
    ]);
    let mut r = Response::new(axum::body::Body::from_stream(chunks));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    r
}

/// Checks the Bearer JWT (or, with `accept_basic`, Basic credentials); `Err` is the
/// message of the 401 to send.
fn authorize(s: &SimState, headers: &HeaderMap) -> Result<(), &'static str> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if s.accept_basic
        && let Some(b) = auth.strip_prefix("Basic ")
    {
        return if basic_ok(s, b) {
            Ok(())
        } else {
            Err("invalid credentials")
        };
    }
    let token = auth.strip_prefix("Bearer ").unwrap_or("");
    match s.tokens.get(token) {
        Some(&exp_ms) if exp_ms > crate::now_ms() => Ok(()),
        Some(_) => Err("token expired"),
        None => Err("invalid token"),
    }
}

fn field_str<'a>(case: &'a Value, key: &str) -> &'a str {
    case.get(key).and_then(Value::as_str).unwrap_or("")
}

fn priority_key(flavor: ApiFlavor) -> &'static str {
    match flavor {
        ApiFlavor::Legacy => "priority",
        ApiFlavor::V5 => "severity",
    }
}

async fn list_cases(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let mut s = lock(&state);
    if let Err(msg) = authorize(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, msg);
    }
    if let Some(raw) = s.faults.list_answer.clone() {
        return raw.into_response();
    }
    let mut limit = 100usize;
    let mut skip = 0usize;
    let mut sort: Option<String> = None;
    let mut desc = false;
    let mut filters = Vec::new();
    for (k, v) in &params {
        match k.as_str() {
            "limit" => match v.parse::<usize>() {
                Ok(n) => limit = n.min(500),
                Err(_) => {
                    return error(StatusCode::BAD_REQUEST, format!("limit: not a number: {v}"));
                }
            },
            "skip" => match v.parse::<usize>() {
                Ok(n) => skip = n,
                Err(_) => {
                    return error(StatusCode::BAD_REQUEST, format!("skip: not a number: {v}"));
                }
            },
            "sort" => sort = Some(v.clone()),
            "order" => desc = v.eq_ignore_ascii_case("desc"),
            _ => filters.push((k.clone(), v.clone())),
        }
    }
    // Paging re-runs the same query with a growing `skip`; filtering and sorting a large
    // population once per query (until a case changes) keeps big listings linear.
    let query_key = format!("{filters:?} {sort:?} {desc}");
    let cached = s
        .list_cache
        .as_ref()
        .filter(|(k, v, _)| *k == query_key && *v == s.version)
        .map(|(_, _, hits)| hits.clone());
    let hits = match cached {
        Some(hits) => hits,
        None => {
            let mut hits: Vec<usize> = (0..s.cases.len())
                .filter(|&i| {
                    filters.iter().all(|(k, v)| {
                        s.cases[i]
                            .as_object()
                            .is_some_and(|o| crate::stellar::filter::matches(o, k, v))
                    })
                })
                .collect();
            if let Some(key) = &sort {
                hits.sort_by(|&a, &b| {
                    let (a, b) = (&s.cases[a], &s.cases[b]);
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
            let hits = Arc::new(hits);
            s.list_cache = Some((query_key, s.version, hits.clone()));
            hits
        }
    };
    let total = hits.len();
    let page: Vec<&Value> = hits
        .iter()
        .skip(skip)
        .take(limit)
        .map(|&i| &s.cases[i])
        .collect();
    let answer = json!({"data": {"cases": page, "total": total}});
    if s.faults.truncate_next_lists > 0 {
        s.faults.truncate_next_lists -= 1;
        return truncated(answer.to_string().into_bytes());
    }
    Json(answer).into_response()
}

async fn get_case(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let mut s = lock(&state);
    if let Err(msg) = authorize(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, msg);
    }
    if s.faults.fail_reads_after_updates && s.update_calls.contains_key(&id) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "injected fault");
    }
    if let Some((who, field, value)) = s.faults.edit_before_read.clone()
        && s.case(&id).is_some()
        && s.edited.insert(id.clone())
    {
        s.human_change(&id, &who, &field, value);
    }
    match s.case(&id) {
        Some(c) => Json(json!({"data": c})).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("case {id} not found")),
    }
}

#[derive(serde::Deserialize)]
struct IdQuery {
    id: Option<String>,
}

async fn update_legacy(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<IdQuery>,
    body: axum::body::Bytes,
) -> Response {
    let Some(id) = q.id else {
        return error(StatusCode::BAD_REQUEST, "missing ?id=<case_id>");
    };
    update(&state, &headers, &id, &body, ApiFlavor::Legacy)
}

async fn update_v5(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    update(&state, &headers, &id, &body, ApiFlavor::V5)
}

fn update(
    state: &Shared,
    headers: &HeaderMap,
    id: &str,
    body: &[u8],
    route: ApiFlavor,
) -> Response {
    let mut s = lock(state);
    if let Err(msg) = authorize(&s, headers) {
        return error(StatusCode::UNAUTHORIZED, msg);
    }
    *s.update_calls.entry(id.to_string()).or_default() += 1;
    if route != s.flavor {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "this server speaks the {} update flavour",
                s.flavor.as_str()
            ),
        );
    }
    if s.faults.fail_updates_for.contains(id) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    }
    let Some(&idx) = s.index.get(id) else {
        return error(StatusCode::NOT_FOUND, format!("case {id} not found"));
    };
    let body: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        _ => return error(StatusCode::BAD_REQUEST, "body must be a JSON object"),
    };
    let changes = match validate_update(&s, &body) {
        Ok(c) => c,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let api_user_id = s.api_user_id().to_string();
    let api_user_name = s.users[0].name.clone();
    // 4.3 servers name the modifier by login, 5.x by user id.
    let modifier = match s.flavor {
        ApiFlavor::Legacy => s.api_user.clone(),
        ApiFlavor::V5 => api_user_id.clone(),
    };
    s.version += 1;
    let now = crate::now_ms();
    let case = s.cases[idx].as_object_mut().expect("cases are objects");
    let mut entries = Vec::new();
    for (field, to) in changes {
        let from = case.get(&field).cloned().unwrap_or(Value::Null);
        let to = if field == "tags" {
            apply_tags(&from, &to)
        } else {
            to
        };
        if from == to {
            continue;
        }
        if field == "status" && matches!(to.as_str(), Some("Resolved" | "Cancelled")) {
            case.insert("closed".into(), json!(now));
        }
        case.insert(field.clone(), to.clone());
        entries.push(json!({"api": true, "field": field, "from": from, "to": to, "timestamp": now, "user": api_user_id}));
    }
    case.insert("modified_at".into(), json!(now));
    case.insert("modified_by".into(), json!(modifier));
    let version = case.get("version").and_then(Value::as_i64).unwrap_or(0) + 1;
    case.insert("version".into(), json!(version));
    for entry in entries {
        s.record_change(id, entry, &api_user_name);
    }
    if s.faults.garble_write_answers {
        return (StatusCode::OK, "<html>OK</html>").into_response();
    }
    Json(json!({"data": s.cases[idx]})).into_response()
}

async fn list_comments(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let s = lock(&state);
    if let Some(r) = refuse(&s, &headers, &id) {
        return r;
    }
    let comments = s.comments.get(&id).cloned().unwrap_or_default();
    Json(json!({"data": comments})).into_response()
}

async fn add_comment(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let mut s = lock(&state);
    if let Some(r) = refuse(&s, &headers, &id) {
        return r;
    }
    let text = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v.get("comment").and_then(Value::as_str) {
            Some(t) if !t.trim().is_empty() => t.to_string(),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body must be {\"comment\": \"non-empty text\"}",
                );
            }
        },
        Err(_) => return error(StatusCode::BAD_REQUEST, "body must be JSON"),
    };
    let now = crate::now_ms();
    let comment = json!({
        "_id": data::hex_id("comment", s.rng.u64(..)),
        "comment": text,
        "case_id": id,
        "user": s.api_user_id(),
        "created_by": s.api_user,
        "created_at": now,
        "modified_at": now,
    });
    s.comments.entry(id).or_default().push(comment.clone());
    Json(json!({"data": comment})).into_response()
}

async fn list_users(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let s = lock(&state);
    if let Err(msg) = authorize(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, msg);
    }
    let users: Vec<Value> = s.users.iter().map(user_json).collect();
    Json(json!({"data": users})).into_response()
}

async fn list_activities(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let s = lock(&state);
    if let Some(r) = refuse(&s, &headers, &id) {
        return r;
    }
    if s.flavor == ApiFlavor::Legacy {
        return error(StatusCode::NOT_FOUND, "no such route on a 4.3 server");
    }
    let activities = s.activities.get(&id).cloned().unwrap_or_default();
    Json(json!({"data": activities})).into_response()
}

/// The other per-case reads of 5.x servers, answered with small well-formed bodies.
async fn case_part(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath((id, part)): UrlPath<(String, String)>,
) -> Response {
    let s = lock(&state);
    if let Err(msg) = authorize(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, msg);
    }
    let Some(case) = s.case(&id) else {
        return error(StatusCode::NOT_FOUND, format!("case {id} not found"));
    };
    let data = match part.as_str() {
        "summary" => json!(format!(
            "Observed {} alert(s)\nInvolved 1 entity: {}",
            case.get("size").and_then(Value::as_i64).unwrap_or(0),
            case.pointer("/metadata/entity_id")
                .and_then(Value::as_str)
                .unwrap_or("")
        )),
        "observables" => json!({"observables": [], "total": 0}),
        "scores" => {
            json!({"score": case.get("score").or_else(|| case.get("case_score")).cloned().unwrap_or(Value::Null)})
        }
        "alerts" => json!({"docs": [], "total": 0}),
        _ => return error(StatusCode::NOT_FOUND, format!("no route {part} for a case")),
    };
    Json(json!({"data": data})).into_response()
}

async fn get_user(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let s = lock(&state);
    if let Err(msg) = authorize(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, msg);
    }
    match s.users.iter().find(|u| u.user_id == id) {
        Some(u) => Json(json!({"data": user_json(u)})).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("user {id} not found")),
    }
}

fn user_json(u: &SimUser) -> Value {
    json!({"user_id": u.user_id, "email": u.email, "name": u.name, "roles": ["analyst"]})
}

async fn list_tenants(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let s = lock(&state);
    if let Err(msg) = authorize(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, msg);
    }
    let tenants: Vec<Value> = data::TENANTS
        .iter()
        .map(|(id, name)| json!({"cust_id": id, "cust_name": name}))
        .collect();
    Json(json!({"data": tenants})).into_response()
}

/// The tag list after `{"add": [...], "delete": [...]}`, keeping the existing order.
fn apply_tags(current: &Value, ops: &Value) -> Value {
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    };
    let delete = strings(ops.get("delete"));
    let mut tags: Vec<String> = strings(Some(current))
        .into_iter()
        .filter(|t| !delete.contains(t))
        .collect();
    for t in strings(ops.get("add")) {
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    json!(tags)
}

fn push_history(case: &mut Map<String, Value>, entry: Value) {
    match case.get_mut("history").and_then(Value::as_array_mut) {
        Some(h) => h.push(entry),
        None => {
            case.insert("history".into(), json!([entry]));
        }
    }
}

/// The (field, new value) pairs an update body asks for, or the 400 message.
/// `value` as one of the `allowed` names of `what`, or the 400 message.
fn one_of<'a>(value: &'a Value, what: &str, allowed: &[&str]) -> Result<&'a str, String> {
    value
        .as_str()
        .filter(|v| allowed.contains(v))
        .ok_or_else(|| {
            format!(
                "invalid {what} {value}: expected one of {}",
                allowed.join(", ")
            )
        })
}

/// `tags.add` or `tags.delete` of an update: a list of strings, absent meaning none.
fn tag_list(tags: &Value, key: &str) -> Result<Vec<String>, String> {
    match tags.get(key) {
        None => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("tags.{key} must hold strings"))
            })
            .collect(),
        Some(_) => Err(format!("tags.{key} must be a list")),
    }
}

fn validate_update(
    s: &SimState,
    body: &Map<String, Value>,
) -> Result<Vec<(String, Value)>, String> {
    let pkey = priority_key(s.flavor);
    let mut out = Vec::new();
    for (key, value) in body {
        match key.as_str() {
            "status" => {
                let v = one_of(value, "status", &STATUSES)?;
                out.push(("status".to_string(), json!(v)));
            }
            k if k == pkey => {
                let v = one_of(value, pkey, &PRIORITIES)?;
                out.push((pkey.to_string(), json!(v)));
                out.push((
                    "priority_num".to_string(),
                    json!(crate::stellar::model::priority_rank(v)),
                ));
            }
            "resolution" if s.flavor == ApiFlavor::V5 => {
                let v = one_of(value, "resolution", &RESOLUTIONS)?;
                if body.get("status").and_then(Value::as_str) != Some("Resolved") {
                    return Err("resolution is only accepted with status Resolved".into());
                }
                out.push(("resolution".to_string(), json!(v)));
            }
            "assignee" => {
                let v = value.as_str().ok_or("assignee must be a string")?;
                let user = s
                    .users
                    .iter()
                    .find(|u| u.user_id == v || u.email.eq_ignore_ascii_case(v))
                    .ok_or_else(|| format!("unknown assignee {v:?}"))?;
                out.push(("assignee".to_string(), json!(user.user_id)));
            }
            "update_alerts" => {
                let closing = matches!(
                    body.get("status").and_then(Value::as_str),
                    Some("Resolved" | "Cancelled")
                );
                if !value.is_boolean() || !closing {
                    return Err(
                        "update_alerts must be a boolean, sent with status Resolved or Cancelled"
                            .into(),
                    );
                }
            }
            "description" => {
                let v = value.as_str().ok_or("description must be a string")?;
                out.push(("description".to_string(), json!(v)));
            }
            "tags" => {
                if !value.is_object() {
                    return Err("tags must be {\"add\": [...], \"delete\": [...]}".into());
                }
                let (add, delete) = (tag_list(value, "add")?, tag_list(value, "delete")?);
                out.push(("tags".to_string(), json!({"add": add, "delete": delete})));
            }
            other => {
                return Err(format!(
                    "unknown field {other:?} for the {} flavour",
                    s.flavor.as_str()
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(
            "at least one of priority, status, assignee, tags or description is required".into(),
        );
    }
    Ok(out)
}
